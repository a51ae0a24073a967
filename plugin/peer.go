package plugin

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// The daemon-to-daemon protocol (its messages and bytes) is in logchan
// (wire.go, messages.go; docs/protocol.md). This file holds how the daemon
// uses a connection: write deadlines, one writer goroutine for acks and
// heartbeats, and dialing.

func peerAddr(cfg ftxml.Config) string {
	return net.JoinHostPort(cfg.PeerAddress, strconv.Itoa(cfg.PeerPort))
}

// writeTimeout bounds every write on a peer connection: a dead peer must
// never block the primary (docs/architecture.md, "Backup lost"); a write
// that times out breaks the channel.
const writeTimeout = 2 * time.Second

// peerConn is one TCP connection to or from the peer daemon. Log frames
// and byes are written by their callers (each frame whole, under
// logchan.Conn's lock); acks and heartbeats go through one writer goroutine
// (startWriter) that keeps only the latest ack, so that a slow peer holds
// one pending ack, never a goroutine per message.
type peerConn struct {
	nc  net.Conn
	c   *logchan.Conn
	seq atomic.Uint64
	// released, when set (the primary's log channel), gives the
	// heartbeat's Released counts: the output gates' frames done
	// (outputGates.released).
	released func() []uint64
	// digests, when set (the primary's log channel), gives the output
	// gates' running frame digests (outputGates.digests), sent after each
	// heartbeat to a backup that listed logchan.FeatureFrameDigests
	// (peer).
	digests func() []logchan.FrameDigest
	// peer is the other side's handshake (the server's HelloReply for a
	// dialled connection; empty for an accepted one).
	peer logchan.Hello

	mu      sync.Mutex
	cond    *sync.Cond
	ack     logchan.Ack
	hasAck  bool
	ackSoon bool // every pending ack came by queueAckSoon
	beat    bool
	stopped bool
}

func newPeerConn(nc net.Conn) *peerConn {
	p := &peerConn{nc: nc, c: logchan.NewConn(nc)}
	p.cond = sync.NewCond(&p.mu)
	return p
}

func dialPeer(e env, addr string, role logchan.Role, uuid, qemuVer string, logVer uint32) (*peerConn, error) {
	return dialHello(e, addr, logchan.Hello{Protocol: logchan.ProtocolVersion, DomainUUID: uuid,
		QEMUVersion: qemuVer, LogVersion: logVer, Role: role})
}

// dialHello connects to the peer daemon at addr and runs the handshake
// with hello; bounded by the dial timeout.
func dialHello(e env, addr string, hello logchan.Hello) (*peerConn, error) {
	timeout := e.cfg.dialTimeout()
	nc, err := e.dial(addr, timeout)
	if err != nil {
		return nil, err
	}
	pc := newPeerConn(nc)
	_ = nc.SetDeadline(time.Now().Add(timeout))
	reply, err := logchan.ClientHandshake(pc.c, hello)
	if err != nil {
		nc.Close()
		return nil, err
	}
	pc.peer = reply.Hello
	_ = nc.SetDeadline(time.Time{})
	return pc, nil
}

// dialControl opens a control connection (logchan.RoleControl).
func dialControl(e env, addr, uuid, qemuVer string, logVer uint32) (*peerConn, error) {
	return dialPeer(e, addr, logchan.RoleControl, uuid, qemuVer, logVer)
}

// dialLog opens the primary's log channel (logchan.RolePrimary) of the
// pairing epoch and starts its writer. resume, with offset: the channel
// of a pairing whose previous one ended for a planned restart
// (logchan.Hello.Resume). gates (nil: none) give the heartbeats' Released
// counts and the Digests frame, set before the writer starts.
func dialLog(e env, addr, uuid, qemuVer string, logVer uint32, epoch string, resume bool, offset uint64, gates *outputGates) (*peerConn, error) {
	pc, err := dialHello(e, addr, logchan.Hello{Protocol: logchan.ProtocolVersion, DomainUUID: uuid,
		QEMUVersion: qemuVer, LogVersion: logVer, Role: logchan.RolePrimary, Epoch: epoch, Resume: resume, Offset: offset})
	if err != nil {
		return nil, err
	}
	if gates != nil {
		pc.released, pc.digests = gates.released, gates.digests
	}
	pc.startWriter() // Go's TCP connections have TCP_NODELAY on
	return pc, nil
}

