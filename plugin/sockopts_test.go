package plugin

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func sockopt(t *testing.T, c net.Conn, level, opt int) int {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := raw.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

// Both ends of a peer connection give up on a silent peer: keepalive is
// set on a dialled connection and on an accepted one, TCP_USER_TIMEOUT
// only on re-protection streams.
func TestPeerTCPOptions(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			tunePeerTCP(c)
		}
		accepted <- c
	}()
	c, err := tcpDial(l.Addr().String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	defer s.Close()
	for _, conn := range []net.Conn{c, s} {
		if got := sockopt(t, conn, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT); got != 0 {
			t.Errorf("TCP_USER_TIMEOUT = %d ms on a peer connection, want the system's (0): the log channel's heartbeat timeout decides", got)
		}
		setUserTimeout(conn, streamUserTimeout)
		if got, want := sockopt(t, conn, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT), int(streamUserTimeout/time.Millisecond); got != want {
			t.Errorf("TCP_USER_TIMEOUT = %d ms on a stream, want %d", got, want)
		}
		if sockopt(t, conn, unix.SOL_SOCKET, unix.SO_KEEPALIVE) == 0 {
			t.Error("SO_KEEPALIVE off")
		}
		if got, want := sockopt(t, conn, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE), int(peerKeepAlive/time.Second); got != want {
			t.Errorf("TCP_KEEPIDLE = %d s, want %d", got, want)
		}
		if got := sockopt(t, conn, unix.IPPROTO_TCP, unix.TCP_KEEPCNT); got != peerKeepAliveCount {
			t.Errorf("TCP_KEEPCNT = %d, want %d", got, peerKeepAliveCount)
		}
	}
	// A stream is TLS: the option reaches the TCP connection under it.
	setUserTimeout(c, 0)
	setUserTimeout(tls.Client(c, &tls.Config{}), 7*time.Second)
	if got := sockopt(t, c, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT); got != 7000 {
		t.Errorf("TCP_USER_TIMEOUT through TLS = %d ms, want 7000", got)
	}
	tunePeerTCP(nil) // not a TCP connection: nothing to do
	setUserTimeout(nil, time.Second)
}

// Only the domain's own QEMU may use a re-protection socket: the process
// that connected (SO_PEERCRED) must be the pid libvirt keeps for the
// domain, and its command line must hold libvirt's -uuid of the domain.
func TestAdmitQEMU(t *testing.T) {
	path := filepath.Join(shortTempDir(t), "rp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := net.Dial("unix", path)
		if err == nil {
			defer c.Close()
			_, _ = c.Read(make([]byte, 1))
		}
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	me := os.Getpid()
	pidFile := func(pid int) func(string) ([]byte, error) {
		return func(name string) ([]byte, error) {
			if name != "web" {
				return nil, fmt.Errorf("asked about domain %q", name)
			}
			return []byte(fmt.Sprintf("%d\n", pid)), nil
		}
	}
	asQEMU := func(uuid string) func(int) ([]byte, error) {
		return func(pid int) ([]byte, error) {
			if pid != me {
				return nil, fmt.Errorf("asked about pid %d", pid)
			}
			return []byte("/usr/bin/qemu-system-x86_64\x00-name\x00guest=web\x00-uuid\x00" + uuid + "\x00-S\x00"), nil
		}
	}
	for _, c2 := range []struct {
		what string
		sys  qemuProcs
		want string // "" admitted
	}{
		{"the domain's QEMU", qemuProcs{cmdline: asQEMU(strings.ToUpper(testUUID)), pidFile: pidFile(me)}, ""},
		{"a process with the domain's -uuid in its arguments, not libvirt's pid", qemuProcs{cmdline: asQEMU(testUUID), pidFile: pidFile(me + 1)}, "is not domain \"web\"'s QEMU"},
		{"libvirt's pid running another domain", qemuProcs{cmdline: asQEMU("00000000-0000-0000-0000-000000000001"), pidFile: pidFile(me)}, "is not the QEMU of domain"},
		{"the test process itself", qemuProcs{pidFile: pidFile(me)}, fmt.Sprintf("pid %d is not the QEMU", me)},
		{"no pid file", qemuProcs{cmdline: asQEMU(testUUID), pidFile: func(string) ([]byte, error) { return nil, os.ErrNotExist }}, "libvirt's pid of domain"},
	} {
		err := admitQEMU(c, testUUID, "web", c2.sys)
		if (c2.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c2.want)) {
			t.Errorf("%s: %v, want %q", c2.what, err, c2.want)
		}
	}
	if err := admitQEMU(c, testUUID, "../web", qemuProcs{cmdline: asQEMU(testUUID)}); err == nil {
		t.Error("a domain name with a slash read a pid file")
	}
}
