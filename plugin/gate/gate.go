package gate

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

var (
	// ErrBadLimit is returned by New for a negative Config.LimitBytes.
	ErrBadLimit = errors.New("gate: LimitBytes must be >= 0 (0 means the default, 16 MiB)")
	// ErrNoPosition is returned by New when Config.Enabled is set and
	// Config.Position is nil: frames could not be tagged.
	ErrNoPosition = errors.New("gate: Position is required when the gate is enabled")
	// ErrServing is returned by Serve while another Serve of the same
	// Gate is running.
	ErrServing = errors.New("gate: already serving")
	// ErrDetached is Serve's result when Detach ended it: the connections
	// are whole (no partial frame read or written) and stay open.
	ErrDetached = errors.New("gate: detached for a handover")
)

// Config configures a Gate.
type Config struct {
	// LimitBytes caps the frame data the gate keeps in memory: frames
	// waiting for an acknowledgement plus frames released but not yet
	// written to IN, in bytes. Over it a new frame is dropped and counted
	// (Stats.DroppedOverCap), like a full NIC queue: the guest is never
	// blocked. 0 means DefaultLimitBytes (16 MiB); negative is an error.
	LimitBytes int
	// Position returns the log position to tag a frame with, in bytes of
	// the record log stream: an upper bound of the log QEMU had produced
	// when it emitted the frame. Serve calls it once per frame, right after
	// the frame's last byte was read from OUT, from Serve's goroutine,
	// with no lock of the Gate held; it must not block (the guest waits
	// while OUT is not read). Required when Enabled; may be nil
	// otherwise (frames are then tagged 0).
	Position func() uint64
	// Enabled starts the gate in Gated mode; when false it starts in
	// Passthrough (the domain is not protected, or the output rule is
	// switched off).
	Enabled bool
	// Log receives mode changes and the start and end of drops over the
	// limit. nil logs to logrus's standard logger.
	Log *logrus.Entry
	// EvictOldest: over the limit, discard the oldest held frames rather
	// than the new one (Queue.SetEvictOldest; the backup's gates).
	EvictOldest bool
	// FramesBefore is the number of frames an earlier process's gate on
	// the same connections already read and finished (a planned restart,
	// Detach): frame numbers (Stats.DoneFrames, the backup's forget
	// positions) go on from it. 0 for a new connection.
	FramesBefore uint64
	// DigestBefore is the running digest of those FramesBefore frames
	// (Stats.Digest; NextDigest), handed over with them.
	DigestBefore uint64
	// Verify (the backup's gates) compares the replayed frames' digests
	// with the primary's checkpoints given to Verify; OnMismatch is called
	// once, at the first disagreement, from the goroutine that found it
	// (Serve's or Verify's caller), with no lock of the Gate held.
	Verify     bool
	OnMismatch func(Mismatch)
}

// Stats is a snapshot of a Gate. Frame counts are in frames, sizes in bytes
// of frame data (length prefixes excluded), times in microseconds.
type Stats struct {
	QueueStats
	// ReadFrames and ReadBytes: frames read from OUT (all Serve calls).
	ReadFrames, ReadBytes uint64
	// WrittenFrames and WrittenBytes: frames written whole to IN.
	WrittenFrames, WrittenBytes uint64
	// DoneFrames: frames 1..DoneFrames of those read from OUT (numbered
	// from 1 across all Serve calls) are all done here: written whole to
	// IN, or dropped over the limit. The primary reports it to the backup
	// (logchan.Heartbeat.Released).
	DoneFrames uint64
	// Digest is the running digest of frames 1..ReadFrames (NextDigest).
	Digest uint64
	// VerifyChecked and VerifySkipped (Config.Verify): the primary's
	// checkpoints compared, and those skipped (older than VerifyHistory
	// frames, or read before this process). Mismatch is the first
	// disagreement, nil while there is none.
	VerifyChecked, VerifySkipped uint64
	Mismatch                     *Mismatch
	// HoldCount, HoldTotalMicros and HoldMaxMicros: the time frames
	// spent in the gate, from the end of their read from OUT to their
	// release (the ack that covered them, Unprotect, or at once), over the
	// frames released while Gated. Frames that passed through in
	// Passthrough are not counted.
	HoldCount                      uint64
	HoldTotalMicros, HoldMaxMicros int64
	// HoldBuckets[i] counts the frames of HoldCount held at most
	// HoldBounds[i] (cumulative, a Prometheus histogram's buckets).
	HoldBuckets []uint64
	// Serving is set while Serve runs.
	Serving bool
}

