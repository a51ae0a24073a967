package plugin

import (
	"testing"
	"time"
)

func TestLagExceeded(t *testing.T) {
	t0 := time.Unix(1000, 0)
	samples := []sample{{instr: 100, at: t0}, {instr: 200, at: t0.Add(100 * time.Millisecond)}, {instr: 300, at: t0.Add(200 * time.Millisecond)}}
	max := 500 * time.Millisecond
	for _, c := range []struct {
		name        string
		icount      uint64
		logInstr    uint64
		head        time.Time // the latest log sent
		wantLagging bool
	}{
		{"no sample from the backup yet", 0, 200, t0.Add(10 * time.Second), false},
		{"caught up with the log", 300, 300, t0.Add(10 * time.Second), false},
		{"behind, recent", 150, 200, t0.Add(400 * time.Millisecond), false},
		{"behind, old", 150, 200, t0.Add(700 * time.Millisecond), true},
		{"behind the first sample, old", 50, 200, t0.Add(600 * time.Millisecond), true},
		// A held primary sends nothing: its head stays at the last send
		// however long the hold, and the backup catching up ends it.
		{"held: head at the last send, backup within max of it", 250, 300, t0.Add(200 * time.Millisecond), false},
		{"held: backup far behind the last send", 50, 300, t0.Add(600 * time.Millisecond), true},
	} {
		if got := lagExceeded(samples, c.icount, c.logInstr, max, c.head); got != c.wantLagging {
			t.Errorf("%s: lagging %v, want %v", c.name, got, c.wantLagging)
		}
	}
}
