package plugin

import (
	"io"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
)

// The re-protected backup's "received the running VM's state" must not turn
// a log channel that is already up back into armed: CI saw the primary's
// first log beat QEMU's MIGRATION completed event, and the backup reported
// "armed: waiting for its log channel" for good while it replicated.
func TestReceivedStateDoesNotUndoLogChannelUp(t *testing.T) {
	log := logrus.New()
	log.SetOutput(io.Discard)
	b := &backupRun{log: log, stop: make(chan struct{})}
	b.setState(ctl.StateArmed, "waiting for the running VM's disks and memory")
	b.setState(ctl.StateReplicating, "log channel up")
	if b.setStateIf(ctl.StateArmed, ctl.StateArmed, "received the running VM's state; waiting for its log channel") {
		t.Fatal("setStateIf(armed) replaced replicating")
	}
	if b.state != ctl.StateReplicating || b.detail != "log channel up" {
		t.Fatalf("state %s %q, want replicating \"log channel up\"", b.state, b.detail)
	}

	b2 := &backupRun{log: log, stop: make(chan struct{})}
	b2.setState(ctl.StateArmed, "waiting for the running VM's disks and memory")
	if !b2.setStateIf(ctl.StateArmed, ctl.StateArmed, "received the running VM's state; waiting for its log channel") {
		t.Fatal("setStateIf(armed) did not set an armed run's detail")
	}
	if b2.detail != "received the running VM's state; waiting for its log channel" {
		t.Fatalf("detail %q", b2.detail)
	}
}
