package plugin

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCA makes a CA and signs host certificates with it, as the lab's
// openssl does.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, dir: t.TempDir()}
	writePEM(t, filepath.Join(ca.dir, "cacert.pem"), "CERTIFICATE", der)
	return ca
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// host writes a certificate and key for name (usable as server and
// client) naming ips, and returns their paths.
func (ca *testCA) host(t *testing.T, name string, ips ...string) (cert, key string) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &k.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(k)
	cert, key = filepath.Join(ca.dir, name+"-cert.pem"), filepath.Join(ca.dir, name+"-key.pem")
	writePEM(t, cert, "CERTIFICATE", der)
	writePEM(t, key, "EC PRIVATE KEY", kd)
	return cert, key
}

func (ca *testCA) config(t *testing.T, name string, ips ...string) TLSConfig {
	cert, key := ca.host(t, name, ips...)
	return TLSConfig{CACert: filepath.Join(ca.dir, "cacert.pem"), ServerCert: cert, ServerKey: key, ClientCert: cert, ClientKey: key}
}

// handshake: a listener on 127.0.0.1 with server's TLS accepts one
// connection from client's dial; it returns both sides' errors.
func handshake(t *testing.T, server, client *peerTLS) (acceptErr, dialErr error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	go func() {
		nc, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer nc.Close()
		c, err := server.accept(nc, 5*time.Second)
		if err == nil {
			_, err = c.Write([]byte("x")) // let the client finish its handshake
		}
		done <- err
	}()
	c, dialErr := client.dial(l.Addr().String(), 5*time.Second)
	if dialErr == nil {
		_, _ = c.Read(make([]byte, 1))
		c.Close()
	}
	return <-done, dialErr
}

func mustTLS(t *testing.T, c TLSConfig) *peerTLS {
	t.Helper()
	p, err := loadPeerTLS(c)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Mutual TLS on the peer port: both certificates must come from the CA and
// name the address each side talks to.
func TestPeerTLS(t *testing.T) {
	ca := newTestCA(t)
	server := mustTLS(t, ca.config(t, "backup", "127.0.0.1"))
	good := mustTLS(t, ca.config(t, "primary", "127.0.0.1"))
	if a, d := handshake(t, server, good); a != nil || d != nil {
		t.Fatalf("both certificates good: accept %v, dial %v", a, d)
	}
	// A client whose certificate names another address is refused.
	elsewhere := mustTLS(t, ca.config(t, "elsewhere", "10.9.9.9"))
	if a, _ := handshake(t, server, elsewhere); !errors.Is(a, ErrPeerName) {
		t.Fatalf("client certificate for another address: %v", a)
	}
	// A client from another CA is refused at the handshake.
	other := mustTLS(t, newTestCA(t).config(t, "intruder", "127.0.0.1"))
	if a, _ := handshake(t, server, other); a == nil || !strings.Contains(a.Error(), "tls") {
		t.Fatalf("client from another CA: %v", a)
	}
	// A client without a certificate is refused.
	nocert := &peerTLS{client: good.client.Clone()}
	nocert.client.Certificates = nil
	if a, _ := handshake(t, server, nocert); a == nil {
		t.Fatal("a client without a certificate was accepted")
	}
	// The primary refuses a backup host whose certificate names another
	// address than <ft:peer address>.
	wrongServer := mustTLS(t, ca.config(t, "impostor", "10.9.9.9"))
	if _, d := handshake(t, wrongServer, good); d == nil {
		t.Fatal("the client accepted a server certificate for another address")
	}
}

// Missing PKI files stop the daemon at start with the key to set.
func TestPeerTLSMissingFiles(t *testing.T) {
	c := TLSConfig{}
	c.CACert = filepath.Join(t.TempDir(), "missing.pem")
	c.applyDefaults()
	if _, err := loadPeerTLS(c); err == nil || !strings.Contains(err.Error(), "ca-cert") || !strings.Contains(err.Error(), "plain-tcp") {
		t.Fatalf("missing CA: %v", err)
	}
}
