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
		now         time.Time
		wantLagging bool
	}{
		{"no sample from the backup yet", 0, 200, t0.Add(10 * time.Second), false},
		{"caught up with the log", 300, 300, t0.Add(10 * time.Second), false},
		{"behind, recent", 150, 200, t0.Add(400 * time.Millisecond), false},
		{"behind, old", 150, 200, t0.Add(700 * time.Millisecond), true},
		{"behind the first sample, old", 50, 200, t0.Add(600 * time.Millisecond), true},
	} {
		if got := lagExceeded(samples, c.icount, c.logInstr, max, c.now); got != c.wantLagging {
			t.Errorf("%s: lagging %v, want %v", c.name, got, c.wantLagging)
		}
	}
}
