package failover

import (
	"fmt"
	"strconv"
)

// NotYet is the tick of a Timings milestone that has not happened.
const NotYet int64 = -1

// Timings records, in ticks since New, when each milestone of a loss (or a
// planned switchover) happened, so the daemon can show the go-live time and
// its parts. Multiply by the tick period for wall time.
type Timings struct {
	// Cause is why the peer was declared lost, or "switchover".
	Cause string
	// SilenceStart is the tick the peer was last heard before the loss
	// (for a planned switchover: the tick of the request).
	SilenceStart int64
	// Detected is the tick the loss was declared (or the switchover
	// began).
	Detected int64
	// EndFed (backup) is the tick EndFed arrived.
	EndFed int64
	// Drained (backup) is the tick the backup QEMU's icount reached the
	// drain target.
	Drained int64
	// Locked is the tick a LockResult with Won arrived.
	Locked int64
	// Alone is the tick this node began to run the VM alone: GoLiveDone
	// for a backup, the won lock for a primary.
	Alone int64
}

func newTimings() Timings {
	return Timings{SilenceStart: NotYet, Detected: NotYet, EndFed: NotYet, Drained: NotYet, Locked: NotYet, Alone: NotYet}
}

func span(from, to int64) int64 {
	if from == NotYet || to == NotYet {
		return NotYet
	}
	return to - from
}

// Detection is the number of ticks from silence start to detection.
func (t Timings) Detection() int64 { return span(t.SilenceStart, t.Detected) }

// Drain (backup) is the number of ticks from detection to drained.
func (t Timings) Drain() int64 { return span(t.Detected, t.Drained) }

// Lock is the number of ticks spent winning the lock: from drained
// (backup) or from detection (primary).
func (t Timings) Lock() int64 {
	if t.Drained != NotYet {
		return span(t.Drained, t.Locked)
	}
	return span(t.Detected, t.Locked)
}

// Start (backup) is the number of ticks GoLive took.
func (t Timings) Start() int64 { return span(t.Locked, t.Alone) }

// Total is the number of ticks from silence start until the node ran the
// VM alone: the go-live time of a backup.
func (t Timings) Total() int64 { return span(t.SilenceStart, t.Alone) }

// String renders the parts as "detect=100 drain=7 lock=1 start=3 total=111"
// ("-" for a part not reached).
func (t Timings) String() string {
	f := func(v int64) string {
		if v == NotYet {
			return "-"
		}
		return strconv.FormatInt(v, 10)
	}
	return fmt.Sprintf("detect=%s drain=%s lock=%s start=%s total=%s",
		f(t.Detection()), f(t.Drain()), f(t.Lock()), f(t.Start()), f(t.Total()))
}

// Status is a snapshot of a Node for the daemon's status output.
type Status struct {
	// Role, State and Phase are those of Node.Role, Node.State and
	// Node.Phase.
	Role  Role
	State State
	Phase Phase
	// Reason explains the current state when it is not Replicating (the
	// loss cause, the outcome of the lock, why the VM ended).
	Reason string
	// Ticks is the number of Tick calls since New.
	Ticks int64
	// Silence is the number of ticks since the peer was last heard.
	Silence int64
	// ChannelOpen is set while the Node considers the log channel usable
	// (it sends heartbeats and watches silence only then).
	ChannelOpen bool
	// PeerEnded (backup) is set after a clean PeerBye: the primary's VM
	// ended and its whole log was sent; the backup will not go live.
	PeerEnded bool
	// Switchover is set once a planned switchover began.
	Switchover bool
	// LogOffset, FedBytes and FedInstructions (backup) come from the last
	// LogReceived (then EndFed): bytes and INSTRUCTION sum fed.
	LogOffset, FedBytes, FedInstructions uint64
	// BackupIcount (backup) is the largest BackupIcount sample.
	BackupIcount uint64
	// Unread (backup) is the last FeedUnread sample (bytes).
	Unread uint64
	// Lag (backup, replicating) is the age now of the oldest log received
	// that the last icount sample had not reached (ticks); 0 when that
	// sample reached all of it, before the first sample, and while FIFO B
	// holds no unread log (the replay has read everything: the monitor may
	// be held while it waits, and no sample says how far it got).
	// MaxLag is the largest lag an icount sample found so far, the figure
	// Config.LagCeiling is compared with.
	Lag, MaxLag int64
	// DrainTarget (backup) is the icount WaitDrain waits for.
	DrainTarget uint64
	// AckedOffset, AckedIcount and AckedFed (primary) come from the
	// AckReceived events: bytes in FIFO B, the backup's executed icount
	// and the INSTRUCTION sum fed to it.
	AckedOffset, AckedIcount, AckedFed uint64
	// LockAttempts is the number of AcquireLock actions emitted.
	LockAttempts int
	// Ignored counts events that arrived in a state where they mean
	// nothing (late frames after go-live began, stale results);
	// LastIgnored is the last of them, for a log note.
	Ignored     int
	LastIgnored string
	// PeerRestarting is set while the peer's daemon restarts (it said
	// ByeRestarting) and its channel is not back yet.
	PeerRestarting bool
	// Hung (primary) is why KillVM killed this host's QEMU; "" if it did
	// not. A run being killed must not start an unprotect or a handover.
	Hung string
	// Unprotected is why the operator ended this pairing's protection
	// (UnprotectRequested here, or ByeUnprotect from the peer); "" when
	// it was not ended on purpose. A primary that lost its backup by
	// accident may be re-protected automatically; one whose protection
	// the operator ended is not.
	Unprotected string
}

