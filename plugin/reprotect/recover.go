package reprotect

import (
	"context"
	"errors"
	"strings"
	"time"
)

// Recover undoes what a re-protection whose driver died (libvirt-ftd
// crashed or was killed during Source.Run) may have left in the VM's QEMU,
// for the daemon that starts next: a migration under way is cancelled (QEMU
// runs the VM on; one stopped at pre-switchover too), the arming is undone,
// the migration capabilities Run sets go back off, and the disk mirrors and
// their NBD client nodes (ft-copy<i>) are removed. A QEMU that no
// re-protection touched is left as it was, but for those two capabilities,
// which Recover always turns off. A migration that completed is not undone
// (the VM then records; query-replay tells the caller). Errors: the first
// step that failed; Recover carries on after it (best effort).
func Recover(q Executor, poll time.Duration) error {
	if poll <= 0 {
		poll = DefaultPoll
	}
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	mi, err := queryMigrate(q)
	keep(err)
	if err == nil {
		switch mi.Status {
		case "setup", "active", "pre-switchover", "device", "wait-unplug", "cancelling":
			keep(q.Execute("migrate_cancel", nil, nil))
			keep(pollUntil(context.Background(), poll, time.Minute, "migration cancelled", func() (bool, error) {
				mi, err := queryMigrate(q)
				if err != nil {
					return false, err
				}
				return mi.Status != "setup" && mi.Status != "active" && mi.Status != "pre-switchover" &&
					mi.Status != "device" && mi.Status != "wait-unplug" && mi.Status != "cancelling", nil
			}))
		}
	}
	if err := q.Execute("x-ft-record-disarm", nil, nil); err != nil && !strings.Contains(err.Error(), "not armed") {
		keep(err)
	}
	keep(q.Execute("migrate-set-capabilities", map[string]any{"capabilities": []map[string]any{
		{"capability": "pause-before-switchover", "state": false},
		{"capability": "return-path", "state": false},
	}}, nil))
	leftJobs := func() ([]string, error) {
		var all []blockJob
		if err := q.Execute("query-block-jobs", nil, &all); err != nil {
			return nil, err
		}
		var ours []string
		for _, j := range all {
			if strings.HasPrefix(j.Device, jobPrefix) {
				ours = append(ours, j.Device)
			}
		}
		return ours, nil
	}
	jobs, err := leftJobs()
	keep(err)
	for _, id := range jobs {
		keep(q.Execute("block-job-cancel", map[string]any{"device": id, "force": true}, nil))
	}
	if len(jobs) > 0 {
		if err := pollUntil(context.Background(), poll, time.Minute, "disk mirrors ended", func() (bool, error) {
			left, err := leftJobs()
			return len(left) == 0, err
		}); err != nil {
			// Their NBD nodes stay while they run.
			return errors.Join(first, err)
		}
	}
	var nodes []struct {
		NodeName string `json:"node-name"`
	}
	if err := q.Execute("query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		keep(err)
		return first
	}
	for _, n := range nodes {
		if strings.HasPrefix(n.NodeName, jobPrefix) {
			keep(q.Execute("blockdev-del", map[string]any{"node-name": n.NodeName}, nil))
		}
	}
	return first
}
