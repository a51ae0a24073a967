package plugin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// SchedTimes is what the kernel's scheduler reports of a running QEMU's
// threads, summed since each started (/proc/PID/task/TID/schedstat: time
// on a CPU, then time runnable but waiting for one, in ns; Linux
// Documentation/scheduler/sched-stats.rst): its main thread (the main
// loop, which also answers the monitor) and its vCPU threads.
type SchedTimes struct {
	// Pid is the QEMU's process id: times of two processes do not
	// compare.
	Pid               int
	MainRun, MainWait time.Duration
	VCPURun, VCPUWait time.Duration
}

// errNoQEMU: SchedTimes found no running QEMU of the domain (its pid
// file is gone, or names a process that is gone or runs something else):
// the domain stopped, which is no failure to report.
var errNoQEMU = errors.New("no running QEMU of the domain")

// readSchedTimes reads SchedTimes of process pid under proc (normally
// /proc). A vCPU thread is one whose name (comm) QEMU set to "CPU n/TCG",
// "ALL CPUs/TCG" (one thread for all vCPUs, as record/replay runs them)
// or "CPU n/KVM". Errors: the process or its main thread cannot be read.
func readSchedTimes(proc string, pid int) (SchedTimes, error) {
	st := SchedTimes{Pid: pid}
	dir := filepath.Join(proc, strconv.Itoa(pid), "task")
	tids, err := os.ReadDir(dir)
	if err != nil {
		return st, err
	}
	main := false
	for _, t := range tids {
		run, wait, err := readSchedstat(filepath.Join(dir, t.Name(), "schedstat"))
		if err != nil {
			continue // the thread ended meanwhile
		}
		if t.Name() == strconv.Itoa(pid) {
			st.MainRun, st.MainWait, main = run, wait, true
			continue
		}
		comm, err := os.ReadFile(filepath.Join(dir, t.Name(), "comm"))
		if err != nil {
			continue
		}
		if c := strings.TrimSpace(string(comm)); strings.HasSuffix(c, "/TCG") || strings.HasSuffix(c, "/KVM") {
			st.VCPURun += run
			st.VCPUWait += wait
		}
	}
	if !main {
		return st, fmt.Errorf("%s: no main thread %d", dir, pid)
	}
	return st, nil
}

// readSchedstat parses a schedstat file: "RUN_NS WAIT_NS TIMESLICES".
func readSchedstat(path string) (run, wait time.Duration, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, 0, fmt.Errorf("%s: %q is not RUN WAIT SLICES", path, b)
	}
	r, err1 := strconv.ParseInt(f[0], 10, 64)
	w, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("%s: %q is not RUN WAIT SLICES", path, b)
	}
	return time.Duration(r), time.Duration(w), nil
}

// schedSample is a SchedTimes read at a moment.
type schedSample struct {
	at time.Time
	st SchedTimes
}

// schedRing keeps the last samples: max of them, or schedRingLen (a
// minute at vcpuWindow) when max is 0. A backup run sizes it to cover its
// longest stand before a verdict (the slow stall bound, failover
// SlowStallBound: 20 s for the default bound, 75 s for a 60 s one). Not
// safe for concurrent use: the backup run holds its mu.
type schedRing struct {
	s   []schedSample
	max int
}

const schedRingLen = 240

// schedRingFor is a ring holding at least d of samples at vcpuWindow
// (and a few more), never fewer than schedRingLen.
func schedRingFor(d time.Duration) schedRing {
	return schedRing{max: max(schedRingLen, int(d/vcpuWindow)+8)}
}

func (r *schedRing) add(at time.Time, st SchedTimes) {
	n := r.max
	if n <= 0 {
		n = schedRingLen
	}
	if len(r.s) >= n {
		r.s = append(r.s[:0], r.s[1:]...)
	}
	r.s = append(r.s, schedSample{at, st})
}

