//go:build linux

package logchan

import (
	"bytes"
	"errors"
	"io"
	"os"
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
