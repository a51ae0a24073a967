package reprotect

import (
	"context"
	"fmt"
	"time"
)

// Destination drives the new backup's QEMU (see the package comment): one
// started by libvirt with -icount rr=replay,rrincoming=on, -incoming
// defer and -S. Prepare, then Finish once the source has started.
type Destination struct {
	// QMP is the new backup's monitor.
	QMP Executor
	// MigrateURI is where its QEMU listens for the migration: "unix:PATH".
	MigrateURI string
	// NBDSocket is the path of the unix socket its NBD server listens
	// on; "" with no disks.
	NBDSocket string
	// Exports are the format node names of its disks, exported writable
	// as the copies' targets (Disk.Export on the source).
	Exports []string
	// Poll and Timeout: see the package comment; 0 is DefaultPoll,
	// DefaultTimeout.
	Poll, Timeout time.Duration
}

// Prepare makes the QEMU ready for the source: it must replay and wait
// for its incoming state (a QEMU that would run the migrated guest
// without a log would be a second copy of the VM: refused), its disks'
// activation waits for its cont (late-block-activate: the NBD exports hold
// them until then), the exports are up, and it listens for the migration.
func (d *Destination) Prepare() error {
	q := d.QMP
	var ri struct {
		Mode string `json:"mode"`
	}
	if err := q.Execute("query-replay", nil, &ri); err != nil {
		return fmt.Errorf("reprotect: destination: %w", err)
	}
	if ri.Mode != "play" {
		return fmt.Errorf("reprotect: destination: its replay mode is %q, not play: it must be started with -icount rr=replay,rrincoming=on", ri.Mode)
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := q.Execute("query-status", nil, &st); err != nil {
		return fmt.Errorf("reprotect: destination: %w", err)
	}
	if st.Status != "inmigrate" {
		return fmt.Errorf("reprotect: destination: its run state is %q, not inmigrate: it must be started with -incoming defer", st.Status)
	}
	if err := q.Execute("migrate-set-capabilities", map[string]any{"capabilities": []map[string]any{
		{"capability": "late-block-activate", "state": true},
		{"capability": "return-path", "state": true},
	}}, nil); err != nil {
		return fmt.Errorf("reprotect: destination: %w", err)
	}
	if len(d.Exports) > 0 {
		if err := q.Execute("nbd-server-start", map[string]any{
			"addr": map[string]any{"type": "unix", "data": map[string]any{"path": d.NBDSocket}},
		}, nil); err != nil {
			return fmt.Errorf("reprotect: destination: %w", err)
		}
		for i, node := range d.Exports {
			if err := q.Execute("block-export-add", map[string]any{
				"type": "nbd", "id": jobID(i), "node-name": node, "writable": true,
			}, nil); err != nil {
				return fmt.Errorf("reprotect: destination: exporting %s: %w", node, err)
			}
		}
	}
	if err := q.Execute("migrate-incoming", map[string]any{"uri": d.MigrateURI}, nil); err != nil {
		return fmt.Errorf("reprotect: destination: %w", err)
	}
	return nil
}

// Finish waits until the state has loaded (the QEMU is then paused; its
// cont starts the replay) and ends the NBD exports. An error leaves the
// QEMU as it is: the caller ends it (it never ran the guest). Success here
// is not a re-protection: unless the source's Run succeeded too (the VM
// records from that state), the caller must end this QEMU and never
// continue it.
func (d *Destination) Finish(ctx context.Context) error {
	poll := d.Poll
	if poll <= 0 {
		poll = DefaultPoll
	}
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	err := pollUntil(ctx, poll, timeout, "incoming migration completed", func() (bool, error) {
		mi, err := queryMigrate(d.QMP)
		if err != nil {
			return false, err
		}
		switch mi.Status {
		case "completed":
			return true, nil
		case "failed", "cancelled":
			return false, fmt.Errorf("reprotect: destination: the incoming migration %s: %s", mi.Status, mi.ErrorDesc)
		}
		return false, nil
	})
	if err != nil {
		return err
	}
	err = pollUntil(ctx, poll, timeout, "paused after loading", func() (bool, error) {
		var st struct {
			Status string `json:"status"`
		}
		if err := d.QMP.Execute("query-status", nil, &st); err != nil {
			return false, err
		}
		return st.Status == "paused", nil
	})
	if err != nil {
		return err
	}
	if len(d.Exports) > 0 {
		if err := d.QMP.Execute("nbd-server-stop", nil, nil); err != nil {
			return fmt.Errorf("reprotect: destination: %w", err)
		}
	}
	return nil
}