// HoldBounds are the upper bounds of Stats.HoldBuckets: how long frames
// wait for the backup's acknowledgement, from 100 µs to 5 s.
var HoldBounds = [...]time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 5 * time.Second,
}

// Gate is the output gate of one protected domain's network interface on
// the primary: a Queue (the rules) driven by a reader of QEMU's OUT socket
// and one writer to its IN socket (see the package documentation).
//
// Ack, Unprotect, Drop, Mode and Stats may be called from any goroutine,
// concurrently with Serve, before it and after it.
type Gate struct {
	log      *logrus.Entry
	position func() uint64
	t0       time.Time

	mu      sync.Mutex
	cond    *sync.Cond // writer wake-ups, Drop and Serve waiting for a write to end
	q       *Queue
	pending fifo // released, not yet written to IN, in order
	st      ioStats

	serving    bool
	stop       bool   // the current Serve is ending: the writer must not start a write
	writing    bool   // the writer is inside in.Write, outside mu
	abortWrite func() // makes the writer's in-flight Write return; nil if in cannot
	abortRead  func() // makes Serve's blocked Read of OUT return; nil if out cannot
	err        error  // first error of the current Serve
	capDrops   uint64 // frames dropped over the cap in the current burst
	// detach: Detach asked the current Serve to end at a frame boundary,
	// leaving the connections open; leftover is what it had read of OUT
	// beyond the last whole frame.
	detach   bool
	leftover []byte

	verify     *verifier // nil unless Config.Verify
	onMismatch func(Mismatch)

	afterHold func() // tests: called by Serve after each frame went through the queue
}

type ioStats struct {
	readFrames, readBytes       uint64
	writtenFrames, writtenBytes uint64
	doneSeq                     uint64 // see Stats.DoneFrames
	digest                      uint64 // see Stats.Digest
	holdCount                   uint64
	holdBuckets                 [len(HoldBounds)]uint64 // not cumulative
	holdTotal, holdMax          int64                   // ns
}

// New returns a Gate in Gated mode (Passthrough if !cfg.Enabled). Errors:
// ErrBadLimit, ErrNoPosition.
func New(cfg Config) (*Gate, error) {
	if cfg.LimitBytes < 0 {
		return nil, ErrBadLimit
	}
	if cfg.Enabled && cfg.Position == nil {
		return nil, ErrNoPosition
	}
	log := cfg.Log
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	g := &Gate{
		log:      log,
		position: cfg.Position,
		t0:       time.Now(),
		q:        NewQueue(cfg.LimitBytes, cfg.Enabled),
	}
	g.q.SetEvictOldest(cfg.EvictOldest)
	g.st.readFrames, g.st.doneSeq = cfg.FramesBefore, cfg.FramesBefore
	g.st.digest = cfg.DigestBefore
	if cfg.Verify {
		g.verify = &verifier{base: cfg.FramesBefore}
		g.onMismatch = cfg.OnMismatch
	}
	g.cond = sync.NewCond(&g.mu)
	return g, nil
}

// Mode is the current mode.
func (g *Gate) Mode() Mode {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.q.Mode()
}

// Stats returns a snapshot of the counters.
func (g *Gate) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := Stats{
		QueueStats:      g.q.Stats(),
		ReadFrames:      g.st.readFrames,
		ReadBytes:       g.st.readBytes,
		WrittenFrames:   g.st.writtenFrames,
		WrittenBytes:    g.st.writtenBytes,
		DoneFrames:      g.st.doneSeq,
		Digest:          g.st.digest,
		HoldCount:       g.st.holdCount,
		HoldTotalMicros: g.st.holdTotal / 1e3,
		HoldMaxMicros:   g.st.holdMax / 1e3,
		Serving:         g.serving,
	}
	st.HoldBuckets = make([]uint64, len(HoldBounds))
	var cum uint64
	for i, n := range g.st.holdBuckets {
		cum += n
		st.HoldBuckets[i] = cum
	}
	if v := g.verify; v != nil {
		st.VerifyChecked, st.VerifySkipped = v.checked, v.skipped
		if v.mismatch != nil {
			m := *v.mismatch
			st.Mismatch = &m
		}
	}
	return st
}

