// Package ctl is the control-socket protocol between libvirt-ftd and its
// local clients: the libvirt hook (hooks/) and the virt-ft command.
//
// One request per connection: the client writes one JSON Request and a
// newline, the daemon answers one JSON Response and closes. The socket is a
// unix socket (default /run/libvirt-ft/ctl.sock, mode 0660, group
// control-group: its members may read status; failover and the hook need
// root).
package ctl

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// Operations.
const (
	// OpHook carries a libvirt qemu hook invocation (Request.Hook).
	OpHook = "hook"
	// OpStatus asks for the status of protected domains (Request.Domain
	// empty for all).
	OpStatus = "status"
	// OpFailover asks for a planned switchover of Request.Domain (name or
	// UUID): the backup goes live, then the primary is stopped. The
	// answer comes as soon as the switchover started; follow it with
	// OpStatus.
	OpFailover = "failover"
	// OpUnprotect ends the protection of Request.Domain (name or UUID)
	// on either host: the backup's replaying VM stops and the primary's
	// VM runs on alone, unprotected, until it shuts down (its next start
	// is protected again while the definition has the ft element). The
	// answer comes as soon as it started; follow it with OpStatus.
	OpUnprotect = "unprotect"
	// OpCheck reports whether Request.Domain (name or UUID; its
	// persistent definition) can be protected, without starting it:
	// every refusal its start would meet (Response.Check.Problems) and
	// every warning, and the backup host's own answer (check-backup). It
	// arms nothing, but dials the backup host: root only, one at a time.
	OpCheck = "check"
	// OpEnable adds the ft element to Request.Domain's persistent
	// definition (name, UUID or ID), its peer Request.Peer ("host" or
	// "host:port"), every other value the default; libvirt-ftd then
	// rewrites it for record/replay. Refused (nothing changed) when the
	// domain already has one or the result would be refused at start.
	// Root only. A running domain is protected from its next start.
	OpEnable = "enable"
	// OpDisable removes the ft element from Request.Domain's persistent
	// definition; libvirt-ftd then removes the record/replay wiring it
	// generated, and the next start is a plain VM's. A running protected
	// domain stays protected until it stops (or virt-ft unprotect). Root
	// only.
	OpDisable = "disable"
	// OpProtect gives Request.Domain (name or UUID), a VM that runs
	// alone on this host after a failover, a new backup without a
	// reboot: on Request.Peer ("host" or "host:port") if set, else on
	// the host it failed over from. The answer comes as soon as it
	// started; follow DomainStatus.Reprotect with OpStatus. Root only.
	OpProtect = "protect"
)

// ErrDaemonUnreachable wraps failures to reach libvirt-ftd.
var ErrDaemonUnreachable = errors.New("libvirt-ftd is not reachable")

// Hook is one libvirt qemu hook invocation
// (libvirt docs: https://libvirt.org/hooks.html, "etc/libvirt/hooks/qemu").
type Hook struct {
	// Domain is the domain name (argv[1]).
	Domain string `json:"domain"`
	// Operation is argv[2]: prepare, start, started, stopped, release,
	// migrate, restore, reconnect, attach.
	Operation string `json:"operation"`
	// SubOperation is argv[3] (begin, end, -).
	SubOperation string `json:"sub_operation"`
	// XML is the domain XML libvirt passed on stdin.
	XML string `json:"xml"`
}

// Request is what a client sends.
type Request struct {
	Op     string `json:"op"`
	Domain string `json:"domain,omitempty"`
	Hook   *Hook  `json:"hook,omitempty"`
	// Peer (OpEnable) is the backup host: "host" or "host:port".
	Peer string `json:"peer,omitempty"`
	// WithPeer (OpStatus): also ask the peer daemon of each running
	// pairing for its view (DomainStatus.PeerView); each asked at most
	// PeerViewTimeout, in parallel.
	WithPeer bool `json:"with_peer,omitempty"`
}

