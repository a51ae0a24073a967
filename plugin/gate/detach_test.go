package gate

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"
)

// A planned restart: Detach ends Serve at a frame boundary with half a
// frame read; a new Gate (the next process) numbers on from FramesBefore
// and, reading the leftover first, gets the whole frame.
func TestDetachHandsOverAtAFrameBoundary(t *testing.T) {
	r := newRig(t, Config{Enabled: false})
	r.send(frame(1, 100))
	if got := r.recv(); index(got) != 1 {
		t.Fatalf("frame %d, want 1", index(got))
	}
	// Half a frame: its length prefix and 10 of its 60 bytes.
	whole := appendFrame(nil, frame(2, 60))
	// net.Pipe: Write returns once the Gate's reader took every byte.
	if _, err := r.qOut.Write(whole[:14]); err != nil {
		t.Fatal(err)
	}
	left, unwritten, err := r.g.Detach(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if unwritten != 0 {
		t.Fatalf("unwritten %d, want 0", unwritten)
	}
	if err := <-r.served; !errors.Is(err, ErrDetached) {
		t.Fatalf("Serve: %v, want ErrDetached", err)
	}
	if !bytes.Equal(left, whole[:14]) {
		t.Fatalf("leftover %d bytes, want the 14 of the half frame", len(left))
	}
	st := r.g.Stats()
	g2, err := New(Config{Enabled: false, FramesBefore: st.ReadFrames, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	out := r.gOut
	_ = out.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() { done <- g2.Serve(struct{ io.Reader }{io.MultiReader(bytes.NewReader(left), out)}, r.gIn) }()
	go func() { _, _ = r.qOut.Write(whole[14:]) }()
	if got := r.recv(); index(got) != 2 || len(got) != 60 {
		t.Fatalf("frame %d of %d bytes, want frame 2 of 60", index(got), len(got))
	}
	if st := g2.Stats(); st.ReadFrames != 2 {
		t.Fatalf("ReadFrames %d, want 2 (1 before the handover)", st.ReadFrames)
	}
	r.qOut.Close()
	<-done
}

// Detach without a Serve is an error, not a hang.
func TestDetachNotServing(t *testing.T) {
	g, err := New(Config{Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := g.Detach(time.Second); err == nil {
		t.Fatal("Detach of an idle Gate succeeded")
	}
}
