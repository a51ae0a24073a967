package reprotect

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Source drives the running VM's QEMU (see the package comment). Run it
// once; it is not safe for concurrent use.
type Source struct {
	// QMP is the VM's monitor.
	QMP Executor
	// LogPath is the new record log: FIFO A with its reader open, or a
	// file that does not exist yet (x-ft-record-at-switchover refuses
	// anything else).
	LogPath string
	// Convert: the VM runs without icount or a log (started without the
	// ft element; libvirt-ftd's protect of it, docs/protocol.md §12):
	// nothing is armed and no log starts; at the end the VM is paused,
	// its state loaded on the destination, and the caller decides which
	// copy runs. LogPath is unused.
	Convert bool
	// MigrateURI is where the migration goes: "unix:PATH" of a socket
	// that reaches the destination's migrate-incoming.
	MigrateURI string
	// NBDSocket is the path of a unix socket that reaches the
	// destination's NBD server.
	NBDSocket string
	// Disks lists the VM's disks, each mirrored to its export.
	Disks []Disk
	// MaxBandwidth caps the migration (bytes/s); 0 leaves QEMU's.
	MaxBandwidth uint64
	// DowntimeMS is the switchover's downtime-limit (ms); 0 is
	// DefaultDowntimeMS.
	DowntimeMS uint64
	// Poll and Timeout: see the package comment; 0 is DefaultPoll,
	// DefaultTimeout.
	Poll, Timeout time.Duration
	// Progress, if set, is called with each sample.
	Progress func(Progress)

	// What Run has done, for undo.
	nodes, jobs int
	armed       bool
	migrating   bool
	switched    bool // undo found the migration completed after all
	capsSet     bool // the migration capabilities were set
}

// Result is a completed source side.
type Result struct {
	// Stopped is when the VM was seen stopped at the switchover; the
	// pause lasts from there to the caller's cont.
	Stopped time.Time
	// Icount is the VM's instruction count where the new log starts
	// (query-replay), in instructions.
	Icount uint64
	// MemoryBytes is what the migration sent (bytes); DiskBytes the
	// length of the disks mirrored (bytes).
	MemoryBytes, DiskBytes uint64
}

func (s *Source) poll() time.Duration {
	if s.Poll > 0 {
		return s.Poll
	}
	return DefaultPoll
}

func (s *Source) timeout() time.Duration {
	if s.Timeout > 0 {
		return s.Timeout
	}
	return DefaultTimeout
}

func (s *Source) progress(p Progress) {
	if s.Progress != nil {
		s.Progress(p)
	}
}

// Run re-protects the VM up to its switchover: on success the VM is paused
// and records into LogPath from Result.Icount, and its disks' copies on
// the destination equal its disks. On error everything Run did is undone
// (best effort; the error says so if not) and the VM runs on as before,
// unprotected: QEMU resumes it when a migration fails or is cancelled
// before its switchover, and ends the new log first when one fails after
// it (0021). Only a migration that completed and then failed Run's last
// check leaves the VM paused; query-status tells the caller.
func (s *Source) Run(ctx context.Context) (Result, error) {
	if (s.LogPath == "" && !s.Convert) || s.MigrateURI == "" || (len(s.Disks) > 0 && s.NBDSocket == "") {
		return Result{}, fmt.Errorf("reprotect: source: LogPath (unless Convert), MigrateURI and (with disks) NBDSocket are required")
	}
	res, err := s.run(ctx)
	if err != nil {
		if uerr := s.undo(); uerr != nil {
			err = fmt.Errorf("%w (and undoing it: %v)", err, uerr)
		}
		if s.switched {
			return res, fmt.Errorf("%w: %v", ErrSwitchedOver, err)
		}
		return Result{}, err
	}
	return res, nil
}

// ErrSwitchedOver is wrapped by Run's error when the migration completed
// but Run failed after all (its cancel came too late, or its last check
// failed): the VM is then paused and records into LogPath, as on success,
// but Run did not finish; Run also returns what it knows of the Result
// (Icount may be 0). The caller owns the VM and must either finish the
// pairing or end that log (stop the VM's QEMU, or let its log's reader go:
// patch 0006 then stops it at its next write).
var ErrSwitchedOver = errors.New("reprotect: the migration completed: the VM is paused and records")

