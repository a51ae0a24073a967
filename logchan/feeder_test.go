//go:build linux

package logchan

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openReplayEnd opens FIFO B the way a replaying QEMU does (a blocking
// O_RDONLY open, which does not wait because the Feeder is a writer).
func openReplayEnd(t *testing.T, p string) *os.File {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// pipeIsEmptyWithWriter checks, without blocking, that the pipe holds no
// data and still has a writer: a read says EAGAIN, not EOF.
func pipeIsEmptyWithWriter(t *testing.T, p string) {
	t.Helper()
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	n, err := unix.Read(fd, make([]byte, 16))
	if err != unix.EAGAIN {
		t.Fatalf("read on FIFO B: %d %v; want EAGAIN (no data, writer present)", n, err)
	}
}

func TestFeeder(t *testing.T) {
	p := mkfifo(t)
	fd, err := NewFeeder(p, LogVersionQEMU72) // no reader yet: must not block
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	qemu := openReplayEnd(t, p)

	all, n, instr := allEvents()
	if err := fd.Write(all); err != nil {
		t.Fatal(err)
	}
	if fd.Offset() != uint64(len(all)) || fd.Instructions() != instr || fd.Events() != uint64(n) {
		t.Fatalf("counters %d %d %d", fd.Offset(), fd.Instructions(), fd.Events())
	}
	// partial or corrupt data is refused and nothing is written
	if err := fd.Write(evInstruction(5)[:3]); !errors.Is(err, ErrPartialEvent) {
		t.Fatalf("partial: %v", err)
	}
	if err := fd.Write([]byte{99}); !errors.Is(err, ErrCorruptLog) {
		t.Fatalf("corrupt: %v", err)
	}
	if err := fd.Write(nil); err != nil {
		t.Fatal(err)
	}
	if err := fd.WriteEnd(); err != nil {
		t.Fatal(err)
	}
	if fd.Offset() != uint64(len(all)) || !fd.Ended() {
		t.Fatal("END counted in Offset")
	}
	if err := fd.Write(evInstruction(1)); !errors.Is(err, ErrFeederEnded) {
		t.Fatalf("write after END: %v", err)
	}
	if err := fd.WriteEnd(); !errors.Is(err, ErrFeederEnded) {
		t.Fatalf("END twice: %v", err)
	}

	want := append([]byte{0x00, 0xe0, 0x20, 0x0c}, all...)
	want = append(want, KindEnd)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(qemu, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("FIFO B content differs")
	}
	// QEMU, having read everything, sees no EOF: the Feeder holds a writer.
	pipeIsEmptyWithWriter(t, p)
}

func TestFeederEndInData(t *testing.T) {
	p := mkfifo(t)
	fd, err := NewFeeder(p, LogVersionQEMU72)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	openReplayEnd(t, p)
	if err := fd.Write(append(evInstruction(3), evEnd()...)); err != nil {
		t.Fatal(err)
	}
	if !fd.Ended() || fd.Offset() != 6 {
		t.Fatalf("ended %v offset %d", fd.Ended(), fd.Offset())
	}
	if err := fd.Write(evInstruction(1)); !errors.Is(err, ErrFeederEnded) {
		t.Fatal(err)
	}
	if err := fd.Write(append(evEnd(), 0, 0xe0, 0x20, 0x0c)); !errors.Is(err, ErrPartialEvent) {
		t.Fatalf("bytes after END accepted: %v", err)
	}
}

// TestFeederBackpressure writes more than the pipe holds while the reader
// drains concurrently: Write blocks and completes, counters readable
// meanwhile.
func TestFeederBackpressure(t *testing.T) {
	p := mkfifo(t)
	fd, err := NewFeeder(p, LogVersionQEMU72)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	qemu := openReplayEnd(t, p)
	var data []byte
	for i := range 40 {
		data = append(data, evNet(0, 0, bytes.Repeat([]byte{byte(i)}, 10000))...)
		data = append(data, evInstruction(1000)...)
	}
	want := append([]byte{0x00, 0xe0, 0x20, 0x0c}, data...)
	done := make(chan []byte)
	go func() {
		got := make([]byte, len(want))
		io.ReadFull(qemu, got)
		done <- got
	}()
	if err := fd.Write(data); err != nil {
		t.Fatal(err)
	}
	if got := <-done; !bytes.Equal(got, want) {
		t.Fatal("content differs")
	}
	if fd.Instructions() != 40000 || fd.Events() != 80 {
		t.Fatalf("counters %d %d", fd.Instructions(), fd.Events())
	}
}

func TestFeederCloseUnblocksWrite(t *testing.T) {
	p := mkfifo(t)
	fd, err := NewFeeder(p, LogVersionQEMU72)
	if err != nil {
		t.Fatal(err)
	}
	big := evNet(0, 0, make([]byte, 1<<20)) // more than the 64 KiB pipe
	done := make(chan error, 1)
	go func() { done <- fd.Write(big) }()
	// Counters stay readable while Write is blocked.
	_ = fd.Offset()
	fd.Close()
	if err := <-done; err == nil {
		t.Fatal("write into a closed feeder succeeded")
	}
}

func TestFeederDeadline(t *testing.T) {
	p := mkfifo(t)
	fd, err := NewFeeder(p, LogVersionQEMU72)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	big := evNet(0, 0, make([]byte, 1<<20)) // more than the 64 KiB pipe

	// A deadline already past: nothing is written, the Feeder goes on.
	fd.SetWriteDeadline(time.Now().Add(-time.Second))
	if err := fd.Write(big); !errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, ErrFeederBroken) {
		t.Fatalf("write past deadline: %v", err)
	}

	// A deadline that strikes after part of the event went into the
	// pipe (nobody reads it): the Feeder is broken for good.
	fd.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
	if err := fd.Write(big); !errors.Is(err, ErrFeederBroken) || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write timing out: %v", err)
	}
	fd.SetWriteDeadline(time.Time{})
	if err := fd.Write(evInstruction(1)); !errors.Is(err, ErrFeederBroken) {
		t.Fatalf("feeder not broken: %v", err)
	}
	if err := fd.WriteEnd(); !errors.Is(err, ErrFeederBroken) {
		t.Fatalf("END on a broken feeder: %v", err)
	}
	if fd.Offset() != 0 {
		t.Fatal("partial write counted")
	}
}

