package plugin

import (
	"testing"
	"time"
)

// The replaying vCPU counts as executing (failover.BackupExecuting) when it
// ran for at least half of the window; libvirt's figure has 10 ms steps.
func TestVCPUBusy(t *testing.T) {
	for _, c := range []struct {
		cpu, wall time.Duration
		want      bool
	}{
		{250 * time.Millisecond, 250 * time.Millisecond, true},  // on a CPU throughout
		{130 * time.Millisecond, 250 * time.Millisecond, true},  // half, in 10 ms ticks
		{120 * time.Millisecond, 250 * time.Millisecond, false}, // less than half
		{0, 250 * time.Millisecond, false},                      // SIGSTOP, a deadlock, idle
		{-10 * time.Millisecond, 250 * time.Millisecond, false}, // a new QEMU since the last sample
		{10 * time.Millisecond, 0, false},                       // no time passed
	} {
		if got := vcpuBusy(c.cpu, c.wall); got != c.want {
			t.Errorf("vcpuBusy(%v, %v) = %v, want %v", c.cpu, c.wall, got, c.want)
		}
	}
}
