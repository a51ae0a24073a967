package reprotect

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// unixPair is a connected pair of unix stream sockets (both ends half-close).
func unixPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	return c, <-acc
}

// A stream that ends with a half-close (the migration: the source writes
// everything, closes its write side, then waits for the destination's
// answer) goes through the pipe whole, both ways.
func TestPipeCarriesHalfCloses(t *testing.T) {
	src, pa := unixPair(t)
	pb, dst := unixPair(t)
	done := make(chan [2]int64, 1)
	go func() {
		ab, ba, err := Pipe(pa, pb)
		if err != nil {
			t.Errorf("Pipe: %v", err)
		}
		done <- [2]int64{ab, ba}
	}()
	payload := make([]byte, 1<<20)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	go func() {
		_, _ = src.Write(payload)
		_ = src.(*net.UnixConn).CloseWrite()
	}()
	got, err := io.ReadAll(dst)
	if err != nil || len(got) != len(payload) || string(got) != string(payload) {
		t.Fatalf("destination read %d bytes (%v), want the %d written", len(got), err, len(payload))
	}
	_, _ = dst.Write([]byte("done"))
	dst.Close()
	reply, err := io.ReadAll(src)
	if err != nil || string(reply) != "done" {
		t.Fatalf("source read %q (%v), want the destination's answer after its own half-close", reply, err)
	}
	n := <-done
	if n[0] != int64(len(payload)) || n[1] != 4 {
		t.Fatalf("Pipe counted %v", n)
	}
}

func TestListenerPipesToTheDialledPeerAndServesMaxOnly(t *testing.T) {
	dir := t.TempDir()
	// The "peer": an echo server until EOF, then it closes.
	peerPath := echoPeer(t, dir)
	l, c, cancel, served := serving(t, filepath.Join(dir, "qemu.sock"), peerPath, 1)
	_, _ = c.Write([]byte("migration stream"))
	_ = c.(*net.UnixConn).CloseWrite()
	got, _ := io.ReadAll(c)
	if string(got) != "migration stream" {
		t.Fatalf("echo through the listener: %q", got)
	}
	// A second connection is over Max: closed at once.
	c2, err := net.Dial("unix", l.Path)
	if err != nil {
		t.Fatal(err)
	}
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c2.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("a connection over Max: read %d, %v; want EOF", n, err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if l.Bytes.Load() != 32 {
		t.Fatalf("Bytes %d, want 32", l.Bytes.Load())
	}
	if _, err := net.Dial("unix", l.Path); err == nil {
		t.Fatal("the socket still accepts after Serve returned")
	}
}

// The context's end closes a stream still open (the re-protection was
// abandoned): QEMU sees its connection end.
func TestListenerClosesOpenStreamsAtTheEnd(t *testing.T) {
	dir := t.TempDir()
	peerPath, pl := peerListener(t, dir)
	got := make(chan struct{})
	go func() {
		c, err := pl.Accept()
		if err == nil {
			_, _ = c.Read(make([]byte, 1))
			close(got)
			_, _ = io.Copy(io.Discard, c) // never answers
		}
	}()
	_, c, cancel, served := serving(t, filepath.Join(dir, "q.sock"), peerPath, 0)
	_, _ = c.Write([]byte("x"))
	<-got // piped
	cancel()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after the end: %v, want EOF", err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

// serving starts l (max streams) towards peerPath and connects to it as
// QEMU would; cancel ends Serve, whose result comes on served.
func serving(t *testing.T, path, peerPath string, max int) (l *Listener, c net.Conn, cancel context.CancelFunc, served chan error) {
	t.Helper()
	l = &Listener{Path: path, Max: max,
		Dial: func(ctx context.Context) (net.Conn, error) { return net.Dial("unix", peerPath) }}
	if err := l.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served = make(chan error, 1)
	go func() { served <- l.Serve(ctx) }()
	c, err := net.Dial("unix", l.Path)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	return l, c, cancel, served
}

// echoPeer is a peerListener that echoes each connection until EOF, then
// closes it; it returns the socket's path.
func echoPeer(t *testing.T, dir string) string {
	t.Helper()
	path, pl := peerListener(t, dir)
	go func() {
		for {
			c, err := pl.Accept()
			if err != nil {
				return
			}
			go func() {
				_, _ = io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	return path
}

// peerListener listens on DIR/peer, the peer's end in these tests; it is
// closed when the test ends.
func peerListener(t *testing.T, dir string) (string, net.Listener) {
	t.Helper()
	path := filepath.Join(dir, "peer")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return path, ln
}

// Admit refuses a connection before it takes one of Max's slots: a
// refused one is closed, the next admitted one is served.
func TestListenerAdmit(t *testing.T) {
	dir := t.TempDir()
	peerPath := echoPeer(t, dir)
	var n atomic.Int32
	l := &Listener{Path: filepath.Join(dir, "qemu.sock"), Max: 1,
		Dial: func(ctx context.Context) (net.Conn, error) { return net.Dial("unix", peerPath) },
		Admit: func(net.Conn) error {
			if n.Add(1) == 1 {
				return errors.New("not this domain's QEMU")
			}
			return nil
		}}
	if err := l.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- l.Serve(ctx) }()
	bad, err := net.Dial("unix", l.Path)
	if err != nil {
		t.Fatal(err)
	}
	_ = bad.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := bad.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("a refused connection: %v, want EOF", err)
	}
	good, err := net.Dial("unix", l.Path)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = good.Write([]byte("nbd"))
	_ = good.(*net.UnixConn).CloseWrite()
	if got, _ := io.ReadAll(good); string(got) != "nbd" {
		t.Fatalf("the admitted connection after a refused one: %q", got)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if l.Refused.Load() != 1 {
		t.Fatalf("Refused %d, want 1", l.Refused.Load())
	}
}