func TestFeederPipeSize(t *testing.T) {
	p := mkfifo(t)
	fd, err := NewFeeder(p, LogVersionQEMU72)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if n, err := fd.SetPipeSize(1 << 20); err != nil || n < 1<<20 {
		t.Fatalf("%d %v", n, err)
	}
	if n, err := fd.PipeSize(); err != nil || n != 1<<20 {
		t.Fatalf("PipeSize after SetPipeSize(1 MiB): %d %v", n, err)
	}
}

// TestFeederUnread: Unread counts what the replaying QEMU has not read yet,
// the version dword included, and falls as it reads.
func TestFeederUnread(t *testing.T) {
	p := mkfifo(t)
	fd, err := NewFeeder(p, LogVersionQEMU72)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	qemu := openReplayEnd(t, p)
	if n, err := fd.Unread(); err != nil || n != 4 {
		t.Fatalf("Unread after the version = %d, %v; want 4", n, err)
	}
	all, _, _ := allEvents()
	if err := fd.Write(all); err != nil {
		t.Fatal(err)
	}
	if n, _ := fd.Unread(); n != 4+len(all) {
		t.Fatalf("Unread = %d, want %d", n, 4+len(all))
	}
	if _, err := io.ReadFull(qemu, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if n, _ := fd.Unread(); n != 4+len(all)-10 {
		t.Fatalf("Unread after 10 bytes read = %d, want %d", n, 4+len(all)-10)
	}
	fd.Close()
	if _, err := fd.Unread(); err == nil {
		t.Fatal("Unread on a closed feeder: no error")
	}
}

// feederWithPipe is a Feeder on a new FIFO with QEMU's end open, its pipe
// set to size bytes (0: the kernel's default); closed at the test's end.
func feederWithPipe(t *testing.T, size int) (*Feeder, *os.File) {
	t.Helper()
	p := mkfifo(t)
	fd, err := NewFeeder(p, LogVersionQEMU72)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fd.Close() })
	qemu := openReplayEnd(t, p)
	if size > 0 {
		if _, err := fd.SetPipeSize(size); err != nil {
			t.Fatal(err)
		}
	}
	return fd, qemu
}