// Node is the failover state machine of one protected domain on one host.
// It is not safe for concurrent use: one goroutine of the daemon owns it and
// calls Tick, Step and Ready.
type Node struct {
	cfg   Config
	role  Role
	state State
	phase Phase

	reason     string
	switchover bool
	peerEnded  bool
	chanOpen   bool
	vmStopping bool // HaltVM or StopPrimaryVM emitted; Cleanup on QEMUExited
	// unprotected: why the operator ended protection (UnprotectRequested
	// here, or ByeUnprotect from the backup); "" otherwise.
	unprotected string
	// hung (primary): why PrimaryHung killed this host's QEMU (KillVM);
	// "" otherwise.
	hung string
	// peerRestarting: the peer said ByeRestarting; it is lost unless
	// ChannelUp comes by restartBy (a tick).
	peerRestarting bool
	restartBy      int64

	now       int64
	lastHeard int64
	sinceBeat int
	lockRetry int // ticks left before AcquireLock is emitted again; 0 = none

	logOffset, fedBytes, fedInstr      uint64
	icount, target                     uint64
	ackedOffset, ackedIcount, ackedFed uint64
	// unread (backup) is the last FeedUnread sample: bytes in FIFO B its
	// QEMU has not read; consumed the most it has read. moved is the tick
	// the backup last made progress (a larger icount or consumed, a frame
	// or END written while going live) or was seen with nothing unread;
	// sampled the tick of the last icount sample, whatever its value
	// (Config.StallTimeout).
	unread, consumed uint64
	moved, sampled   int64
	// executing (backup) is the tick of the last BackupExecuting: its
	// replay's vCPU ran for most of the last sampling window.
	executing int64
	// standing (backup, replicating): the replay has stood still with log
	// unread since moved for at least standTicks; its next progress emits
	// BackupResumed.
	standing bool
	// fedAt (backup, replicating): when the log was received, as
	// (INSTRUCTION sum, tick) in order, one per tick at most, without
	// those the replay has executed (Config.LagCeiling). At most
	// maxFedSamples. maxLag: Status.MaxLag.
	fedAt  []fedSample
	maxLag int64

	lockAttempts int
	ignored      int
	lastIgnored  string
	timings      Timings
	pending      []Action
}

// New returns a Node in StateReplicating with the log channel open. The
// daemon creates it once the log channel is connected: the silence timer
// starts now.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Node{cfg: cfg, role: cfg.Role, state: StateReplicating, chanOpen: true, timings: newTimings()}, nil
}

// Role returns the node's current role: RoleBackup until a backup went
// live, RolePrimary from then on (its State is StateLive).
func (n *Node) Role() Role { return n.role }

// State returns the node's current state.
func (n *Node) State() State { return n.state }

// Phase returns the step of StateGoingLive or of a lock wait; PhaseNone
// otherwise.
func (n *Node) Phase() Phase { return n.phase }

// Timings returns the milestones of the last loss or switchover.
func (n *Node) Timings() Timings { return n.timings }

// Status returns a snapshot for the daemon's status output.
func (n *Node) Status() Status {
	return Status{
		Role: n.role, State: n.state, Phase: n.phase, Reason: n.reason,
		Ticks: n.now, Silence: n.now - n.lastHeard, ChannelOpen: n.chanOpen,
		PeerEnded: n.peerEnded, Switchover: n.switchover,
		LogOffset: n.logOffset, FedBytes: n.fedBytes, FedInstructions: n.fedInstr,
		BackupIcount: n.icount, Unread: n.unread, Lag: n.lag(), MaxLag: n.maxLag, DrainTarget: n.target,
		AckedOffset: n.ackedOffset, AckedIcount: n.ackedIcount, AckedFed: n.ackedFed,
		LockAttempts: n.lockAttempts, Ignored: n.ignored, LastIgnored: n.lastIgnored,
		PeerRestarting: n.peerRestarting, Hung: n.hung, Unprotected: n.unprotected,
	}
}

// HasReady reports whether Ready would return actions.
func (n *Node) HasReady() bool { return len(n.pending) > 0 }

// Ready returns the actions to perform, in order, and forgets them.
func (n *Node) Ready() []Action {
	a := n.pending
	n.pending = nil
	return a
}

func (n *Node) emit(a ...Action) { n.pending = append(n.pending, a...) }

func (n *Node) peerName() string {
	if n.cfg.Role == RolePrimary {
		return "backup"
	}
	return "primary"
}

