package plugin

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/libvirt-ft/libvirt-ft/failover"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	"github.com/libvirt-ft/libvirt-ft/qmp"
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
	b.setState(ctl.StateReplicating, "log channel up") // serveLog, first
	b.noteStateReceived()                              // finishIncoming, after
	if b.state != ctl.StateReplicating || b.detail != "log channel up" {
		t.Fatalf("state %s %q, want replicating \"log channel up\"", b.state, b.detail)
	}

	b2 := &backupRun{log: log, stop: make(chan struct{})}
	b2.setState(ctl.StateArmed, "waiting for the running VM's disks and memory")
	b2.noteStateReceived()
	if b2.state != ctl.StateArmed || b2.detail != "received the running VM's state; waiting for its log channel" {
		t.Fatalf("state %s %q, want armed, waiting for its log channel", b2.state, b2.detail)
	}
}

// Only a bye after which the backup replays to the end of its log sets
// that detail; the others' steps set the state themselves.
func TestEndsReplay(t *testing.T) {
	for reason, want := range map[string]bool{
		failover.ByeShutdown: true, "operator's words": true,
		failover.ByeRestarting: false, failover.ByeSwitchover: false, failover.ByeLive: false, failover.ByeUnprotect: false,
	} {
		if got := endsReplay(reason); got != want {
			t.Errorf("endsReplay(%q) = %v, want %v", reason, got, want)
		}
	}
}

// A query-replay sample below a read-position bound taken before it means
// QEMU reads FIFO B further ahead than logchan.QEMUReadAhead: the bound is
// off for the rest of the run, and acks carry query-replay's figure alone.
func TestReadBoundBrokenTurnsItOff(t *testing.T) {
	log := logrus.New()
	log.SetOutput(io.Discard)
	b := &backupRun{log: log, stop: make(chan struct{})}
	b.icount, b.readIcount = 1000, 1040
	if a := b.ack(); a.Executed != 1040 {
		t.Fatalf("Ack.Executed %d, want 1040 (the larger)", a.Executed)
	}
	b.readBoundBroken(1010, 1040)
	if !b.readOff || b.readIcount != 0 {
		t.Fatalf("readOff %v readIcount %d, want on and 0", b.readOff, b.readIcount)
	}
	if a := b.ack(); a.Executed != 1000 {
		t.Fatalf("Ack.Executed %d after the bound broke, want 1000 (query-replay's)", a.Executed)
	}
}

// A re-protected backup's replay starts at the migrated icount while its
// log's INSTRUCTION sums start at 0 (docs/replay.md §15): its samples count
// from the log's start (icountBase), so the primary sees the backup behind
// when it is, instead of clamping a too-high icount to its own log's and
// reading no lag (go-live's drain, which compares the same samples with
// the log's sum, ends at its first sample for the same reason).
func TestRunsReprotectedBackupCountsFromItsLog(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const base = 5_000_000_000 // the VM ran before it was protected again
		fp, primary := replicating(t)
		backup := fp.b.hv.running(runUUID)
		b := fp.b.d.lookup(runUUID).current().(*backupRun)
		backup.mu.Lock()
		backup.icount += base
		backup.mu.Unlock()
		b.mu.Lock()
		b.icountBase = base
		b.mu.Unlock()
		time.Sleep(time.Second)
		synctest.Wait()
		sa := fp.a.status(t, "web")
		if sa.State != ctl.StateReplicating || sa.BackupIcount != 1000 || sa.LogInstructions != 1000 {
			t.Fatalf("host a, caught up: %s, backup icount %d of %d", sa.State, sa.BackupIcount, sa.LogInstructions)
		}
		if sb := fp.b.status(t, "web"); sb.BackupIcount != 1000 {
			t.Fatalf("host b's own backup icount %d, want 1000 (from its log's start)", sb.BackupIcount)
		}
		// It reads no more (its read already waiting takes 4096 bytes,
		// about 8190 instructions): most of 80000 new stay unread.
		backup.stall()
		primary.emit(t, instructions(8000, 10))
		time.Sleep(time.Second)
		synctest.Wait()
		sa = fp.a.status(t, "web")
		if sa.State != ctl.StateReplicating || sa.LogInstructions != 81000 || sa.BackupIcount > 10000 || sa.LagInstructions != sa.LogInstructions-sa.BackupIcount {
			t.Fatalf("host a, backup behind: %s, backup icount %d of %d (lag %d), want at most 10000 of 81000",
				sa.State, sa.BackupIcount, sa.LogInstructions, sa.LagInstructions)
		}
	})
}

// execFunc is a reprotect.Executor answering by a function.
type execFunc func(cmd string, ret any) error

func (f execFunc) Execute(cmd string, _, ret any) error { return f(cmd, ret) }

// The base a re-protected backup subtracts is query-replay's icount while
// its QEMU waits, paused, in play mode; anything else is an error and the
// backup is not continued (finishIncoming).
func TestReplayStartIcount(t *testing.T) {
	answer := func(mode string, icount uint64, err error) execFunc {
		return func(cmd string, ret any) error {
			if cmd != "query-replay" {
				t.Fatalf("command %q, want query-replay", cmd)
			}
			if err != nil {
				return err
			}
			*ret.(*qmp.ReplayInfo) = qmp.ReplayInfo{Mode: mode, Icount: icount}
			return nil
		}
	}
	if base, err := replayStartIcount(answer("play", 5_000_000_123, nil)); err != nil || base != 5_000_000_123 {
		t.Fatalf("base %d, err %v; want 5000000123", base, err)
	}
	if _, err := replayStartIcount(answer("none", 7, nil)); err == nil || !strings.Contains(err.Error(), `replay mode "none", not play`) {
		t.Fatalf("a QEMU not replaying: err %v", err)
	}
	if _, err := replayStartIcount(answer("", 0, errors.New("monitor gone"))); err == nil || !strings.Contains(err.Error(), "monitor gone") {
		t.Fatalf("a failed query: err %v", err)
	}
}

// A planned restart does not hand over a re-protected backup whose replay
// has not started: it has no icount base yet (finishIncoming sets both
// under b.mu), and the next daemon would count from the migrated icount.
func TestHandOverRefusesReprotectedBackupNotStarted(t *testing.T) {
	log := logrus.New()
	log.SetOutput(io.Discard)
	b := &backupRun{log: log, stop: make(chan struct{}), incoming: &incomingArming{logUp: make(chan struct{})}}
	if _, _, err := b.handOver(time.Second); err == nil || !strings.Contains(err.Error(), "has not started yet") {
		t.Fatalf("handOver before the replay started: err %v", err)
	}
	b.incoming.replaying.Store(true)
	if _, _, err := b.handOver(time.Second); err == nil || strings.Contains(err.Error(), "has not started yet") {
		t.Fatalf("handOver once the replay started: err %v, want the ordinary refusal of a run not replicating", err)
	}
}
