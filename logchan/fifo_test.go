//go:build linux

package logchan

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func mkfifo(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fifo")
	if err := CreateFIFO(p, -1, -1, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCreateFIFO(t *testing.T) {
	dir := t.TempDir()
	uid, gid := os.Getuid(), os.Getgid()
	if uid == 0 {
		uid, gid = 65534, 65534 // nobody, as libvirt-qemu stands in for
	}
	p := filepath.Join(dir, "run", "ft", "vm1", "record.fifo")
	old := unix.Umask(0o077)
	defer unix.Umask(old)
	if err := CreateFIFO(p, uid, gid, 0o660); err != nil {
		t.Fatal(err)
	}
	check := func(path string, typ os.FileMode, perm os.FileMode) {
		t.Helper()
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Type() != typ || fi.Mode().Perm() != perm || int(st.Uid) != uid || int(st.Gid) != gid {
			t.Fatalf("%s: mode %v owner %d:%d; want %v%v %d:%d", path, fi.Mode(), st.Uid, st.Gid, typ, perm, uid, gid)
		}
	}
	check(p, os.ModeNamedPipe, 0o660)
	check(filepath.Join(dir, "run", "ft", "vm1"), os.ModeDir, 0o750)
	check(filepath.Join(dir, "run"), os.ModeDir, 0o750)
	if fi, _ := os.Stat(dir); fi.Mode().Perm() == 0o750 {
		t.Fatal("existing parent was changed")
	}

	// a stale FIFO and a stale regular file are replaced
	if err := CreateFIFO(p, -1, -1, 0o600); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(p); fi.Mode().Type() != os.ModeNamedPipe || fi.Mode().Perm() != 0o600 {
		t.Fatalf("replaced fifo: %v", fi.Mode())
	}
	reg := filepath.Join(dir, "stale")
	if err := os.WriteFile(reg, []byte("old log"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CreateFIFO(reg, -1, -1, 0o640); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(reg); fi.Mode().Type() != os.ModeNamedPipe || fi.Mode().Perm() != 0o640 {
		t.Fatalf("replaced file: %v", fi.Mode())
	}
	// a directory is not
	sub := filepath.Join(dir, "adir")
	os.Mkdir(sub, 0o700)
	if err := CreateFIFO(sub, -1, -1, 0o600); err == nil {
		t.Fatal("replaced a directory")
	}
	// a file in the way of the parent
	if err := CreateFIFO(filepath.Join(reg, "x"), -1, -1, 0o600); err == nil {
		t.Fatal("no error for a parent that is a FIFO")
	}
}

func TestOpenFIFORefusesRegularFiles(t *testing.T) {
	p := filepath.Join(t.TempDir(), "file")
	os.WriteFile(p, nil, 0o600)
	if _, err := OpenRecordFIFO(p); err == nil {
		t.Error("OpenRecordFIFO opened a regular file")
	}
	if _, err := OpenRecordReader(p); err == nil {
		t.Error("OpenRecordReader opened a regular file")
	}
	if _, err := NewFeeder(p, LogVersionQEMU72); err == nil {
		t.Error("NewFeeder opened a regular file")
	}
}

// TestOpenRecordFIFO checks the documented behaviour of the plain file: the
// writer's open does not block, reads are blocking, and before the writer
// connects a read reports EOF at once (which is why RecordReader exists).
func TestOpenRecordFIFO(t *testing.T) {
	p := mkfifo(t)
	f, err := OpenRecordFIFO(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_NONBLOCK != 0 {
		t.Fatalf("flags %#x %v: still non-blocking", fl, err)
	}
	if n, err := f.Read(make([]byte, 8)); n != 0 || err != io.EOF {
		t.Fatalf("read before a writer: %d %v", n, err)
	}
	// A writer (QEMU) opening without O_NONBLOCK does not block.
	w, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("abc"))
	w.Close()
	buf := make([]byte, 8)
	if n, err := f.Read(buf); n != 3 || err != nil || string(buf[:3]) != "abc" {
		t.Fatalf("read: %d %v", n, err)
	}
}

func TestRecordReaderWaitsForWriter(t *testing.T) {
	p := mkfifo(t)
	r, err := OpenRecordReader(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	type res struct {
		b   []byte
		err error
	}
	got := make(chan res, 1)
	go func() {
		buf := make([]byte, 64)
		n, err := r.Read(buf)
		got <- res{buf[:n], err}
	}()
	// QEMU starts: its blocking open succeeds because we are a reader.
	// Had the Read above returned EOF for the missing writer, it would
	// not return "hello".
	w, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	g := <-got
	if g.err != nil || string(g.b) != "hello" || !r.Connected() {
		t.Fatalf("first read: %q %v", g.b, g.err)
	}
	w.Write([]byte("more"))
	w.Close() // QEMU exits
	all, err := io.ReadAll(r)
	if err != nil || string(all) != "more" {
		t.Fatalf("rest: %q %v", all, err)
	}
	if n, err := r.Read(make([]byte, 4)); n != 0 || err != io.EOF {
		t.Fatalf("after EOF: %d %v", n, err)
	}
}

func TestRecordReaderWriterClosesWithoutData(t *testing.T) {
	p := mkfifo(t)
	r, err := OpenRecordReader(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Close() // QEMU died at start-up
	if n, err := r.Read(make([]byte, 4)); n != 0 || err != io.EOF {
		t.Fatalf("read: %d %v", n, err)
	}
	if !r.Connected() {
		t.Fatal("not connected")
	}
}

func TestRecordReaderConnectedWriterNoData(t *testing.T) {
	p := mkfifo(t)
	r, err := OpenRecordReader(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := r.Read(make([]byte, 4)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read with a silent writer: %v", err)
	}
	r.SetReadDeadline(time.Time{})
	w.Write([]byte{1})
	if n, err := r.Read(make([]byte, 4)); n != 1 || err != nil || !r.Connected() {
		t.Fatalf("read: %d %v", n, err)
	}
}

func TestRecordReaderNoWriterDeadline(t *testing.T) {
	p := mkfifo(t)
	r, err := OpenRecordReader(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// With no writer yet, Read waits rather than reporting EOF.
	r.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := r.Read(make([]byte, 4)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read without a writer: %v", err)
	}
	if r.Connected() {
		t.Fatal("connected without a writer")
	}
}

func TestRecordReaderCloseUnblocks(t *testing.T) {
	p := mkfifo(t)
	r, err := OpenRecordReader(p)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := r.Read(make([]byte, 4))
		done <- err
	}()
	r.Close()
	if err := <-done; err == nil || err == io.EOF {
		t.Fatalf("read after close: %v", err)
	}
}

func TestRecordReaderSetPipeSize(t *testing.T) {
	r, err := OpenRecordReader(mkfifo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	n, err := r.SetPipeSize(256 << 10)
	if err != nil || n < 256<<10 {
		t.Fatalf("pipe size %d %v", n, err)
	}
}

// TestRecordReaderToDecoder streams events through a real FIFO in odd-sized
// writes and checks that the decoder gets them back whole.
func TestRecordReaderToDecoder(t *testing.T) {
	p := mkfifo(t)
	r, err := OpenRecordReader(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	all, _, instr := allEvents()
	var stream []byte
	for range 50 {
		stream = append(stream, all...)
	}
	stream = append(stream, evEnd()...)
	stream = append(stream, 0x00, 0xe0, 0x20, 0x0c)
	go func() {
		w, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer w.Close()
		for i := 0; i < len(stream); i += 777 {
			w.Write(stream[i:min(i+777, len(stream))])
		}
	}()
	d := NewStreamDecoder()
	var got []byte
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		c, derr := d.Feed(buf[:n])
		if derr != nil {
			t.Fatal(derr)
		}
		got = append(got, c.Data...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, stream[:len(stream)-4]) || d.Instructions() != 50*instr || !d.Ended() {
		t.Fatalf("got %d bytes of %d", len(got), len(stream)-4)
	}
	if tr, _ := d.Trailer(); !bytes.Equal(tr, []byte{0x00, 0xe0, 0x20, 0x0c}) {
		t.Fatalf("trailer %x", tr)
	}
}

// Produced counts what was read plus what waits in the pipe.
func TestRecordReaderProduced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.fifo")
	if err := CreateFIFO(path, -1, -1, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := OpenRecordReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if n, err := r.Produced(); err != nil || n != 0 {
		t.Fatalf("Produced = %d, %v before any write", n, err)
	}
	if _, err := w.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Produced(); err != nil || n != 1000 {
		t.Fatalf("Produced = %d, %v after 1000 bytes written", n, err)
	}
	buf := make([]byte, 300)
	if n, err := r.Read(buf); err != nil || n != 300 {
		t.Fatalf("Read = %d, %v", n, err)
	}
	if _, err := w.Write(make([]byte, 24)); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Produced(); err != nil || n != 1024 {
		t.Fatalf("Produced = %d, %v after a read of 300 and 24 more written", n, err)
	}
}
