// Package ctl is the control-socket protocol between libvirt-ftd and its
// local clients: the libvirt hook (hooks/) and the virt-ft command.
//
// One request per connection: the client writes one JSON Request and a
// newline, the daemon answers one JSON Response and closes. The socket is a
// unix socket (default /run/libvirt-ft/ctl.sock, mode 0600, root only).
package ctl

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
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
}

// Response is what the daemon answers. Error, when set, is a complete
// user-facing message (the hook prints it; libvirt shows it).
type Response struct {
	OK      bool           `json:"ok"`
	Error   string         `json:"error,omitempty"`
	Domains []DomainStatus `json:"domains,omitempty"`
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
)

// DomainStatus is one protected domain as virt-ft status shows it.
type DomainStatus struct {
	Name string `json:"name"`
	UUID string `json:"uuid"`
	// Role is "primary" or "backup".
	Role string `json:"role"`
	// Peer is the other daemon's address (host:port).
	Peer string `json:"peer"`
	// State is the domain's lifecycle here (the State constants).
	State State `json:"state"`
	// Detail explains State (the refusal, the seeding progress, ...).
	Detail string `json:"detail,omitempty"`
	// SentBytes is the log bytes sent to (primary) or received from (backup)
	// the peer; AckedBytes the bytes the backup acknowledged as in its FIFO.
	SentBytes  uint64 `json:"sent_bytes"`
	AckedBytes uint64 `json:"acked_bytes"`
	// LagBytes = SentBytes - AckedBytes, plus what the backup's QEMU has not
	// consumed when known.
	LagBytes uint64 `json:"lag_bytes"`
	// LogInstructions is the sum of INSTRUCTION counts in the log so far
	// (guest instructions); BackupIcount the backup QEMU's icount.
	LogInstructions uint64 `json:"log_instructions"`
	BackupIcount    uint64 `json:"backup_icount"`
	// LagInstructions = LogInstructions - BackupIcount (guest instructions).
	LagInstructions uint64 `json:"lag_instructions"`
	// LagMS is how far the backup is behind, in ms of the primary's run time
	// (the primary's wall time between reaching BackupIcount and now).
	LagMS int64 `json:"lag_ms"`
	// HeartbeatAgeMS is the time since the last heartbeat from the peer (ms);
	// -1 when none was ever received.
	HeartbeatAgeMS int64 `json:"heartbeat_age_ms"`
	// Failover is the failover core's state (failover.State).
	Failover string `json:"failover,omitempty"`
	// GoLive describes the last go-live or backup loss: its cause and the
	// time of each part (ms).
	GoLive string `json:"go_live,omitempty"`
	// SwitchedOver is set on the old primary once a planned switchover
	// completed: the backup went live and this host's VM was stopped.
	SwitchedOver bool `json:"switched_over,omitempty"`
	// OutputGate describes the primary's output gates (one per network
	// interface): mode (gated, passthrough, dropping), frames held,
	// released and dropped, hold times in ms.
	OutputGate string `json:"output_gate,omitempty"`
	// Stall describes the last replay stall of this domain's backup: the
	// icount it stopped at, the kind and stream offset of the log's next
	// event there, how long it made no progress (ms), and where the log
	// around it was kept (keep-stall-log). Empty when none happened.
	Stall string `json:"stall,omitempty"`
}

// Call sends req to the daemon at socket and waits at most timeout for the
// answer. Errors reaching the daemon wrap ErrDaemonUnreachable.
func Call(socket string, req Request, timeout time.Duration) (Response, error) {
	var resp Response
	c, err := net.DialTimeout("unix", socket, timeout)
	if err != nil {
		return resp, fmt.Errorf("%w (%v); start it (systemctl start libvirt-ftd) and retry", ErrDaemonUnreachable, err)
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
