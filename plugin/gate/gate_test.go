package gate

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/sirupsen/logrus"
)

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

// tagger returns a Position func giving the tags in order, one per frame,
// and then the last one again.
func tagger(tags ...uint64) func() uint64 {
	var i atomic.Int64
	return func() uint64 {
		n := int(i.Add(1)) - 1
		return tags[min(n, len(tags)-1)]
	}
}

// rig is a Gate served over two net.Pipes: the test plays QEMU on qOut
// (frames from the guest) and qIn (frames for the network).
type rig struct {
	t         *testing.T
	g         *Gate
	qOut, gIn net.Conn // QEMU's end of OUT; the Gate's end of IN
	qIn       net.Conn // QEMU's end of IN
	gOut      net.Conn // the Gate's end of OUT
	held      chan struct{}
	served    chan error
}

func newRig(t *testing.T, cfg Config) *rig {
	t.Helper()
	cfg.Log = quietLog()
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, g: g, held: make(chan struct{}, 1000), served: make(chan error, 1)}
	g.afterHold = func() { r.held <- struct{}{} }
	qOut, gOut := net.Pipe()
	gIn, qIn := net.Pipe()
	r.qOut, r.gIn, r.qIn, r.gOut = qOut, gIn, qIn, gOut
	go func() { r.served <- g.Serve(gOut, gIn) }()
	t.Cleanup(func() { qOut.Close(); gOut.Close(); gIn.Close(); qIn.Close() })
	return r
}

// send writes one frame as QEMU would and waits until the Gate has passed
// it through its queue.
func (r *rig) send(data []byte) {
	r.t.Helper()
	if err := WriteFrame(r.qOut, data); err != nil {
		r.t.Fatal(err)
	}
	<-r.held
}

// recv reads one frame from IN.
func (r *rig) recv() []byte {
	r.t.Helper()
	f, err := ReadFrame(r.qIn)
	if err != nil {
		r.t.Fatal(err)
	}
	return f
}

// end closes OUT as QEMU would and returns Serve's result.
func (r *rig) end() error {
	r.qOut.Close()
	return <-r.served
}

// frame returns a frame of n bytes (n >= 4) that starts with i.
func frame(i, n int) []byte {
	b := make([]byte, n)
	binary.BigEndian.PutUint32(b, uint32(i))
	for j := 4; j < n; j++ {
		b[j] = byte(i + j)
	}
	return b
}

func index(f []byte) int { return int(binary.BigEndian.Uint32(f)) }

func TestNew(t *testing.T) {
	if _, err := New(Config{LimitBytes: -1, Enabled: true, Position: func() uint64 { return 0 }}); !errors.Is(err, ErrBadLimit) {
		t.Errorf("negative limit: %v", err)
	}
	if _, err := New(Config{Enabled: true}); !errors.Is(err, ErrNoPosition) {
		t.Errorf("no Position: %v", err)
	}
	g, err := New(Config{})
	if err != nil || g.Mode() != Passthrough {
		t.Fatalf("disabled gate: %v, %v", g, err)
	}
	g, err = New(Config{Enabled: true, Position: func() uint64 { return 0 }})
	if err != nil || g.Mode() != Gated || g.Stats().QueueStats.Mode != Gated {
		t.Fatalf("enabled gate: %v, %v", g, err)
	}
}