// Tick advances the node's clock by one tick: silence detection, heartbeats
// and lock retries.
func (n *Node) Tick() {
	n.now++
	if n.peerRestarting && n.now >= n.restartBy && n.state != StateReplicating && n.state != StateSwitchingOver {
		// The node ended meanwhile (halted, stopped, claiming, alone):
		// the grace is moot, and a halted backup must never start a
		// go-live from here.
		n.peerRestarting = false
	}
	if n.peerRestarting && n.now >= n.restartBy {
		n.peerRestarting = false
		n.peerLost(fmt.Sprintf("the %s's daemon did not bring the log channel back within %d ticks of its restart", n.peerName(), n.restartGrace()))
	}
	if n.chanOpen && (n.state == StateReplicating || n.state == StateSwitchingOver) &&
		n.now-n.lastHeard >= int64(n.cfg.HeartbeatTimeout) {
		n.peerLost(fmt.Sprintf("no frame from the %s for %d ticks", n.peerName(), n.now-n.lastHeard))
	}
	n.checkStall()
	if n.chanOpen {
		n.sinceBeat++
		if n.sinceBeat >= n.cfg.HeartbeatInterval {
			n.sinceBeat = 0
			n.emit(SendHeartbeat{})
		}
	}
	if n.lockRetry > 0 {
		n.lockRetry--
		if n.lockRetry == 0 && n.phase == PhaseLocking {
			n.requestLock()
		}
	}
}

// Step feeds one event to the node. Events that mean nothing in the current
// state (a late frame after go-live began, a stale result) change nothing
// and are counted in Status.Ignored.
func (n *Node) Step(ev Event) {
	if e, ok := ev.(FeedUnread); ok {
		// A periodic sample, not a frame: taken while it means
		// something (a backup replicating or going live), never counted
		// as ignored.
		if n.role == RoleBackup && (n.state == StateReplicating || n.state == StateGoingLive) {
			n.feedUnread(e)
		}
		return
	}
	if _, ok := ev.(BackupExecuting); ok {
		// Also a periodic sample (only the backup's stall rules read it).
		if n.role == RoleBackup && (n.state == StateReplicating || n.state == StateGoingLive) {
			n.executing = n.now
		}
		return
	}
	var handled bool
	switch n.state {
	case StateReplicating:
		if n.role == RolePrimary {
			handled = n.stepPrimary(ev)
		} else {
			handled = n.stepBackup(ev)
		}
	case StateSwitchingOver:
		handled = n.stepSwitchingOver(ev)
	case StateClaiming:
		handled = n.stepClaiming(ev)
	case StateGoingLive:
		handled = n.stepGoingLive(ev)
	case StateUnprotected, StateLive:
		handled = n.stepAlone(ev)
	case StateHalted, StateStopped:
		handled = n.stepEnded(ev)
	}
	if !handled {
		n.ignored++
		n.lastIgnored = ev.String()
	}
}

func (n *Node) heard() { n.lastHeard = n.now }

func (n *Node) restartGrace() int {
	if n.cfg.RestartGrace > 0 {
		return n.cfg.RestartGrace
	}
	return n.cfg.HeartbeatTimeout
}

// peerRestarts: the peer's daemon said ByeRestarting. Its channel is
// closed (no heartbeats go out) and silence is not counted; the peer is
// lost if the channel is not back (ChannelUp) within the restart grace.
func (n *Node) peerRestarts() {
	n.chanOpen = false
	n.peerRestarting = true
	n.restartBy = n.now + int64(n.restartGrace())
	n.reason = "the " + n.peerName() + "'s daemon is restarting"
}

// channelUp: a (new) log channel of this pairing is up; after a restart
// it ends the grace.
func (n *Node) channelUp() {
	if n.peerRestarting {
		n.peerRestarting = false
		n.chanOpen = true
		n.sinceBeat = 0
		n.reason = ""
	}
	n.heard()
}

func (n *Node) closeChannel() {
	if n.chanOpen {
		n.chanOpen = false
		n.emit(CloseChannel{})
	}
}

func (n *Node) requestLock() {
	n.phase = PhaseLocking
	n.lockRetry = 0
	n.lockAttempts++
	n.emit(AcquireLock{})
}

func (n *Node) retryInterval() int {
	if n.cfg.LockRetryInterval > 0 {
		return n.cfg.LockRetryInterval
	}
	return n.cfg.HeartbeatInterval
}

// lockError keeps the node in PhaseLocking and schedules another attempt.
func (n *Node) lockError(err error) {
	n.reason = "lock unreachable: " + err.Error()
	n.lockRetry = n.retryInterval()
}

// halt ends the node as the loser: it must stop its VM now.
func (n *Node) halt(reason string) {
	n.state, n.phase, n.reason = StateHalted, PhaseNone, reason
	n.lockRetry = 0
	n.vmStopping = true
	n.emit(HaltVM{Reason: reason})
	n.closeChannel()
}

// stop ends the node because its VM ended (or is being stopped by the
// caller, which then sets vmStopping).
func (n *Node) stop(reason string) {
	n.state, n.phase, n.reason = StateStopped, PhaseNone, reason
	n.lockRetry = 0
	n.closeChannel()
}

// stopVM (primary, planned switchover) stops this host's VM: the backup is
// live or holds the lock.
func (n *Node) stopVM(reason string) {
	n.vmStopping = true
	n.emit(StopPrimaryVM{})
	n.stop(reason)
}

