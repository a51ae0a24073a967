package gate

import (
	"fmt"
	"slices"
	"testing"
)

// fr is a frame whose data names it ("f1", "f2", ...) and whose tag is pos.
func fr(i int, pos uint64) Frame {
	return Frame{Data: []byte(fmt.Sprintf("f%d", i)), Pos: pos}
}

func names(fs []Frame) []string {
	var out []string
	for _, f := range fs {
		out = append(out, string(f.Data))
	}
	return out
}

func want(t *testing.T, step string, got []Frame, w ...string) {
	t.Helper()
	if !slices.Equal(names(got), w) {
		t.Fatalf("%s: released %v, want %v", step, names(got), w)
	}
}

// written reports every frame of rel as written, as the writer would.
func written(q *Queue, rel []Frame) {
	for _, f := range rel {
		q.Written(len(f.Data))
	}
}

func TestQueueReleaseAtOrAfterAck(t *testing.T) {
	q := NewQueue(0, true)
	want(t, "hold f1@100", q.Hold(fr(1, 100)))
	want(t, "hold f2@200", q.Hold(fr(2, 200)))
	want(t, "hold f3@300", q.Hold(fr(3, 300)))
	want(t, "ack 99 (below every tag)", q.Ack(99))
	want(t, "ack 150 (between tags)", q.Ack(150), "f1")
	want(t, "ack 200 (equal to a tag)", q.Ack(200), "f2")
	want(t, "ack 120 (backwards)", q.Ack(120))
	want(t, "ack 200 (repeated)", q.Ack(200))
	if st := q.Stats(); st.Acked != 200 || st.HeldFrames != 1 || st.HeldBytes != 2 {
		t.Fatalf("stats after backwards ack: %+v", st)
	}
	want(t, "ack 1000", q.Ack(1000), "f3")
	st := q.Stats()
	if st.HeldFrames != 0 || st.Released != 3 || st.ReleasedBytes != 6 || st.OutFrames != 3 || st.MaxHeldBytes != 6 {
		t.Fatalf("stats: %+v", st)
	}
}

// A frame already covered by the last ack leaves at once, unless frames
// are held before it: order first.
func TestQueueImmediateReleaseAndOrder(t *testing.T) {
	q := NewQueue(0, true)
	want(t, "pos 0 with nothing acked", q.Hold(fr(0, 0)), "f0")
	q.Ack(500)
	want(t, "covered, queue empty", q.Hold(fr(1, 400)), "f1")
	want(t, "covered, equal", q.Hold(fr(2, 500)), "f2")
	want(t, "not covered", q.Hold(fr(3, 900)))
	want(t, "covered but behind f3", q.Hold(fr(4, 300)))
	want(t, "small tag behind a larger one", q.Hold(fr(5, 600)))
	want(t, "ack 899: f3 still not covered, nothing passes it", q.Ack(899))
	want(t, "ack 900", q.Ack(900), "f3", "f4", "f5")
}

func TestQueueReleaseOrderMany(t *testing.T) {
	q := NewQueue(0, true)
	var got []Frame
	for i := range 1000 {
		// Tags rise but not strictly, with some going back.
		pos := uint64(i/3*10 + (i%3)*7)
		got = append(got, q.Hold(fr(i, pos))...)
		if i%17 == 0 {
			got = append(got, q.Ack(uint64(i/2*10))...)
		}
	}
	got = append(got, q.Ack(1<<62)...)
	if len(got) != 1000 {
		t.Fatalf("released %d frames, want 1000", len(got))
	}
	for i, f := range got {
		if string(f.Data) != fmt.Sprintf("f%d", i) {
			t.Fatalf("release %d is %s", i, f.Data)
		}
	}
}

func TestQueueUnprotect(t *testing.T) {
	q := NewQueue(0, true)
	q.Hold(fr(1, 10))
	q.Hold(fr(2, 30))
	q.Hold(fr(3, 20))
	want(t, "unprotect", q.Unprotect(), "f1", "f2", "f3")
	if q.Mode() != Passthrough {
		t.Fatalf("mode %v", q.Mode())
	}
	want(t, "hold after unprotect", q.Hold(fr(4, 1<<40)), "f4")
	want(t, "ack after unprotect", q.Ack(1<<50))
	if st := q.Stats(); st.Acked != 0 {
		t.Fatalf("Ack in Passthrough changed Acked: %+v", st)
	}
	want(t, "unprotect again", q.Unprotect())
}

