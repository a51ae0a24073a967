package failover

import (
	"errors"
	"fmt"
)

// Role is what a Node does for its domain.
type Role int

// Roles. The zero value is not a role, so that a forgotten Config.Role is an
// error rather than a silent primary.
const (
	// RolePrimary runs the VM under rr=record and streams its log.
	RolePrimary Role = iota + 1
	// RoleBackup replays the primary's log and goes live when the primary
	// is lost.
	RoleBackup
)

func (r Role) String() string {
	switch r {
	case RolePrimary:
		return "primary"
	case RoleBackup:
		return "backup"
	}
	return fmt.Sprintf("Role(%d)", int(r))
}

// State is where a Node stands. Which states a role can reach is listed on
// each constant; see doc.go for the transitions.
type State int

// States. The strings (String) are those the scenario scripts and the
// daemon's status use.
const (
	// StateReplicating: the log channel is up and the peer is heard.
	// Primary: backup attached, log flowing. Backup: receiving the log and
	// feeding it to the replaying QEMU. A backup whose primary ended
	// cleanly (PeerBye with Clean set) stays here, with Status.PeerEnded
	// set, until its QEMU has replayed the end and exited.
	StateReplicating State = iota + 1
	// StateUnprotected (primary): the backup is lost and this node won the
	// lock; the VM runs alone and may release output without acks.
	StateUnprotected
	// StateClaiming (primary): the backup is lost (silence, channel down,
	// bye); the primary drains FIFO A locally and waits for the lock's
	// outcome. Its VM keeps running but must release no output.
	StateClaiming
	// StateSwitchingOver (primary): a planned switchover is in progress;
	// the VM keeps running (output held) until the backup is live.
	StateSwitchingOver
	// StateGoingLive (backup): the primary is lost or a switchover was
	// asked; Phase says which step: feeding END, draining, locking,
	// starting.
	StateGoingLive
	// StateLive (backup that went live): it runs the VM as a recording
	// primary without a backup. Role() reports RolePrimary from then on.
	StateLive
	// StateHalted: this node lost the split-brain race (or could not go
	// live) and has been told to halt its VM. Terminal.
	StateHalted
	// StateStopped: this node's VM ended (clean shutdown, crash, planned
	// switchover completed, backup torn down). Status.Reason says why.
	// Terminal.
	StateStopped
)

var stateNames = map[State]string{
	StateReplicating:   "replicating",
	StateUnprotected:   "unprotected",
	StateClaiming:      "claiming",
	StateSwitchingOver: "switching-over",
	StateGoingLive:     "going-live",
	StateLive:          "live",
	StateHalted:        "halted",
	StateStopped:       "stopped",
}