// peerLost is called on silence, ChannelDown or an unclean bye while the
// channel is expected to live.
func (n *Node) peerLost(cause string) {
	switch {
	case n.role == RolePrimary && n.hung != "":
		// Its QEMU is being killed for a hang (KillVM) and the backup
		// is the VM's only future: claiming the lock could make the
		// backup halt. The backup goes live on its own (silence, or the
		// bye QEMUExited sends if the channel is back).
		n.chanOpen = false
		n.reason = "backup lost while the hung QEMU is killed: " + cause
	case n.role == RoleBackup:
		n.startGoLive(cause, false, false)
	case n.state == StateSwitchingOver:
		n.claim(cause)
	default:
		n.emit(DrainLocally{})
		n.claim(cause)
	}
}

// unprotectCause is the reason a run ends by `virt-ft unprotect`.
const unprotectCause = "protection ended by the operator (virt-ft unprotect)"

// ---- primary ----

func (n *Node) stepPrimary(ev Event) bool {
	switch e := ev.(type) {
	case HeartbeatReceived:
		n.heard()
	case ChannelUp:
		n.channelUp()
	case AckReceived:
		n.ack(e)
	case ChannelDown:
		n.chanOpen = false
		if n.peerRestarting {
			return true // the restarting backup's old channel
		}
		n.peerLost("channel down: " + e.Reason)
	case PeerBye:
		switch {
		case n.peerRestarting:
			return false
		case e.Clean && e.Reason == ByeRestarting:
			n.peerRestarts()
		case e.Clean && e.Reason == ByeSwitchover:
			n.startSwitchover(false)
		case e.Clean && e.Reason == ByeUnprotect:
			// The backup halted as it sent this; the primary still runs
			// alone only holding the lock (the invariant every other
			// path keeps), so an unreachable arbiter pauses the VM until
			// it answers, as for a lost backup.
			n.unprotected = unprotectCause + " on the backup host"
			n.peerLost(n.unprotected)
		default:
			n.peerLost("backup said bye: " + e.Reason)
		}
	case SwitchoverRequested:
		if n.peerRestarting {
			return false
		}
		n.startSwitchover(true)
	case UnprotectRequested:
		if n.peerRestarting {
			return false
		}
		// Stop sending log, then the bye (no Log frame follows it), then
		// the lock decides, as for a lost backup: a backup that missed
		// the bye goes live on silence, after this claim.
		n.unprotected = unprotectCause
		n.emit(DrainLocally{})
		n.emit(SendBye{Clean: true, Reason: ByeUnprotect})
		n.claim(n.unprotected)
	case PrimaryHung:
		if n.state != StateReplicating || !n.chanOpen || n.peerRestarting || n.hung != "" {
			return false
		}
		n.hung = e.Reason
		n.emit(KillVM{Reason: "recording QEMU hung: " + e.Reason})
	case QEMUExited:
		if n.hung != "" {
			// Killed for a hang: unclean whatever the log's end says
			// (a destroy after a failed kill may end it with END; the
			// daemon stopped sending the log at KillVM).
			n.emit(SendBye{Clean: false, Reason: "primary QEMU hung and was killed: " + n.hung})
			n.stop("QEMU hung and was killed: " + n.hung)
		} else if e.Clean {
			n.emit(SendBye{Clean: true, Reason: ByeShutdown})
			n.stop("VM shut down")
		} else {
			n.emit(SendBye{Clean: false, Reason: "primary QEMU exited uncleanly"})
			n.stop("QEMU exited uncleanly")
		}
		n.emit(Cleanup{})
	default:
		return false
	}
	return true
}

func (n *Node) ack(e AckReceived) {
	n.heard()
	n.ackedOffset = max(n.ackedOffset, e.Offset)
	n.ackedIcount = max(n.ackedIcount, e.Icount)
	n.ackedFed = max(n.ackedFed, e.Fed)
}

// backupIcount (backup) takes a sample of the replaying QEMU's icount;
// samples may arrive out of order (two samplers), so only a larger one
// counts, and only a larger one is progress.
func (n *Node) backupIcount(icount uint64) {
	n.sampled = n.now
	if icount > n.icount {
		if n.icount == 0 && len(n.fedAt) > 0 {
			// The first sample: the lag counts from now at the earliest,
			// not from log fed while QEMU was still starting (that can
			// take longer than the ceiling, as for the stall rule).
			n.fedAt = append(n.fedAt[:0], fedSample{instr: n.fedAt[len(n.fedAt)-1].instr, tick: n.now})
		}
		n.icount = icount
		n.endStand()
		n.moved = n.now
	}
	// Every sample, not only a larger one: a frame's LogReceived can come
	// after the sample that already reached it (the feeder and the
	// sampler are different goroutines).
	i := 0
	for i < len(n.fedAt) && n.fedAt[i].instr <= n.icount {
		i++
	}
	n.fedAt = n.fedAt[i:]
}

// fedSample: by tick, the log fed reached instr (an INSTRUCTION sum).
type fedSample struct {
	instr uint64
	tick  int64
}

// maxFedSamples bounds Node.fedAt (one a tick: 80 s of ticks of 10 ms).
// Past it the second oldest is dropped: the oldest, which gives the lag,
// stays, and a lag read later can only be shorter than the truth, never
// longer (no false BackupBehind).
const maxFedSamples = 8192