// PeerViewTimeout bounds the fetch of one peer view (OpStatus WithPeer).
const PeerViewTimeout = 2 * time.Second

// Response is what the daemon answers. Error, when set, is a complete
// user-facing message (the hook prints it; libvirt shows it).
type Response struct {
	OK      bool           `json:"ok"`
	Error   string         `json:"error,omitempty"`
	Domains []DomainStatus `json:"domains,omitempty"`
	Check   *Check         `json:"check,omitempty"`
	// Message says what OpEnable or OpDisable did, for the operator.
	Message string `json:"message,omitempty"`
}

// Check is the answer to OpCheck. Problems are what refuses the domain's
// protection, each naming the field and the fix; Warnings what will work
// but an admin should know. No problem: its start will be protected.
type Check struct {
	Domain   string   `json:"domain"`
	Problems []string `json:"problems"`
	Warnings []string `json:"warnings"`
}

// State is where a protected domain stands on this host: its run's
// lifecycle. The failover core's own state is DomainStatus.Failover.
type State string

// States (DomainStatus.State).
const (
	StateDefined   State = "defined"   // valid, rewritten for record/replay, not running
	StateRefused   State = "refused"   // cannot be protected; Detail says why
	StatePreparing State = "preparing" // prepare hook running (arming the backup)
	StateSeeding   State = "seeding"   // copying disks to the backup host
	StateWaiting   State = "waiting"   // primary: QEMU not yet recording
	// StateReplicating: the log flows and the backup acknowledges it.
	StateReplicating State = "replicating"
	// StateUnprotected: the primary runs without a backup.
	StateUnprotected State = "unprotected"
	StateArmed       State = "armed" // backup: FIFO ready, waiting for the log
	StateStopped     State = "stopped"
	// StateGoingLive: backup: the primary is lost; draining, then going
	// live.
	StateGoingLive State = "going-live"
	// StateLive: the former backup runs the VM (unprotected).
	StateLive State = "live"
	// StateSwitchingOver: primary, planned switchover under way (virt-ft
	// failover): the log is cut, the backup is going live.
	StateSwitchingOver State = "switching-over"
	// StateResolving: libvirt-ftd restarted while the VM ran here: the
	// VM is paused until the split-brain claim decides whether this copy
	// runs on or is destroyed (plugin/restart.go).
	StateResolving State = "resolving"
)

// Role is a daemon's part for a domain.
type Role string

// Roles (DomainStatus.Role).
const (
	RolePrimary Role = "primary" // runs the VM (recording, or live after a go-live)
	RoleBackup  Role = "backup"  // replays the primary's log
)