func (s *Source) run(ctx context.Context) (Result, error) {
	var res Result
	q := s.QMP
	for i, d := range s.Disks {
		if err := q.Execute("blockdev-add", map[string]any{
			"driver": "nbd", "node-name": jobID(i), "export": d.Export,
			"server": map[string]any{"type": "unix", "path": s.NBDSocket},
		}, nil); err != nil {
			return res, fmt.Errorf("reprotect: the copy of disk %s: %w", d.Node, err)
		}
		s.nodes = i + 1
		// write-blocking: once ready, a guest write completes only when
		// the copy has it too, so cancelling at the switchover leaves the
		// copy equal to the disk.
		if err := q.Execute("blockdev-mirror", map[string]any{
			"job-id": jobID(i), "device": d.Node, "target": jobID(i),
			"sync": "full", "copy-mode": "write-blocking",
		}, nil); err != nil {
			return res, fmt.Errorf("reprotect: mirroring disk %s: %w", d.Node, err)
		}
		s.jobs = i + 1
	}
	if err := pollUntil(ctx, s.poll(), s.timeout(), "disk copies ready", func() (bool, error) {
		jobs, err := s.ourJobs()
		if err != nil {
			return false, err
		}
		var done, total uint64
		ready := len(jobs) == len(s.Disks)
		for i := range s.Disks {
			j, ok := jobs[jobID(i)]
			if !ok {
				return false, fmt.Errorf("reprotect: the mirror of disk %s ended before it was ready", s.Disks[i].Node)
			}
			done += j.Offset
			total += j.Len
			ready = ready && j.Ready
		}
		res.DiskBytes = total
		s.progress(Progress{Phase: "disks", Done: done, Total: total})
		return ready, nil
	}); err != nil {
		return res, err
	}
	if !s.Convert {
		if err := q.Execute("x-ft-record-at-switchover", map[string]any{"file": s.LogPath}, nil); err != nil {
			return res, fmt.Errorf("reprotect: arming the record start: %w", err)
		}
		s.armed = true
	}
	// return-path: the source completes only once the destination has
	// loaded the state (it answers on the same connection); a load that
	// fails fails the source's migration after the switchover, which QEMU
	// undoes (0021). Both sides must have it (Destination.Prepare).
	if err := q.Execute("migrate-set-capabilities", map[string]any{"capabilities": []map[string]any{
		{"capability": "pause-before-switchover", "state": true},
		{"capability": "return-path", "state": true},
	}}, nil); err != nil {
		return res, fmt.Errorf("reprotect: %w", err)
	}
	s.capsSet = true
	params := map[string]any{"downtime-limit": s.DowntimeMS}
	if s.DowntimeMS == 0 {
		params["downtime-limit"] = DefaultDowntimeMS
	}
	if s.MaxBandwidth > 0 {
		params["max-bandwidth"] = s.MaxBandwidth
	}
	if err := q.Execute("migrate-set-parameters", params, nil); err != nil {
		return res, fmt.Errorf("reprotect: %w", err)
	}
	if err := q.Execute("migrate", map[string]any{"uri": s.MigrateURI}, nil); err != nil {
		return res, fmt.Errorf("reprotect: starting the migration: %w", err)
	}
	s.migrating = true
	if err := s.waitMigration(ctx, "pre-switchover", &res); err != nil {
		return res, err
	}
	res.Stopped = time.Now()
	s.progress(Progress{Phase: "switchover"})
	// Stopped: the disks no longer change. A cancelled ready mirror ends
	// with its copy equal to the disk (QEMU block-job-cancel of a ready
	// job); the migration's checks refuse a job still there.
	for i := 0; i < s.jobs; i++ {
		if err := q.Execute("block-job-cancel", map[string]any{"device": jobID(i)}, nil); err != nil {
			return res, fmt.Errorf("reprotect: ending the mirror of disk %s: %w", s.Disks[i].Node, err)
		}
	}
	if err := pollUntil(ctx, s.poll(), s.timeout(), "disk mirrors ended", func() (bool, error) {
		jobs, err := s.ourJobs()
		return len(jobs) == 0, err
	}); err != nil {
		return res, err
	}
	s.jobs = 0
	if err := q.Execute("migrate-continue", map[string]any{"state": "pre-switchover"}, nil); err != nil {
		return res, fmt.Errorf("reprotect: %w", err)
	}
	if err := s.waitMigration(ctx, "completed", &res); err != nil {
		return res, err
	}
	// From here the VM is paused and (with 0021) records: a failure below
	// is ErrSwitchedOver, never a plain one.
	s.migrating, s.armed, s.switched = false, false, true
	var ri struct {
		Mode   string `json:"mode"`
		Icount uint64 `json:"icount"`
	}
	if err := q.Execute("query-replay", nil, &ri); err != nil {
		return res, fmt.Errorf("reprotect: after the switchover: %w", err)
	}
	switch {
	case s.Convert && ri.Mode != "none":
		return res, fmt.Errorf("reprotect: the VM's replay mode is %q after the migration, not none", ri.Mode)
	case !s.Convert && ri.Mode != "record":
		return res, fmt.Errorf("reprotect: the VM's replay mode is %q after the switchover, not record (is its QEMU libvirt-ft's, with patch 0021?)", ri.Mode)
	}
	res.Icount = ri.Icount
	// The capabilities go back off (the migration is over): a later
	// migration of this VM, once it no longer records, must not stop
	// before its switchover.
	if err := q.Execute("migrate-set-capabilities", map[string]any{"capabilities": []map[string]any{
		{"capability": "pause-before-switchover", "state": false},
		{"capability": "return-path", "state": false},
	}}, nil); err != nil {
		return res, fmt.Errorf("reprotect: after the switchover: %w", err)
	}
	s.capsSet = false
	for i := s.nodes - 1; i >= 0; i-- {
		// Done with; a failure here leaves an idle NBD client node.
		_ = q.Execute("blockdev-del", map[string]any{"node-name": jobID(i)}, nil)
	}
	s.nodes = 0
	return res, nil
}