func (p *peerConn) remote() string { return p.nc.RemoteAddr().String() }

// Close closes the connection and ends the writer.
func (p *peerConn) Close() error {
	if p == nil { // no channel: nothing to say
		return nil
	}
	p.mu.Lock()
	p.stopped = true
	p.cond.Broadcast()
	p.mu.Unlock()
	return p.nc.Close()
}

func (p *peerConn) flush() error { return p.c.Flush() }

func (p *peerConn) deadline() { _ = p.nc.SetWriteDeadline(time.Now().Add(writeTimeout)) }

func (p *peerConn) sendLog(off uint64, data []byte) error {
	p.deadline()
	return p.c.WriteLog(off, data)
}

// startWriter starts the goroutine that writes queued acks and heartbeats
// until Close or closeWrite. After a failed write (a peer that does not
// read within writeTimeout) it writes nothing more: the failover core
// notices the silence, and a frame cut short makes the peer drop the
// connection. It never closes the connection itself: a full close with
// unread data may reset it and lose a bye just written (closeWrite).
func (p *peerConn) startWriter() {
	go func() {
		for {
			p.mu.Lock()
			for !p.stopped && !p.hasAck && !p.beat {
				p.cond.Wait()
			}
			if p.stopped {
				p.mu.Unlock()
				return
			}
			if p.ackSoon && !p.beat && runtime.GOMAXPROCS(0) == 1 {
				// queueAckSoon: let feedLoop, readied by the same Log
				// frame, write it into FIFO B first; its ack (Offset,
				// Fed) then joins this one. One ack per Log frame instead
				// of two (BENCHMARKS.md, "Issue 12: session 45"). With
				// one P (procs.go) the yield puts this goroutine behind
				// those runnable now; with more, it would run beside
				// them and only cost a wake-up, so it is skipped.
				p.mu.Unlock()
				runtime.Gosched()
				p.mu.Lock()
				if p.stopped {
					p.mu.Unlock()
					return
				}
			}
			beat, hasAck, ack := p.beat, p.hasAck, p.ack
			p.beat, p.hasAck, p.ackSoon = false, false, false
			p.mu.Unlock()
			var err error
			if beat {
				err = p.writeHeartbeat()
			}
			if hasAck && err == nil {
				p.deadline()
				err = p.c.WriteAck(ack)
			}
			if err != nil {
				p.mu.Lock()
				p.stopped = true
				p.mu.Unlock()
				return
			}
		}
	}()
}

// queueAck hands an acknowledgement to the writer. Acks only grow: the
// writer sends the field-wise maximum of those queued since its last
// write, so the latest progress is never lost behind an older value.
func (p *peerConn) queueAck(a logchan.Ack) { p.queueAckAt(a, false) }

func (p *peerConn) queueAckAt(a logchan.Ack, soon bool) {
	if p == nil { // no channel: nothing to say
		return
	}
	p.mu.Lock()
	// Soon only if every ack pending is: one queued by queueAck since the
	// last write goes out without the yield.
	p.ackSoon = soon && (p.ackSoon || !p.hasAck)
	p.ack = logchan.Ack{Offset: max(p.ack.Offset, a.Offset), Executed: max(p.ack.Executed, a.Executed),
		Fed: max(p.ack.Fed, a.Fed), Received: max(p.ack.Received, a.Received)}
	p.hasAck = true
	p.cond.Broadcast()
	p.mu.Unlock()
}

// queueAckSoon is queueAck for a receipt whose feed follows at once
// (feedLoop was idle and the frame is small, backupRun.serveLog): the
// writer lets the goroutines runnable now go first, so that the feed's
// ack, queued meanwhile, goes out with this one. The receipt waits for
// the goroutines runnable at that moment (feedLoop's write, a few µs;
// under load possibly more, up to the scheduler's turn of its global
// queue), never for the backup's QEMU: a full FIFO B parks feedLoop in
// the poller. Only with one P (procs.go); an ack queued by queueAck
// since the last write is not delayed.
func (p *peerConn) queueAckSoon(a logchan.Ack) { p.queueAckAt(a, true) }

