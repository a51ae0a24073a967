package failover

import "strconv"

// Action is an output of Node.Ready: something the daemon must do. The
// daemon performs the actions of one Ready call in order and reports their
// outcomes back as Events. Every action is idempotent from the Node's point
// of view (a CloseChannel on a channel already down is fine).
type Action interface {
	isAction()
	String() string
}

// SendHeartbeat: send a Heartbeat frame to the peer.
type SendHeartbeat struct{}

// CloseChannel: close the log channel's connection (without a Bye unless a
// SendBye precedes it).
type CloseChannel struct{}

// SendBye: send a Bye frame; the peer's daemon reports it as PeerBye with
// the same Clean and Reason. Only ByeShutdown and ByeLive are followed by a
// CloseChannel; after ByeSwitchover the channel stays up.
type SendBye struct {
	Clean  bool
	Reason string
}

// FeedEnd (backup): stop feeding FIFO B, write a lone END byte after the
// last whole event, then report EndFed. Frames received later are dropped.
// FIFO B must stay open (EOF makes the replaying QEMU exit).
type FeedEnd struct{}

// WaitDrain (backup): report BackupIcount samples (query-replay, or a
// replay-break at Icount) until the backup QEMU's icount reaches Icount.
type WaitDrain struct {
	// Icount is the target: the sum of the INSTRUCTION counts fed.
	Icount uint64
}

// AcquireLock: try the split-brain test-and-set (a claim key on an etcd
// witness, a lock file on shared storage) and report LockResult. It must be idempotent per node: a
// node that already holds the lock wins again (a retry after a lost reply).
type AcquireLock struct{}

// GoLive (backup): stop the replaying QEMU, savevm, restart the domain as
// a recording primary with -loadvm (a fresh log for a future backup), then
// report GoLiveDone.
type GoLive struct{}

// Announce (backup that went live): advertise the VM's MAC addresses
// (QMP announce-self).
type Announce struct{}

// ReportUnprotected (primary): tell the operator the VM runs without a
// backup, and release the output held for acks.
type ReportUnprotected struct {
	Reason string
}

// HaltVM: stop this host's QEMU for the domain now, dropping held output;
// this node lost the split-brain race or cannot go live.
type HaltVM struct {
	Reason string
}

// KillVM (primary): stop sending the log, drop the output the gates hold
// (as DrainLocally and HaltVM), and kill this host's QEMU at once
// (SIGKILL; libvirt's destroy only if that fails). The QEMUExited that
// follows is treated as unclean whatever it says: the primary says an
// unclean bye and the backup goes live from the end of the log it was
// sent. A QEMU that does not exit within the daemon's deadline is
// reported as exited (unclean) all the same. Until then a lost channel
// makes the primary claim nothing. Emitted for PrimaryHung.
type KillVM struct {
	Reason string
}

// DrainLocally (primary): stop sending the log; keep reading FIFO A and
// discard what is read, so the recording QEMU never blocks on a dead or
// departing backup. Output still held for acks stays held until
// ReportUnprotected (released) or HaltVM/StopPrimaryVM (dropped).
type DrainLocally struct {
	// Switchover is true when a planned switchover stops the sending (the
	// backup is healthy and about to go live), false when the backup was
	// lost.
	Switchover bool
}

// StopPrimaryVM (primary, planned switchover): stop this host's QEMU; the
// backup is live (or holds the lock). Held output is dropped.
type StopPrimaryVM struct{}

// BackupStalled (backup): the replaying QEMU's executed icount stayed at
// Icount for Config.StallTimeout ticks while it left log unread in FIFO B
// (or, going live, feeding END and draining made no progress). The daemon
// records the kind of the log's next event after Icount, for the status and
// for the bye that follows, and, when asked to, keeps the stretch of log
// around it for diagnosis. HaltVM follows.
type BackupStalled struct {
	// Icount is the backup's last executed icount (guest instructions).
	Icount uint64
	// Fed is the INSTRUCTION sum queued for it (guest instructions).
	Fed uint64
	// Ticks is how long the icount stood still.
	Ticks int64
}

