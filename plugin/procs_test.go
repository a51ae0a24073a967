package plugin

import (
	"testing"

	"github.com/sirupsen/logrus"
)

func TestFitProcs(t *testing.T) {
	for _, c := range []struct{ active, limit, want int }{
		{0, 8, 1}, {1, 8, 1}, {3, 8, 3}, {8, 8, 8}, {12, 8, 8}, {0, 1, 1}, {5, 1, 1},
	} {
		if got := fitProcs(c.active, c.limit); got != c.want {
			t.Errorf("fitProcs(%d active, limit %d) = %d, want %d", c.active, c.limit, got, c.want)
		}
	}
}

// TestProcsTunerSetsOnlyChanges: the tuner calls GOMAXPROCS only when the
// width changes, and never above the limit it started with.
func TestProcsTunerSetsOnlyChanges(t *testing.T) {
	var calls []int
	tu := &procsTuner{limit: 4, cur: 4, set: func(n int) int { calls = append(calls, n); return 0 }}
	for _, active := range []int{0, 0, 1, 2, 2, 9, 3} {
		tu.fit(active)
	}
	want := []int{1, 2, 4, 3}
	if len(calls) != len(want) {
		t.Fatalf("GOMAXPROCS calls %v, want %v", calls, want)
	}
	for i := range want {
		if calls[i] != want[i] {
			t.Fatalf("GOMAXPROCS calls %v, want %v", calls, want)
		}
	}
}

// TestNewProcsTunerLeavesTheEnvironmentAlone: GOMAXPROCS in the
// environment wins (the systemd unit's Environment=).
func TestNewProcsTunerLeavesTheEnvironmentAlone(t *testing.T) {
	t.Setenv("GOMAXPROCS", "3")
	if tu := newProcsTuner(); tu != nil {
		t.Fatalf("newProcsTuner with GOMAXPROCS set = %+v, want nil", tu)
	}
}

// stubRun is a run that only answers active().
type stubRun struct {
	run
	on bool
}

func (s stubRun) active() bool { return s.on }

// TestActiveRunsCountsActiveOnly: domains with no run or an ended run do
// not count towards GOMAXPROCS.
func TestActiveRunsCountsActiveOnly(t *testing.T) {
	d := newDaemon(Config{}, logrus.New(), nil, nil)
	d.entry("u1", "a").setRun(stubRun{on: true})
	d.entry("u2", "b").setRun(stubRun{on: false})
	d.entry("u3", "c")
	d.entry("u4", "d").setRun(stubRun{on: true})
	if n := d.activeRuns(); n != 2 {
		t.Fatalf("activeRuns = %d, want 2", n)
	}
}