// instrRun is n INSTRUCTION events of one instruction each (5n bytes).
func instrRun(n int) []byte {
	var b []byte
	for range n {
		b = append(b, evInstruction(1)...)
	}
	return b
}

func TestFeederExecutedAtLeast(t *testing.T) {
	fd, qemu := feederWithPipe(t, 64<<10)
	// Three writes: ends 10000 (sum 2000), 10005 (2007), 20005 (4007).
	for _, w := range [][]byte{instrRun(2000), evInstruction(7), instrRun(2000)} {
		if err := fd.Write(w); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := io.ReadFull(qemu, make([]byte, 4)); err != nil { // the version
		t.Fatal(err)
	}
	read := 0 // event bytes QEMU has read
	readTo := func(n int) {
		t.Helper()
		if _, err := io.ReadFull(qemu, make([]byte, n-read)); err != nil {
			t.Fatal(err)
		}
		read = n
	}
	check := func(want uint64) {
		t.Helper()
		got, _, err := fd.ExecutedAtLeast()
		if err != nil || got != want {
			t.Fatalf("ExecutedAtLeast with %d event bytes read = %d, %v; want %d", read, got, err, want)
		}
	}
	check(0)
	// QEMU may not have parsed the last QEMUReadAhead bytes it read, and
	// the event at its parse point may be the one executing.
	readTo(10000 + QEMUReadAhead)
	check(0)
	readTo(10000 + QEMUReadAhead + 1)
	check(2000)
	readTo(10005 + QEMUReadAhead + 1)
	check(2007)
	readTo(20005)
	check(2007)
	if err := fd.WriteEnd(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(qemu, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	check(2007) // END counts as read, not as log
	fd.Close()
	if _, _, err := fd.ExecutedAtLeast(); err == nil {
		t.Fatal("ExecutedAtLeast on a closed feeder: no error")
	}
}

// More writes than marks: the bound gets coarser, never higher than the
// sum before the parse point.
func TestFeederExecutedAtLeastManyWrites(t *testing.T) {
	fd, qemu := feederWithPipe(t, 256<<10)
	const writes = 2 * maxReadMarks
	for range writes {
		if err := fd.Write(evInstruction(1)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := io.ReadFull(qemu, make([]byte, 4+5*writes)); err != nil {
		t.Fatal(err)
	}
	got, unread, err := fd.ExecutedAtLeast()
	if unread != 0 {
		t.Fatalf("unread = %d after reading everything", unread)
	}
	// Parse point at least 5*writes-QEMUReadAhead: the events ending
	// before it, less the marks folded into the last one.
	limit := uint64(5*writes-QEMUReadAhead) / 5
	if err != nil || got == 0 || got > limit {
		t.Fatalf("ExecutedAtLeast = %d, %v; want in (0, %d]", got, err, limit)
	}
}

func TestAdoptedFeederExecutedAtLeast(t *testing.T) {
	p := mkfifo(t)
	w, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	qemu := openReplayEnd(t, p)
	// The previous daemon's feeding: the version and 12000 bytes (2400
	// instructions), of which QEMU read all but what it still holds.
	if _, err := w.Write(append([]byte{0, 0, 0, 0}, instrRun(2400)...)); err != nil {
		t.Fatal(err)
	}
	fd, err := AdoptFeeder(w, 12000, 2400, 2400)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if err := fd.Write(instrRun(2000)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(qemu, make([]byte, 4+12000+QEMUReadAhead)); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := fd.ExecutedAtLeast(); got != 0 {
		t.Fatalf("before the adopted offset is behind the parse point: %d, want 0 (the sums before it are not known)", got)
	}
	if _, err := io.ReadFull(qemu, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := fd.ExecutedAtLeast(); got != 2400 {
		t.Fatalf("ExecutedAtLeast = %d, want 2400 (the adopted sum)", got)
	}
}

// An END inside written data is in Offset already: it is not counted
// again as WriteEnd's byte (which would put the read position one byte
// too far).
func TestFeederExecutedAtLeastEndInData(t *testing.T) {
	fd, qemu := feederWithPipe(t, 64<<10)
	if err := fd.Write(instrRun(2000)); err != nil {
		t.Fatal(err)
	}
	if err := fd.Write(append(instrRun(2000), KindEnd)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(qemu, make([]byte, 4+10000+QEMUReadAhead)); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := fd.ExecutedAtLeast(); got != 0 {
		t.Fatalf("ExecutedAtLeast = %d with the parse point possibly at 10000 (the first write's end): want 0", got)
	}
}

// The bound never exceeds what a reader buffered as QEMU is (QEMUReadAhead
// bytes of stdio buffer, one event parsed at a time, an INSTRUCTION event
// executed only when the next event is fetched: replay_fetch_data_kind)
// has executed, while writes of random sizes go on concurrently.
func TestFeederExecutedAtLeastConcurrent(t *testing.T) {
	fd, qemu := feederWithPipe(t, 0)
	rng := rand.New(rand.NewPCG(1, 2))
	var executed atomic.Uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		r := bufio.NewReaderSize(qemu, QEMUReadAhead)
		if _, err := io.ReadFull(r, make([]byte, 4)); err != nil {
			return
		}
		var pending uint64
		for {
			k, err := r.ReadByte()
			if err != nil {
				return
			}
			executed.Add(pending) // the previous event finished only now
			pending = 0
			switch k {
			case KindInstruction:
				var b [4]byte
				if _, err := io.ReadFull(r, b[:]); err != nil {
					return
				}
				pending = uint64(binary.BigEndian.Uint32(b[:]))
			case KindAsyncBH:
				if _, err := io.ReadFull(r, make([]byte, 8)); err != nil {
					return
				}
			case KindEnd:
				return
			}
		}
	}()
	frames := make([][]byte, 400)
	instrs := make([]uint64, len(frames)) // each frame's instructions
	for i := range frames {
		for j := range 1 + rng.IntN(600) {
			if rng.IntN(3) == 0 {
				frames[i] = append(frames[i], evBH(uint64(j))...)
			} else {
				n := 1 + rng.IntN(1000)
				instrs[i] += uint64(n)
				frames[i] = append(frames[i], evInstruction(uint32(n))...)
			}
		}
	}
	// Once QEMU has read the whole log, the bound is the instructions of
	// the writes that end before its last QEMUReadAhead bytes (the END
	// byte, if counted by then, only moves that point one byte on).
	var total, wantAtLeast uint64
	for i := range frames {
		total += uint64(len(frames[i]))
	}
	var end, sum uint64
	for i := range frames {
		end += uint64(len(frames[i]))
		sum += instrs[i]
		if end < total-QEMUReadAhead {
			wantAtLeast = sum
		}
	}
	go func() {
		for _, f := range frames {
			if err := fd.Write(f); err != nil {
				return
			}
		}
		_ = fd.WriteEnd()
	}()
	grew := 0
	var last uint64
	for {
		got, _, err := fd.ExecutedAtLeast()
		if err != nil {
			t.Fatal(err)
		}
		// Loaded after the bound: the reader's figure then was at most this.
		if ex := executed.Load(); got > ex {
			t.Fatalf("ExecutedAtLeast %d > the %d instructions the reader executed", got, ex)
		}
		if got > last {
			grew++
			last = got
		}
		select {
		case <-done:
			// Liveness, without counting on the scheduler (how often
			// this loop ran while the writes went on is not a property
			// of the Feeder): once the reader has read END, every Write
			// has returned and the bound covers all but the last
			// QEMUReadAhead bytes.
			final, _, err := fd.ExecutedAtLeast()
			if err != nil {
				t.Fatal(err)
			}
			if ex := executed.Load(); final < wantAtLeast || final > ex || wantAtLeast == 0 {
				t.Fatalf("after the whole log: ExecutedAtLeast %d, want at least %d and at most the %d the reader executed", final, wantAtLeast, ex)
			}
			t.Logf("the bound grew %d times over %d frames, to %d of %d", grew, len(frames), final, executed.Load())
			return
		default:
		}
	}
}
