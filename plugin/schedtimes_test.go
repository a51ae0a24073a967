package plugin

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeProc writes a /proc/PID/task tree: threads tid -> "comm run wait".
func fakeProc(t *testing.T, pid string, threads map[string][3]string) string {
	t.Helper()
	proc := t.TempDir()
	for tid, v := range threads {
		d := filepath.Join(proc, pid, "task", tid)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "comm"), []byte(v[0]+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "schedstat"), []byte(v[1]+" "+v[2]+" 42\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return proc
}

func TestReadSchedTimes(t *testing.T) {
	proc := fakeProc(t, "100", map[string][3]string{
		"100": {"qemu-system-x86", "3000000", "1000000"},
		"101": {"call_rcu", "999000000", "999000000"},
		"102": {"ALL CPUs/TCG", "7000000", "2000000"},
		"103": {"IO mon_iothread", "5000000", "5000000"},
	})
	st, err := readSchedTimes(proc, 100)
	if err != nil {
		t.Fatal(err)
	}
	want := SchedTimes{Pid: 100, MainRun: 3 * time.Millisecond, MainWait: time.Millisecond, VCPURun: 7 * time.Millisecond, VCPUWait: 2 * time.Millisecond}
	if st != want {
		t.Errorf("readSchedTimes = %+v, want %+v", st, want)
	}
	// Two vCPU threads (KVM names) are summed.
	proc = fakeProc(t, "7", map[string][3]string{
		"7": {"qemu-system-x86", "1", "2"},
		"8": {"CPU 0/KVM", "1000000", "0"},
		"9": {"CPU 1/KVM", "2000000", "0"},
	})
	if st, err := readSchedTimes(proc, 7); err != nil || st.VCPURun != 3*time.Millisecond {
		t.Errorf("two vCPUs: %+v, %v", st, err)
	}
	if _, err := readSchedTimes(proc, 8); err == nil {
		t.Error("a pid without its own task (main thread) read without an error")
	}
	if _, err := readSchedTimes(t.TempDir(), 100); err == nil {
		t.Error("a missing process read without an error")
	}
	bad := fakeProc(t, "5", map[string][3]string{"5": {"qemu", "x", "y"}})
	if _, err := readSchedTimes(bad, 5); err == nil {
		t.Error("a malformed schedstat read without an error")
	}
}

func TestSchedRingOver(t *testing.T) {
	var r schedRing
	t0 := time.Unix(1000, 0)
	if _, _, ok := r.over(t0, time.Second); ok {
		t.Fatal("an empty ring answered")
	}
	// Every 250 ms the vCPU runs 100 ms and the main loop 150 ms.
	for i := 0; i <= 20; i++ {
		d := time.Duration(i)
		r.add(t0.Add(d*250*time.Millisecond), SchedTimes{MainRun: d * 150 * time.Millisecond, VCPURun: d * 100 * time.Millisecond})
	}
	now := t0.Add(5 * time.Second) // the newest sample
	diff, wall, ok := r.over(now, 2*time.Second)
	if !ok || wall != 2*time.Second || diff.VCPURun != 800*time.Millisecond || diff.MainRun != 1200*time.Millisecond {
		t.Errorf("over(2 s) = %+v, %v, %v", diff, wall, ok)
	}
	// More than the ring holds: not enough history.
	if _, _, ok := r.over(now, time.Minute); ok {
		t.Error("over(1 min) answered from 5 s of samples")
	}
	// Samples that stopped a while ago say nothing of now.
	if _, _, ok := r.over(now.Add(time.Second), 2*time.Second); ok {
		t.Error("over answered from a sample 1 s old")
	}
	// Two QEMUs, or times that went backwards, do not compare.
	var q schedRing
	q.add(t0, SchedTimes{Pid: 1, VCPURun: time.Second})
	q.add(t0.Add(time.Second), SchedTimes{Pid: 2, VCPURun: 2 * time.Second})
	if _, _, ok := q.over(t0.Add(time.Second), time.Second); ok {
		t.Error("over compared two QEMUs")
	}
	q = schedRing{}
	q.add(t0, SchedTimes{Pid: 1, VCPURun: time.Second})
	q.add(t0.Add(time.Second), SchedTimes{Pid: 1})
	if _, _, ok := q.over(t0.Add(time.Second), time.Second); ok {
		t.Error("over answered with a negative run time")
	}
	// A gap: the pair spans much more than the stand.
	q = schedRing{}
	q.add(t0, SchedTimes{Pid: 1})
	q.add(t0.Add(10*time.Second), SchedTimes{Pid: 1})
	if _, _, ok := q.over(t0.Add(10*time.Second), 2*time.Second); ok {
		t.Error("over answered across a 10 s gap for a 2 s stand")
	}
	// The ring keeps the newest schedRingLen samples.
	for i := 21; i < 21+schedRingLen; i++ {
		r.add(t0.Add(time.Duration(i)*250*time.Millisecond), SchedTimes{})
	}
	if len(r.s) != schedRingLen || !r.s[0].at.Equal(t0.Add(21*250*time.Millisecond)) {
		t.Errorf("ring holds %d samples from %v", len(r.s), r.s[0].at)
	}
	// A 60 s stall bound has a 75 s slow bound (failover.SlowStallBound):
	// a ring sized for it words a 75 s stall.
	big := schedRingFor(75 * time.Second)
	for i := 0; i <= 400; i++ {
		d := time.Duration(i)
		big.add(t0.Add(d*vcpuWindow), SchedTimes{Pid: 1, VCPURun: d * 100 * time.Millisecond})
	}
	if diff, wall, ok := big.over(t0.Add(400*vcpuWindow), 75*time.Second); !ok || wall != 75*time.Second || diff.VCPURun != 30*time.Second {
		t.Errorf("over(75 s) from a ring for 75 s = %+v, %v, %v", diff, wall, ok)
	}
	if small := schedRingFor(time.Second); small.max != schedRingLen {
		t.Errorf("schedRingFor(1 s) holds %d; want at least %d", small.max, schedRingLen)
	}
}

func TestDescribeStand(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		st   SchedTimes
		want string
	}{
		{SchedTimes{MainRun: 1100 * ms, VCPURun: 900 * ms}, "were both busy on a CPU"},
		// Both pinned to one CPU: each waits while the other runs.
		{SchedTimes{MainRun: 1100 * ms, MainWait: 900 * ms, VCPURun: 880 * ms, VCPUWait: 1120 * ms}, "were both busy on a CPU"},
		{SchedTimes{MainRun: 100 * ms, VCPURun: 1800 * ms}, "its vCPU was busy on a CPU, its main loop less (a slow replay)"},
		// A slow replay with a main loop at a quarter: not a livelock.
		{SchedTimes{MainRun: 500 * ms, VCPURun: 1400 * ms}, "its vCPU was busy on a CPU, its main loop less"},
		{SchedTimes{MainRun: 1500 * ms, VCPURun: 100 * ms}, "its main loop was busy on a CPU, its vCPU less"},
		{SchedTimes{MainWait: 800 * ms, VCPUWait: 700 * ms, VCPURun: 100 * ms}, "waiting for a CPU (the host"},
		// Each thread ran a quarter and waited three quarters: starved,
		// not both busy.
		{SchedTimes{MainRun: 500 * ms, VCPURun: 500 * ms, MainWait: 1500 * ms, VCPUWait: 1500 * ms}, "waiting for a CPU (the host"},
		// 30% running and 60% waiting: starved.
		{SchedTimes{MainRun: 300 * ms, VCPURun: 300 * ms, MainWait: 600 * ms, VCPUWait: 600 * ms}, "waiting for a CPU (the host"},
		{SchedTimes{MainRun: 400 * ms, VCPURun: 300 * ms, MainWait: 200 * ms, VCPUWait: 300 * ms}, "in turns (a loaded CPU)"},
		{SchedTimes{MainRun: 50 * ms, VCPURun: 20 * ms}, "mostly off a CPU"},
		{SchedTimes{}, "its threads were mostly off a CPU"}, // stopped
	} {
		got := describeStand(c.st, 2*time.Second)
		if !strings.Contains(got, c.want) || !strings.HasPrefix(got, "over the last 2000 ms its vCPU threads ran") {
			t.Errorf("describeStand(%+v) = %q, want %q", c.st, got, c.want)
		}
	}
}
