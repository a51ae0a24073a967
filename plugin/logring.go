package plugin

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/libvirt-ft/libvirt-ft/failover"
	"github.com/libvirt-ft/libvirt-ft/logchan"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// logRingBytes is how much of the recent log a controller keeps (bytes) to
// place a stalled backup's icount in the log. The window (window-bytes,
// default 64 KiB) and FIFO B (16 KiB) bound how far the stream can run past
// the point where a backup's replay stopped, so 1 MiB holds that point with
// a wide margin.
const logRingBytes = 1 << 20

// logRing keeps the last bytes of a log stream, whole events in stream
// order, with the INSTRUCTION sum before its first byte: enough to say
// which event a replay stopped at (the kind of the next event after an
// icount) and to keep that stretch of log for diagnosis (test/tools/rrdump
// reads it). Safe for concurrent use.
type logRing struct {
	mu    sync.Mutex
	max   int
	buf   []byte // whole events
	start uint64 // stream offset of buf[0] (bytes)
	instr uint64 // INSTRUCTION sum of the stream before buf[0]
	total uint64 // INSTRUCTION sum of the stream up to the end of buf
}

func newLogRing(max int) *logRing { return &logRing{max: max} }

// add appends data, whole events starting at stream offset off holding
// instr instructions, to the ring. A gap (off not at the ring's end)
// restarts the ring at off.
func (r *logRing) add(off uint64, data []byte, instr uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if off != r.start+uint64(len(r.buf)) {
		r.buf, r.start, r.instr = r.buf[:0], off, r.total
	}
	r.buf = append(r.buf, data...)
	r.total += instr
	if len(r.buf) <= 2*r.max {
		return
	}
	// Drop whole leading events until at most max bytes are left.
	cut, cutInstr := 0, uint64(0)
	_, _ = logchan.WalkEvents(r.buf, r.start, func(o uint64, ev []byte, n uint64) bool {
		if len(r.buf)-cut <= r.max {
			return false
		}
		cut += len(ev)
		cutInstr += n
		return true
	})
	r.buf = append(r.buf[:0], r.buf[cut:]...)
	r.start += uint64(cut)
	r.instr += cutInstr
}

// stallPoint describes where in the log a replay that stopped at an icount
// stands.
type stallPoint struct {
	// Icount is the replay's executed icount (guest instructions).
	Icount uint64
	// Offset is the stream offset of the next event after Icount (bytes):
	// the first event that is not an INSTRUCTION event once the
	// INSTRUCTION sum reached Icount.
	Offset uint64
	// Kind is that event's kind (logchan.KindName), "" when the ring does
	// not reach it.
	Kind string
}

func (p stallPoint) String() string {
	if p.Kind == "" {
		return fmt.Sprintf("icount %d (not in the last %d bytes of log kept)", p.Icount, logRingBytes)
	}
	return fmt.Sprintf("icount %d, next event %s at log offset %d", p.Icount, p.Kind, p.Offset)
}

// at finds where icount stands in the kept log.
func (r *logRing) at(icount uint64) stallPoint {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := stallPoint{Icount: icount}
	if icount < r.instr {
		return p
	}
	sum := r.instr
	_, _ = logchan.WalkEvents(r.buf, r.start, func(o uint64, ev []byte, n uint64) bool {
		if n > 0 {
			if sum+n > icount {
				// The replay stopped inside this INSTRUCTION event.
				p.Offset, p.Kind = o, logchan.KindName(ev[0])
				return false
			}
			sum += n
			return true
		}
		if sum >= icount {
			p.Offset, p.Kind = o, logchan.KindName(ev[0])
			return false
		}
		return true
	})
	return p
}

// bounds returns the stream offset of the kept log's first byte and the
// INSTRUCTION sum before it (rrdump -base-offset, -base-icount).
func (r *logRing) bounds() (offset, instr uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.start, r.instr
}

// snapshot returns a copy of the kept log: whole events, no header.
func (r *logRing) snapshot() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]byte(nil), r.buf...)
}

// fedInstructions (backup) is the INSTRUCTION sum written into FIFO B.
func (c *controller) fedInstructions() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.logInstr
}

// ringAdd (backup) keeps a frame just written into FIFO B in the ring.
func (c *controller) ringAdd(off uint64, data []byte, instr uint64) {
	c.mu.Lock()
	ring := c.ring
	c.mu.Unlock()
	if ring != nil {
		ring.add(off, data, instr)
	}
}

// noteStall records a stalled replay (failover.BackupStalled) for the
// status and the log: where in the log the backup stopped and, with
// keep-stall-log, the stretch of log around that point.
func (c *controller) noteStall(a failover.BackupStalled, ring *logRing) {
	p := stallPoint{Icount: a.Icount}
	if ring != nil {
		p = ring.at(a.Icount)
	}
	text := fmt.Sprintf("replay stalled at %s; no progress for %d ms with log up to icount %d queued",
		p, a.Ticks*int64(TickInterval/time.Millisecond), a.Fed)
	c.mu.Lock()
	cfg := c.cfg
	c.mu.Unlock()
	if c.d.cfg.KeepStallLog && ring != nil {
		path := filepath.Join(filepath.Dir(ftxml.RecordFIFOPath(cfg, c.uuid)),
			fmt.Sprintf("stall-%s-%d.rrstream", c.currentRole(), time.Now().Unix()))
		off, instr := ring.bounds()
		text += fmt.Sprintf("; the log around it is kept in %s (rrdump -base-offset %d -base-icount %d -icount %d %s)",
			path, off, instr, a.Icount, path)
		// Off the driver's goroutine: up to 2 MiB to write.
		data := ring.snapshot()
		go func() {
			if err := os.WriteFile(path, data, 0o600); err != nil {
				c.log.WithError(err).Warn("keeping the log around the stall")
			}
		}()
	}
	c.mu.Lock()
	c.stall = text
	c.mu.Unlock()
	c.log.Error(text)
}

// watchUnread (backup) samples the log its QEMU has not read from FIFO B
// every status interval and hands it to the failover core (FeedUnread), for
// the stall rule. It does not use the QEMU monitor, which a replay waiting
// for log holds.
func (c *controller) watchUnread(feeder *logchan.Feeder) {
	c.whileReplaying(func() bool {
		n, err := feeder.Unread()
		if err != nil {
			return false // the feeder was closed
		}
		// Offset counts the events written, not the 4-byte version QEMU
		// read first: Written - Bytes is what QEMU read of the events,
		// give or take those 4 bytes.
		c.post(failover.FeedUnread{Bytes: uint64(n), Written: feeder.Offset() + 4})
		return true
	})
}

// destroyUntilGone (backup, HaltVM) destroys this host's domain, again
// every second while libvirt cannot (it may be restarting: a halt must
// not leave a replaying QEMU behind), until it is gone or the controller
// closed.
func (c *controller) destroyUntilGone(why string) {
	c.mu.Lock()
	done := c.done
	c.mu.Unlock()
	for {
		if c.d.destroyDomain(c.uuid, why) {
			return
		}
		select {
		case <-done:
			return
		case <-time.After(time.Second):
		}
	}
}

// peerText makes text the peer sent fit for a status line: control
// characters become spaces (no terminal escapes reach virt-ft's output) and
// it is cut to at most max bytes.
func peerText(text string, max int) string {
	b := []byte(text)
	if len(b) > max {
		b = b[:max]
	}
	for i, ch := range b {
		if ch < 0x20 || ch == 0x7f {
			b[i] = ' '
		}
	}
	return strings.ToValidUTF8(string(b), "?")
}
