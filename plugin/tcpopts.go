package plugin

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// Peer TCP connections (the log channel, control connections and
// re-protection streams) give up on a peer that stopped answering rather
// than wait for TCP's retransmissions (about 15 min with Linux's default
// tcp_retries2). The log channel's heartbeats notice a lost peer first
// (protocol.md §7); the bound matters for what has no heartbeat: a
// re-protection stream whose NBD mirror runs in write-blocking mode holds
// the guest's disk writes while a write to the peer is unacknowledged, and
// a migration stream holds the switchover pause.
const (
	// peerUserTimeout is TCP_USER_TIMEOUT (tcp(7)): a connection with
	// data unacknowledged this long is aborted (ETIMEDOUT). Longer than
	// any heartbeat timeout, so a partition that the failover core still
	// rides out does not end a connection first.
	peerUserTimeout = 10 * time.Second
	// peerKeepAlive: the first keepalive probe after this much idle
	// time, then one per peerKeepAlive, aborted after peerKeepAliveCount
	// unanswered: an idle connection to a dead host ends within about
	// 4 × peerKeepAlive.
	peerKeepAlive      = 3 * time.Second
	peerKeepAliveCount = 3
)

// tunePeerTCP sets keepalive and TCP_USER_TIMEOUT on c when it is a TCP
// connection (a no-op otherwise: a test's pipe). Errors are ignored: a
// socket that refuses an option still works as before, with TCP's own
// bounds.
func tunePeerTCP(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: peerKeepAlive, Interval: peerKeepAlive, Count: peerKeepAliveCount})
	raw, err := tc.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(peerUserTimeout/time.Millisecond))
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