func TestGateHoldsUntilAck(t *testing.T) {
	r := newRig(t, Config{Enabled: true, Position: tagger(100, 200, 300)})
	for i := 1; i <= 3; i++ {
		r.send(frame(i, 60))
	}
	if st := r.g.Stats(); st.HeldFrames != 3 || st.Released != 0 || st.ReadFrames != 3 || !st.Serving {
		t.Fatalf("before any ack: %+v", st)
	}
	r.g.Ack(150) // between tags
	if got := index(r.recv()); got != 1 {
		t.Fatalf("after ack 150: frame %d", got)
	}
	r.g.Ack(120) // backwards: ignored
	r.g.Ack(300) // equal to the last tag
	if a, b := index(r.recv()), index(r.recv()); a != 2 || b != 3 {
		t.Fatalf("after ack 300: frames %d, %d", a, b)
	}
	if err := r.end(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	st := r.g.Stats()
	if st.Acked != 300 || st.WrittenFrames != 3 || st.WrittenBytes != 180 || st.HoldCount != 3 || st.OutFrames != 0 || st.HoldMaxMicros < 0 || st.HoldTotalMicros < st.HoldMaxMicros || st.Serving {
		t.Fatalf("stats: %+v", st)
	}
}

// Backup lost: the held frames leave at once, in order, then everything
// passes through without acks.
func TestGateUnprotect(t *testing.T) {
	r := newRig(t, Config{Enabled: true, Position: tagger(100, 300, 200, 400)})
	for i := 1; i <= 3; i++ {
		r.send(frame(i, 80))
	}
	r.g.Ack(100)
	if got := index(r.recv()); got != 1 {
		t.Fatalf("frame %d", got)
	}
	if n := r.g.Unprotect(); n != 2 {
		t.Fatalf("Unprotect released %d, want 2", n)
	}
	if a, b := index(r.recv()), index(r.recv()); a != 2 || b != 3 {
		t.Fatalf("after Unprotect: %d, %d", a, b)
	}
	r.send(frame(4, 80)) // tag 400, never acked
	if got := index(r.recv()); got != 4 {
		t.Fatalf("passthrough: frame %d", got)
	}
	r.g.Ack(1000) // no-op
	if r.g.Unprotect() != 0 || r.g.Mode() != Passthrough {
		t.Fatal("second Unprotect")
	}
	if err := r.end(); err != nil {
		t.Fatal(err)
	}
	if st := r.g.Stats(); st.Acked != 100 || st.WrittenFrames != 4 || st.HoldCount != 3 {
		t.Fatalf("stats: %+v", st)
	}
}

// Go live: Drop discards what is held and what the writer has not written
// yet, even while the writer is blocked inside a Write on a slow IN, and
// nothing is written after Drop returns.
func TestGateDropWithWriterBlocked(t *testing.T) {
	r := newRig(t, Config{Enabled: true, Position: tagger(100, 200, 300, 400)})
	for i := 1; i <= 3; i++ {
		r.send(frame(i, 100))
	}
	r.g.Ack(200) // frames 1 and 2 go to the writer, which blocks on IN
	// QEMU reads 10 bytes and stalls: the writer is inside its Write.
	var head [10]byte
	if _, err := io.ReadFull(r.qIn, head[:]); err != nil {
		t.Fatal(err)
	}
	if n := binary.BigEndian.Uint32(head[:]); n != 100 || index(head[4:]) != 1 {
		t.Fatalf("head % x", head)
	}
	if n := r.g.Drop(); n != 3 {
		t.Fatalf("Drop() = %d, want 3 (2 released, 1 held)", n)
	}
	r.send(frame(4, 100)) // read and discarded
	r.g.Ack(1000)
	r.g.Unprotect()
	if r.g.Mode() != Dropping {
		t.Fatalf("mode %v", r.g.Mode())
	}
	if err := r.end(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	// Serve has returned: its writer is gone. Whatever reached IN is
	// there; the 10 bytes read were all of it.
	r.gIn.Close()
	rest, err := io.ReadAll(r.qIn)
	if err != nil || len(rest) != 0 {
		t.Fatalf("after Drop, IN carried %d more bytes (%v)", len(rest), err)
	}
	st := r.g.Stats()
	if st.WrittenFrames != 0 || st.DroppedByDrop != 4 || st.HeldFrames != 0 || st.OutFrames != 0 || st.ReadFrames != 4 {
		t.Fatalf("stats: %+v", st)
	}
}

// Drop before Serve: every frame is read (QEMU never blocks) and
// discarded; Unprotect afterwards changes nothing.
func TestGateDropBeforeServe(t *testing.T) {
	g, err := New(Config{Enabled: true, Position: tagger(0), Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	g.Drop()
	g.Unprotect()
	qIn := serveFrames(t, g, 20, 64)
	defer qIn.Close()
	if rest, _ := io.ReadAll(qIn); len(rest) != 0 {
		t.Fatalf("%d bytes reached IN", len(rest))
	}
	if st := g.Stats(); st.DroppedByDrop != 20 || st.ReadFrames != 20 || st.Mode != Dropping {
		t.Fatalf("stats: %+v", st)
	}
}

// Over the limit, new frames are dropped and counted; the reader keeps
// reading (each QEMU write below returns only once the Gate has read it).
// What is held stays for the next Serve, which writes it.
func TestGateCapAndNextServe(t *testing.T) {
	var n atomic.Uint64
	g, err := New(Config{Enabled: true, LimitBytes: 1000, Log: quietLog(),
		Position: func() uint64 { return n.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	serveFrames(t, g, 50, 100).Close()
	st := g.Stats()
	if st.ReadFrames != 50 || st.HeldFrames != 10 || st.HeldBytes != 1000 || st.DroppedOverCap != 40 || st.DroppedOverCapBytes != 4000 || st.MaxBytes != 1000 {
		t.Fatalf("stats: %+v", st)
	}
	g.Ack(1 << 40) // no Serve: the frames wait for a writer
	r := newRigFor(t, g)
	for i := range 10 {
		if got := index(r.recv()); got != i {
			t.Fatalf("next Serve wrote frame %d, want %d", got, i)
		}
	}
	if err := r.end(); err != nil {
		t.Fatal(err)
	}
	if st := g.Stats(); st.WrittenFrames != 10 || st.OutFrames != 0 || st.OutBytes != 0 || st.HeldFrames != 0 {
		t.Fatalf("stats: %+v", st)
	}
}

// newRigFor serves an existing Gate over fresh pipes.
func newRigFor(t *testing.T, g *Gate) *rig {
	r := &rig{t: t, g: g, held: make(chan struct{}, 1000), served: make(chan error, 1)}
	g.afterHold = func() { r.held <- struct{}{} }
	qOut, gOut := net.Pipe()
	gIn, qIn := net.Pipe()
	r.qOut, r.gIn, r.qIn = qOut, gIn, qIn
	go func() { r.served <- g.Serve(gOut, gIn) }()
	t.Cleanup(func() { qOut.Close(); gOut.Close(); gIn.Close(); qIn.Close() })
	return r
}

func TestGateMalformed(t *testing.T) {
	r := newRig(t, Config{Enabled: true, Position: tagger(0)})
	r.send(frame(1, 60))
	if got := index(r.recv()); got != 1 {
		t.Fatalf("frame %d", got)
	}
	if _, err := r.qOut.Write(binary.BigEndian.AppendUint32(nil, 70000)); err != nil {
		t.Fatal(err)
	}
	err := <-r.served
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "70000") || !strings.Contains(err.Error(), "69632") {
		t.Fatalf("Serve: %v", err)
	}
	if st := r.g.Stats(); st.Serving || st.ReadFrames != 1 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestGateTruncated(t *testing.T) {
	r := newRig(t, Config{})
	if _, err := r.qOut.Write(append(binary.BigEndian.AppendUint32(nil, 100), 1, 2, 3)); err != nil {
		t.Fatal(err)
	}
	if err := r.end(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Serve: %v", err)
	}
}

// IN fails: Serve returns the write error, ending its blocked read of OUT
// (by a read deadline on a net.Conn, by Close on an io.PipeReader).
func TestGateInFails(t *testing.T) {
	for _, kind := range []string{"net.Pipe", "io.Pipe"} {
		t.Run(kind, func(t *testing.T) {
			g, err := New(Config{Log: quietLog()})
			if err != nil {
				t.Fatal(err)
			}
			var (
				qOut io.WriteCloser
				out  io.Reader
			)
			if kind == "net.Pipe" {
				qOut, out = net.Pipe()
			} else {
				out, qOut = io.Pipe()
			}
			defer qOut.Close()
			in, qIn := net.Pipe()
			qIn.Close() // QEMU closed IN
			done := make(chan error, 1)
			go func() { done <- g.Serve(out, in) }()
			if err := WriteFrame(qOut, frame(1, 60)); err != nil {
				t.Fatal(err)
			}
			err = <-done
			if !errors.Is(err, io.ErrClosedPipe) || !strings.Contains(err.Error(), "writing to IN") {
				t.Fatalf("Serve: %v", err)
			}
			st := g.Stats()
			if st.Serving || st.WrittenFrames != 0 || st.OutFrames != 1 {
				t.Fatalf("stats: %+v", st)
			}
		})
	}
}

func TestGateServeTwice(t *testing.T) {
	r := newRig(t, Config{})
	r.send(frame(1, 60))
	r.recv() // Serve is running
	if err := r.g.Serve(strings.NewReader(""), io.Discard); !errors.Is(err, ErrServing) {
		t.Fatalf("second Serve: %v", err)
	}
	if err := r.end(); err != nil {
		t.Fatal(err)
	}
}

// End to end over real unix sockets: a fake QEMU connects to both, writes
// 1000 frames; acks advance from another goroutine, driven by the tags.
// Every frame arrives once, in order, and only once its tag was acked.
func TestGateUnixEndToEnd(t *testing.T) {
	const frames, step = 1000, 100
	dir := t.TempDir()
	lOut, err := Listen(filepath.Join(dir, "out.sock"), -1, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer lOut.Close()
	lIn, err := Listen(filepath.Join(dir, "in.sock"), -1, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer lIn.Close()

	var (
		produced atomic.Uint64 // Position
		acked    atomic.Uint64 // stored before each Ack
		tags     = make(chan uint64, frames)
	)
	g, err := New(Config{Enabled: true, Log: quietLog(), LimitBytes: 4 << 20,
		Position: func() uint64 {
			p := produced.Add(step)
			tags <- p
			return p
		}})
	if err != nil {
		t.Fatal(err)
	}

	// The fake QEMU: chardev clients.
	qOut, err := net.Dial("unix", filepath.Join(dir, "out.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer qOut.Close()
	qIn, err := net.Dial("unix", filepath.Join(dir, "in.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer qIn.Close()
	out, err := lOut.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	in, err := lIn.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()

	served := make(chan error, 1)
	go func() { served <- g.Serve(out, in) }()

	// The backup: acks some tags, between and on them, after seeing them.
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewSource(1))
		for i := 1; i <= frames; i++ {
			tag := <-tags
			if rng.Intn(7) != 0 && i != frames {
				continue
			}
			p := tag
			if rng.Intn(2) == 0 {
				p -= step / 2
			}
			if p > acked.Load() {
				acked.Store(p)
			}
			g.Ack(p)
		}
		acked.Store(frames * step)
		g.Ack(frames * step)
	}()

	// The guest: 1000 frames of 60 to 1514 bytes.
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewSource(2))
		w := bufio.NewWriter(qOut)
		for i := range frames {
			if err := WriteFrame(w, frame(i, 60+rng.Intn(1514-60+1))); err != nil {
				t.Error(err)
				return
			}
			if rng.Intn(5) == 0 {
				w.Flush()
			}
		}
		w.Flush()
	}()

	// The network side.
	for i := range frames {
		f, err := ReadFrame(qIn)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if got := index(f); got != i {
			t.Fatalf("frame %d arrived in position %d", got, i)
		}
		if a, tag := acked.Load(), uint64(i+1)*step; a < tag {
			t.Fatalf("frame %d (tag %d) arrived with the ack at %d", i, tag, a)
		}
		if string(f) != string(frame(i, len(f))) {
			t.Fatalf("frame %d corrupted", i)
		}
	}
	wg.Wait()
	qOut.Close()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	st := g.Stats()
	if st.ReadFrames != frames || st.Released != frames || st.WrittenFrames != frames || st.HeldFrames != 0 || st.OutFrames != 0 || st.DroppedOverCap != 0 || st.HoldCount != frames {
		t.Fatalf("stats: %+v", st)
	}
	t.Logf("max held %d bytes; hold time avg %d µs, max %d µs", st.MaxHeldBytes, st.HoldTotalMicros/int64(st.HoldCount), st.HoldMaxMicros)
}

func TestListen(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "gate.sock")

	// A stale socket file (its listener gone without unlinking).
	l0, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	l0.(*net.UnixListener).SetUnlinkOnClose(false)
	l0.Close()

	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		uid, gid = 65534, 65534
	}
	l, err := Listen(p, uid, gid)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Fatalf("mode %v", fi.Mode())
	}
	if st := fi.Sys().(*syscall.Stat_t); uid != -1 && (int(st.Uid) != uid || int(st.Gid) != gid) {
		t.Fatalf("owner %d:%d", st.Uid, st.Gid)
	}
	c, err := net.Dial("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	l.Close()
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("socket file left after Close: %v", err)
	}

	f := filepath.Join(dir, "file")
	if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(f, -1, -1); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen on a regular file: %v", err)
	}
	if b, _ := os.ReadFile(f); string(b) != "x" {
		t.Fatal("regular file changed")
	}
}

// socketpair returns the two ends of a unix stream socketpair as net.Conns.
func socketpair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	var cs [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			tb.Fatal(err)
		}
		cs[i] = c
	}
	return cs[0], cs[1]
}

// BenchmarkGate: 1514-byte frames from a fake QEMU through Serve and back,
// over socketpairs, with acks always ahead of the tags. The fake QEMU keeps
// at most window frames (1.5 MB, under the 16 MiB limit) between OUT and
// IN, so no frame is dropped over the cap.
func BenchmarkGate(b *testing.B) {
	const size, window = 1514, 1000
	var n atomic.Uint64
	g, err := New(Config{Enabled: true, Log: quietLog(), Position: func() uint64 { return n.Add(1) }})
	if err != nil {
		b.Fatal(err)
	}
	g.Ack(^uint64(0))
	qOut, out := socketpair(b)
	in, qIn := socketpair(b)
	defer qIn.Close()
	defer in.Close()
	defer out.Close()
	served := make(chan error, 1)
	go func() { served <- g.Serve(out, in) }()

	credit := make(chan struct{}, window)
	for range window {
		credit <- struct{}{}
	}
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		w := bufio.NewWriterSize(qOut, 256<<10)
		f := frame(0, size)
		for range b.N {
			select {
			case <-credit:
			default:
				w.Flush()
				<-credit
			}
			if err := WriteFrame(w, f); err != nil {
				b.Error(err)
				return
			}
		}
		w.Flush()
	}()
	r := bufio.NewReaderSize(qIn, 256<<10)
	for i := range b.N {
		if _, err := ReadFrame(r); err != nil {
			b.Fatalf("frame %d: %v", i, err)
		}
		credit <- struct{}{}
	}
	b.StopTimer()
	qOut.Close()
	if err := <-served; err != nil {
		b.Fatal(err)
	}
	if st := g.Stats(); st.WrittenFrames != uint64(b.N) || st.DroppedOverCap != 0 {
		b.Fatalf("stats: %+v", st)
	}
}

// BenchmarkQueue: the core alone, hold then ack, 1514-byte frames.
func BenchmarkQueue(b *testing.B) {
	q := NewQueue(0, true)
	data := make([]byte, 1514)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for i := range b.N {
		q.Hold(Frame{Data: data, Pos: uint64(i + 1)})
		for _, f := range q.Ack(uint64(i + 1)) {
			q.Written(len(f.Data))
		}
	}
}

// serveFrames runs g.Serve over pipes, writes n frames of size bytes into
// OUT as QEMU would, closes OUT and waits for Serve to end cleanly. It
// returns QEMU's end of IN (the gate's end is closed) for the caller to
// read or close. The gate must not write to IN meanwhile (pipes block).
func serveFrames(t *testing.T, g *Gate, n, size int) net.Conn {
	t.Helper()
	qOut, out := net.Pipe()
	in, qIn := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- g.Serve(out, in) }()
	for i := range n {
		if err := WriteFrame(qOut, frame(i, size)); err != nil {
			t.Fatal(err)
		}
	}
	qOut.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	in.Close()
	return qIn
}

// DoneFrames counts the leading frames written (or dropped over the cap
// with nothing before them outstanding), never a frame still held.
func TestGateDoneFrames(t *testing.T) {
	var pos atomic.Uint64
	g, err := New(Config{Enabled: true, LimitBytes: 4, Position: func() uint64 { return pos.Load() }})
	if err != nil {
		t.Fatal(err)
	}
	g.hold([]byte("ab"), 10) // 1: held
	g.hold([]byte("cd"), 20) // 2: held
	g.hold([]byte("ef"), 30) // 3: over the cap, dropped while 1 and 2 are held
	if st := g.Stats(); st.DoneFrames != 0 || st.DroppedOverCap != 1 {
		t.Fatalf("with 1 and 2 held: %+v", st)
	}
}

// The hold-time buckets are cumulative and count every timed frame within
// the largest bound (a frame acknowledged at once).
func TestGateHoldBuckets(t *testing.T) {
	g, err := New(Config{Enabled: true, Position: func() uint64 { return 0 }})
	if err != nil {
		t.Fatal(err)
	}
	g.hold([]byte("a"), 1)
	g.hold([]byte("b"), 2)
	g.Ack(2)
	st := g.Stats()
	if len(st.HoldBuckets) != len(HoldBounds) || st.HoldCount != 2 || st.HoldBuckets[len(HoldBounds)-1] != 2 {
		t.Fatalf("stats %+v", st)
	}
	for i := 1; i < len(st.HoldBuckets); i++ {
		if st.HoldBuckets[i] < st.HoldBuckets[i-1] {
			t.Fatalf("not cumulative: %v", st.HoldBuckets)
		}
	}
}