// fed (backup, replicating) notes that the log fed now reaches instr, its
// last frame received waited ticks ago. Log the replay is known to have
// executed already is not noted.
func (n *Node) fed(instr uint64, waited int64) {
	if instr <= n.icount {
		return
	}
	tick := n.now - max(waited, 0)
	k := len(n.fedAt) - 1
	if k >= 0 {
		tick = max(tick, n.fedAt[k].tick)
		if n.fedAt[k].tick == tick {
			n.fedAt[k].instr = instr
			return
		}
	}
	if len(n.fedAt) >= maxFedSamples {
		n.fedAt = append(n.fedAt[:1], n.fedAt[2:]...)
	}
	n.fedAt = append(n.fedAt, fedSample{instr: instr, tick: tick})
}

// lag (backup) is Status.Lag: the age in ticks of the oldest log received
// that the replay's last icount sample had not reached, counted from the
// first sample at the earliest; 0 before the first sample (QEMU starting:
// the stall rule's start-up exemption), when it has executed everything
// fed, while FIFO B holds no unread log, and outside replication.
func (n *Node) lag() int64 {
	if n.state != StateReplicating || n.role != RoleBackup || n.peerEnded || n.icount == 0 || len(n.fedAt) == 0 || n.unread == 0 {
		return 0
	}
	return n.now - n.fedAt[0].tick
}

// checkLag (on each icount sample) applies Config.LagCeiling to a
// replicating backup whose primary has not ended: a replay that advances
// (so the stall rule never fires) but was the ceiling or more behind the
// log it was sent when an icount sample was taken, with log unread in
// FIFO B, is lost as a stalled one is: it tells the primary, which runs
// on alone, and halts. Without this, since QEMU patch 0018 (a replaying turn is at most
// 2^18 instructions) a replay finishing one turn per stall bound would
// count as healthy however far behind it fell (docs/replay.md §12).
func (n *Node) checkLag() {
	if n.cfg.LagCeiling <= 0 || n.state != StateReplicating || n.role != RoleBackup || n.peerEnded {
		return
	}
	// Log unread in FIFO B is the evidence that the replay is behind: one
	// that has read everything it was sent is not (and its icount and the
	// log's INSTRUCTION sums may differ a little at the end of an event).
	if n.lag() == 0 {
		return
	}
	// The lag when this icount sample was taken (checkLag runs on each):
	// all a sample proves.
	lag := n.sampled - n.fedAt[0].tick
	n.maxLag = max(n.maxLag, lag)
	if lag < int64(n.cfg.LagCeiling) {
		return
	}
	cause := fmt.Sprintf("replay too far behind: the oldest log not executed was received %d ticks before the last icount sample (ceiling %d); icount %d, log up to icount %d fed",
		lag, n.cfg.LagCeiling, n.icount, n.fedInstr)
	n.emit(BackupBehind{Icount: n.icount, Fed: n.fedInstr, Lag: lag, Ceiling: int64(n.cfg.LagCeiling)})
	if n.chanOpen {
		n.emit(SendBye{Clean: false, Reason: "backup " + cause})
	}
	n.standing = false
	n.halt(cause)
}

// standTicks is the shortest stand of a replicating backup's replay that
// BackupResumed reports: a fifth of the stall bound, at least one tick.
func (n *Node) standTicks() int64 { return max(int64(n.cfg.StallTimeout)/5, 1) }

// endStand (backup) is called when the replay makes progress, before moved
// is reset: a stand long enough to report (standing) emits BackupResumed,
// while the backup is still replicating.
func (n *Node) endStand() {
	if !n.standing {
		return
	}
	n.standing = false
	if n.state == StateReplicating && n.role == RoleBackup && !n.peerEnded {
		n.emit(BackupResumed{Icount: n.icount, Ticks: n.now - n.moved})
	}
}

// slowNotStopped (backup) reports a replay that is executing, slowly, not
// stopped: its vCPU ran for most of the last sampling window
// (BackupExecuting, at most a tenth of the stall bound ago) while its
// monitor gave no icount sample for that long. That is a long INSTRUCTION
// event replayed through the softmmu's slow paths, with the replay mutex
// held and the main loop waiting for it (docs/replay.md §12, session 20:
// gdb during such a stand). checkStall gives it slowBound while
// replicating, and four stall bounds while going live, as for the other
// cases without evidence of a stop. A monitor that answers with the same
// icount is evidence of a stop, whatever the vCPU does (a diverged replay
// may spin with a zero budget), and so is a vCPU that does not run
// (SIGSTOP, a deadlock). A vCPU that spins for ever with the monitor
// silent (a livelock under the replay mutex) looks slow: it is still
// declared stalled at the longer bound, never held without limit.
//
// "Fresh" is a tenth of the stall bound, at least executingFresh: the
// daemon reports every 250 ms, so one late or missed report must not
// end the exemption.
func (n *Node) slowNotStopped() bool {
	fresh := max(int64(n.cfg.StallTimeout)/10, executingFresh)
	return n.executing > 0 && n.now-n.executing <= fresh && n.now-n.sampled > fresh
}

// executingFresh is the least age (ticks: 1 s) at which a BackupExecuting
// report still counts (slowNotStopped).
const executingFresh = 100

// slowBound (backup, replicating) is how long a slow replay
// (slowNotStopped) may stand before it is declared stalled: four stall
// bounds, but at most 15 s more than one, so that a large configured bound
// does not hold the primary for minutes.
func (n *Node) slowBound() int64 { return int64(SlowStallBound(n.cfg.StallTimeout)) }