func (s State) String() string {
	if n, ok := stateNames[s]; ok {
		return n
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Phase is the step of a multi-step state (GoingLive, Claiming, the lock
// wait of SwitchingOver). PhaseNone elsewhere.
type Phase int

// Phases, in the order a backup goes through them.
const (
	PhaseNone Phase = iota
	// PhaseFeedingEnd (backup): FeedEnd was emitted; waiting for EndFed.
	PhaseFeedingEnd
	// PhaseDraining (backup): WaitDrain was emitted; waiting for a
	// BackupIcount that reaches the target.
	PhaseDraining
	// PhaseLocking (both): AcquireLock was emitted; waiting for
	// LockResult.
	PhaseLocking
	// PhaseStarting (backup): GoLive was emitted; waiting for GoLiveDone.
	PhaseStarting
)

var phaseNames = map[Phase]string{
	PhaseNone:       "none",
	PhaseFeedingEnd: "feeding-end",
	PhaseDraining:   "draining",
	PhaseLocking:    "locking",
	PhaseStarting:   "starting",
}

func (p Phase) String() string {
	if n, ok := phaseNames[p]; ok {
		return n
	}
	return fmt.Sprintf("Phase(%d)", int(p))
}

// Reasons carried by SendBye / PeerBye that have a protocol meaning. Any
// other reason is for humans only.
const (
	// ByeShutdown (primary → backup, Clean): the primary's VM shut down
	// cleanly and the whole log, its SHUTDOWN and END included, was sent.
	// The backup replays it to the end and stops; it does not go live.
	ByeShutdown = "shutdown"
	// ByeSwitchover (either way, Clean): a planned switchover starts. From
	// the primary it also means "no log frame follows". The channel stays
	// up: the backup still has to say ByeLive.
	ByeSwitchover = "switchover"
	// ByeLive (backup → primary, Clean): the backup went live at the end
	// of a planned switchover; the primary stops its VM.
	ByeLive = "live"
	// ByeRestarting (either way, Clean): the peer's daemon stops for a
	// planned restart and hands its QEMU's descriptors to the next
	// process (systemd's file descriptor store). The channel closes; the
	// peer is lost only if a new channel of the same pairing is not up
	// (ChannelUp) within Config.RestartGrace ticks.
	ByeRestarting = "restarting"
	// ByeUnprotect (either way, Clean): the operator ended protection
	// (`virt-ft unprotect`). From the primary: its VM runs on alone, and
	// the backup stops its replaying VM (never goes live). From the
	// backup: it stops its VM, and the primary runs on alone. Either way
	// the primary still claims the pairing's lock before it runs
	// unprotected, so a backup that never got the bye cannot go live too.
	ByeUnprotect = "unprotect"
)

// Errors returned by Config.Validate (and New).
var (
	ErrBadRole     = errors.New("failover: role must be primary or backup")
	ErrBadInterval = errors.New("failover: heartbeat interval must be at least 1 tick")
	ErrBadTimeout  = errors.New("failover: heartbeat timeout must be longer than the heartbeat interval")
	ErrBadRetry    = errors.New("failover: lock retry interval must not be negative")
	ErrBadStall    = errors.New("failover: stall timeout must not be negative")
)

// Config parameterises a Node. All durations are in ticks: the daemon calls
// Node.Tick at a fixed period (for example every 10 ms) and converts.
type Config struct {
	// Role is the role at creation: RolePrimary on the host that runs the
	// recording QEMU, RoleBackup on the host that replays.
	Role Role
	// HeartbeatInterval is the number of ticks between two SendHeartbeat
	// actions, emitted whenever the log channel is open, whether or not
	// the guest is active. At least 1.
	HeartbeatInterval int
	// HeartbeatTimeout is the number of ticks without any frame from the
	// peer (heartbeat, log, ack) after which the peer is declared lost.
	// Must be greater than HeartbeatInterval; several intervals (for
	// example 10) avoid false go-lives on a busy host.
	HeartbeatTimeout int
	// LockRetryInterval is the number of ticks to wait before asking for
	// the lock again after a LockResult carrying an error (the lock could
	// not be reached, so neither a win nor a loss is known). 0 means
	// HeartbeatInterval.
	LockRetryInterval int
	// StallTimeout is the number of ticks the backup's executed icount
	// may stay the same while its QEMU leaves log unread in FIFO B
	// (FeedUnread) before the backup is declared stalled: a replay that
	// stopped for good (a divergence, a stopped QEMU). The backup then
	// tells the primary (an unclean bye: the primary goes on alone) and
	// halts its VM; a backup going live fails
	// its go-live when feeding END or draining makes no progress for this
	// long, rather than waiting forever. 0 turns the check off. The
	// daemon's default is 5 s or twice the heartbeat timeout, whichever is
	// longer (xml.DefaultReplayStall), and at least ten status intervals.
	// A replay seen executing with its monitor silent (BackupExecuting)
	// gets longer: up to four bounds, at most 15 s more while replicating
	// (Node.slowBound), four bounds while going live.
	StallTimeout int
	// RestartGrace is the number of ticks a peer that said ByeRestarting
	// has to bring the log channel back before it is declared lost. 0
	// means HeartbeatTimeout. (The daemon's default is the larger of the
	// heartbeat timeout and 5 s: plugin restartGrace.)
	RestartGrace int
	// LagCeiling is the most ticks a replicating backup may be behind the
	// log it was sent before it is declared lost (BackupBehind, then as
	// for a stall: an unclean bye and HaltVM). The lag is the age of the
	// oldest log received (LogReceived, less its Waited) that the replay
	// has not executed, judged at each icount sample while log is unread
	// in FIFO B. It catches a replay that keeps advancing, so never
	// stalls, yet falls behind despite the primary's lag bound: one
	// replaying a long log event in 2^18-instruction turns, each slow
	// (QEMU patch 0018). A go-live then would drain at least that long. 0
	// turns the check off. The daemon sets DefaultLagCeiling of its
	// StallTimeout, at least four times its lag bound (max-lag-ms), and 0
	// when that bound is off (a slower backup would then fall behind
	// without limit, by design).
	LagCeiling int
}

// DefaultLagCeiling is the daemon's Config.LagCeiling for a StallTimeout of
// stall ticks: SlowStallBound(stall) + stall, at least minLagCeiling (25
// s; with the default 5 s stall bound both are 25 s). A stand the
// slow-replay rule tolerates adds up to SlowStallBound to the lag. 0 when
// stall is 0 (no stall rule: no ceiling either).
func DefaultLagCeiling(stall int) int {
	if stall <= 0 {
		return 0
	}
	return max(SlowStallBound(stall)+stall, minLagCeiling)
}

// minLagCeiling is DefaultLagCeiling's least value (ticks: 25 s): the
// ceiling bounds a go-live's drain, not how soon a stop is seen, so a short
// stall bound does not shorten it.
const minLagCeiling = 2500

// Validate reports whether c can drive a Node.
func (c Config) Validate() error {
	if c.Role != RolePrimary && c.Role != RoleBackup {
		return fmt.Errorf("%w (got %v)", ErrBadRole, c.Role)
	}
	if c.HeartbeatInterval < 1 {
		return fmt.Errorf("%w (got %d)", ErrBadInterval, c.HeartbeatInterval)
	}
	if c.HeartbeatTimeout <= c.HeartbeatInterval {
		return fmt.Errorf("%w (interval %d, timeout %d)", ErrBadTimeout, c.HeartbeatInterval, c.HeartbeatTimeout)
	}
	if c.LockRetryInterval < 0 {
		return fmt.Errorf("%w (got %d)", ErrBadRetry, c.LockRetryInterval)
	}
	if c.StallTimeout < 0 {
		return fmt.Errorf("%w (got %d)", ErrBadStall, c.StallTimeout)
	}
	if c.RestartGrace < 0 {
		return fmt.Errorf("failover: RestartGrace must be >= 0 ticks (got %d)", c.RestartGrace)
	}
	if c.LagCeiling < 0 {
		return fmt.Errorf("failover: LagCeiling must be >= 0 ticks (got %d)", c.LagCeiling)
	}
	return nil
}
