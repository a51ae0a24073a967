package plugin

import (
	"os"
	"runtime"
	"time"
)

// The daemon's Go scheduler width (GOMAXPROCS).
//
// A protected domain's hot path in libvirt-ftd is a chain of small steps,
// each in its own goroutine: the primary reads FIFO A and sends the log,
// reads the backup's ack, releases the gated frame into QEMU; the backup
// reads the log, queues the ack for its writer, feeds FIFO B. With more
// Ps than work, every hand-over from one goroutine to the next wakes an
// idle thread (a futex wake, a context switch, often on the CPU where the
// domain's vCPU runs) instead of running the next goroutine on the same
// thread. In the lab (2 CPUs, pinned; BENCHMARKS.md, session 35) one P
// for the one protected domain took the gate-on TCP round trip median
// from 717–1046 µs to 640–654 µs in four alternating pairs, and HTTP
// requests per second from 69–111 to 102–122.
//
// So the daemon runs one P per domain with an active run on this host
// (primary or backup), at least one and at most what the Go runtime chose
// at start (the CPUs it may use). GOMAXPROCS set in the environment (the
// systemd unit's Environment=) wins, and nothing is changed.

// procsInterval is how often the daemon re-counts its active runs (ms
// granularity is not needed: a newly started domain runs with the
// previous width for at most this long).
const procsInterval = 2 * time.Second

// fitProcs returns the GOMAXPROCS for active runs on a host where the Go
// runtime may use at most limit Ps: active, at least 1, at most limit.
func fitProcs(active, limit int) int {
	return max(1, min(active, limit))
}

// procsTuner sets GOMAXPROCS from the number of active runs.
type procsTuner struct {
	limit int
	cur   int
	// set is runtime.GOMAXPROCS (a fake in tests).
	set func(int) int
}

// newProcsTuner returns nil when GOMAXPROCS is set in the environment.
func newProcsTuner() *procsTuner {
	if os.Getenv("GOMAXPROCS") != "" {
		return nil
	}
	n := runtime.GOMAXPROCS(0)
	return &procsTuner{limit: n, cur: n, set: runtime.GOMAXPROCS}
}

// fit sets GOMAXPROCS for active runs if that changes it, and returns
// the value in force.
func (t *procsTuner) fit(active int) int {
	if want := fitProcs(active, t.limit); want != t.cur {
		t.set(want)
		t.cur = want
	}
	return t.cur
}

// activeRuns counts the domains whose current run is active.
func (d *Daemon) activeRuns() int {
	n := 0
	for _, dm := range d.domains() {
		if r := dm.current(); r != nil && r.active() {
			n++
		}
	}
	return n
}

// tuneProcs keeps GOMAXPROCS at one P per active run until stop is
// closed (see procsTuner).
func (d *Daemon) tuneProcs(t *procsTuner, stop <-chan struct{}) {
	if t == nil {
		return
	}
	tick := time.NewTicker(procsInterval)
	defer tick.Stop()
	for {
		prev := t.cur
		if now := t.fit(d.activeRuns()); now != prev {
			d.log.Infof("GOMAXPROCS %d: one per protected domain running here (at most %d)", now, t.limit)
		}
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}
