package plugin

import (
	"fmt"
	"strings"
	"sync"

	"github.com/libvirt-ft/libvirt-ft/logchan"
)

// logRingBytes is how much of the recent log a controller keeps (bytes) to
// place a stalled backup's icount in the log. The window (window-bytes,
// default 256 KiB) and FIFO B (256 KiB) bound how far the stream can run
// past the point where a backup's replay stopped, so 1 MiB holds that
// point with a margin of twice that.
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
	// Then are the kinds of the events after it at the same icount, up to
	// maxStallThen of them (checkpoints, clock reads, an INTERRUPT: a
	// record turn logs several at one icount). The icount does not tell
	// at which of Kind and Then the replay waits (session 31: a stall
	// reported at CHECKPOINT_CLOCK_WARP_ACCOUNT had nine more after it).
	Then []string
	// More: events at the same icount beyond Then.
	More bool
}

// maxStallThen bounds stallPoint.Then.
const maxStallThen = 8

func (p stallPoint) String() string {
	if p.Kind == "" {
		return fmt.Sprintf("icount %d (not in the last %d bytes of log kept)", p.Icount, logRingBytes)
	}
	s := fmt.Sprintf("icount %d, next event %s at log offset %d", p.Icount, p.Kind, p.Offset)
	if len(p.Then) > 0 {
		more := ""
		if p.More {
			more = ", ..."
		}
		s += fmt.Sprintf(" (then at the same icount: %s%s; the replay waits at one of these)", strings.Join(p.Then, ", "), more)
	}
	return s
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
		if p.Kind != "" {
			// After the first: the others at the same icount, up to
			// the next INSTRUCTION event.
			switch {
			case n > 0 || ev[0] == logchan.KindInstruction:
				return false
			case len(p.Then) == maxStallThen:
				p.More = true
				return false
			}
			p.Then = append(p.Then, logchan.KindName(ev[0]))
			return true
		}
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

// cleanBye is a bye the peer sent, made fit for the failover core, the
// state detail and the logs (docs/protocol.md §6.4): Reason cut to
// maxByeReason bytes and Detail to maxByeDetail, both through
// logchan.CleanText.
// The Bye* constants pass unchanged, so comparisons with them still hold.
func cleanBye(b logchan.Bye) logchan.Bye {
	b.Reason = logchan.CleanText(b.Reason, maxByeReason)
	b.Detail = logchan.CleanText(b.Detail, maxByeDetail)
	return b
}

const (
	// maxStallText is the bytes of a backup's stall text the primary
	// keeps for virt-ft status: where the replay stopped and the events
	// at that icount, the kept log's path and rrdump command, and how its
	// QEMU spent the stall.
	maxStallText = 1536
	// maxStallReport is the bytes of a stall text the backup keeps for
	// its own log and virt-ft status: the text the primary gets
	// (maxStallText) and what a long kept-log path pushed past it.
	maxStallReport = 4096
	// maxByeReason is the bytes of a peer's bye reason kept: the
	// primary's stall text after the "backup " prefix.
	maxByeReason = len("backup ") + maxStallText
	maxByeDetail = 512 // bytes of a peer's go-live detail kept
)