// DomainStatus is one protected domain on this host. Its fields are
// values; virt-ft does the wording. Durations are in ms; -1 where noted
// means "not reached".
type DomainStatus struct {
	Name string `json:"name"`
	UUID string `json:"uuid"`
	Role Role   `json:"role"`
	// Peer is the other daemon's address (host:port).
	Peer string `json:"peer"`
	// State is the domain's lifecycle here (the State constants).
	State State `json:"state"`
	// Detail says why the domain is in State, in the daemon's words: a
	// refusal's error, the cause of a loss, what go-live is doing.
	Detail string `json:"detail,omitempty"`
	// Seeding is the disk copy under way (State seeding).
	Seeding *Seeding `json:"seeding,omitempty"`
	// Reprotect is the re-protection under way (virt-ft protect), or the
	// last one's outcome.
	Reprotect *Reprotect `json:"reprotect,omitempty"`
	// SentBytes is the log bytes sent to (primary) or received from (backup)
	// the peer; AckedBytes the bytes the backup acknowledged as in its FIFO.
	SentBytes  uint64 `json:"sent_bytes"`
	AckedBytes uint64 `json:"acked_bytes"`
	// LagBytes = SentBytes - AckedBytes.
	LagBytes uint64 `json:"lag_bytes"`
	// LogInstructions is the sum of INSTRUCTION counts in the log so far
	// (guest instructions); BackupIcount the backup QEMU's executed
	// icount counted from the log's first event, as the log counts
	// (query-replay's less the icount a re-protected backup's replay
	// started at, docs/replay.md §15).
	LogInstructions uint64 `json:"log_instructions"`
	BackupIcount    uint64 `json:"backup_icount"`
	// LagInstructions = LogInstructions - BackupIcount (guest instructions).
	LagInstructions uint64 `json:"lag_instructions"`
	// LagMS is how far the backup is behind (ms). On the primary: its
	// wall time between sending the log that reaches BackupIcount and
	// sending its latest log. On the backup: the age of the oldest log it
	// received that its last icount sample had not reached, while FIFO B
	// holds unread log (failover.Status.Lag; at the lag ceiling, 25 s by
	// default, the backup gives up: docs/replay.md §12). 0 before the
	// backup's first icount sample.
	LagMS int64 `json:"lag_ms"`
	// HeldLagMS and HeldWindowMS (primary): the total time in this run
	// (ms) the primary stopped reading FIFO A, and so held its QEMU and the
	// output waiting in its gate, because the backup was more than
	// max-lag-ms behind (the lag bound) or the window in force of log was
	// not yet in FIFO B (window-bytes, at most 64 KiB while the backup
	// stands still: the window); docs/protocol.md §7. 0 on a backup.
	HeldLagMS    int64 `json:"held_lag_ms"`
	HeldWindowMS int64 `json:"held_window_ms"`
	// HeartbeatAgeMS is the time since the last heartbeat from the peer (ms);
	// -1 when none was ever received.
	HeartbeatAgeMS int64 `json:"heartbeat_age_ms"`
	// Failover is the failover core's state (failover.State's names:
	// replicating, draining, claiming, going-live, live, unprotected,
	// halted, stopped, ...); empty before the log channel came up.
	Failover string `json:"failover,omitempty"`
	// Loss is the last peer loss, go-live or switchover: its cause and the
	// time of each step (failover.Timings).
	Loss *Loss `json:"loss,omitempty"`
	// GoLive is how this host's VM went live, when it did.
	GoLive *GoLive `json:"go_live,omitempty"`
	// PeerReport is the backup's own account of its go-live (its timings),
	// in its words, on the old primary after a switchover.
	PeerReport string `json:"peer_report,omitempty"`
	// SwitchedOver is set on the old primary once a planned switchover
	// completed: the backup went live and this host's VM was stopped.
	SwitchedOver bool `json:"switched_over,omitempty"`
	// CleanStop is set on a stopped primary whose VM ended on purpose:
	// the guest shut down (or was shut down) with its log ended and sent,
	// or a switchover completed. A stop that is not clean (a crash, a
	// halt after a lost split-brain race) leaves it unset.
	CleanStop bool `json:"clean_stop,omitempty"`
	// Gates are the output gates, one per network interface.
	Gates []Gate `json:"output_gates,omitempty"`
	// Stall is the last replay stall of this domain's backup.
	Stall *Stall `json:"stall,omitempty"`
	// Warnings are standing risks of this host's setup (arbiter: none).
	Warnings []string `json:"warnings,omitempty"`
	// PeerView is the other host's side of this pairing, fetched through
	// the daemons (OpStatus with WithPeer); nil when not asked, when the
	// domain runs nowhere to ask about (defined, refused, stopped), or
	// when no peer address is known (a backup before its log channel).
	PeerView *PeerView `json:"peer_view,omitempty"`
}

