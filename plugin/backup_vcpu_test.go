package plugin

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"libvirt.org/go/libvirt"
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

// The vCPU-time warning is for real failures: a domain that is gone or
// being torn down (libvirt says "not running") is the run's end.
func TestIsGoneOrStopping(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{libvirt.Error{Code: libvirt.ERR_NO_DOMAIN}, true},
		{fmt.Errorf("vcpus: %w", libvirt.Error{Code: libvirt.ERR_OPERATION_INVALID}), true},
		{libvirt.Error{Code: libvirt.ERR_INTERNAL_ERROR}, false},
		{errors.New("connection reset"), false},
	} {
		if got := isGoneOrStopping(c.err); got != c.want {
			t.Errorf("isGoneOrStopping(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
