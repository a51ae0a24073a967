package gate

import (
	"fmt"
	"hash/crc32"
	"strings"
	"testing"
)

// digests returns the running digests of frames, d[i] after frame i+1.
func digests(frames ...string) []uint64 {
	var d uint64
	out := make([]uint64, len(frames))
	for i, f := range frames {
		d = NextDigest(d, []byte(f))
		out[i] = d
	}
	return out
}

// The digest depends on every frame, their boundaries and their order.
func TestNextDigest(t *testing.T) {
	base := digests("ab", "cd")[1]
	for _, other := range [][]string{{"abc", "d"}, {"cd", "ab"}, {"ab", "ce"}, {"ab", "cd", ""}, {"", "ab", "cd"}} {
		if d := digests(other...); d[len(d)-1] == base {
			t.Errorf("frames %q have the digest of [ab cd]", other)
		}
	}
	if d := digests("ab", "cd")[1]; d != base {
		t.Errorf("not deterministic: %x then %x", base, d)
	}
	// The two halves are the standard CRCs of the length prefix and the
	// bytes (one frame from 0): CRC-32C and CRC-32 as any implementation
	// computes them, and each chains through crc32.Update.
	f := append([]byte{0, 0, 0, 2}, "ab"...)
	want := uint64(crc32.Checksum(f, crc32.MakeTable(crc32.Castagnoli)))<<32 | uint64(crc32.ChecksumIEEE(f))
	if got := NextDigest(0, []byte("ab")); got != want {
		t.Errorf("NextDigest(0, ab) = %016x, want %016x", got, want)
	}
	// An answer not computed with hash/crc32 (a bitwise CRC-32C and
	// zlib's CRC-32, both checked against the standard check values):
	// "123456789" then 300 zero bytes, from 0.
	if got := NextDigest(NextDigest(0, []byte("123456789")), make([]byte, 300)); got != 0x81dadbe834394459 {
		t.Errorf("two frames: %016x, want 81dadbe834394459", got)
	}
	if got, want := NextDigest(0xfeedface12345678, nil), uint64(crc32.Update(0xfeedface, crc32.MakeTable(crc32.Castagnoli), []byte{0, 0, 0, 0}))<<32|uint64(crc32.Update(0x12345678, crc32.IEEETable, []byte{0, 0, 0, 0})); got != want {
		t.Errorf("chained: %016x, want %016x", got, want)
	}
}

// newVerifying returns a verifying gate and a pointer to its mismatches.
func newVerifying(t *testing.T, before uint64) (*Gate, *[]Mismatch) {
	t.Helper()
	var got []Mismatch
	g, err := New(Config{Enabled: true, Verify: true, FramesBefore: before, Position: func() uint64 { return 0 },
		OnMismatch: func(m Mismatch) { got = append(got, m) }})
	if err != nil {
		t.Fatal(err)
	}
	return g, &got
}

// feed passes frames through g as Serve does, reporting mismatches.
func feed(g *Gate, frames ...string) {
	for _, f := range frames {
		g.mismatched(g.hold([]byte(f), 0))
	}
}

// The primary's checkpoints compare whether they arrive before the
// replay reaches them (kept until it does) or after (from the history).
func TestVerifyMatches(t *testing.T) {
	frames := []string{"f1", "f2", "f3", "f4", "f5"}
	d := digests(frames...)
	g, got := newVerifying(t, 0)
	g.Verify(Checkpoint{Frames: 2, Digest: d[1]}) // ahead of the replay
	g.Verify(Checkpoint{Frames: 4, Digest: d[3]})
	feed(g, frames[:3]...)
	g.Verify(Checkpoint{Frames: 3, Digest: d[2]}) // reached: compared from the history
	feed(g, frames[3:]...)
	g.Verify(Checkpoint{Frames: 5, Digest: d[4]}) // the replay is past it
	st := g.Stats()
	if len(*got) != 0 || st.Mismatch != nil {
		t.Fatalf("mismatches on equal frames: %v", *got)
	}
	if st.VerifyChecked != 4 || st.Digest != d[4] {
		t.Fatalf("checked %d (want 4), digest %x (want %x)", st.VerifyChecked, st.Digest, d[4])
	}
	if c := g.Checkpoint(); c != (Checkpoint{Frames: 5, Digest: d[4]}) {
		t.Fatalf("Checkpoint() = %+v", c)
	}
}

// A replayed frame that differs is reported once, at the first checkpoint
// after it, with the last frame that matched; later checkpoints are not
// compared.
func TestVerifyMismatch(t *testing.T) {
	primary := digests("f1", "f2", "f3", "f4", "f5", "f6")
	for _, early := range []bool{true, false} {
		t.Run(fmt.Sprintf("checkpoint-first=%v", early), func(t *testing.T) {
			g, got := newVerifying(t, 0)
			feed(g, "f1", "f2")
			g.Verify(Checkpoint{Frames: 2, Digest: primary[1]})
			if early {
				g.Verify(Checkpoint{Frames: 5, Digest: primary[4]})
				feed(g, "f3", "X4", "f5", "f6")
			} else {
				feed(g, "f3", "X4", "f5", "f6")
				g.Verify(Checkpoint{Frames: 5, Digest: primary[4]})
			}
			g.Verify(Checkpoint{Frames: 6, Digest: primary[5]})
			if len(*got) != 1 {
				t.Fatalf("mismatches: %v, want one", *got)
			}
			m := (*got)[0]
			if m.Frame != 5 || m.After != 2 || m.Primary != primary[4] || m.Backup == primary[4] {
				t.Fatalf("mismatch %+v", m)
			}
			if st := g.Stats(); st.Mismatch == nil || *st.Mismatch != m || st.VerifyChecked != 2 {
				t.Fatalf("stats %+v", st)
			}
			if s := m.String(); !strings.Contains(s, "between frame 3 (frames up to 2 matched) and frame 5") {
				t.Fatalf("String() = %q", s)
			}
		})
	}
}