// Checkpoint is the running digest of the frames read so far, for the
// primary's heartbeats (logchan.FrameDigests).
func (g *Gate) Checkpoint() Checkpoint {
	g.mu.Lock()
	defer g.mu.Unlock()
	return Checkpoint{Frames: g.st.readFrames, Digest: g.st.digest}
}

// Verify compares the primary's checkpoint c with this gate's frames: now
// if the replay has passed c.Frames, else when it gets there (Serve). A
// disagreement is reported once, to Config.OnMismatch. No-op without
// Config.Verify, and after the first mismatch.
func (g *Gate) Verify(c Checkpoint) {
	g.mu.Lock()
	if g.verify == nil {
		g.mu.Unlock()
		return
	}
	m := g.verify.peer(c, g.st.readFrames)
	g.mu.Unlock()
	g.mismatched(m)
}

// Settled reports, with Config.Verify, whether every frame digest of the
// primary given to Verify was compared and found equal (none waits for the
// replay; the latest matched). Without Config.Verify: true.
func (g *Gate) Settled() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.verify == nil || g.verify.settled()
}

// StopVerify ends the comparisons of Config.Verify for good: the replay
// reached the end of the log, and later frames are the live guest's. A
// mismatch found before stays in Stats.
func (g *Gate) StopVerify() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.verify != nil {
		g.verify.stop()
	}
}

// mismatched reports a new mismatch m (nil: none). Called without mu.
func (g *Gate) mismatched(m *Mismatch) {
	if m == nil {
		return
	}
	g.log.Errorf("output gate: %v", m)
	if g.onMismatch != nil {
		g.onMismatch(*m)
	}
}

// Ack records that the backup has acknowledged the log up to pos (bytes of
// the record log stream) and hands the frames it releases to the writer.
// Acknowledgements are cumulative: a pos at or below an earlier one is
// ignored. No-op in Passthrough and Dropping (output rule, Scales et al.
// 2010, section 2.2).
func (g *Gate) Ack(pos uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if rel := g.q.Ack(pos); len(rel) > 0 {
		g.release(rel, g.now(), true)
	}
}

// Forget discards the held frames tagged <= pos, and later ones so tagged,
// without releasing them (see Queue.Forget: the backup's gate forgets the
// frames the primary reports sent). No-op in Passthrough and Dropping.
func (g *Gate) Forget(pos uint64) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.q.Forget(pos)
}

// Unprotect switches from Gated to Passthrough: the backup is lost and this
// primary runs alone (Scales et al. 2010, section 2.3). Every held frame is
// handed to the writer at once, in order, and every later frame passes
// straight through. It returns the number of frames so released. No-op
// (returns 0) in Passthrough and Dropping: Unprotect after Drop stays
// Dropping.
func (g *Gate) Unprotect() int {
	g.mu.Lock()
	was := g.q.Mode()
	rel := g.q.Unprotect()
	g.release(rel, g.now(), true)
	g.mu.Unlock()
	if was == Gated {
		g.log.Infof("output gate: unprotected (backup lost, or the backup went live): releasing %d held frames and passing output through", len(rel))
	}
	return len(rel)
}

