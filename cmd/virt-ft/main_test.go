package main

import (
	"strings"
	"testing"

	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
)

// status's exit code, for monitoring checks: 0 protected or not running on
// purpose, 1 anything else.
func TestHealthCode(t *testing.T) {
	for _, c := range []struct {
		ds   []ctl.DomainStatus
		want int
	}{
		{nil, exitProtected},
		{[]ctl.DomainStatus{{State: ctl.StateReplicating}, {State: ctl.StateDefined}}, exitProtected},
		{[]ctl.DomainStatus{{State: ctl.StateStopped, CleanStop: true}}, exitProtected},
		{[]ctl.DomainStatus{{State: ctl.StateStopped}}, exitDegraded}, // a crash or a halt
		{[]ctl.DomainStatus{{State: ctl.StateReplicating}, {State: ctl.StateUnprotected}}, exitDegraded},
		{[]ctl.DomainStatus{{State: ctl.StateLive}}, exitDegraded},
		{[]ctl.DomainStatus{{State: ctl.StateSeeding}}, exitDegraded},
	} {
		if got := healthCode(c.ds); got != c.want {
			t.Errorf("healthCode(%+v) = %d, want %d", c.ds, got, c.want)
		}
	}
}

// A gate whose run compares no frame digests says so; one in passthrough
// (after go-live, or unprotected) has nothing to compare and does not.
func TestGateLineDigestsOff(t *testing.T) {
	off := "frame digests off for this run"
	for _, tc := range []struct {
		g    ctl.Gate
		want bool
	}{
		{ctl.Gate{Filter: "ft-gate0", Mode: ctl.GateGated, Backup: true, DigestsOff: true}, true},
		{ctl.Gate{Filter: "ft-gate0", Mode: ctl.GateGated, DigestsOff: true}, true},
		{ctl.Gate{Filter: "ft-gate0", Mode: ctl.GateGated, Backup: true}, false},
		{ctl.Gate{Filter: "ft-gate0", Mode: ctl.GatePassthrough, Backup: true, DigestsOff: true}, false},
	} {
		if got := gateLine(tc.g); strings.Contains(got, off) != tc.want {
			t.Errorf("%+v: %q", tc.g, got)
		}
	}
}