// PeerView is the peer daemon's view of a domain: its run's role, state
// and failover state there, or why it could not be had.
type PeerView struct {
	// Host is the peer host asked (its address, host:port).
	Host string `json:"host"`
	// Error is set when the peer could not answer: unreachable, no run
	// of the domain paired with this host there, or an older daemon.
	Error    string `json:"error,omitempty"`
	Role     Role   `json:"role,omitempty"`
	State    State  `json:"state,omitempty"`
	Failover string `json:"failover,omitempty"`
	Detail   string `json:"detail,omitempty"`
	// HeartbeatAgeMS: ms since the peer last heard this host; -1 never.
	HeartbeatAgeMS int64 `json:"heartbeat_age_ms"`
	// LagMS: the backup's lag as the peer measures it (ms): the
	// primary's figure when the peer runs the primary, the backup's own
	// (DomainStatus.LagMS there) when it runs the backup.
	LagMS int64 `json:"lag_ms"`
	// BackupIcount: the backup QEMU's executed icount as the peer saw it
	// (guest instructions, counted from the log's first event).
	BackupIcount uint64 `json:"backup_icount"`
}

// Seeding is a disk copy to the backup host.
// Reprotect describes a re-protection (OpProtect): a VM that runs alone
// gets a new backup without a reboot (issue 13).
type Reprotect struct {
	// Peer is the new backup's host (its daemon's address).
	Peer string `json:"peer"`
	// Phase: "arming", "disks" (mirrors copying), "memory" (migration),
	// "switchover", "done" or "failed".
	Phase string `json:"phase"`
	// DoneBytes and TotalBytes: of the disks in "disks", of memory in
	// "memory" (bytes); RateBytesPerSec the migration's rate (memory).
	DoneBytes       uint64  `json:"done_bytes"`
	TotalBytes      uint64  `json:"total_bytes"`
	RateBytesPerSec float64 `json:"rate_bytes_per_sec,omitempty"`
	// Error is why the last one failed (Phase "failed").
	Error string `json:"error,omitempty"`
	// Once done: the VM's pause at the switchover (ms, from seen stopped
	// to continued), the memory and disk bytes copied, the icount where
	// the new log starts, and the whole re-protection's time (ms).
	PauseMS     int64  `json:"pause_ms,omitempty"`
	MemoryBytes uint64 `json:"memory_bytes,omitempty"`
	DiskBytes   uint64 `json:"disk_bytes,omitempty"`
	Icount      uint64 `json:"icount,omitempty"`
	TotalMS     int64  `json:"total_ms,omitempty"`
	// Moves: the VM was started without the ft element, so it moves to
	// Peer, which runs it from "done" on and re-protects it onto this
	// host (plugin/convert.go); PauseMS is then from its stop here to its
	// run there.
	Moves bool `json:"moves,omitempty"`
}

type Seeding struct {
	Path       string `json:"path"`
	DoneBytes  int64  `json:"done_bytes"`
	TotalBytes int64  `json:"total_bytes"`
}

// Loss gives the steps of the last loss of the peer, go-live or
// switchover, in ms (failover.Timings; failover/doc.go). A step not
// reached is -1.
type Loss struct {
	// Cause is what started it ("primary said bye: ...", "switchover",
	// "silence", ...).
	Cause string `json:"cause"`
	// DetectionMS: from the last frame heard to the loss declared.
	DetectionMS int64 `json:"detection_ms"`
	// DrainMS: from detection to the backup's replay at the end of the
	// log (backup).
	DrainMS int64 `json:"drain_ms"`
	// LockMS: the split-brain claim.
	LockMS int64 `json:"lock_ms"`
	// StartMS: from the claim won to running alone.
	StartMS int64 `json:"start_ms"`
	// TotalMS: from the last frame heard to running alone.
	TotalMS int64 `json:"total_ms"`
}

// GoLive paths (GoLive.Path).
const (
	// GoLiveContinued: the backup's QEMU (packaging/qemu 0001) left replay
	// mode at the end of the log and ran on.
	GoLiveContinued = "continued"
	// GoLiveRestarted: stock QEMU: stop, savevm, restart recording with
	// -loadvm.
	GoLiveRestarted = "restarted"
)

