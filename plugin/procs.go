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
// thread. In the lab (2 CPUs, pinned; BENCHMARKS.md, "Issue 12: session
// 35") one P for the one protected domain took the gate-on TCP round trip
// median from 888 to 652 µs and its p99 from 6.3 to 4.4 ms (medians of
// eight and six alternating runs).
//
// So the daemon runs one P per unit of work that can keep a P busy: each
// domain with an active run on this host (primary or backup), and each
// open control connection from a peer (it may hash or seed whole disks
// for a domain not yet running here). At least one, at most what the Go
// runtime chose at start (the CPUs it may use; at that width the runtime's
// own default is restored, so that it follows CPU quota changes again).
// Counted again when a run is set or a control connection opens or
// closes (raising only: each change stops the world), and every
// procsInterval (raising or lowering).
//
// Trade-off: with one P, a goroutine blocked in a system call or a cgo
// call (libvirt, fsync) holds the P until the runtime's monitor takes it
// back, which can take up to about 20 ms when the daemon has been busy
// for a while. The default heartbeats (interval 100 ms, timeout 1000 ms)
// leave room for that; so an active run whose heartbeat timeout is under
// shortHeartbeat counts as two units, which gives its goroutines a second
// P while one is held. GOMAXPROCS set in the environment (the systemd
// unit's Environment=) wins: the daemon then never changes it.

// shortHeartbeat: an active run with a heartbeat timeout under this
// counts as two busy units (a P held up to about 20 ms by a blocking call
// must stay well inside the timeout; the default timeout is 1000 ms).
const shortHeartbeat = 200 * time.Millisecond

// procsInterval is how often the daemon counts again without a wake-up.
const procsInterval = 2 * time.Second

// fitProcs returns the GOMAXPROCS for busy units of work on a host where
// the Go runtime may use at most limit Ps: busy, at least 1, at most
// limit.
func fitProcs(busy, limit int) int {
	return max(1, min(busy, limit))
}

// procsTuner sets GOMAXPROCS from the number of busy units of work.
type procsTuner struct {
	limit int
	cur   int
	// set is runtime.GOMAXPROCS (set(0) reads it), reset
	// runtime.SetDefaultGOMAXPROCS (fakes in tests).
	set   func(int) int
	reset func()
}

// newProcsTuner returns nil when GOMAXPROCS is set in the environment.
func newProcsTuner() *procsTuner {
	if os.Getenv("GOMAXPROCS") != "" {
		return nil
	}
	n := runtime.GOMAXPROCS(0)
	return &procsTuner{limit: n, cur: n, set: runtime.GOMAXPROCS, reset: runtime.SetDefaultGOMAXPROCS}
}

// fit sets GOMAXPROCS for busy units of work if that changes it, and
// returns the value in force. With raiseOnly it only ever raises it: a
// change stops the world, so a wake-up (a run set, a control connection
// opened or closed) adds Ps at once and only the interval takes them away,
// and a peer's short control connections do not pause the daemon twice
// each. At the limit it restores the runtime's default and takes the
// runtime's value as the new limit (it follows the CPU quota again).
func (t *procsTuner) fit(busy int, raiseOnly bool) int {
	if t.cur == t.limit {
		// The runtime's default is in force, and the runtime changes
		// it when the CPU quota changes: read it again (a read does not
		// stop the world).
		t.limit = max(t.set(0), 1)
		t.cur = t.limit
	}
	want := fitProcs(busy, t.limit)
	if want == t.cur || (raiseOnly && want < t.cur) {
		return t.cur
	}
	if want == t.limit {
		t.reset()
		t.limit = max(t.set(0), 1)
		want = t.limit
	} else {
		t.set(want)
	}
	t.cur = want
	return t.cur
}

// notify wakes whoever listens on c without blocking (nil: nobody): a
// send on a channel of capacity 1 that coalesces wake-ups (procs.go,
// the backup's drain wake, libvirt's connection-lost signal).
func notify(c chan<- struct{}) {
	if c == nil {
		return
	}
	select {
	case c <- struct{}{}:
	default:
	}
}

// wakeProcs asks tuneProcs to count again now.
func (d *Daemon) wakeProcs() { notify(d.procsWake) }

// busyUnits counts the domains whose current run is active (two for a
// run whose heartbeat timeout is under shortHeartbeat) and the open
// control connections.
func (d *Daemon) busyUnits() int {
	n := int(d.ctlConns.Load())
	for _, dm := range d.domains() {
		if r := dm.current(); r != nil && r.active() {
			n++
			if t := r.heartbeatTimeout(); t > 0 && t < shortHeartbeat {
				n++
			}
		}
	}
	return n
}

// tuneProcs keeps GOMAXPROCS at one P per busy unit of work (see
// procsTuner) until stop is closed; it returns at once when d.procs is
// nil.
func (d *Daemon) tuneProcs(stop <-chan struct{}) {
	t := d.procs
	if t == nil {
		return
	}
	tick := time.NewTicker(procsInterval)
	defer tick.Stop()
	raiseOnly := false
	for {
		prev := t.cur
		if now := t.fit(d.busyUnits(), raiseOnly); now != prev {
			d.log.Debugf("GOMAXPROCS %d: one per protected domain running here (two under a %v heartbeat timeout) and per peer control connection (at most %d)", now, shortHeartbeat, t.limit)
		}
		select {
		case <-stop:
			return
		case <-tick.C:
			raiseOnly = false
		case <-d.procsWake:
			raiseOnly = true
		}
	}
}
