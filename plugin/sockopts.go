package plugin

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Peer TCP connections give up on a peer host that stopped answering
// rather than wait for TCP's retransmissions (about 15 min with Linux's
// default tcp_retries2).
//
//   - Every peer connection (the log channel, control connections,
//     re-protection streams) has keepalive: an idle connection to a dead
//     host ends within about 4 × peerKeepAlive. The log channel is never
//     idle (heartbeats) and notices a lost peer by them (protocol.md §7),
//     so its timeouts stay the ft element's.
//   - A re-protection stream (streams.go) also has TCP_USER_TIMEOUT
//     streamUserTimeout (tcp(7)): data unacknowledged that long, or (Linux
//     5.11 and later) a window that stayed closed that long, aborts it.
//     A stream has no heartbeat, and an NBD mirror in write-blocking mode
//     holds the guest's disk writes while its write to the peer waits; a
//     migration stream holds the switchover pause. The stream fails, then
//     the mirror or the migration, and the re-protection undoes the rest
//     (plugin/reprotect). Not on the log channel: a partition the
//     heartbeat timeout (timeout-ms, no upper bound) rides out must not
//     end it first.
const (
	streamUserTimeout  = 20 * time.Second
	peerKeepAlive      = 3 * time.Second
	peerKeepAliveCount = 3
)

// tunePeerTCP sets keepalive on c when it is a TCP connection (a no-op
// otherwise: a test's pipe). Errors are ignored: a socket that refuses an
// option works as before, with TCP's own bounds.
func tunePeerTCP(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: peerKeepAlive, Interval: peerKeepAlive, Count: peerKeepAliveCount})
	}
}

// setUserTimeout sets TCP_USER_TIMEOUT d on the TCP connection under c (c
// itself, or the one a *tls.Conn runs over); a no-op for anything else.
func setUserTimeout(c net.Conn, d time.Duration) {
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d/time.Millisecond))
	})
}

// tcpDial dials a peer daemon over TCP (tunePeerTCP applied).
func tcpDial(addr string, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	tunePeerTCP(c)
	return c, nil
}

// peerCred is the credentials of the process at the other end of unix
// socket c (SO_PEERCRED, unix(7): the process that connected).
func peerCred(c net.Conn) (*unix.Ucred, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("%T is not a socket", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

// qemuProcs reads what admitQEMU checks: a process's command line
// (/proc/PID/cmdline) and the pid libvirt keeps for a running domain
// (qemuPidDir/NAME.pid, written by libvirtd as root). Nil fields read
// those files.
type qemuProcs struct {
	cmdline func(pid int) ([]byte, error)
	pidFile func(name string) ([]byte, error)
}

// admitQEMU checks that the process that connected to unix socket c
// (SO_PEERCRED) is the running QEMU of domain uuid named name: its pid is
// the one in libvirt's pid file of the domain (root's file: a process
// cannot name itself there; that QEMU being alive, its pid is not reused),
// and its command line holds libvirt's "-uuid <uuid>", as killQEMU
// checks. Every QEMU on a host runs as the same user and could reach a
// socket QEMU's user may open: a re-protection's streams carry this
// domain's memory and disks to the peer, and take writes to its new
// backup's disks.
func admitQEMU(c net.Conn, uuid, name string, sys qemuProcs) error {
	cred, err := peerCred(c)
	if err != nil {
		return fmt.Errorf("the connecting process: %w", err)
	}
	pid := int(cred.Pid)
	if sys.cmdline == nil {
		sys.cmdline = func(pid int) ([]byte, error) { return os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)) }
	}
	if sys.pidFile == nil {
		sys.pidFile = func(name string) ([]byte, error) {
			if name == "" || strings.ContainsAny(name, "/\x00") {
				return nil, fmt.Errorf("domain name %q: no pid file to read", name)
			}
			return os.ReadFile(filepath.Join(qemuPidDir, name+".pid"))
		}
	}
	b, err := sys.pidFile(name)
	if err != nil {
		return fmt.Errorf("libvirt's pid of domain %q: %w", name, err)
	}
	if want, err := strconv.Atoi(strings.TrimSpace(string(b))); err != nil || want != pid {
		return fmt.Errorf("pid %d is not domain %q's QEMU (libvirt's pid file says %q)", pid, name, strings.TrimSpace(string(b)))
	}
	cl, err := sys.cmdline(pid)
	if err != nil {
		return fmt.Errorf("pid %d: %w", pid, err)
	}
	if !runsDomain(cl, uuid) {
		return fmt.Errorf("pid %d is not the QEMU of domain %s", pid, uuid)
	}
	return nil
}
