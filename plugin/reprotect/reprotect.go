// Package reprotect drives the two QEMUs of a re-protection (issue 13): a
// running VM that records no log (a backup gone live after a failover, or a
// VM started unprotected with icount) gets a new backup without a reboot,
// the way VMware FT's "FT VMotion" does it (Scales et al. 2010, section
// 3.1). The sequence is docs/replay.md §15 on the QEMU of packaging/qemu
// (patches 0019–0021):
//
//   - Destination (the new backup's QEMU, started replaying with
//     -icount rrincoming=on, -incoming defer and -S): late-block-activate,
//     its disks' format nodes exported writable over NBD, migrate-incoming;
//     Finish waits for the state and ends the NBD export.
//   - Source (the running VM): each disk mirrored to that export
//     (write-blocking, so the copy stays equal once ready), the record start
//     armed for the switchover (x-ft-record-at-switchover), a live migration
//     with pause-before-switchover; stopped there, the mirrors are cancelled
//     (the copies then equal the disks), and migrate-continue saves the
//     device state and starts the record log at once, under QEMU's big lock.
//     The VM is then paused, recording; the caller turns the output gates on
//     and continues it.
//
// Neither side continues a VM: on any failure before the switchover the
// Source undoes what it did (migration cancelled, mirrors cancelled,
// arming undone) and QEMU runs the VM on as before; a migration that fails
// after it is undone by QEMU itself (0021), the VM paused until then.
//
// Both sides poll (query-migrate, query-block-jobs) rather than wait for
// events, every Poll; each phase is bounded by Timeout.
//
// A daemon that dies during Run leaves the VM stopped at pre-switchover,
// or armed with mirrors running: the daemon that starts next undoes that
// (Recover). A write-blocking mirror over a relay whose peer host stops
// answering holds the guest's disk writes until the relay's TCP connection
// gives up: libvirt-ftd sets TCP_USER_TIMEOUT on the stream connections
// (plugin/sockopts.go, 20 s; since Linux 5.11 it also ends a window that
// stays closed that long), after which the relay, then the mirror, fails
// and Run undoes the rest.
package reprotect

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Executor runs one QMP command (qmp.Client.Execute): args is marshalled
// as its "arguments", its "return" is unmarshalled into ret (nil to
// discard); a QMP error reply is *qmp.Error.
type Executor interface {
	Execute(command string, args, ret any) error
}

// Defaults of the zero values in Source and Destination.
const (
	DefaultPoll    = 10 * time.Millisecond
	DefaultTimeout = 10 * time.Minute
	// DefaultDowntimeMS is QEMU's downtime-limit for the switchover (ms):
	// the pause it aims at for the last dirty pages and the device state.
	DefaultDowntimeMS = 300
)

// ErrTimeout is wrapped when a phase outlasts its Timeout.
var ErrTimeout = errors.New("reprotect: timed out")

// Disk is one disk of the VM as the two QEMUs name it.
type Disk struct {
	// Node is the source's root node of the disk, the one its device is
	// attached to (libvirt-ftd's blkreplay node, xml.ReplayNodeName).
	Node string
	// Export is the NBD export name of the same disk on the destination:
	// its format node's name (the export is that node, below blkreplay).
	Export string
}

// jobID is the name of disk i's NBD client node and mirror job on the
// source and of its export on the destination.
func jobID(i int) string { return fmt.Sprintf("%s%d", jobPrefix, i) }

// jobPrefix starts every jobID (Recover finds what a dead driver left).
const jobPrefix = "ft-copy"

// Progress is one sample of a running re-protection (Source.Progress).
type Progress struct {
	// Phase is "disks" (mirrors copying), "memory" (migration before the
	// switchover) or "switchover".
	Phase string
	// Done and Total are bytes: of all disks (mirror offset and length)
	// in "disks"; of memory in "memory" (transferred; transferred plus
	// remaining).
	Done, Total uint64
	// Rate is bytes per second (memory: QEMU's mbps; disks: 0).
	Rate float64
}

// poll runs check every interval until it reports done, fails, ctx ends, or
// timeout passes (then ErrTimeout, naming what).
func pollUntil(ctx context.Context, interval, timeout time.Duration, what string, check func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		done, err := check()
		if err != nil || done {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s after %v", ErrTimeout, what, timeout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("reprotect: %s: %w", what, ctx.Err())
		case <-time.After(interval):
		}
	}
}

// migrationInfo is the part of query-migrate's reply used here (QEMU
// qapi/migration.json MigrationInfo).
type migrationInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	RAM       *struct {
		Transferred uint64  `json:"transferred"`
		Remaining   uint64  `json:"remaining"`
		MBps        float64 `json:"mbps"`
	} `json:"ram"`
}

// blockJob is one entry of query-block-jobs' reply (BlockJobInfo).
type blockJob struct {
	Device string `json:"device"`
	Len    uint64 `json:"len"`
	Offset uint64 `json:"offset"`
	Ready  bool   `json:"ready"`
	Status string `json:"status"`
}

func queryMigrate(q Executor) (migrationInfo, error) {
	var mi migrationInfo
	err := q.Execute("query-migrate", nil, &mi)
	return mi, err
}