// waitMigration polls query-migrate until status want; failed or
// cancelled is an error with QEMU's reason.
func (s *Source) waitMigration(ctx context.Context, want string, res *Result) error {
	return pollUntil(ctx, s.poll(), s.timeout(), "migration "+want, func() (bool, error) {
		mi, err := queryMigrate(s.QMP)
		if err != nil {
			return false, err
		}
		if mi.RAM != nil {
			res.MemoryBytes = mi.RAM.Transferred
			if mi.Status == "active" {
				s.progress(Progress{Phase: "memory", Done: mi.RAM.Transferred,
					Total: mi.RAM.Transferred + mi.RAM.Remaining, Rate: mi.RAM.MBps * 1e6 / 8})
			}
		}
		switch mi.Status {
		case want:
			return true, nil
		case "failed", "cancelled", "cancelling":
			s.migrating = mi.Status == "cancelling"
			return false, fmt.Errorf("reprotect: the migration %s before %s: %s", mi.Status, want, mi.ErrorDesc)
		}
		return false, nil
	})
}

// ourJobs is this re-protection's block jobs by id.
func (s *Source) ourJobs() (map[string]blockJob, error) {
	var all []blockJob
	if err := s.QMP.Execute("query-block-jobs", nil, &all); err != nil {
		return nil, err
	}
	ours := map[string]blockJob{}
	for _, j := range all {
		for i := range s.Disks {
			if j.Device == jobID(i) {
				ours[j.Device] = j
			}
		}
	}
	return ours, nil
}

// undo ends what run started, newest first: the migration (QEMU runs the
// VM on; a cancel at pre-switchover too), the mirrors (force: the copy is
// abandoned), the NBD client nodes, the arming.
func (s *Source) undo() error {
	q := s.QMP
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	if s.migrating {
		keep(q.Execute("migrate_cancel", nil, nil))
		keep(pollUntil(context.Background(), s.poll(), time.Minute, "migration cancelled", func() (bool, error) {
			mi, err := queryMigrate(q)
			switch {
			case err != nil:
				return false, err
			case mi.Status == "completed":
				s.switched = true
				return true, nil
			}
			return mi.Status == "cancelled" || mi.Status == "failed", nil
		}))
		s.migrating = false
	}
	if s.armed && !s.switched {
		// Before the mirrors, which may not end: an arming left behind
		// would switch the VM's next migration of any kind. A migration
		// that failed or was cancelled disarmed it (0021): QEMU then
		// answers "not armed".
		if err := q.Execute("x-ft-record-disarm", nil, nil); err != nil && !strings.Contains(err.Error(), "not armed") {
			keep(err)
		}
	}
	s.armed = false
	if s.capsSet && !s.switched {
		// An operator's next migration must not stop before its
		// switchover waiting for a migrate-continue nobody sends.
		keep(q.Execute("migrate-set-capabilities", map[string]any{"capabilities": []map[string]any{
			{"capability": "pause-before-switchover", "state": false},
			{"capability": "return-path", "state": false},
		}}, nil))
	}
	s.capsSet = false
	for i := s.jobs - 1; i >= 0; i-- {
		if err := q.Execute("block-job-cancel", map[string]any{"device": jobID(i), "force": true}, nil); err != nil {
			keep(err)
		}
	}
	if s.jobs > 0 {
		err := pollUntil(context.Background(), s.poll(), time.Minute, "disk mirrors ended", func() (bool, error) {
			jobs, err := s.ourJobs()
			return len(jobs) == 0, err
		})
		if err != nil {
			// The mirrors (and so their NBD nodes) are still there: say
			// so, and leave the nodes alone.
			return errors.Join(first, err)
		}
		s.jobs = 0
	}
	for i := s.nodes - 1; i >= 0; i-- {
		keep(q.Execute("blockdev-del", map[string]any{"node-name": jobID(i)}, nil))
	}
	s.nodes = 0
	return first
}
