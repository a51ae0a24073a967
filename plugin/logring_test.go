package plugin

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/libvirt-ft/libvirt-ft/failover"
	"github.com/libvirt-ft/libvirt-ft/logchan"
)

// instrEvent is an INSTRUCTION event of n guest instructions.
func instrEvent(n uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{logchan.KindInstruction}, n)
}

func TestLogRingAt(t *testing.T) {
	r := newLogRing(1 << 10)
	// INSTR 100, INTERRUPT, INSTR 50, CHECKPOINT, INTERRUPT
	var log []byte
	log = append(log, instrEvent(100)...)
	irq := len(log)
	log = append(log, logchan.KindInterrupt)
	mid := len(log)
	log = append(log, instrEvent(50)...)
	cp := len(log)
	log = append(log, logchan.KindCheckpoint)
	log = append(log, logchan.KindInterrupt)
	r.add(0, log[:irq+1], 100)
	r.add(uint64(irq+1), log[irq+1:], 50)

	for _, tc := range []struct {
		icount uint64
		off    int
		kind   string
	}{
		{100, irq, logchan.KindName(logchan.KindInterrupt)},
		{120, mid, "INSTRUCTION"},
		{150, cp, logchan.KindName(logchan.KindCheckpoint)},
		{10, 0, "INSTRUCTION"},
	} {
		p := r.at(tc.icount)
		if p.Kind != tc.kind || p.Offset != uint64(tc.off) {
			t.Errorf("at(%d) = %+v, want %s at offset %d", tc.icount, p, tc.kind, tc.off)
		}
	}
	if p := r.at(500); p.Kind != "" {
		t.Errorf("at(500) beyond the log = %+v, want no event", p)
	}
	// The events after the first at the same icount: the replay may wait
	// at any of them.
	if p := r.at(150); len(p.Then) != 1 || p.Then[0] != logchan.KindName(logchan.KindInterrupt) || p.More ||
		!strings.Contains(p.String(), "(then at the same icount: INTERRUPT; the replay waits at one of these)") {
		t.Errorf("at(150) = %+v (%s); want INTERRUPT after the CHECKPOINT", p, p)
	}
	if p := r.at(100); len(p.Then) != 0 || strings.Contains(p.String(), "then at") {
		t.Errorf("at(100) = %+v; want nothing after the INTERRUPT (an INSTRUCTION follows)", p)
	}
	// More than maxStallThen: cut, and said so.
	q := newLogRing(1 << 10)
	burst := instrEvent(7)
	for i := 0; i < maxStallThen+3; i++ {
		burst = append(burst, logchan.KindCheckpoint+1)
	}
	q.add(0, burst, 7)
	if p := q.at(7); len(p.Then) != maxStallThen || !p.More || !strings.HasSuffix(p.String(), ", ...; the replay waits at one of these)") {
		t.Errorf("at(7) in a burst = %d then, more %v: %s", len(p.Then), p.More, p)
	}
}

func TestLogRingTrimsWholeEvents(t *testing.T) {
	r := newLogRing(64)
	var off uint64
	for i := 0; i < 100; i++ {
		ev := append(instrEvent(10), logchan.KindInterrupt)
		r.add(off, ev, 10)
		off += uint64(len(ev))
	}
	if len(r.buf) > 2*64 {
		t.Fatalf("ring holds %d bytes, want at most %d", len(r.buf), 2*64)
	}
	// Whatever was dropped, the ring still starts at an event boundary with
	// the right instruction sum: the last INTERRUPT is at icount 1000.
	if p := r.at(1000); p.Kind != logchan.KindName(logchan.KindInterrupt) || p.Offset != off-1 {
		t.Fatalf("at(1000) = %+v, want INTERRUPT at %d", p, off-1)
	}
	// An icount older than the ring is reported as not kept.
	if p := r.at(5); p.Kind != "" {
		t.Fatalf("at(5) = %+v, want not kept", p)
	}
	start, instr := r.bounds()
	data := r.snapshot()
	if start+uint64(len(data)) != off || instr != r.instr {
		t.Fatalf("saved %d bytes from %d (instr %d), want up to %d", len(data), start, instr, off)
	}
	n, err := logchan.WalkEvents(data, start, func(uint64, []byte, uint64) bool { return true })
	if err != nil || n != len(data) {
		t.Fatalf("saved log walks %d of %d bytes: %v", n, len(data), err)
	}
}

func TestLogRingGapRestarts(t *testing.T) {
	r := newLogRing(1 << 10)
	r.add(0, instrEvent(10), 10)
	r.add(100, []byte{logchan.KindInterrupt}, 0) // not at 5: a gap
	if r.start != 100 || r.instr != 10 || len(r.buf) != 1 {
		t.Fatalf("after a gap: start %d instr %d len %d", r.start, r.instr, len(r.buf))
	}
}

// An adopted backup's ring starts mid-stream, at the icount its feeder
// carried over (startCore): a stall after the adoption is placed there.
func TestLogRingStartsAtAdoptedIcount(t *testing.T) {
	r := newLogRing(1 << 10)
	r.total = 2232473580
	r.add(4206841, instrEvent(747974), 747974)
	r.add(4206846, []byte{logchan.KindInterrupt}, 0)
	if off, instr := r.bounds(); off != 4206841 || instr != 2232473580 {
		t.Fatalf("bounds = %d, %d; want 4206841, 2232473580", off, instr)
	}
	if p := r.at(2232473580 + 747974); p.Kind == "" || p.Offset != 4206846 {
		t.Fatalf("at the adopted icount + 747974: %+v; want the INTERRUPT at 4206846", p)
	}
}

func TestCleanBye(t *testing.T) {
	long := strings.Repeat("x", 4096)
	b := cleanBye(logchan.Bye{Reason: "backup said\x1b]0;pwned\x07" + long, Detail: long})
	if len(b.Reason) != maxByeReason || len(b.Detail) != maxByeDetail {
		t.Errorf("cleanBye kept %d and %d bytes; want %d and %d", len(b.Reason), len(b.Detail), maxByeReason, maxByeDetail)
	}
	if strings.ContainsAny(b.Reason, "\x1b\x07") {
		t.Errorf("cleanBye left control characters: %q", b.Reason[:40])
	}
	// The constants the failover core compares with pass unchanged.
	for _, r := range []string{failover.ByeRestarting, failover.ByeSwitchover, failover.ByeUnprotect, failover.ByeLive, failover.ByeShutdown} {
		if got := cleanBye(logchan.Bye{Clean: true, Reason: r}); got.Reason != r || !got.Clean {
			t.Errorf("cleanBye(%q) = %+v", r, got)
		}
	}
}

func TestClip(t *testing.T) {
	if got := clip("ok\u202e", 10); got != "ok " {
		t.Errorf("clip kept a bidi override: %q", got)
	}
	long := strings.Repeat("é", 100)
	for n := 3; n < 20; n++ {
		if got := clip(long, n); len(got) > n || !strings.HasSuffix(got, "…") {
			t.Errorf("clip(%d) = %q (%d bytes)", n, got, len(got))
		}
	}
}