// Drop switches to Dropping for good: the backup went live, or this primary
// lost the split-brain race (Scales et al. 2010, section 2.3: only one VM
// may go live), and nothing this primary's guest produced may reach the
// network any more. Every held frame, and every released frame
// not yet written to IN, is discarded; every later frame is read from OUT
// and discarded. It returns the number of frames so discarded (0 if
// already Dropping).
//
// Guarantee: once Drop has returned, the Gate writes nothing more to IN.
// If the writer is inside a Write to IN when Drop is called, Drop makes
// that Write fail by setting a write deadline in the past on IN (when IN
// has SetWriteDeadline: net.Conn, *os.File on a pipe or socket) and waits
// for it to return; the bytes of that write already taken by the kernel
// stay written, so IN may end inside a frame, which QEMU never forwards
// (net/net.c net_fill_rstate forwards whole frames only). If IN has no
// SetWriteDeadline, Drop waits for the Write to end by itself: pass a
// net.Conn as IN so that Drop never waits on a stuck QEMU. Frames whose
// Write completed before Drop may still sit in IN's socket buffer, and QEMU
// may forward them after Drop returns: each had been released by an
// acknowledgement covering it, so the output rule held for it.
func (g *Gate) Drop() int {
	g.mu.Lock()
	was := g.q.Mode()
	n := g.q.Drop()
	g.pending.reset()
	if g.writing && g.abortWrite != nil {
		g.abortWrite()
	}
	for g.writing {
		g.cond.Wait()
	}
	g.cond.Broadcast()
	g.mu.Unlock()
	if was != Dropping {
		g.log.Infof("output gate: dropping all output from now on (%d frames discarded)", n)
	}
	return n
}

// Serve reads frames from out (QEMU's OUT socket: every frame the guest
// transmits) until it ends, tags each with Config.Position, passes it
// through the gate, and writes the frames the gate releases to in (QEMU's
// IN socket: frames for the network), in order, from one writer goroutine.
// Framing on both is QEMU's (see ReadFrame). out is read promptly whatever
// happens to in and whatever the mode: QEMU blocks the guest while OUT is
// not read (qemu_chr_fe_write_all).
//
// Serve returns when, first of:
//   - out ends cleanly (EOF at a frame boundary): nil;
//   - out fails, or carries a malformed frame (error wrapping ErrMalformed,
//     naming the length and MaxFrameLen) or a truncated one (wrapping
//     io.ErrUnexpectedEOF): that error;
//   - a Write to in fails outside Drop: the error, "gate: writing to IN:
//     ..." (in Dropping, write errors are ignored).
//
// Before returning it stops the writer and waits for it, and it waits for
// its own read of out: so no goroutine of Serve outlives it. To end a
// blocked Write to in it sets a past write deadline on in (if in has
// SetWriteDeadline; otherwise it waits for the Write to end); to end a
// blocked Read of out after in failed it sets a past read deadline on out,
// or, if out has none, closes it if it is an io.Closer. Pass net.Conns
// (e.g. from Listen) and Serve never waits on a stuck peer.
//
// Frames still held, or released but not yet written, stay in the Gate: a
// later Serve (on new connections) writes them first. When Serve returns,
// in and out may hold deadlines and a partly written frame: close them.
// With OUT closed, QEMU drops the guest's frames (see the package
// documentation, Limits); with OUT open and unread, it would block the
// guest.
func (g *Gate) Serve(out io.Reader, in io.Writer) error {
	g.mu.Lock()
	if g.serving {
		g.mu.Unlock()
		return ErrServing
	}
	g.serving, g.stop, g.err = true, false, nil
	g.abortWrite, g.abortRead = writeAborter(in), readAborter(out)
	g.mu.Unlock()

	done := make(chan struct{})
	go func() {
		defer close(done)
		g.writeLoop(in)
	}()

	br := bufio.NewReaderSize(out, 256<<10)
	var rerr error
	for {
		data, err := peekFrame(br)
		if err != nil {
			rerr = err
			break
		}
		var pos uint64
		if g.position != nil {
			pos = g.position()
		}
		g.mismatched(g.hold(data, pos))
		if g.afterHold != nil {
			g.afterHold()
		}
	}

	g.mu.Lock()
	detach := g.detach
	if detach {
		// Ended by Detach: nothing of a frame was consumed; what is
		// buffered goes to the next process with the connections.
		b, _ := br.Peek(br.Buffered())
		g.leftover = append([]byte(nil), b...)
	} else if g.err == nil && rerr != io.EOF {
		g.err = rerr
	}
	g.stop = true
	if g.writing && g.abortWrite != nil && !detach {
		g.abortWrite()
	}
	g.cond.Broadcast()
	g.mu.Unlock()
	<-done

	g.mu.Lock()
	defer g.mu.Unlock()
	err := g.err
	if detach {
		err = ErrDetached
	}
	g.serving, g.err = false, nil
	g.abortWrite, g.abortRead = nil, nil
	g.cond.Broadcast() // Detach waits for serving to end
	if g.capDrops > 0 {
		g.log.Warnf("output gate: %d frames dropped over the %d-byte limit", g.capDrops, g.q.Limit())
		g.capDrops = 0
	}
	return err
}