// GoLive is how a backup went live, in ms per step.
type GoLive struct {
	Path string `json:"path"`
	// TotalMS: go-live's own time (from the GoLive action to running).
	TotalMS int64 `json:"total_ms"`
	// StopMS, SaveVMMS, DestroyMS and StartMS: the restarted path's
	// steps.
	StopMS    int64 `json:"stop_ms,omitempty"`
	SaveVMMS  int64 `json:"savevm_ms,omitempty"`
	DestroyMS int64 `json:"destroy_ms,omitempty"`
	StartMS   int64 `json:"start_ms,omitempty"`
	// Recording: the live VM records a log (the restarted path).
	Recording bool `json:"recording"`
	// DisksSyncedMS: how long the daemon's fsync of each disk image after
	// going live took (ms; the continued path, whose replay's flushes
	// stopped at the OS: packaging/qemu 0024); 0 while it runs.
	DisksSyncedMS int64 `json:"disks_synced_ms,omitempty"`
	// DiskSyncError: the disks whose fsync failed ("path: error; ..."),
	// empty when all succeeded.
	DiskSyncError string `json:"disk_sync_error,omitempty"`
}

// Gate modes (Gate.Mode; plugin/gate).
const (
	GateGated       = "gated"       // frames wait for the backup's ack
	GatePassthrough = "passthrough" // frames pass at once (no backup)
	GateDropping    = "dropping"    // frames are discarded (go-live or split brain)
)

// Gate is one network interface's output gate. On a backup it holds the
// replayed frames the primary has not reported sent, for go-live.
type Gate struct {
	// Filter is the QEMU filter-redirector's id (ft-gate-N).
	Filter string `json:"filter"`
	Mode   string `json:"mode"`
	// Backup: the backup's gate.
	Backup bool `json:"backup,omitempty"`
	// HeldFrames and HeldBytes are held now.
	HeldFrames uint64 `json:"held_frames"`
	HeldBytes  uint64 `json:"held_bytes"`
	// Released: frames let out; DroppedOverCap: discarded over the
	// memory cap; DroppedByGoLive: discarded when the backup went live;
	// Forgot (backup): replayed frames the primary reported sent.
	Released        uint64 `json:"released"`
	DroppedOverCap  uint64 `json:"dropped_over_cap"`
	DroppedByGoLive uint64 `json:"dropped_by_go_live"`
	Forgot          uint64 `json:"forgot,omitempty"`
	// HoldAvgMS and HoldMaxMS: time frames spent held, in ms.
	HoldAvgMS float64 `json:"hold_avg_ms"`
	HoldMaxMS float64 `json:"hold_max_ms"`
	// Verified (backup): the primary's frame digests compared with the
	// replayed frames' and found equal or not (docs/replay.md §10,
	// divergence); Diverged, when set, says where they first differed.
	Verified uint64 `json:"verified,omitempty"`
	Diverged string `json:"diverged,omitempty"`
	// DigestsOff: this run's gates keep no frame digest the peer's can be
	// compared with (they were adopted across a planned restart from a
	// daemon whose digest this one cannot continue: docs/protocol.md
	// §6.3a): the primary sends none, the backup compares none, until the
	// domain is restarted or re-protected.
	DigestsOff bool `json:"digests_off,omitempty"`
	// HoldCount, HoldSumMS and HoldBuckets (primary): the frames timed in
	// the gate, their total hold time (ms), and how many were held at
	// most each of plugin/gate's HoldBounds (cumulative; the metrics'
	// histogram).
	HoldCount   uint64   `json:"hold_count,omitempty"`
	HoldSumMS   float64  `json:"hold_sum_ms,omitempty"`
	HoldBuckets []uint64 `json:"hold_buckets,omitempty"`
}