// over returns how the QEMU's threads spent the last d before now: the
// difference between the newest sample and the newest one at least d
// older, and the wall time between the two. ok is false without such a
// pair that fits the stand: the newest sample older than two sampling
// periods (sampling stopped or lags), a pair spanning less than three
// quarters of d or more than d and two periods (a gap in the samples),
// two QEMUs (the pid changed), or times that went backwards.
func (r *schedRing) over(now time.Time, d time.Duration) (diff SchedTimes, wall time.Duration, ok bool) {
	if len(r.s) < 2 {
		return SchedTimes{}, 0, false
	}
	last := r.s[len(r.s)-1]
	if now.Sub(last.at) > 2*vcpuWindow {
		return SchedTimes{}, 0, false
	}
	for i := len(r.s) - 2; i >= 0; i-- {
		a := r.s[i]
		if last.at.Sub(a.at) < d && i > 0 {
			continue
		}
		wall = last.at.Sub(a.at)
		diff = SchedTimes{
			Pid:     last.st.Pid,
			MainRun: last.st.MainRun - a.st.MainRun, MainWait: last.st.MainWait - a.st.MainWait,
			VCPURun: last.st.VCPURun - a.st.VCPURun, VCPUWait: last.st.VCPUWait - a.st.VCPUWait,
		}
		if wall < d*3/4 || wall > d+2*vcpuWindow || a.st.Pid != last.st.Pid ||
			diff.MainRun < 0 || diff.MainWait < 0 || diff.VCPURun < 0 || diff.VCPUWait < 0 {
			return SchedTimes{}, 0, false
		}
		return diff, wall, true
	}
	return SchedTimes{}, 0, false
}

// describeStand words how a replaying QEMU's threads spent a stand of
// wall time (docs/replay.md §12), by what took most of it. Waiting more
// than twice as long as running is starvation; otherwise running comes
// first: with the main loop and the vCPU pinned to one CPU (the bench's
// two-host estimate), each waits about as long as the other runs.
//   - on a CPU at least half the time:
//     both threads alike (each at least a fifth of the time, the smaller
//     at least half the larger): the shape of a livelock of the two,
//     each waking the other (session 30 sampled two such stands), or both
//     working slowly;
//     else the vCPU more than the main loop: a slow replay (long events
//     through the softmmu's slow paths, session 20);
//     else the main loop more than the vCPU;
//   - runnable but waiting for a CPU at least half the time: starved;
//   - on a CPU and waiting for one in turns, together half the time or
//     more: a loaded CPU;
//   - otherwise mostly off a CPU: waiting (its own disk I/O, log, a lock)
//     or stopped.
func describeStand(st SchedTimes, wall time.Duration) string {
	ms := func(d time.Duration) int64 { return d.Milliseconds() }
	run, wait := st.MainRun+st.VCPURun, st.MainWait+st.VCPUWait
	lo, hi := min(st.MainRun, st.VCPURun), max(st.MainRun, st.VCPURun)
	var what string
	switch {
	case wait > 2*run && 2*wait >= wall:
		// Runnable far more than running: starved, whatever ran.
		what = "its threads were runnable but waiting for a CPU (the host is short of CPU)"
	case 2*run >= wall && 5*lo >= wall && 2*lo >= hi:
		what = "its main loop and vCPU were both busy on a CPU (the shape of a livelock of the two)"
	case 2*run >= wall && st.VCPURun >= st.MainRun:
		what = "its vCPU was busy on a CPU, its main loop less (a slow replay)"
	case 2*run >= wall:
		what = "its main loop was busy on a CPU, its vCPU less"
	case 2*wait >= wall:
		what = "its threads were runnable but waiting for a CPU (the host is short of CPU)"
	case 2*(run+wait) >= wall:
		what = "its threads ran and waited for a CPU in turns (a loaded CPU)"
	default:
		what = "its threads were mostly off a CPU: waiting (its own disk I/O, log, a lock) or stopped"
	}
	return fmt.Sprintf("over the last %d ms its vCPU threads ran %d ms and waited %d ms for a CPU, its main loop ran %d ms and waited %d ms: %s",
		ms(wall), ms(st.VCPURun), ms(st.VCPUWait), ms(st.MainRun), ms(st.MainWait), what)
}