// hold passes one frame read from OUT through the queue; with
// Config.Verify it returns a new mismatch of the frames' digests.
func (g *Gate) hold(data []byte, pos uint64) (m *Mismatch) {
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.st.readFrames++
	g.st.readBytes += uint64(len(data))
	g.st.digest = NextDigest(g.st.digest, data)
	if g.verify != nil {
		m = g.verify.local(g.st.readFrames, g.st.digest)
	}
	mode := g.q.Mode()
	over := g.q.st.DroppedOverCap
	rel := g.q.Hold(Frame{Data: data, Pos: pos, Stamp: now, Seq: g.st.readFrames})
	if g.q.st.DroppedOverCap != over {
		if g.q.st.HeldFrames == 0 && g.pending.len() == 0 && !g.writing {
			// Nothing before it is outstanding: it is done too.
			g.st.doneSeq = g.st.readFrames
		}
		if g.capDrops == 0 {
			g.log.Warnf("output gate: full (%d bytes held, %d unwritten, limit %d): dropping guest frames", g.q.st.HeldBytes, g.q.st.OutBytes, g.q.Limit())
		}
		g.capDrops++
		return m
	}
	if g.capDrops > 0 && mode != Dropping {
		g.log.Warnf("output gate: accepting frames again after dropping %d over the %d-byte limit", g.capDrops, g.q.Limit())
		g.capDrops = 0
	}
	g.release(rel, now, mode == Gated)
	return m
}

// release hands rel to the writer; timed frames count in the hold time.
// Called with mu held.
func (g *Gate) release(rel []Frame, now int64, timed bool) {
	if len(rel) == 0 {
		return
	}
	for _, f := range rel {
		g.pending.push(f)
		if timed {
			d := max(now-f.Stamp, 0)
			g.st.holdCount++
			for i, b := range HoldBounds {
				if time.Duration(d) <= b {
					g.st.holdBuckets[i]++
					break
				}
			}
			g.st.holdTotal += d
			g.st.holdMax = max(g.st.holdMax, d)
		}
	}
	g.cond.Broadcast()
}

// maxBatch bounds the bytes the writer puts in one Write (at least one
// frame is always taken).
const maxBatch = 256 << 10

// writeLoop is Serve's writer: it writes released frames to in, in order,
// in batches, until Serve stops it or a write fails. The mode and the stop
// flag are checked under mu right before each Write, which is the only
// window Drop and Serve's end have to abort (see Drop).
func (g *Gate) writeLoop(in io.Writer) {
	var (
		buf   []byte
		batch []Frame
	)
	g.mu.Lock()
	defer g.mu.Unlock()
	for {
		for !g.stop && (g.pending.len() == 0 || g.q.Mode() == Dropping) {
			g.cond.Wait()
		}
		if g.stop {
			return
		}
		buf, batch = buf[:0], batch[:0]
		for g.pending.len() > 0 && (len(batch) == 0 || len(buf)+FrameHeaderLen+len(g.pending.front().Data) <= maxBatch) {
			f := g.pending.pop()
			batch = append(batch, f)
			buf = appendFrame(buf, f.Data)
		}

		g.writing = true
		g.mu.Unlock()
		n, err := in.Write(buf)
		g.mu.Lock()
		g.writing = false
		g.cond.Broadcast()

		if err == nil && n < len(buf) {
			err = io.ErrShortWrite
		}
		dropping := g.q.Mode() == Dropping
		off, i := 0, 0
		for ; i < len(batch); i++ {
			end := off + FrameHeaderLen + len(batch[i].Data)
			if end > n {
				break
			}
			off = end
			g.q.Written(len(batch[i].Data))
			g.st.doneSeq = max(g.st.doneSeq, batch[i].Seq)
			g.st.writtenFrames++
			g.st.writtenBytes += uint64(len(batch[i].Data))
		}
		rest := batch[i:]
		if err != nil && !dropping {
			// Not written (or cut short): they go back, first in line,
			// for a later Serve.
			g.pending.pushFront(rest)
			if !g.stop {
				g.err = fmt.Errorf("gate: writing to IN: %w", err)
				if g.abortRead != nil {
					g.abortRead()
				}
			}
			clear(batch)
			return
		}
		clear(batch)
	}
}

