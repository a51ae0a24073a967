package qmp

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
	goqmp "github.com/digitalocean/go-qemu/qmp"
)

// RPCMonitor is a Monitor over libvirt's monitor pass-through, like
// LibvirtMonitor, but speaking libvirt's remote protocol in Go
// (github.com/digitalocean/go-libvirt) on a connection of its own, not
// through the C library: a command waits in Go's network poller rather
// than in a cgo call. That matters to a daemon that runs one Go P
// (plugin/procs.go): a cgo call holds the P until the runtime's monitor
// takes it back, which stalls every other goroutine meanwhile (up to about
// 20 ms; query-replay through libvirtd took 4.6 ms at the median and up to
// hundreds of ms on a loaded lab host, BENCHMARKS.md session 42). Every
// exchange is bounded: go-libvirt has no deadline or keepalive of its
// own, so a libvirtd that stops answering would hold the caller for good;
// at the bound the connection is closed, the call returns an error, and
// so does every later one. The bound of a command (runTimeout) is long:
// closing the socket does not cancel the command inside libvirtd, which
// keeps waiting for a busy monitor while holding the domain's job, so a
// short bound and a retry would pile up libvirtd's workers behind it (one
// command at a time is what the C library's blocking call gave).
// Events are not supported (go-qemu's ErrEventsNotSupported).
type RPCMonitor struct {
	l          *golibvirt.Libvirt
	conn       net.Conn
	dom        golibvirt.Domain
	runTimeout time.Duration
}

// errNoAnswer: libvirt did not answer within the RPCMonitor's bound.
var errNoAnswer = errors.New("no answer from libvirt")

// ErrNoLocalSocket: LocalSocket found no local libvirt socket for the URI
// (a remote or session URI, or no daemon's socket exists): use
// LibvirtMonitor.
var ErrNoLocalSocket = errors.New("qmp: no local libvirt socket for libvirt's remote protocol")

// LocalSocket returns the unix socket of the local libvirt daemon that
// serves uri, and the URI to open on it, for the URIs a host daemon uses:
// qemu:///system (or qemu+unix:///system), with a socket= parameter if
// given, else the modular daemon's /run/libvirt/virtqemud-sock if it
// exists, else libvirtd's /run/libvirt/libvirt-sock, present or not
// (libvirt's docs/uri.rst, "Unix domain sockets"). ok is false for any
// other URI (remote hosts, session daemons): use LibvirtMonitor there.
func LocalSocket(uri string) (socket, open string, ok bool) {
	u, err := url.Parse(uri)
	if err != nil || (u.Scheme != "qemu" && u.Scheme != "qemu+unix") || u.Host != "" || u.Path != "/system" {
		return "", "", false
	}
	if s := u.Query().Get("socket"); s != "" {
		return s, "qemu:///system", true
	}
	if _, err := os.Stat("/run/libvirt/virtqemud-sock"); err == nil {
		return "/run/libvirt/virtqemud-sock", "qemu:///system", true
	}
	// Also when it does not exist right now (libvirtd restarting): the
	// connection then fails and is tried again, rather than handing a
	// caller to the C library's unbounded call (helper-124).
	return "/run/libvirt/libvirt-sock", "qemu:///system", true
}

// DialRPCMonitor connects to the libvirt daemon's unix socket, opens uri
// on it (LocalSocket's open) and finds the domain uuid (canonical
// 36-character form); openTimeout bounds the dial and the opening,
// runTimeout each later command (RPCMonitor). Errors: the socket cannot
// be reached, libvirt refuses the connection or does not answer, no such
// domain. Disconnect closes the connection.
func DialRPCMonitor(socket, uri, uuid string, openTimeout, runTimeout time.Duration) (*RPCMonitor, error) {
	id, err := parseUUID(uuid)
	if err != nil {
		return nil, err
	}
	conn, err := net.DialTimeout("unix", socket, openTimeout)
	if err != nil {
		return nil, fmt.Errorf("qmp: libvirt at %s: %w", socket, err)
	}
	m, err := newRPCMonitor(conn, uri, id, openTimeout, runTimeout)
	if err != nil {
		return nil, fmt.Errorf("qmp: libvirt at %s, domain %s: %w", socket, uuid, err)
	}
	return m, nil
}

// newRPCMonitor is DialRPCMonitor on a connected conn, which it closes on
// error.
func newRPCMonitor(conn net.Conn, uri string, id golibvirt.UUID, openTimeout, runTimeout time.Duration) (*RPCMonitor, error) {
	m := &RPCMonitor{l: golibvirt.NewWithDialer(dialers.NewAlreadyConnected(conn)), conn: conn, runTimeout: runTimeout}
	err := m.bounded(openTimeout, func() error {
		if err := m.l.ConnectToURI(golibvirt.ConnectURI(uri)); err != nil {
			return err
		}
		dom, err := m.l.DomainLookupByUUID(id)
		m.dom = dom
		return err
	})
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return m, nil
}

// bounded runs f, closing the connection if f has not returned within
// timeout (a closed connection ends go-libvirt's wait with an error); it
// then returns errNoAnswer.
func (m *RPCMonitor) bounded(timeout time.Duration, f func() error) error {
	t := time.AfterFunc(timeout, func() { _ = m.conn.Close() })
	err := f()
	if !t.Stop() {
		return fmt.Errorf("%w within %v", errNoAnswer, timeout)
	}
	return err
}

// parseUUID reads a UUID's canonical text form (8-4-4-4-12 hex digits).
func parseUUID(s string) (golibvirt.UUID, error) {
	var id golibvirt.UUID
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != len(id) || len(s) != 36 {
		return id, fmt.Errorf("qmp: %q is not a UUID (8-4-4-4-12 hex digits)", s)
	}
	copy(id[:], b)
	return id, nil
}

// Connect is a no-op: DialRPCMonitor connected.
func (m *RPCMonitor) Connect() error { return nil }

// Disconnect closes the connection to libvirt at once: no close call that
// a libvirtd not answering could hold (libvirtd ends the connection's
// state when the socket closes).
func (m *RPCMonitor) Disconnect() error { return m.conn.Close() }

// Run sends one QMP command (JSON) and returns QEMU's full reply (JSON with
// "return" or "error"). Errors: libvirt's, or no answer within the
// command's bound (the connection is then closed).
func (m *RPCMonitor) Run(command []byte) ([]byte, error) {
	var out string
	err := m.bounded(m.runTimeout, func() error {
		var err error
		out, err = m.l.QEMUDomainMonitorCommand(m.dom, string(command), 0)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("libvirt monitor pass-through (remote protocol): %w", err)
	}
	return []byte(out), nil
}

// Events is not supported: go-qemu's ErrEventsNotSupported.
func (m *RPCMonitor) Events(context.Context) (<-chan Event, error) {
	return nil, goqmp.ErrEventsNotSupported
}
