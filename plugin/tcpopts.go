package plugin

import (
	"crypto/tls"
	"net"
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
