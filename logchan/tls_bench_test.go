package logchan

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"testing"
	"time"
)

// BenchmarkCodecFramingTCP and BenchmarkCodecFramingTLS run
// BenchmarkCodecFraming's path into a real connection on loopback, read
// back frame by frame on the other end (ReadFrame): plain TCP, and mutual
// TLS 1.3 with P-256 certificates as the daemons use (plugin/tls.go).
func BenchmarkCodecFramingTCP(b *testing.B) { benchFramingConn(b, false) }
func BenchmarkCodecFramingTLS(b *testing.B) { benchFramingConn(b, true) }

func benchFramingConn(b *testing.B, useTLS bool) {
	stream := fixture(b)[HeaderSize:]
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	var server, client *tls.Config
	if useTLS {
		server, client = benchTLS(b)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(accepted)
			return
		}
		if server != nil {
			c = tls.Server(c, server)
		}
		accepted <- c
	}()
	var w net.Conn
	w, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	if client != nil {
		w = tls.Client(w, client)
	}
	defer w.Close()
	r := <-accepted
	if r == nil {
		b.Fatal("accept failed")
	}
	defer r.Close()
	// The reader: whole frames until the writer says stop (a Bye).
	done := make(chan error, 1)
	go func() {
		br := bufio.NewReaderSize(r, 256<<10)
		for {
			f, err := ReadFrame(br)
			if err != nil {
				done <- err
				return
			}
			if f.Type == FrameBye {
				done <- nil
				return
			}
		}
	}()
	bw := bufio.NewWriterSize(w, 256<<10)
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		frameStream(b, stream, bw)
		if err := bw.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	if err := WriteFrame(bw, FrameBye, Bye{Clean: true, Reason: "done"}.Encode()); err != nil {
		b.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := <-done; err != nil && err != io.EOF {
		b.Fatal(err)
	}
}

// benchTLS makes a CA and one certificate it signs (for 127.0.0.1) and
// returns a server and a client configuration that require each other's.
func benchTLS(b *testing.B) (server, client *tls.Config) {
	b.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		b.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "bench host"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		b.Fatal(err)
	}
	pair := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	server = &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}
	client = &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
	return server, client
}
