package plugin

import (
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sirupsen/logrus"
)

func TestFitProcs(t *testing.T) {
	for _, c := range []struct{ busy, limit, want int }{
		{0, 8, 1}, {1, 8, 1}, {3, 8, 3}, {8, 8, 8}, {12, 8, 8}, {0, 1, 1}, {5, 1, 1},
	} {
		if got := fitProcs(c.busy, c.limit); got != c.want {
			t.Errorf("fitProcs(%d busy, limit %d) = %d, want %d", c.busy, c.limit, got, c.want)
		}
	}
}

// fakeProcs records the tuner's calls: n for GOMAXPROCS(n), -1 for
// SetDefaultGOMAXPROCS.
type fakeProcs struct {
	mu    sync.Mutex
	calls []int
}

func (f *fakeProcs) tuner(limit int) *procsTuner {
	return &procsTuner{limit: limit, cur: limit,
		set: func(n int) int {
			if n == 0 { // a read
				return limit
			}
			f.mu.Lock()
			f.calls = append(f.calls, n)
			f.mu.Unlock()
			return 0
		},
		reset: func() { f.mu.Lock(); f.calls = append(f.calls, -1); f.mu.Unlock() }}
}

func (f *fakeProcs) got() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// TestProcsTunerSetsOnlyChanges: the tuner calls the runtime only when
// the width changes, never above its limit, and at the limit it restores
// the runtime's default instead of fixing a number.
func TestProcsTunerSetsOnlyChanges(t *testing.T) {
	var f fakeProcs
	tu := f.tuner(4)
	for _, busy := range []int{0, 0, 1, 2, 2, 9, 3} {
		tu.fit(busy, false)
	}
	if want := []int{1, 2, -1, 3}; !slices.Equal(f.got(), want) {
		t.Fatalf("runtime calls %v, want %v", f.got(), want)
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

// stubRun is a run that only answers active() and heartbeatTimeout().
type stubRun struct {
	run
	on bool
	hb time.Duration
}

func (s stubRun) active() bool                    { return s.on }
func (s stubRun) heartbeatTimeout() time.Duration { return s.hb }

// TestBusyUnitsCountsActiveRunsAndControlConns: domains with no run or an
// ended run do not count; open control connections do.
func TestBusyUnitsCountsActiveRunsAndControlConns(t *testing.T) {
	d := newDaemon(Config{}, logrus.New(), nil, nil)
	d.entry("u1", "a").setRun(stubRun{on: true})
	d.entry("u2", "b").setRun(stubRun{on: false})
	d.entry("u3", "c")
	d.entry("u4", "d").setRun(stubRun{on: true})
	d.ctlConns.Add(1)
	if n := d.busyUnits(); n != 3 {
		t.Fatalf("busyUnits = %d, want 3", n)
	}
}

// TestBusyUnitsShortHeartbeatCountsTwice: an active run whose heartbeat
// timeout is under 200 ms counts as two units (a second P while a
// blocking call holds one); an ended one not at all.
func TestBusyUnitsShortHeartbeatCountsTwice(t *testing.T) {
	d := newDaemon(Config{}, logrus.New(), nil, nil)
	d.entry("u1", "a").setRun(stubRun{on: true, hb: 150 * time.Millisecond})
	d.entry("u2", "b").setRun(stubRun{on: false, hb: 50 * time.Millisecond})
	d.entry("u3", "c").setRun(stubRun{on: true, hb: 200 * time.Millisecond})
	if n := d.busyUnits(); n != 3 {
		t.Fatalf("busyUnits = %d, want 3 (2 for the 150 ms run, 1 for the 200 ms one)", n)
	}
	if got := fitProcs(d.busyUnits(), 2); got != 2 {
		t.Fatalf("fitProcs = %d, want 2", got)
	}
}

// TestTuneProcsFollowsRunsAtOnce: a run set, or a control connection
// counted, changes GOMAXPROCS without waiting for the interval; the loop
// ends when stopped. Without a tuner (tests, GOMAXPROCS in the
// environment) it returns at once.
func TestTuneProcsFollowsRunsAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var f fakeProcs
		d := newDaemon(Config{}, logrus.New(), nil, nil)
		d.tuneProcs(make(chan struct{})) // nil tuner: returns
		d.procs = f.tuner(4)
		stop, done := make(chan struct{}), make(chan struct{})
		go func() { d.tuneProcs(stop); close(done) }()
		synctest.Wait() // no run: 1
		d.entry("u1", "a").setRun(stubRun{on: true})
		synctest.Wait() // 1 run: still 1
		d.entry("u2", "b").setRun(stubRun{on: true})
		synctest.Wait() // 2
		d.ctlConns.Add(3)
		d.wakeProcs()
		synctest.Wait() // 5: the limit, the runtime's default
		d.ctlConns.Add(-3)
		d.wakeProcs()
		synctest.Wait() // a wake-up never lowers: still the limit
		if want := []int{1, 2, -1}; !slices.Equal(f.got(), want) {
			t.Fatalf("runtime calls after the wake-ups %v, want %v", f.got(), want)
		}
		time.Sleep(procsInterval)
		synctest.Wait() // the interval lowers: 2 runs
		close(stop)
		<-done
		if want := []int{1, 2, -1, 2}; !slices.Equal(f.got(), want) {
			t.Fatalf("runtime calls %v, want %v", f.got(), want)
		}
	})
}

// TestProcsTunerFollowsTheRuntimesDefault: while the runtime's default is
// in force the runtime itself follows the CPU quota; the tuner reads it
// again before it counts, so it does not set more Ps than the quota the
// runtime last followed.
func TestProcsTunerFollowsTheRuntimesDefault(t *testing.T) {
	runtimeProcs := 4
	var sets []int
	tu := &procsTuner{limit: 4, cur: 4,
		set: func(n int) int {
			if n == 0 {
				return runtimeProcs
			}
			sets = append(sets, n)
			return 0
		},
		reset: func() { sets = append(sets, -1) }}
	runtimeProcs = 2 // the quota fell; the runtime set 2 by itself
	if got := tu.fit(3, false); got != 2 || len(sets) != 0 {
		t.Fatalf("fit(3) = %d with runtime calls %v, want 2 and none", got, sets)
	}
	if got := tu.fit(1, false); got != 1 || !slices.Equal(sets, []int{1}) {
		t.Fatalf("fit(1) = %d with runtime calls %v, want 1 and [1]", got, sets)
	}
}
