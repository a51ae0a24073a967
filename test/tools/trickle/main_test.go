package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestRunCopiesAllInOrder: the version dword and every byte after the
// header reach the FIFO's reader, in order, whatever the chunk sizes.
func TestRunCopiesAllInOrder(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "log.bin")
	want := make([]byte, 300_000)
	for i := range want {
		want[i] = byte(i*7 + i/251)
	}
	if err := os.WriteFile(src, want, 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "log.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() {
		f, err := os.Open(fifo)
		if err != nil {
			got <- nil
			return
		}
		defer f.Close()
		b, _ := io.ReadAll(f)
		got <- b
	}()
	n, err := run(src, fifo, 42, 4096, 0)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	// The version dword, then everything after the 12-byte header.
	wantOut := append(append([]byte{}, want[:4]...), want[12:]...)
	if n != int64(len(wantOut)) {
		t.Fatalf("run wrote %d bytes; want %d", n, len(wantOut))
	}
	if b := <-got; !bytes.Equal(b, wantOut) {
		t.Fatalf("the reader got %d bytes, not the %d expected (or different ones)", len(b), len(wantOut))
	}
}

// TestRunMissingSource: a read error is returned, nothing is written.
func TestRunMissingSource(t *testing.T) {
	dir := t.TempDir()
	if n, err := run(filepath.Join(dir, "none"), filepath.Join(dir, "out"), 1, 16, 0); err == nil || n != 0 {
		t.Fatalf("run = %d, %v; want 0 and an error", n, err)
	}
}