// BackupResumed (backup): the replaying QEMU made progress again (a larger
// icount, more of FIFO B read, or all of it read) after standing still
// with log unread for at least a fifth of Config.StallTimeout, short of a
// stall. The daemon logs and counts these stands (a healthy replay can
// stand still for seconds: docs/replay.md §12), so that how close a
// backup comes to the stall bound can be seen before it is reached.
type BackupResumed struct {
	// Icount is the backup's executed icount once it moved again (guest
	// instructions).
	Icount uint64
	// Ticks is how long it stood still.
	Ticks int64
}

// BackupBehind (backup): an icount sample found the replay Config.LagCeiling
// ticks or more behind the log it was sent, with log unread in FIFO B (the
// stall rule did not fire: it still advances): the oldest log it has not
// executed was received Lag ticks before the sample. A go-live then could
// not be prompt, so the backup gives up: SendBye (unclean) and HaltVM
// follow, and the primary runs on alone (docs/replay.md §12). The daemon
// logs it.
type BackupBehind struct {
	// Icount is the backup's executed icount (guest instructions).
	Icount uint64
	// Fed is the INSTRUCTION sum written into FIFO B (guest instructions).
	Fed uint64
	// Lag is the age of the oldest log not executed at the sample (ticks).
	Lag int64
	// Ceiling is Config.LagCeiling (ticks).
	Ceiling int64
}

// Cleanup: remove the FIFOs and snapshots this node no longer needs. May be
// emitted more than once.
type Cleanup struct{}

func (SendHeartbeat) isAction()     {}
func (CloseChannel) isAction()      {}
func (SendBye) isAction()           {}
func (FeedEnd) isAction()           {}
func (WaitDrain) isAction()         {}
func (AcquireLock) isAction()       {}
func (GoLive) isAction()            {}
func (Announce) isAction()          {}
func (ReportUnprotected) isAction() {}
func (HaltVM) isAction()            {}
func (KillVM) isAction()            {}
func (DrainLocally) isAction()      {}
func (StopPrimaryVM) isAction()     {}
func (Cleanup) isAction()           {}
func (BackupStalled) isAction()     {}
func (BackupResumed) isAction()     {}
func (BackupBehind) isAction()      {}

func (SendHeartbeat) String() string { return "send-heartbeat" }
func (CloseChannel) String() string  { return "close-channel" }
func (a SendBye) String() string {
	return format("send-bye", "clean", strconv.FormatBool(a.Clean), "reason", a.Reason)
}
func (FeedEnd) String() string     { return "feed-end" }
func (a WaitDrain) String() string { return format("wait-drain", "icount", u(a.Icount)) }
func (AcquireLock) String() string { return "acquire-lock" }
func (GoLive) String() string      { return "go-live" }
func (Announce) String() string    { return "announce" }
func (a ReportUnprotected) String() string {
	return format("report-unprotected", "reason", a.Reason)
}
func (a HaltVM) String() string { return format("halt-vm", "reason", a.Reason) }
func (a KillVM) String() string { return format("kill-vm", "reason", a.Reason) }
func (a DrainLocally) String() string {
	if a.Switchover {
		return format("drain-locally", "switchover", "true")
	}
	return "drain-locally"
}
func (StopPrimaryVM) String() string { return "stop-primary-vm" }
func (Cleanup) String() string       { return "cleanup" }
func (a BackupResumed) String() string {
	return format("backup-resumed", "icount", u(a.Icount), "ticks", strconv.FormatInt(a.Ticks, 10))
}
func (a BackupBehind) String() string {
	return format("backup-behind", "icount", u(a.Icount), "fed", u(a.Fed), "lag", strconv.FormatInt(a.Lag, 10), "ceiling", strconv.FormatInt(a.Ceiling, 10))
}
func (a BackupStalled) String() string {
	return format("backup-stalled", "icount", u(a.Icount), "fed", u(a.Fed), "ticks", strconv.FormatInt(a.Ticks, 10))
}