// Checkpoints the gate cannot compare are skipped, never reported: older
// than its history, read by an earlier process (a planned restart), or
// arriving with too many already pending.
func TestVerifySkips(t *testing.T) {
	g, got := newVerifying(t, 0)
	frames := make([]string, VerifyHistory+10)
	for i := range frames {
		frames[i] = fmt.Sprint("f", i)
	}
	d := digests(frames...)
	feed(g, frames...)
	g.Verify(Checkpoint{Frames: 5, Digest: 1}) // wrong, but out of the history
	g.Verify(Checkpoint{Frames: 20, Digest: d[19]})
	if st := g.Stats(); len(*got) != 0 || st.VerifySkipped != 1 || st.VerifyChecked != 1 {
		t.Fatalf("mismatches %v, stats %+v", *got, st)
	}

	// After a handover: numbering goes on from 100, digests from theirs.
	h, got := newVerifying(t, 100)
	h.Verify(Checkpoint{Frames: 100, Digest: 1})
	h.Verify(Checkpoint{Frames: 50, Digest: 1})
	for i := range maxPending + 5 {
		h.Verify(Checkpoint{Frames: uint64(200 + i), Digest: 1})
	}
	if st := h.Stats(); len(*got) != 0 || st.VerifySkipped != 7 || st.VerifyChecked != 0 {
		t.Fatalf("mismatches %v, stats %+v", *got, st)
	}
	feed(h, "a")
	if st := h.Stats(); st.ReadFrames != 101 {
		t.Fatalf("ReadFrames %d, want 101", st.ReadFrames)
	}

	// Without Config.Verify, Verify does nothing.
	p, err := New(Config{Enabled: true, Position: func() uint64 { return 0 }})
	if err != nil {
		t.Fatal(err)
	}
	feed(p, "a")
	p.Verify(Checkpoint{Frames: 1, Digest: 1})
	if st := p.Stats(); st.Mismatch != nil || st.VerifyChecked != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// A checkpoint compared equal is not compared again; one absurdly far
// ahead is skipped, not kept; after StopVerify (END) nothing is compared,
// not even what was pending.
func TestVerifyRepeatsAndStop(t *testing.T) {
	d := digests("f1", "f2", "f3")
	g, got := newVerifying(t, 0)
	feed(g, "f1", "f2")
	g.Verify(Checkpoint{Frames: 2, Digest: d[1]})
	g.Verify(Checkpoint{Frames: 2, Digest: d[1]}) // an idle NIC's next heartbeat
	g.Verify(Checkpoint{Frames: 1 << 40, Digest: 1})
	g.Verify(Checkpoint{Frames: 3, Digest: 7}) // wrong, pending
	if st := g.Stats(); st.VerifyChecked != 1 || st.VerifySkipped != 1 {
		t.Fatalf("stats %+v", st)
	}
	g.StopVerify()
	feed(g, "live frame")
	g.Verify(Checkpoint{Frames: 3, Digest: 7})
	if st := g.Stats(); len(*got) != 0 || st.Mismatch != nil || st.VerifyChecked != 1 {
		t.Fatalf("after StopVerify: mismatches %v, stats %+v", *got, st)
	}
}

// A gate carried across a planned restart goes on with the same digests.
func TestDigestBefore(t *testing.T) {
	d := digests("a", "b", "c")
	g, err := New(Config{FramesBefore: 2, DigestBefore: d[1]})
	if err != nil {
		t.Fatal(err)
	}
	feed(g, "c")
	if c := g.Checkpoint(); c != (Checkpoint{Frames: 3, Digest: d[2]}) {
		t.Fatalf("Checkpoint() = %+v, want 3 %x", c, d[2])
	}
}

// BenchmarkNextDigest: frames of an echo's reply, the MTU and a 64 KiB
// TSO segment of a bulk transmit (MB/s of frame data).
func BenchmarkNextDigest(b *testing.B) {
	for _, n := range []int{66, 1514, 65550} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			f := make([]byte, n)
			b.SetBytes(int64(len(f)))
			var d uint64
			for b.Loop() {
				d = NextDigest(d, f)
			}
			_ = d
		})
	}
}

// Settled: every checkpoint compared and equal, none waiting for the
// replay; a mismatch or StopVerify is never settled.
func TestVerifySettled(t *testing.T) {
	d := digests("f1", "f2", "f3")
	g, _ := newVerifying(t, 0)
	if !g.Settled() {
		t.Fatal("not settled with nothing to compare")
	}
	g.Verify(Checkpoint{Frames: 2, Digest: d[1]})
	if g.Settled() {
		t.Fatal("settled with a checkpoint the replay has not reached")
	}
	feed(g, "f1", "f2")
	if !g.Settled() {
		t.Fatal("not settled after the checkpoint matched")
	}
	g.Verify(Checkpoint{Frames: 2, Digest: d[1]}) // again: nothing new
	if !g.Settled() {
		t.Fatal("a repeated checkpoint unsettled it")
	}
	feed(g, "X3")
	g.Verify(Checkpoint{Frames: 3, Digest: d[2]})
	if g.Settled() {
		t.Fatal("settled after a mismatch")
	}
	if p, _ := New(Config{Enabled: true, Position: func() uint64 { return 0 }}); !p.Settled() {
		t.Fatal("a gate that does not verify is not settled")
	}
}