// SlowStallBound is the stall bound (ticks) of a replicating backup seen
// executing with its monitor silent, for a Config.StallTimeout of stall
// ticks: four times stall, at most 1500 ticks (15 s) more than stall.
func SlowStallBound(stall int) int { return stall + min(3*stall, slowExtraMax) }

// slowExtraMax caps what slowBound adds to the stall bound (ticks: 15 s).
const slowExtraMax = 1500

// startupReadBytes: a replaying QEMU reads the log's first events (through
// its 4 KiB stdio buffer) as it starts, before libvirt lets the guest run;
// more than this read means the replay runs.
const startupReadBytes = 64 << 10

// feedUnread (backup) takes a sample of FIFO B: QEMU reading more of it is
// progress.
func (n *Node) feedUnread(e FeedUnread) {
	n.unread = e.Bytes
	if e.Written >= e.Bytes && e.Written-e.Bytes > n.consumed {
		n.consumed = e.Written - e.Bytes
		n.endStand()
		n.moved = n.now
	}
}

// checkStall (Tick) applies Config.StallTimeout: a backup that made no
// progress for that long while its QEMU left log unread in FIFO B is
// stalled (replicating, or replaying a cleanly ended primary's last log),
// and a go-live whose feeding END or drain made no progress for that long
// fails.
//
// Progress is a larger icount sample or more of FIFO B read: the second
// needs no QEMU monitor, so a monitor that is slow or unreachable for a
// while (a libvirtd restart) does not make a healthy backup look stalled.
// Unread log, not "fed instructions above the icount", is the evidence of
// a stall: a replay that has executed everything it was given waits inside
// QEMU for the next event, with the monitor held and FIFO B empty; that is
// an idle backup. A QEMU that stopped replaying stops reading, and the log
// the primary keeps sending stays in FIFO B.
func (n *Node) checkStall() {
	limit := int64(n.cfg.StallTimeout)
	if limit <= 0 {
		return
	}
	switch {
	case n.state == StateReplicating && n.role == RoleBackup && n.peerEnded && n.unread == 0:
		// The primary ended cleanly and its whole log was fed: a healthy
		// replay runs to the end and its QEMU stops with the replayed
		// shutdown. The log's tail may sit whole in QEMU's read buffer
		// (nothing unread, so the rule below never fires) and the monitor
		// may be held: no progress for four bounds ends it, without
		// evidence. It can never go live, so a wrong call costs only the
		// in-step record (the next start hashes the disks).
		if n.now-n.moved < 4*limit {
			return
		}
		stuck := n.now - n.moved
		cause := fmt.Sprintf("the replay of the primary's clean end stalled: icount %d for %d ticks, %d bytes of log unread (log up to icount %d fed)",
			n.icount, stuck, n.unread, n.fedInstr)
		n.emit(BackupStalled{Icount: n.icount, Fed: n.fedInstr, Ticks: stuck})
		n.halt(cause)
	case n.state == StateReplicating && n.role == RoleBackup:
		// No icount yet and no more read than QEMU reads ahead while
		// libvirt starts it paused: still starting (that can take longer
		// than the bound); not a stall. Nothing unread: not stuck.
		if (n.icount == 0 && n.consumed < startupReadBytes) || n.unread == 0 {
			n.endStand()
			n.moved = n.now
			return
		}
		if n.now-n.moved >= n.standTicks() {
			n.standing = true
		}
		if n.now-n.moved < limit || (n.slowNotStopped() && n.now-n.moved < n.slowBound()) {
			return
		}
		n.standing = false
		stuck := n.now - n.moved
		cause := fmt.Sprintf("replay stalled: icount %d for %d ticks with %d bytes of log unread (log up to icount %d fed)",
			n.icount, stuck, n.unread, n.fedInstr)
		n.emit(BackupStalled{Icount: n.icount, Fed: n.fedInstr, Ticks: stuck})
		if n.chanOpen {
			n.emit(SendBye{Clean: false, Reason: "backup " + cause})
		}
		n.halt(cause)
	case n.state == StateGoingLive && (n.phase == PhaseFeedingEnd || n.phase == PhaseDraining):
		// Halting here ends the VM (its primary is gone, unless this is
		// a switchover), so it takes positive evidence: log left unread,
		// or a monitor that answers with the same icount. Without either
		// (the monitor unreachable, FIFO B empty) the go-live waits up
		// to four times longer before it gives up.
		// A replay seen executing (slowNotStopped) is no evidence of a
		// stop either: failing this go-live would end the VM.
		evidence := (n.unread > 0 || n.now-n.sampled < limit/2) && !n.slowNotStopped()
		if n.now-n.moved < limit || (!evidence && n.now-n.moved < 4*limit) {
			return
		}
		stuck := n.now - n.moved
		end := max(n.target, n.fedInstr)
		cause := fmt.Sprintf("go-live failed: the replay stayed at icount %d for %d ticks, short of the log's end at icount %d (%v)",
			n.icount, stuck, end, n.phase)
		n.emit(BackupStalled{Icount: n.icount, Fed: end, Ticks: stuck})
		if n.chanOpen {
			n.emit(SendBye{Clean: false, Reason: cause})
		}
		n.halt(cause)
	}
}