// Stall is a replay stall of the backup (failover.BackupStalled): where
// its replay stopped. On the backup every field is set, Report to its own
// words; on the primary only Report, the backup's words from its bye,
// which is also where a
// backup that fell too far behind (failover.BackupBehind, "backup replay
// too far behind") is reported.
type Stall struct {
	// Icount is where the replay stopped (guest instructions).
	Icount uint64 `json:"icount,omitempty"`
	// NextEvent is the kind of the log's next event there
	// (logchan.KindName) and Offset its stream offset (bytes); empty when
	// the kept log does not reach it.
	NextEvent string `json:"next_event,omitempty"`
	Offset    uint64 `json:"offset,omitempty"`
	// NoProgressMS: how long it made no progress with log queued;
	// QueuedIcount: the icount the log fed reaches.
	NoProgressMS int64  `json:"no_progress_ms,omitempty"`
	QueuedIcount uint64 `json:"queued_icount,omitempty"`
	// KeptLog is where the log around it was kept (keep-stall-log), with
	// its base offset and INSTRUCTION sum (rrdump -base-offset,
	// -base-icount).
	KeptLog    string `json:"kept_log,omitempty"`
	BaseOffset uint64 `json:"base_offset,omitempty"`
	BaseIcount uint64 `json:"base_icount,omitempty"`
	// Report is the stall as the backup described it: where, the events at
	// that icount, the kept log, how its QEMU spent the stall.
	Report string `json:"report,omitempty"`
}

// Call sends req to the daemon at socket and waits at most timeout for the
// answer. Errors reaching the daemon wrap ErrDaemonUnreachable.
func Call(socket string, req Request, timeout time.Duration) (Response, error) {
	var resp Response
	c, err := net.DialTimeout("unix", socket, timeout)
	if err != nil {
		return resp, dialError(socket, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	b, err := json.Marshal(req)
	if err != nil {
		return resp, err
	}
	if _, err := c.Write(append(b, '\n')); err != nil {
		return resp, fmt.Errorf("%w (write: %v)", ErrDaemonUnreachable, err)
	}
	line, err := bufio.NewReaderSize(c, 64<<10).ReadBytes('\n')
	if err != nil && len(line) == 0 {
		return resp, fmt.Errorf("%w (no answer within %v: %v)", ErrDaemonUnreachable, timeout, err)
	}
	if err := json.Unmarshal(line, &resp); err != nil {
		return resp, fmt.Errorf("libvirt-ftd answered garbage: %v", err)
	}
	return resp, nil
}

// ReadRequest reads one request from a server-side connection.
func ReadRequest(r *bufio.Reader) (Request, error) {
	var req Request
	line, err := r.ReadBytes('\n')
	if err != nil && len(line) == 0 {
		return req, err
	}
	if err := json.Unmarshal(line, &req); err != nil {
		return req, fmt.Errorf("ctl: malformed request: %w", err)
	}
	return req, nil
}

// WriteResponse writes one response line.
func WriteResponse(c net.Conn, resp Response) error {
	b, err := json.Marshal(resp)
	if err != nil {
		return err
	}
	_, err = c.Write(append(b, '\n'))
	return err
}

// DefaultSocket is the daemon's default control socket.
const DefaultSocket = "/run/libvirt-ft/ctl.sock"

// ErrPermission wraps a refusal to connect to the control socket.
var ErrPermission = errors.New("permission denied on libvirt-ftd's control socket")

// dialError explains a failure to connect to socket: no permission (the
// caller is neither root nor in the daemon's control-group), or no daemon.
func dialError(socket string, err error) error {
	if errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("%w %s: run virt-ft as root, or as a member of the group set by control-group in /etc/libvirt-ft/libvirt-ftd.yaml (default libvirt) to read status", ErrPermission, socket)
	}
	return fmt.Errorf("%w (%v); start it (systemctl start libvirt-ftd) and retry", ErrDaemonUnreachable, err)
}
