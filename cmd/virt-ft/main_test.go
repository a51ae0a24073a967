package main

import (
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