// startSwitchover (primary): stop sending the log, keep the VM running.
func (n *Node) startSwitchover(local bool) {
	n.state, n.switchover = StateSwitchingOver, true
	n.reason = "switchover: waiting for the backup to go live"
	n.timings = newTimings()
	n.timings.Cause, n.timings.SilenceStart, n.timings.Detected = "switchover", n.now, n.now
	n.emit(DrainLocally{Switchover: true})
	if local {
		n.emit(SendBye{Clean: true, Reason: ByeSwitchover})
	}
}

func (n *Node) stepSwitchingOver(ev Event) bool {
	switch e := ev.(type) {
	case HeartbeatReceived, ChannelUp:
		n.heard()
	case AckReceived:
		n.ack(e)
	case ChannelDown:
		n.chanOpen = false
		n.peerLost("channel down during switchover: " + e.Reason)
	case PeerBye:
		switch {
		case e.Clean && e.Reason == ByeLive:
			n.stopVM("switched over: the backup is live")
		case e.Clean && e.Reason == ByeSwitchover:
			return false // both sides asked; already under way
		default:
			n.peerLost("backup said bye during switchover: " + e.Reason)
		}
	case QEMUExited:
		n.stop("QEMU exited during switchover")
		n.emit(Cleanup{})
	default:
		return false
	}
	return true
}

// claim (primary): the backup is lost; ask for the lock. The VM keeps
// running with its output held until the outcome is known.
func (n *Node) claim(cause string) {
	if n.switchover {
		// Keep the switchover's milestones; note why it turned into a
		// claim.
		n.timings.Cause = "switchover, then " + cause
	} else {
		n.timings = newTimings()
		n.timings.Cause, n.timings.SilenceStart, n.timings.Detected = cause, n.lastHeard, n.now
	}
	n.state, n.reason = StateClaiming, cause
	n.closeChannel()
	n.requestLock()
}

func (n *Node) stepClaiming(ev Event) bool {
	switch e := ev.(type) {
	case LockResult:
		if n.phase != PhaseLocking || n.lockRetry > 0 {
			return false
		}
		switch {
		case e.Err != nil:
			n.lockError(e.Err)
		case e.Won:
			n.timings.Locked, n.timings.Alone = n.now, n.now
			n.state, n.phase = StateUnprotected, PhaseNone
			switch {
			case n.switchover:
				n.reason = "switchover aborted, running alone: " + n.reason
			case n.unprotected != "":
				// Not lost: ended on purpose (a lock error may have
				// replaced the reason meanwhile).
				n.reason = n.unprotected
			default:
				n.reason = "backup lost: " + n.reason
			}
			n.emit(ReportUnprotected{Reason: n.reason})
		case n.switchover:
			n.stopVM("switched over: the backup holds the lock")
		default:
			n.halt("lost the lock: the backup went live")
		}
	case QEMUExited:
		n.stop("QEMU exited while claiming the lock")
		n.emit(Cleanup{})
	default:
		return false
	}
	return true
}

// ---- backup ----

func (n *Node) stepBackup(ev Event) bool {
	switch e := ev.(type) {
	case HeartbeatReceived:
		n.heard()
	case ChannelUp:
		n.channelUp()
	case LogReceived:
		n.heard()
		n.logOffset = max(n.logOffset, e.Offset)
		n.fedBytes = max(n.fedBytes, e.Bytes)
		if e.Instructions > n.fedInstr {
			n.fed(e.Instructions, e.Waited)
		}
		n.fedInstr = max(n.fedInstr, e.Instructions)
	case BackupIcount:
		n.backupIcount(e.Icount)
		n.checkLag()
	case ChannelDown:
		n.chanOpen = false
		if n.peerEnded {
			return false // expected: the primary closed after its bye
		}
		if n.peerRestarting {
			return true // the restarting primary's old channel
		}
		n.peerLost("channel down: " + e.Reason)
	case PeerBye:
		switch {
		case n.peerEnded || n.peerRestarting:
			return false
		case e.Clean && e.Reason == ByeRestarting:
			n.peerRestarts()
		case e.Clean && e.Reason == ByeSwitchover:
			n.startGoLive("switchover asked by the primary", true, false)
		case e.Clean && e.Reason == ByeUnprotect:
			n.halt(unprotectCause + " on the primary host")
		case e.Clean && e.Reason != ByeLive:
			// The primary's VM ended and the whole log was sent:
			// replay it to the end, never go live.
			n.peerEnded = true
			n.standing = false // its bound is 4 × StallTimeout, unreported
			n.moved = n.now    // the bound of replaying the end starts now
			n.reason = "primary ended cleanly (" + e.Reason + "): replaying to the end"
			n.closeChannel()
		default:
			n.peerLost("primary said bye: " + e.Reason)
		}
	case SwitchoverRequested:
		if n.peerEnded || n.peerRestarting {
			return false
		}
		n.startGoLive("switchover", true, true)
	case UnprotectRequested:
		if n.peerEnded || n.peerRestarting {
			return false
		}
		if n.chanOpen {
			n.emit(SendBye{Clean: true, Reason: ByeUnprotect})
		}
		n.halt(unprotectCause)
	case Diverged:
		if n.peerEnded {
			return false // replaying a cleanly ended primary's last log: it never goes live
		}
		// Never go live as another machine: stop, and the primary, told,
		// runs on alone (as for a stalled replay, checkStall). During a
		// peer's restart grace the channel is down; the primary learns it
		// when its resume is refused.
		cause := "diverged from the primary: " + e.Reason
		if n.chanOpen {
			n.emit(SendBye{Clean: false, Reason: "backup " + cause})
		}
		n.halt(cause)
	case QEMUExited:
		if n.peerEnded {
			n.stop("replayed the primary's end")
		} else {
			if n.chanOpen {
				n.emit(SendBye{Clean: e.Clean, Reason: "backup QEMU exited"})
			}
			if e.Clean {
				n.stop("backup QEMU stopped")
			} else {
				n.stop("backup QEMU exited uncleanly")
			}
		}
		n.emit(Cleanup{})
	default:
		return false
	}
	return true
}