// queueHeartbeat asks the writer for a heartbeat (at most one pending).
func (p *peerConn) queueHeartbeat() {
	if p == nil { // no channel: nothing to say
		return
	}
	p.mu.Lock()
	p.beat = true
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *peerConn) writeHeartbeat() error {
	p.deadline()
	h := logchan.Heartbeat{Seq: p.seq.Add(1), SentUnixMs: time.Now().UnixMilli()}
	if p.released != nil {
		h.Released = p.released()
	}
	if err := p.c.WriteHeartbeat(h); err != nil {
		return err
	}
	if p.digests == nil || !p.peer.HasFeature(logchan.FeatureFrameDigests) {
		return nil
	}
	if d := p.digests(); len(d) > 0 {
		return p.c.WriteDigests(d)
	}
	return nil
}

// bye sends an orderly Bye.
func (p *peerConn) bye(b logchan.Bye) {
	if p == nil { // no channel: nothing to say
		return
	}
	p.deadline()
	if p.digests != nil && p.peer.HasFeature(logchan.FeatureFrameDigests) {
		// The frames since the last heartbeat are compared too: a
		// backup replaying a shut-down primary's last log records its
		// disks in step only if nothing differed (instep.go).
		if d := p.digests(); len(d) > 0 {
			_ = p.c.WriteDigests(d)
		}
	}
	_ = p.c.WriteBye(b)
}

// closeWrite ends our direction after a Bye, so that everything written
// before it is delivered (a plain close with unread acks pending may reset
// the connection and lose the tail); the reader sees EOF when the peer closes.
func (p *peerConn) closeWrite() {
	if p == nil { // no channel: nothing to say
		return
	}
	p.mu.Lock()
	p.stopped = true
	p.cond.Broadcast()
	p.mu.Unlock()
	_ = p.c.Flush()
	// *net.TCPConn, and *tls.Conn (close_notify, then the TCP half-close).
	if hc, ok := p.nc.(interface{ CloseWrite() error }); ok {
		_ = hc.CloseWrite()
		return
	}
	_ = p.nc.Close()
}

// recv reads the next log-channel message (logchan.Conn.Recv): a malformed
// or misplaced frame is an error and the caller drops the connection.
func (p *peerConn) recv() (logchan.Message, error) { return p.c.Recv() }

// request sends a control request and decodes the reply's data into out.
func (p *peerConn) request(req logchan.ControlRequest, out any) error {
	p.deadline()
	return p.c.Request(req, out)
}

// seedBlocks sends a delta seed of the file src to the peer's path
// (logchan.Conn.SeedBlocks): the blocks of want listed in send, total data
// bytes in all, reporting progress (bytes done, total) at most every
// seedProgressEvery.
func (p *peerConn) seedBlocks(src, path string, want logchan.BlockList, send []int64, total int64, progress func(done, total int64)) error {
	f, err := os.OpenFile(src, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var last time.Time
	p.deadline()
	progress(0, total)
	err = p.c.SeedBlocks(path, want, send, f, func(done int64) {
		p.deadline()
		if time.Since(last) > seedProgressEvery {
			progress(done, total)
			last = time.Now()
		}
	})
	if err != nil {
		return fmt.Errorf("seeding %s: %w", path, err)
	}
	progress(total, total)
	return nil
}

// seedProgressEvery is the least time between two seeding progress reports.
const seedProgressEvery = 200 * time.Millisecond

// seed streams the file at path to the peer (logchan.Conn.Seed),
// reporting progress (bytes done, total) at most every seedProgressEvery.
func (p *peerConn) seed(path string, want logchan.FileDigest, progress func(done, total int64)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var last time.Time
	p.deadline() // the hash before this may have taken longer than a write's deadline
	err = p.c.Seed(path, want, f, func(done int64) {
		p.deadline()
		if time.Since(last) > seedProgressEvery {
			progress(done, want.Size)
			last = time.Now()
		}
	})
	if err != nil {
		return fmt.Errorf("seeding %s: %w", path, err)
	}
	progress(want.Size, want.Size)
	return nil
}
