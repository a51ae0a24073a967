package plugin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"time"
)

// Mutual TLS on the peer port (docs/protocol.md §1). By default the
// daemon uses libvirt's own PKI layout, the files `virsh migrate --tls`
// uses: the CA at /etc/pki/CA/cacert.pem, this host's server certificate
// for connections it accepts and its client certificate for those it
// opens. Each side checks the other's certificate against the CA and its
// name against the address it talks to: the primary checks the backup
// host's against <ft:peer address>, the backup host checks the primary's
// against the address the connection comes from. Plain TCP only with
// plain-tcp: true, and then with a warning.

// Default PKI paths (libvirt's; https://libvirt.org/kbase/tlscerts.html).
const (
	DefaultTLSCACert     = "/etc/pki/CA/cacert.pem"
	DefaultTLSServerCert = "/etc/pki/libvirt/servercert.pem"
	DefaultTLSServerKey  = "/etc/pki/libvirt/private/serverkey.pem"
	DefaultTLSClientCert = "/etc/pki/libvirt/clientcert.pem"
	DefaultTLSClientKey  = "/etc/pki/libvirt/private/clientkey.pem"
)

// TLSConfig names the PKI files of the peer port.
type TLSConfig struct {
	CACert     string `yaml:"ca-cert"`
	ServerCert string `yaml:"server-cert"`
	ServerKey  string `yaml:"server-key"`
	ClientCert string `yaml:"client-cert"`
	ClientKey  string `yaml:"client-key"`
}

func (t *TLSConfig) applyDefaults() {
	for _, f := range []struct {
		v   *string
		def string
	}{{&t.CACert, DefaultTLSCACert}, {&t.ServerCert, DefaultTLSServerCert}, {&t.ServerKey, DefaultTLSServerKey},
		{&t.ClientCert, DefaultTLSClientCert}, {&t.ClientKey, DefaultTLSClientKey}} {
		if *f.v == "" {
			*f.v = f.def
		}
	}
}

// peerTLS is the loaded configuration: one for connections this daemon
// accepts, one for those it opens.
type peerTLS struct {
	server, client *tls.Config
}

// loadPeerTLS reads the PKI files. Errors name the file and the key.
func loadPeerTLS(c TLSConfig) (*peerTLS, error) {
	pem, err := os.ReadFile(c.CACert)
	if err != nil {
		return nil, fmt.Errorf("tls: ca-cert: %w; give the CA that signed both hosts' certificates, or set plain-tcp: true (unauthenticated)", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls: ca-cert %s holds no PEM certificate", c.CACert)
	}
	server, err := tls.LoadX509KeyPair(c.ServerCert, c.ServerKey)
	if err != nil {
		return nil, fmt.Errorf("tls: server-cert %s / server-key %s: %w", c.ServerCert, c.ServerKey, err)
	}
	client, err := tls.LoadX509KeyPair(c.ClientCert, c.ClientKey)
	if err != nil {
		return nil, fmt.Errorf("tls: client-cert %s / client-key %s: %w", c.ClientCert, c.ClientKey, err)
	}
	return &peerTLS{
		server: &tls.Config{Certificates: []tls.Certificate{server}, ClientCAs: pool,
			ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13},
		client: &tls.Config{Certificates: []tls.Certificate{client}, RootCAs: pool, MinVersion: tls.VersionTLS13},
	}, nil
}

// dial opens a TLS connection to addr, checking the server's certificate
// against addr's host (an IP address or a name), within timeout.
func (t *peerTLS) dial(addr string, timeout time.Duration) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	raw, err := tcpDial(addr, timeout)
	if err != nil {
		return nil, err
	}
	cfg := t.client.Clone()
	cfg.ServerName = host
	tc := tls.Client(raw, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls with %s: %w", addr, err)
	}
	return tc, nil
}

// ErrPeerName is wrapped when a peer's certificate does not name the
// address it connects from.
var ErrPeerName = errors.New("tls: the peer's certificate does not name its address")

// accept runs the server side of the handshake on nc within timeout and
// checks that the client's certificate names the address it connects
// from (an IP address SAN, or a DNS name that resolves to it).
func (t *peerTLS) accept(nc net.Conn, timeout time.Duration) (net.Conn, error) {
	tc := tls.Server(nc, t.server)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	host, _, err := net.SplitHostPort(nc.RemoteAddr().String())
	if err != nil {
		return nil, err
	}
	ip := net.ParseIP(host)
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 || ip == nil {
		return nil, ErrPeerName
	}
	if certNames(ctx, certs[0], ip) {
		return tc, nil
	}
	return nil, fmt.Errorf("%w: %s connected with a certificate for %v %v", ErrPeerName, host, certs[0].DNSNames, certs[0].IPAddresses)
}

// certNames reports whether cert names ip: an IP address SAN equal to it,
// or a DNS SAN that resolves to it.
func certNames(ctx context.Context, cert *x509.Certificate, ip net.IP) bool {
	if slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
		return true
	}
	for _, name := range cert.DNSNames {
		addrs, err := net.DefaultResolver.LookupIP(ctx, "ip", name)
		if err == nil && slices.ContainsFunc(addrs, ip.Equal) {
			return true
		}
	}
	return false
}