// startGoLive (backup): stop feeding, write END, then drain, lock, go live.
func (n *Node) startGoLive(cause string, planned, local bool) {
	n.state, n.phase, n.switchover, n.reason = StateGoingLive, PhaseFeedingEnd, planned, cause
	n.timings = newTimings()
	n.timings.Cause, n.timings.Detected = cause, n.now
	n.moved = n.now // the stall bound of feeding END and draining starts now
	if planned {
		n.timings.SilenceStart = n.now
	} else {
		n.timings.SilenceStart = n.lastHeard
	}
	if local {
		n.emit(SendBye{Clean: true, Reason: ByeSwitchover})
	}
	if !planned {
		// Make a half-alive primary notice, so that it claims the lock
		// rather than wait with its output held.
		n.closeChannel()
	}
	n.emit(FeedEnd{})
}

func (n *Node) stepGoingLive(ev Event) bool {
	switch e := ev.(type) {
	case Diverged:
		// In a planned switchover the primary still runs: a backup found
		// diverged before it is live stops, and the primary, told, runs
		// on alone. After a primary's loss it goes live anyway (a
		// diverged VM is better than none); its gates compare nothing
		// after END.
		if !n.switchover || (n.phase != PhaseFeedingEnd && n.phase != PhaseDraining) {
			return false
		}
		cause := "diverged from the primary during the switchover: " + e.Reason
		if n.chanOpen {
			n.emit(SendBye{Clean: false, Reason: "backup " + cause})
		}
		n.halt(cause)
	case LogReceived:
		// A queued frame written into FIFO B while feeding END: the
		// replaying QEMU read log, which is progress.
		if n.phase != PhaseFeedingEnd {
			return false
		}
		n.moved = n.now
		n.logOffset = max(n.logOffset, e.Offset)
		n.fedBytes = max(n.fedBytes, e.Bytes)
		n.fedInstr = max(n.fedInstr, e.Instructions)
	case EndFed:
		if n.phase != PhaseFeedingEnd {
			return false
		}
		n.timings.EndFed = n.now
		n.moved = n.now
		n.fedBytes = max(n.fedBytes, e.Bytes)
		n.fedInstr = max(n.fedInstr, e.Instructions)
		n.target = n.fedInstr
		n.phase = PhaseDraining
		n.emit(WaitDrain{Icount: n.target})
	case BackupIcount:
		n.backupIcount(e.Icount)
		if n.phase == PhaseDraining && n.icount >= n.target {
			n.timings.Drained = n.now
			n.requestLock()
		}
	case LockResult:
		if n.phase != PhaseLocking || n.lockRetry > 0 {
			return false
		}
		switch {
		case e.Err != nil:
			n.lockError(e.Err)
		case e.Won:
			n.timings.Locked = n.now
			n.phase = PhaseStarting
			n.reason = n.timings.Cause + ": lock won, going live"
			n.emit(GoLive{})
		default:
			n.halt("lost the lock: the primary runs on")
		}
	case GoLiveDone:
		if n.phase != PhaseStarting {
			return false
		}
		if e.Err != nil {
			n.halt("go-live failed: " + e.Err.Error())
			return true
		}
		n.timings.Alone = n.now
		n.state, n.phase, n.role = StateLive, PhaseNone, RolePrimary
		n.reason = "live after " + n.timings.Cause
		n.emit(Announce{})
		if n.chanOpen && n.switchover {
			n.emit(SendBye{Clean: true, Reason: ByeLive})
		}
		n.closeChannel()
		n.emit(Cleanup{})
	case ChannelDown:
		n.chanOpen = false
		return false
	case QEMUExited:
		if n.phase == PhaseStarting {
			return false // the daemon is restarting QEMU itself
		}
		n.stop("backup QEMU exited while going live")
		n.emit(Cleanup{})
	default:
		return false
	}
	return true
}

// ---- running alone, ended ----

func (n *Node) stepAlone(ev Event) bool {
	if _, ok := ev.(QEMUExited); !ok {
		return false
	}
	n.stop("VM ended")
	n.emit(Cleanup{})
	return true
}

func (n *Node) stepEnded(ev Event) bool {
	if _, ok := ev.(QEMUExited); !ok || !n.vmStopping {
		return false
	}
	n.vmStopping = false
	n.emit(Cleanup{})
	return true
}
