// Package failover is the heartbeat and go-live state machine of
// libvirt-ft: one Node per protected domain per host, primary or backup.
//
// It is a pure state machine in the style of etcd's raft (rawnode.go): no
// clock, socket, goroutine or libvirt call inside. The daemon drives it:
//
//	n, err := failover.New(failover.Config{Role: failover.RoleBackup,
//		HeartbeatInterval: 10, HeartbeatTimeout: 100}) // ticks of 10 ms
//	for {
//		select {
//		case <-ticker.C: // fixed period, e.g. 10 ms
//			n.Tick()
//		case ev := <-events: // frames, QEMU and lock outcomes, CLI
//			n.Step(ev)
//		}
//		for _, a := range n.Ready() {
//			perform(a) // in order; outcomes come back as events
//		}
//	}
//
// All durations in Config are in ticks; Timings are in ticks too. The daemon
// creates the Node once the log channel is connected (the silence timer
// starts at New) and, after the Node has left Replicating, never reconnects
// that channel: a new backup is a new protection epoch and a new Node.
//
// # API
//
//	type Config struct{ Role Role; HeartbeatInterval, HeartbeatTimeout, LockRetryInterval, StallTimeout, RestartGrace, LagCeiling int }
//	func DefaultLagCeiling(stall int) int
//	func SlowStallBound(stall int) int
//	func (Config) Validate() error
//	func New(Config) (*Node, error)
//	func (*Node) Tick()
//	func (*Node) Step(Event)
//	func (*Node) Ready() []Action   // returns and forgets the pending actions
//	func (*Node) HasReady() bool
//	func (*Node) Role() Role
//	func (*Node) State() State
//	func (*Node) Phase() Phase
//	func (*Node) Timings() Timings
//	func (*Node) Status() Status
//
// Events (inputs): HeartbeatReceived, LogReceived, AckReceived, ChannelDown,
// ChannelUp, PeerBye, BackupIcount, EndFed, LockResult, GoLiveDone,
// QEMUExited, SwitchoverRequested, UnprotectRequested, FeedUnread,
// BackupExecuting, Diverged, PrimaryHung. Actions
// (outputs): SendHeartbeat,
// CloseChannel, SendBye, FeedEnd, WaitDrain, AcquireLock, GoLive, Announce,
// ReportUnprotected, HaltVM, KillVM, DrainLocally, StopPrimaryVM, Cleanup,
// BackupStalled, BackupResumed, BackupBehind. Both are
// small structs behind sealed interfaces; String gives the form used by
// the scenario scripts in testdata/.
//
// # Rules
//
// Silence: a Node in Replicating (or SwitchingOver) that has received no
// frame (heartbeat, log, ack, channel-up) for HeartbeatTimeout ticks
// declares the peer lost. Both roles send a heartbeat every
// HeartbeatInterval ticks while the channel is open, whatever the guest
// does.
//
// Backup, peer lost: ChannelDown, the silence timeout and an unclean PeerBye
// all start the go-live path; ChannelDown alone does not prove that the
// primary died, and the lock is what makes this safe. If the primary is
// alive (a broken connection, a malformed frame), it sees the channel close
// too, drains FIFO A locally and asks for the lock at once, while the backup
// first drains its replay; so the primary normally wins, the VM stays where
// it was, and the backup halts. The path:
//
//	close-channel            (not after ChannelDown: it is gone already)
//	feed-end                 → EndFed{Bytes, Instructions}
//	wait-drain icount=T      T = max(last LogReceived.Instructions, EndFed.Instructions)
//	                         → BackupIcount samples until one is ≥ T
//	acquire-lock             → LockResult
//	  won:  go-live          → GoLiveDone
//	                            ok:  announce, cleanup; state Live, role primary
//	                            err: halt-vm; state Halted
//	  lost: halt-vm; state Halted
//	  err:  acquire-lock again after LockRetryInterval ticks
//
// A Live node reports RolePrimary and StateLive: it runs the VM alone,
// unprotected (StateLive rather than StateUnprotected so that the daemon can
// tell a VM that moved from one that stayed). No ReportUnprotected is
// emitted for it: StateLive implies it.
//
// Primary, backup lost: on silence, ChannelDown or a PeerBye other than a
// switchover: drain-locally at once (never block on a dead backup), then
// close-channel (unless already down), then acquire-lock, in StateClaiming.
// The VM keeps running, its output held. Won → StateUnprotected and
// report-unprotected (release held output); lost → StateHalted and halt-vm
// (the backup went live); err → retry as above.
//
// Replay stall (StallTimeout > 0), backup only: a backup replays what it is
// fed unless its QEMU stopped for good (a divergence between record and
// replay, a stopped process); a replay merely behind still advances
// (though a healthy one can stand still for seconds at a time: the daemon's
// default bound is 5 s, docs/replay.md §12), and one that has executed
// everything waits for log with FIFO B empty. So a
// backup whose executed icount (BackupIcount) stands still for StallTimeout
// ticks while its QEMU leaves log unread in FIFO B (FeedUnread > 0) is
// stalled. The rule is armed once the icount is known (not 0: QEMU is still
// starting). A replicating backup that stood still that way for at least a
// fifth of StallTimeout and then made progress (a larger icount, more of
// FIFO B read, or all of it) emits backup-resumed with how long it stood,
// for the daemon's log and metrics. A stand during which the backup's vCPU
// keeps running (BackupExecuting within the last max(StallTimeout/10, 1 s))
// while its monitor gives no icount sample is a slow replay, not a stopped
// one (a vCPU turn executed slowly with the replay mutex held): it gets
// StallTimeout + min(3 × StallTimeout, 15 s) (SlowStallBound). A monitor answering with the same icount, or a vCPU
// that does not run, is a stop, and the plain bound applies.
//
//	replicating:    backup-stalled, send-bye (unclean, the reason says
//	                where), halt-vm, close-channel; the primary takes the
//	                bye as a lost backup and runs on alone
//	going live, no progress for StallTimeout ticks while feeding END (no
//	LogReceived, EndFed or larger BackupIcount) or draining:
//	                backup-stalled, halt-vm; state Halted: the go-live
//	                fails instead of hanging (a replay that cannot reach
//	                the end of the log cannot go live without breaking the
//	                output rule)
//
// Lag ceiling (LagCeiling > 0), backup only: the lag is the age of the
// oldest log received (LogReceived, less the Waited it spent queued before
// FIFO B) that the replay's icount has not reached, counted from the first
// icount sample at the earliest (QEMU starting). It is judged at each
// icount sample, as of that sample (a monitor unreachable for a while, as
// in a libvirtd restart, gives no sample and so no verdict; the stall rule
// watches FIFO B meanwhile), and only while FIFO B holds log the replay has
// not read: a replay that has read everything is not behind. A replicating
// backup whose primary has not ended and whose lag reaches LagCeiling
// ticks gives up as for a stall: backup-behind, send-bye (unclean),
// halt-vm, close-channel; the primary runs on alone. It catches a replay
// that keeps advancing, so never stalls, yet falls behind despite the
// primary's lag bound: since QEMU patch 0018 a long log event is replayed
// in turns of 2^18 instructions, each of them progress, so a backup
// finishing one turn per stall bound would otherwise count as healthy
// however far behind it fell. A backup uniformly slower than its primary
// is not caught: the lag bound holds the primary to its pace, and the lag
// stays short. Status.MaxLag is the largest lag judged.
//
// Late input: once a Node has left Replicating, frames, heartbeats, acks,
// byes and stale results change nothing and produce no action; they are
// counted in Status.Ignored (Status.LastIgnored names the last) for a log
// note. A frame the feeder wrote while FeedEnd was on its way is still
// waited for through EndFed.Instructions.
//
// Clean end: a primary whose QEMU exits cleanly sends a clean bye
// (ByeShutdown) after its log's tail, closes and stops. A backup receiving a
// clean bye (not a switchover) never goes live: it closes the channel, stops
// watching silence, keeps replaying, and goes to StateStopped when its QEMU
// exits. A primary whose QEMU crashes sends an unclean bye: the backup goes
// live without waiting for the timeout. A backup whose QEMU exits while
// replicating (torn down on purpose, or a crash) tells the primary and
// stops; the primary runs on unprotected.
//
// # Ending protection
//
// UnprotectRequested (`virt-ft unprotect`) may come on either host; the
// peer learns it from a clean bye, ByeUnprotect. The primary's VM runs on
// alone and the backup's stops; the backup never goes live:
//
//	primary asked:  drain-locally, send-bye unprotect, then claims the lock
//	                as for a lost backup (close-channel, acquire-lock); won:
//	                report-unprotected, its reason the operator's
//	backup asked:   send-bye unprotect, halt-vm, close-channel
//	backup told:    halt-vm, close-channel
//	primary told:   as for a lost backup (drain-locally, claim): it runs
//	                alone only holding the lock, so an unreachable arbiter
//	                pauses its VM until it answers
//
// The primary claims the lock even though its backup was told: a bye lost
// with the link leaves a backup that goes live on silence, and the claim
// the primary made first makes it lose.
//
// # Divergence
//
// Diverged (the backup's gates found its replayed frames differ from the
// primary's, plugin/gate) halts a backup that is replicating, or going live
// in a planned switchover (the primary still runs): it says an unclean bye
// if the channel is up, and the primary takes that as a lost backup
// (claim, then run alone). A backup going live after its primary's loss
// ignores it: a diverged VM is better than none. A stalled replay
// (checkStall) is the other face of divergence and is halted the same way.
//
// # A hung primary
//
// PrimaryHung (the daemon's watchdog: the record log silent and QEMU's
// monitor unanswered) makes a primary that is replicating with the
// channel open, and whose backup's daemon is not restarting, kill its own
// QEMU (KillVM, SIGKILL). The log then ends without END, QEMUExited
// (unclean) says an unclean bye naming the hang, and the backup goes live
// where the log ended, as for a crash (Scales et al. 2010, section 2.3).
// Any QEMUExited after KillVM is unclean, and a peer lost before it comes
// makes the primary claim nothing (winning would halt the backup, the
// VM's future). In any other state the hung QEMU is the only copy of the
// VM, and the event is ignored.
//
// # Planned switchover
//
// SwitchoverRequested may come on either host; the backup carries it out,
// the lock still decides every race. Over the channel it uses two Bye
// reasons: ByeSwitchover (either way, the channel stays up) and ByeLive
// (backup to primary).
//
//	primary asked:  drain-locally (stop sending log), send-bye switchover
//	backup asked:   send-bye switchover
//	backup:         feed-end, wait-drain, acquire-lock, go-live (as above,
//	                but the channel stays open and heartbeats go on), then
//	                announce, send-bye live, close-channel, cleanup
//	primary (StateSwitchingOver, VM running, output held):
//	                on bye live: stop-primary-vm, close-channel; StateStopped
//	                on silence / channel down / another bye: acquire-lock;
//	                  won: report-unprotected (switchover aborted)
//	                  lost: stop-primary-vm (the backup holds the lock)
//
// Because the primary stops sending before its bye, a switchover asked on the
// primary loses no log; one asked on the backup cuts the log where the
// backup's feeder stands, and the primary's later execution is discarded
// with its held output.
//
// # Timings
//
// Timings records the tick of each milestone of the last loss or switchover
// (silence start = the tick the peer was last heard, detected, END fed,
// drained, lock won, running alone) and gives the parts: Detection, Drain,
// Lock, Start, Total (silence start to live). Multiply by the tick period.
//
// # What the daemon must guarantee
//
//   - Perform the actions of one Ready call in order; report each outcome
//     as its Event (FeedEnd → EndFed, WaitDrain → BackupIcount samples,
//     AcquireLock → LockResult, GoLive → GoLiveDone, HaltVM/StopPrimaryVM →
//     QEMUExited).
//   - AcquireLock is a test-and-set that one node wins for the lifetime of
//     the protection epoch and that answers "won" again to its holder.
//   - Frames are reported only once written whole into FIFO B (LogReceived)
//     and EndFed carries the totals actually fed before END.
//   - During GoLive, report GoLiveDone, not the exit of the replaying QEMU
//     it stops.
//   - Heartbeats must be read even while the feeder is blocked on a full
//     FIFO B, or a busy guest looks like a dead primary.
//
// # Limits
//
// With StallTimeout 0 there is no drain bound: a backup whose QEMU stops
// advancing waits in PhaseDraining (Status shows icount and target) for
// ever. With it, the go-live fails and the VM is down: going live short of
// the fed log would break the output rule. A GoLive that fails after the
// lock was won leaves the VM down (the old primary, if alive, has lost the
// lock). A backup whose QEMU dies while it waits for the lock stops; if it
// had in fact won, the VM is down too. Both need an operator.
package failover
