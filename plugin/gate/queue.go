package gate

import "fmt"

// DefaultLimitBytes is the default cap on the bytes the gate holds for one
// domain: 16 MiB (Config.LimitBytes, NewQueue).
const DefaultLimitBytes = 16 << 20

// Mode is what the gate does with the guest's frames.
type Mode int

// Modes. The zero value is not a mode.
const (
	// Gated: the output rule is enforced (Scales et al. 2010, section
	// 2.2). A frame is released only once the backup has acknowledged a
	// log position at or beyond the frame's tag, in the order the frames
	// were produced.
	Gated Mode = iota + 1
	// Passthrough: the primary runs alone (the backup is lost, or the gate
	// is off): every frame is released at once.
	Passthrough
	// Dropping: the backup went live, or this primary lost the split-brain
	// race: every frame is discarded, held ones included. Terminal.
	Dropping
)

func (m Mode) String() string {
	switch m {
	case Gated:
		return "gated"
	case Passthrough:
		return "passthrough"
	case Dropping:
		return "dropping"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Frame is one guest frame in the gate.
type Frame struct {
	// Data is one Ethernet frame as QEMU's filter-redirector sent it,
	// without the 4-byte length prefix. The Queue never reads or changes
	// it; it only counts len(Data) bytes.
	Data []byte
	// Pos is the frame's tag: a log position (bytes of the record log
	// stream) at or beyond the log QEMU had produced when the guest
	// emitted the frame. The frame may leave a Gated queue only once the
	// backup has acknowledged Pos.
	Pos uint64
	// Stamp is the caller's, carried untouched (the Gate puts the read
	// time there, in ns, to measure hold times).
	Stamp int64
	// Seq is the caller's, carried untouched (the Gate numbers the frames
	// it reads, 1 for the first).
	Seq uint64
}

// QueueStats is a snapshot of a Queue's counters. Frames are counted in
// frames, sizes in bytes of frame data (length prefixes excluded).
type QueueStats struct {
	// Mode is the current mode.
	Mode Mode
	// Acked is the highest log position acknowledged while Gated (bytes).
	Acked uint64
	// HeldFrames and HeldBytes: frames waiting for an acknowledgement.
	HeldFrames, HeldBytes int
	// OutFrames and OutBytes: frames released but not yet reported
	// written (Written). They count against the limit too.
	OutFrames, OutBytes int
	// MaxHeldBytes is the high-water mark of HeldBytes; MaxBytes that of
	// HeldBytes+OutBytes, the figure the limit applies to.
	MaxHeldBytes, MaxBytes int
	// Released and ReleasedBytes: frames that left the queue for the
	// network (returned by Hold, Ack or Unprotect).
	Released, ReleasedBytes uint64
	// DroppedOverCap and DroppedOverCapBytes: new frames refused because
	// HeldBytes+OutBytes would have exceeded the limit.
	DroppedOverCap, DroppedOverCapBytes uint64
	// DroppedByDrop and DroppedByDropBytes: frames discarded by Drop
	// (held or released-but-unwritten at that moment) and every frame
	// offered to Hold afterwards.
	DroppedByDrop, DroppedByDropBytes uint64
	// Forgotten is the highest position passed to Forget (on the backup:
	// frames the primary has sent, see Forget).
	Forgotten uint64
	// ForgotFrames and ForgotBytes: frames discarded because their tag
	// was at or below Forgotten (held ones, and later ones offered to
	// Hold).
	ForgotFrames, ForgotBytes uint64
}

// Queue is the pure core of the output gate: no goroutine, clock or socket.
// It is not safe for concurrent use; Gate wraps it with a mutex.
//
// A frame moves through two stages: held (waiting for an acknowledgement
// that covers its tag) and out (released, handed to the writer, until the
// caller reports it Written). The limit applies to both stages together,
// so that neither a silent backup nor a slow consumer of the released
// frames can grow memory without bound.
//
// Rules, from the output rule of Scales et al. 2010 ("The Design of a
// Practical System for Fault-Tolerant Virtual Machines"), section 2.2:
//
//   - Gated: a frame is released only when Acked >= its Pos, and frames are
//     released strictly in the order Hold received them: a frame with a
//     small tag behind one with a larger tag waits for it.
//   - Acknowledgements are cumulative and monotonic: a position at or below
//     Acked changes nothing.
//   - Unprotect (backup lost, this primary runs alone, section 2.3 of the
//     paper): everything held is released at once, in order; later frames
//     pass straight through.
//   - Drop (the backup went live, or this primary lost the split-brain
//     race): everything held or out is discarded, and every later frame
//     too. Unprotect after Drop changes nothing.
//   - Over the limit, a new frame is refused and counted, like a full NIC
//     queue; the caller must never block the guest instead.
type Queue struct {
	limit       int
	evictOldest bool
	st          QueueStats
	held        fifo
}

// SetEvictOldest chooses what happens over the limit while Gated: with
// true, the oldest held frames are discarded (counted in DroppedOverCap)
// to make room for the new one; with false (the default, the primary's
// rule), the new frame is. The backup's gate evicts the oldest: what it
// must keep for go-live is the newest output.
func (q *Queue) SetEvictOldest(v bool) { q.evictOldest = v }

// NewQueue returns an empty queue that holds at most limitBytes bytes of
// frame data (held plus out); limitBytes <= 0 means DefaultLimitBytes. It
// starts Gated, or Passthrough when gated is false (the gate is off).
func NewQueue(limitBytes int, gated bool) *Queue {
	if limitBytes <= 0 {
		limitBytes = DefaultLimitBytes
	}
	q := &Queue{limit: limitBytes}
	q.st.Mode = Gated
	if !gated {
		q.st.Mode = Passthrough
	}
	return q
}

// Limit is the cap on HeldBytes+OutBytes, in bytes.
func (q *Queue) Limit() int { return q.limit }

// Mode is the current mode.
func (q *Queue) Mode() Mode { return q.st.Mode }

// Stats returns a snapshot of the counters.
func (q *Queue) Stats() QueueStats { return q.st }

// Hold takes in one frame read from the guest and returns the frames that
// leave the queue now, in order (nil if none): in Passthrough, f itself; in
// Gated, f itself if nothing is held and Acked >= f.Pos already, else
// nothing (f waits). In Dropping, f is discarded (DroppedByDrop). A frame
// that would take HeldBytes+OutBytes over the limit is discarded and counted
// in DroppedOverCap. Every frame returned counts in OutBytes until Written.
func (q *Queue) Hold(f Frame) []Frame {
	n := len(f.Data)
	if q.st.Mode == Dropping {
		q.st.DroppedByDrop++
		q.st.DroppedByDropBytes += uint64(n)
		return nil
	}
	if q.st.Mode == Gated && q.st.Forgotten > 0 && f.Pos <= q.st.Forgotten {
		q.st.ForgotFrames++
		q.st.ForgotBytes += uint64(n)
		return nil
	}
	for q.evictOldest && q.st.Mode == Gated && q.held.len() > 0 && q.st.HeldBytes+q.st.OutBytes+n > q.limit {
		old := q.held.pop()
		q.st.HeldFrames--
		q.st.HeldBytes -= len(old.Data)
		q.st.DroppedOverCap++
		q.st.DroppedOverCapBytes += uint64(len(old.Data))
	}
	if q.st.HeldBytes+q.st.OutBytes+n > q.limit {
		q.st.DroppedOverCap++
		q.st.DroppedOverCapBytes += uint64(n)
		return nil
	}
	if q.st.Mode == Passthrough || (q.held.len() == 0 && f.Pos <= q.st.Acked) {
		q.out(n)
		return []Frame{f}
	}
	q.held.push(f)
	q.st.HeldFrames++
	q.st.HeldBytes += n
	q.st.MaxHeldBytes = max(q.st.MaxHeldBytes, q.st.HeldBytes)
	q.st.MaxBytes = max(q.st.MaxBytes, q.st.HeldBytes+q.st.OutBytes)
	return nil
}

// Ack records that the backup has received and acknowledged the log up to
// pos (bytes) and returns the frames that may now leave, in order: the
// longest run at the head of the queue whose tags are all <= pos. Only in
// Gated; elsewhere, and for pos <= Acked, it does nothing and returns nil.
func (q *Queue) Ack(pos uint64) []Frame {
	if q.st.Mode != Gated || pos <= q.st.Acked {
		return nil
	}
	q.st.Acked = pos
	var rel []Frame
	for q.held.len() > 0 && q.held.front().Pos <= pos {
		rel = append(rel, q.pop())
	}
	return rel
}

// Forget discards, without releasing them, the held frames at the head of
// the queue whose tags are <= pos, and every later frame offered to Hold
// with a tag <= pos, while Gated. Forgets are cumulative: a pos at or below
// Forgotten changes nothing. It returns the number of held frames so
// discarded.
//
// The backup uses it: its replayed guest transmits the primary's frames
// again, in the same order; the backup's gate tags them with their sequence
// number (1 for the first) and holds them, and Forget(n) drops those the
// primary reports sent (its frames 1..n). At go-live, Unprotect sends the
// rest: frames the primary's gate still held when it failed, which
// otherwise only the guest's TCP retransmission would recover (Scales et
// al. 2010, section 2.2: the network tolerates a duplicate or lost packet
// at failover; sending them makes the loss the exception).
func (q *Queue) Forget(pos uint64) int {
	if q.st.Mode != Gated || pos <= q.st.Forgotten {
		return 0
	}
	q.st.Forgotten = pos
	n := 0
	for q.held.len() > 0 && q.held.front().Pos <= pos {
		f := q.held.pop()
		q.st.HeldFrames--
		q.st.HeldBytes -= len(f.Data)
		q.st.ForgotFrames++
		q.st.ForgotBytes += uint64(len(f.Data))
		n++
	}
	return n
}

// Unprotect switches a Gated queue to Passthrough (the backup is lost and
// this primary runs alone) and returns every held frame, in order. In
// Passthrough or Dropping it does nothing and returns nil.
func (q *Queue) Unprotect() []Frame {
	if q.st.Mode != Gated {
		return nil
	}
	q.st.Mode = Passthrough
	var rel []Frame
	for q.held.len() > 0 {
		rel = append(rel, q.pop())
	}
	return rel
}

// Drop switches to Dropping for good (the backup went live, or this
// primary lost the split-brain race) and discards every held frame and
// forgets every out frame (the caller must discard those itself). It
// returns the number of frames so discarded, counted in DroppedByDrop; 0
// if already Dropping.
func (q *Queue) Drop() int {
	if q.st.Mode == Dropping {
		return 0
	}
	q.st.Mode = Dropping
	n := q.st.HeldFrames + q.st.OutFrames
	q.st.DroppedByDrop += uint64(n)
	q.st.DroppedByDropBytes += uint64(q.st.HeldBytes + q.st.OutBytes)
	q.held.reset()
	q.st.HeldFrames, q.st.HeldBytes = 0, 0
	q.st.OutFrames, q.st.OutBytes = 0, 0
	return n
}

// Written reports that one frame of n bytes returned earlier by Hold, Ack
// or Unprotect has been written (or has otherwise left the caller), which
// frees its room under the limit. After Drop it does nothing.
func (q *Queue) Written(n int) {
	if q.st.Mode == Dropping || q.st.OutFrames == 0 {
		return
	}
	q.st.OutFrames--
	q.st.OutBytes = max(q.st.OutBytes-n, 0)
}

func (q *Queue) pop() Frame {
	f := q.held.pop()
	n := len(f.Data)
	q.st.HeldFrames--
	q.st.HeldBytes -= n
	q.out(n)
	return f
}

func (q *Queue) out(n int) {
	q.st.Released++
	q.st.ReleasedBytes += uint64(n)
	q.st.OutFrames++
	q.st.OutBytes += n
	q.st.MaxBytes = max(q.st.MaxBytes, q.st.HeldBytes+q.st.OutBytes)
}

// fifo is a queue of frames: a slice with a moving head, compacted when the
// dead prefix is at least half of it.
type fifo struct {
	buf  []Frame
	head int
}

func (f *fifo) len() int { return len(f.buf) - f.head }

func (f *fifo) front() *Frame { return &f.buf[f.head] }

func (f *fifo) push(x Frame) {
	if f.head > 0 && len(f.buf) == cap(f.buf) && f.head >= len(f.buf)/2 {
		n := copy(f.buf, f.buf[f.head:])
		clear(f.buf[n:])
		f.buf, f.head = f.buf[:n], 0
	}
	f.buf = append(f.buf, x)
}

// pushFront puts xs back at the head, before every frame queued now.
func (f *fifo) pushFront(xs []Frame) {
	if len(xs) == 0 {
		return
	}
	if f.head >= len(xs) {
		f.head -= len(xs)
		copy(f.buf[f.head:], xs)
		return
	}
	nb := make([]Frame, 0, len(xs)+f.len())
	nb = append(nb, xs...)
	nb = append(nb, f.buf[f.head:]...)
	f.buf, f.head = nb, 0
}

func (f *fifo) pop() Frame {
	x := f.buf[f.head]
	f.buf[f.head] = Frame{}
	f.head++
	if f.head == len(f.buf) {
		f.buf, f.head = f.buf[:0], 0
	}
	return x
}

func (f *fifo) reset() {
	clear(f.buf)
	f.buf, f.head = f.buf[:0], 0
}
