package failover

import (
	"strconv"
	"strings"
)

// Event is an input to Node.Step: something the daemon observed. The
// concrete types are the structs below; String gives the form the scenario
// scripts use ("log offset=0 bytes=4096 instr=1000").
type Event interface {
	isEvent()
	String() string
}

// HeartbeatReceived: a Heartbeat frame arrived from the peer.
type HeartbeatReceived struct{}

// LogReceived (backup): a Log frame was written whole into FIFO B.
type LogReceived struct {
	// Offset is the stream offset of the frame's first byte.
	Offset uint64
	// Bytes is the number of event bytes fed into FIFO B so far (after
	// this frame), from the start of the stream.
	Bytes uint64
	// Instructions is the sum of the INSTRUCTION event counts fed so far:
	// the icount the backup QEMU reaches once it executed all of it.
	Instructions uint64
	// Waited is how long the frame waited in the backup's queue before it
	// was written into FIFO B (ticks; the queue holds at most the
	// window): the lag ceiling counts from its receipt (Config.LagCeiling).
	Waited int64
}

// AckReceived (primary): the backup acked the log up to Offset.
type AckReceived struct {
	// Offset is the stream offset (bytes) the backup has in FIFO B.
	Offset uint64
	// Icount is the backup QEMU's executed icount when it acked (guest
	// instructions, sampled with query-replay).
	Icount uint64
	// Fed is the sum of the INSTRUCTION counts the backup has written into
	// FIFO B (guest instructions): the icount it reaches once it executed
	// everything queued for it. Fed > Icount means log is queued.
	Fed uint64
}

// ChannelDown: the log channel's connection broke, or a malformed frame
// made the daemon drop it.
type ChannelDown struct {
	Reason string
}

// ChannelUp: the log channel is (still) connected; counts as hearing from
// the peer. The daemon creates the Node once the channel is up, so this is
// rarely needed.
type ChannelUp struct{}

// PeerBye: the peer sent an orderly Bye frame.
type PeerBye struct {
	// Clean is set when the peer's side ended or changed on purpose (see
	// the Bye* reasons); an unclean bye (a peer daemon going away, a peer
	// QEMU that crashed) is treated like ChannelDown.
	Clean bool
	// Reason is one of the Bye* constants or free text.
	Reason string
}

// BackupIcount (backup): a sample of the replaying QEMU's icount
// (query-replay), counted from the log's first event as the log's
// INSTRUCTION sums are (a re-protected backup's replay starts at the
// migrated icount, which the daemon subtracts: docs/replay.md §15),
// reported while draining and whenever the daemon samples.
type BackupIcount struct {
	Icount uint64
}

// BackupExecuting (backup): the replaying QEMU's vCPU thread was on a CPU
// for at least half of the last sampling window (250 ms; libvirt's
// per-vCPU CPU time, read from /proc, not from the QEMU monitor). A replay
// that executes slowly holds QEMU's replay mutex for each vCPU turn (a
// whole INSTRUCTION event of up to tens of millions of instructions on
// QEMU without packaging/qemu 0018, at most 2^18 instructions with it:
// docs/replay.md §12), so its main loop answers no query-replay and the
// icount samples stop until the turn ends: the backup is slow, not
// stopped. A stopped QEMU (SIGSTOP, a deadlock) uses no CPU and is
// never reported so. See Node.checkStall.
type BackupExecuting struct{}

// FeedUnread (backup): a sample of FIFO B, taken every status interval
// independently of the QEMU monitor (a replay waiting for log holds the
// monitor until log arrives; a libvirtd restart makes it unreachable for a
// while).
type FeedUnread struct {
	// Bytes is what the replaying QEMU has not read yet (FIONREAD).
	Bytes uint64
	// Written is every byte written into FIFO B so far. Written - Bytes,
	// what QEMU has read, growing is progress that needs no monitor.
	Written uint64
}

// EndFed (backup): the END byte was written into FIFO B after the last
// whole event, in answer to FeedEnd.
type EndFed struct {
	// Bytes is the number of event bytes fed before END.
	Bytes uint64
	// Instructions is the sum of the INSTRUCTION counts fed before END.
	// The drain target is the larger of this and the last
	// LogReceived.Instructions the Node saw, so a frame whose LogReceived
	// raced with FeedEnd is still waited for. 0 if unknown.
	Instructions uint64
}

// LockResult: the outcome of AcquireLock, the split-brain test-and-set.
type LockResult struct {
	// Won is set when this node holds the lock.
	Won bool
	// Err is set when the lock could not be reached: neither a win nor a
	// loss. The Node asks again after Config.LockRetryInterval ticks.
	Err error
}

// GoLiveDone (backup): the daemon finished GoLive (stop, savevm, restart as
// a recording primary with -loadvm), or failed with Err.
type GoLiveDone struct {
	Err error
}