func TestQueueStartPassthrough(t *testing.T) {
	q := NewQueue(0, false)
	if q.Mode() != Passthrough {
		t.Fatalf("mode %v", q.Mode())
	}
	want(t, "hold", q.Hold(fr(1, 99)), "f1")
}

func TestQueueDrop(t *testing.T) {
	q := NewQueue(0, true)
	q.Ack(10)
	rel := q.Hold(fr(1, 5)) // released, not yet written: out
	want(t, "hold f1", rel, "f1")
	q.Hold(fr(2, 20))
	q.Hold(fr(3, 30))
	if n := q.Drop(); n != 3 {
		t.Fatalf("Drop() = %d, want 3 (2 held + 1 out)", n)
	}
	written(q, rel) // the writer's late report changes nothing
	want(t, "hold after drop", q.Hold(fr(4, 0)))
	want(t, "ack after drop", q.Ack(100))
	want(t, "unprotect after drop", q.Unprotect())
	if q.Mode() != Dropping {
		t.Fatalf("mode %v after Unprotect following Drop", q.Mode())
	}
	if n := q.Drop(); n != 0 {
		t.Fatalf("second Drop() = %d", n)
	}
	st := q.Stats()
	if st.DroppedByDrop != 4 || st.DroppedByDropBytes != 8 || st.HeldFrames != 0 || st.OutFrames != 0 || st.OutBytes != 0 || st.Acked != 10 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestQueueDropFromPassthrough(t *testing.T) {
	q := NewQueue(0, false)
	q.Hold(fr(1, 0))
	if n := q.Drop(); n != 1 {
		t.Fatalf("Drop() = %d, want 1 (out)", n)
	}
	want(t, "hold", q.Hold(fr(2, 0)))
}

// The limit covers held and out bytes together; Written frees room.
func TestQueueLimit(t *testing.T) {
	q := NewQueue(10, true)
	big := func(i, n int, pos uint64) Frame { return Frame{Data: make([]byte, n), Pos: pos, Stamp: int64(i)} }
	q.Hold(big(1, 4, 100))
	q.Hold(big(2, 4, 200))
	want(t, "over the cap", q.Hold(big(3, 3, 300)))
	q.Hold(big(4, 2, 300)) // exactly 10
	st := q.Stats()
	if st.DroppedOverCap != 1 || st.DroppedOverCapBytes != 3 || st.HeldBytes != 10 || st.HeldFrames != 3 || st.MaxBytes != 10 {
		t.Fatalf("stats: %+v", st)
	}
	rel := q.Ack(100)
	if len(rel) != 1 {
		t.Fatalf("ack 100 released %d", len(rel))
	}
	// Released but not written: still counted.
	q.Hold(big(5, 1, 0))
	if st := q.Stats(); st.DroppedOverCap != 2 || st.OutBytes != 4 || st.HeldBytes != 6 {
		t.Fatalf("stats: %+v", st)
	}
	written(q, rel)
	q.Hold(big(6, 4, 400))
	if st := q.Stats(); st.DroppedOverCap != 2 || st.HeldBytes != 10 || st.OutBytes != 0 {
		t.Fatalf("stats after Written: %+v", st)
	}
	// The limit applies in Passthrough too (to unwritten frames).
	rel = q.Unprotect()
	want(t, "passthrough, over", q.Hold(big(7, 1, 0)))
	written(q, rel)
	if rel := q.Hold(big(8, 10, 0)); len(rel) != 1 {
		t.Fatal("passthrough frame of exactly the limit refused")
	}
	if st := q.Stats(); st.DroppedOverCap != 3 || st.Released != 5 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestQueueDefaultLimit(t *testing.T) {
	if l := NewQueue(0, true).Limit(); l != DefaultLimitBytes {
		t.Fatalf("limit %d", l)
	}
	if l := NewQueue(-5, true).Limit(); l != DefaultLimitBytes {
		t.Fatalf("limit %d", l)
	}
}

func TestFIFO(t *testing.T) {
	var f fifo
	next := 0
	var out []int
	for round := range 50 {
		for range round % 7 {
			f.push(Frame{Pos: uint64(next)})
			next++
		}
		for range round % 5 {
			if f.len() > 0 {
				out = append(out, int(f.pop().Pos))
			}
		}
		if round%11 == 0 && f.len() > 1 {
			a, b := f.pop(), f.pop()
			f.pushFront([]Frame{a, b})
		}
	}
	for f.len() > 0 {
		out = append(out, int(f.pop().Pos))
	}
	if len(out) != next {
		t.Fatalf("popped %d of %d", len(out), next)
	}
	for i, v := range out {
		if v != i {
			t.Fatalf("out[%d] = %d", i, v)
		}
	}
}

func TestModeString(t *testing.T) {
	for m, s := range map[Mode]string{Gated: "gated", Passthrough: "passthrough", Dropping: "dropping", Mode(9): "Mode(9)"} {
		if m.String() != s {
			t.Errorf("%d: %q", int(m), m.String())
		}
	}
}

// The backup's use: frames tagged by sequence number, forgotten as the
// primary reports them sent, the rest sent at go-live.
func TestQueueForgetThenGoLive(t *testing.T) {
	q := NewQueue(0, true)
	want(t, "hold f1", q.Hold(fr(1, 1)))
	want(t, "hold f2", q.Hold(fr(2, 2)))
	want(t, "hold f3", q.Hold(fr(3, 3)))
	if n := q.Forget(2); n != 2 {
		t.Fatalf("Forget(2) discarded %d frames, want 2", n)
	}
	if n := q.Forget(1); n != 0 {
		t.Fatalf("Forget(1) after Forget(2) discarded %d, want 0", n)
	}
	// The primary may be ahead of the backup's replay: frames arriving
	// with a tag already forgotten never enter the queue.
	if n := q.Forget(5); n != 1 {
		t.Fatalf("Forget(5) discarded %d frames, want 1 (f3)", n)
	}
	want(t, "hold f4 (sent by the primary)", q.Hold(fr(4, 4)))
	want(t, "hold f5 (sent by the primary)", q.Hold(fr(5, 5)))
	want(t, "hold f6", q.Hold(fr(6, 6)))
	want(t, "hold f7", q.Hold(fr(7, 7)))
	st := q.Stats()
	if st.HeldFrames != 2 || st.ForgotFrames != 5 || st.ForgotBytes != 10 || st.Forgotten != 5 || st.Released != 0 {
		t.Fatalf("stats %+v: want 2 held, 5 forgotten (10 bytes) up to 5, none released", st)
	}
	want(t, "go-live (Unprotect)", q.Unprotect(), "f6", "f7")
	want(t, "hold f8 after go-live", q.Hold(fr(8, 8)), "f8")
	if n := q.Forget(100); n != 0 {
		t.Fatalf("Forget in Passthrough discarded %d", n)
	}
}

func TestQueueForgetThenDrop(t *testing.T) {
	q := NewQueue(0, true)
	q.Hold(fr(1, 1))
	q.Hold(fr(2, 2))
	q.Forget(1)
	if n := q.Drop(); n != 1 {
		t.Fatalf("Drop discarded %d, want 1", n)
	}
	want(t, "hold after Drop", q.Hold(fr(3, 3)))
	if n := q.Forget(3); n != 0 {
		t.Fatalf("Forget after Drop discarded %d", n)
	}
}

// The backup's queue keeps the newest frames over the limit.
func TestQueueEvictOldest(t *testing.T) {
	q := NewQueue(6, true) // three 2-byte frames
	q.SetEvictOldest(true)
	for i := 1; i <= 5; i++ {
		want(t, fmt.Sprintf("hold f%d", i), q.Hold(fr(i, uint64(i))))
	}
	if st := q.Stats(); st.HeldFrames != 3 || st.DroppedOverCap != 2 {
		t.Fatalf("stats %+v: want 3 held, 2 evicted", st)
	}
	want(t, "Unprotect", q.Unprotect(), "f3", "f4", "f5")
}