func (g *Gate) now() int64 { return int64(time.Since(g.t0)) }

// aLongTimeAgo is a deadline in the past: it makes a pending I/O return.
var aLongTimeAgo = time.Unix(1, 0)

func writeAborter(w io.Writer) func() {
	if d, ok := w.(interface{ SetWriteDeadline(time.Time) error }); ok {
		return func() { _ = d.SetWriteDeadline(aLongTimeAgo) }
	}
	return nil
}

func readAborter(r io.Reader) func() {
	d, _ := r.(interface{ SetReadDeadline(time.Time) error })
	c, _ := r.(io.Closer)
	if d == nil && c == nil {
		return nil
	}
	return func() {
		if d != nil && d.SetReadDeadline(aLongTimeAgo) == nil {
			return
		}
		if c != nil {
			_ = c.Close()
		}
	}
}

// peekFrame reads one frame from br without consuming any of it until it
// is whole: a read error (a deadline set by Detach) leaves every byte of an
// incomplete frame buffered in br. br's size must exceed
// FrameHeaderLen+MaxFrameLen.
func peekFrame(br *bufio.Reader) ([]byte, error) {
	h, err := br.Peek(FrameHeaderLen)
	if err != nil {
		if err == io.EOF && len(h) > 0 {
			return nil, fmt.Errorf("gate: truncated frame: stream ended after %d of the %d bytes of a length prefix: %w", len(h), FrameHeaderLen, io.ErrUnexpectedEOF)
		}
		if err == io.EOF {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("gate: reading frame: %w", err)
	}
	n := int(binary.BigEndian.Uint32(h))
	if err := checkLen(uint64(n)); err != nil {
		return nil, err
	}
	f, err := br.Peek(FrameHeaderLen + n)
	if err != nil {
		if err == io.EOF {
			return nil, fmt.Errorf("gate: truncated frame: stream ended after %d of its %d bytes: %w", len(f)-FrameHeaderLen, n, io.ErrUnexpectedEOF)
		}
		return nil, fmt.Errorf("gate: reading frame: %w", err)
	}
	data := append([]byte(nil), f[FrameHeaderLen:]...)
	_, _ = br.Discard(FrameHeaderLen + n)
	return data, nil
}

// Detach ends the current Serve at a frame boundary and leaves its
// connections open, for a planned restart that hands them to the next
// process (docs/architecture.md §6). A write to IN in progress is let
// finish (up to timeout, then aborted, which may cut a frame: an error).
// It returns the bytes read from OUT beyond the last whole frame (the next
// process reads them first) and the frames not yet written: the held ones
// and the released ones, in order (the caller decides whether a handover
// may carry them). Errors: not serving; the write did not finish in time.
func (g *Gate) Detach(timeout time.Duration) (leftover []byte, unwritten int, err error) {
	g.mu.Lock()
	if !g.serving || g.abortRead == nil {
		g.mu.Unlock()
		return nil, 0, errors.New("gate: detach: not serving a connection with read deadlines")
	}
	g.detach = true
	g.abortRead()
	// Serve's end waits for the writer; the writer's Write to IN may be
	// slow: bound it.
	aborted := false
	t := time.AfterFunc(timeout, func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.serving && g.writing && g.abortWrite != nil {
			aborted = true
			g.abortWrite()
		}
	})
	defer t.Stop()
	for g.serving {
		g.cond.Wait()
	}
	leftover, g.leftover, g.detach = g.leftover, nil, false
	unwritten = g.q.Stats().HeldFrames + g.pending.len()
	g.mu.Unlock()
	if aborted {
		return nil, unwritten, errors.New("gate: detach: a write to IN did not finish in time; IN may end inside a frame")
	}
	return leftover, unwritten, nil
}