// QEMUExited: this host's QEMU for the domain ended. During GoLive the
// daemon reports GoLiveDone, not the exit of the replaying QEMU it stops.
type QEMUExited struct {
	// Clean is set for an orderly end (guest shutdown, a replayed
	// shutdown, an operator's stop); unset for a crash or a kill.
	Clean bool
}

// SwitchoverRequested: the operator asked for a planned switchover
// (`virt-ft failover`) on this host.
type SwitchoverRequested struct{}

// UnprotectRequested: the operator asked to end protection (`virt-ft
// unprotect`) on this host: the primary's VM runs on alone, the backup's
// stops (ByeUnprotect).
type UnprotectRequested struct{}

// Diverged (backup): the replayed guest no longer does what the primary's
// did: its output frames' digests differ from the ones the primary's
// heartbeats carry (plugin/gate, Mismatch). Reason says where. While
// replicating, or going live in a planned switchover (the primary still
// runs), the backup stops its VM and tells the primary, which runs on
// alone: a diverged backup must never go live in place of a running
// primary. Ignored in any other state (going live after the primary's
// loss, a diverged VM beats none).
type Diverged struct{ Reason string }

// PrimaryHung (primary): this host's recording QEMU looks hung: the
// pump has waited for its record log for the hang probe bound while its
// monitor did not answer a query within the probe timeout (plugin's
// watchdog). A running guest logs constantly, so "a halt in the flow of
// log entries could indicate the failure of a VM" (Scales et al. 2010,
// section 2.3). While replicating with the channel open, the Node kills
// the QEMU (KillVM): its log ends without END and the backup goes live
// where it ended. In any other state it is ignored (the hung QEMU is the
// only copy; the daemon reports it).
type PrimaryHung struct{ Reason string }

func (HeartbeatReceived) isEvent()   {}
func (LogReceived) isEvent()         {}
func (AckReceived) isEvent()         {}
func (ChannelDown) isEvent()         {}
func (ChannelUp) isEvent()           {}
func (PeerBye) isEvent()             {}
func (BackupIcount) isEvent()        {}
func (BackupExecuting) isEvent()     {}
func (EndFed) isEvent()              {}
func (FeedUnread) isEvent()          {}
func (LockResult) isEvent()          {}
func (GoLiveDone) isEvent()          {}
func (QEMUExited) isEvent()          {}
func (SwitchoverRequested) isEvent() {}
func (UnprotectRequested) isEvent()  {}
func (Diverged) isEvent()            {}
func (PrimaryHung) isEvent()         {}

func (HeartbeatReceived) String() string { return "heartbeat" }
func (e LogReceived) String() string {
	waited := ""
	if e.Waited != 0 {
		waited = strconv.FormatInt(e.Waited, 10)
	}
	return format("log", "offset", u(e.Offset), "bytes", u(e.Bytes), "instr", u(e.Instructions), "waited", waited)
}
func (e AckReceived) String() string {
	return format("ack", "offset", u(e.Offset), "icount", u(e.Icount), "fed", u(e.Fed))
}
func (e ChannelDown) String() string { return format("channel-down", "reason", e.Reason) }
func (ChannelUp) String() string     { return "channel-up" }
func (e PeerBye) String() string {
	return format("bye", "clean", strconv.FormatBool(e.Clean), "reason", e.Reason)
}
func (e BackupIcount) String() string  { return format("backup-icount", "icount", u(e.Icount)) }
func (BackupExecuting) String() string { return "backup-executing" }
func (e FeedUnread) String() string {
	return format("feed-unread", "bytes", u(e.Bytes), "written", u(e.Written))
}
func (e EndFed) String() string {
	return format("end-fed", "bytes", u(e.Bytes), "instr", u(e.Instructions))
}
func (e LockResult) String() string {
	return format("lock-result", "won", strconv.FormatBool(e.Won), "err", errString(e.Err))
}
func (e GoLiveDone) String() string { return format("go-live-done", "err", errString(e.Err)) }
func (e QEMUExited) String() string {
	return format("qemu-exited", "clean", strconv.FormatBool(e.Clean))
}
func (SwitchoverRequested) String() string { return "switchover-requested" }
func (UnprotectRequested) String() string  { return "unprotect-requested" }
func (e Diverged) String() string          { return format("diverged", "reason", e.Reason) }
func (e PrimaryHung) String() string       { return format("primary-hung", "reason", e.Reason) }

func u(v uint64) string { return strconv.FormatUint(v, 10) }

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// format renders "name k=v k=v": pairs whose value is empty are left out,
// values that need it are quoted with strconv.Quote.
func format(name string, kv ...string) string {
	var b strings.Builder
	b.WriteString(name)
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "" {
			continue
		}
		b.WriteByte(' ')
		b.WriteString(kv[i])
		b.WriteByte('=')
		b.WriteString(quoteIfNeeded(kv[i+1]))
	}
	return b.String()
}

func quoteIfNeeded(s string) string {
	if strings.ContainsAny(s, " \t\n\"=\\;#") {
		return strconv.Quote(s)
	}
	return s
}
