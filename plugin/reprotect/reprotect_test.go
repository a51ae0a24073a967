package reprotect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libvirt-ft/libvirt-ft/qmp"
)

// fakeQEMU is a scripted QEMU monitor: block jobs copy step bytes per
// query, a migration is active for activePolls queries, then stops at
// pre-switchover (with that capability) or completes; failOn makes a
// command answer a QMP error.
type fakeQEMU struct {
	cmds []string

	mode, status  string // replay mode; run state
	armed         bool
	pauseBefore   bool
	mig           string // migration status
	migPolls      int
	activePolls   int
	failMigAt     string // a status at which the migration fails instead
	jobs          map[string]*blockJob
	jobOrder      []string
	step          uint64
	vanishJob     bool // a job ends before it is ready
	failOn        map[string]string
	nodes         map[string]bool
	loadAfter     int // destination: the state has loaded after this many polls
	cancelTooLate bool
}

func newFake() *fakeQEMU {
	return &fakeQEMU{mode: "none", status: "running", mig: "none", activePolls: 3,
		jobs: map[string]*blockJob{}, step: 1 << 20, failOn: map[string]string{}, nodes: map[string]bool{}}
}

func (f *fakeQEMU) Execute(command string, args, ret any) error {
	a, _ := json.Marshal(args)
	f.cmds = append(f.cmds, command)
	if desc, ok := f.failOn[command]; ok {
		return &qmp.Error{Command: command, Class: "GenericError", Desc: desc}
	}
	var m map[string]any
	_ = json.Unmarshal(a, &m)
	var reply any = struct{}{}
	switch command {
	case "blockdev-add":
		f.nodes[m["node-name"].(string)] = true
	case "blockdev-del":
		delete(f.nodes, m["node-name"].(string))
	case "blockdev-mirror":
		id := m["job-id"].(string)
		f.jobs[id] = &blockJob{Device: id, Len: 3 << 20}
		f.jobOrder = append(f.jobOrder, id)
	case "query-block-jobs":
		var out []blockJob
		for _, id := range f.jobOrder {
			j, ok := f.jobs[id]
			if !ok {
				continue
			}
			if f.vanishJob {
				delete(f.jobs, id)
				continue
			}
			j.Offset = min(j.Offset+f.step, j.Len)
			j.Ready = j.Offset == j.Len
			out = append(out, *j)
		}
		reply = out
	case "block-job-cancel":
		id := m["device"].(string)
		if _, ok := f.jobs[id]; !ok {
			return &qmp.Error{Command: command, Class: "DeviceNotActive", Desc: "no job " + id}
		}
		delete(f.jobs, id)
	case "x-ft-record-at-switchover":
		if f.armed {
			return &qmp.Error{Command: command, Class: "GenericError", Desc: "armed already"}
		}
		f.armed = true
	case "x-ft-record-disarm":
		if !f.armed {
			return &qmp.Error{Command: command, Class: "GenericError", Desc: "not armed"}
		}
		f.armed = false
	case "migrate-set-capabilities":
		for _, c := range m["capabilities"].([]any) {
			if c.(map[string]any)["capability"] == "pause-before-switchover" {
				f.pauseBefore = c.(map[string]any)["state"].(bool)
			}
		}
	case "migrate":
		f.mig, f.migPolls = "active", 0
	case "migrate_cancel":
		if f.cancelTooLate {
			// The switchover won the race.
			f.mig, f.status, f.mode, f.armed = "completed", "postmigrate", "record", false
			break
		}
		if f.mig == "active" || f.mig == "pre-switchover" {
			f.mig = "cancelled"
			f.armed = false
		}
	case "migrate-continue":
		if f.mig != "pre-switchover" {
			return &qmp.Error{Command: command, Class: "GenericError", Desc: "not at pre-switchover"}
		}
		if len(f.jobs) > 0 {
			// 0021: a block job at the switchover fails the migration.
			f.mig, f.armed = "failed", false
			break
		}
		f.mig = "completed"
		f.status = "postmigrate"
		if f.armed {
			f.mode, f.armed = "record", false
		}
	case "query-migrate":
		f.migPolls++
		if f.loadAfter > 0 && f.migPolls >= f.loadAfter {
			f.mig, f.status = "completed", "paused"
		}
		if f.mig == "active" && f.migPolls > f.activePolls {
			f.status = "finish-migrate"
			f.mig = "pre-switchover"
			if !f.pauseBefore {
				f.mig, f.status = "completed", "postmigrate"
				if f.armed {
					f.mode, f.armed = "record", false
				}
			}
		}
		if f.failMigAt != "" && f.mig == f.failMigAt {
			f.mig, f.armed, f.status = "failed", false, "running"
		}
		mi := map[string]any{"status": f.mig}
		if f.mig == "failed" {
			mi["error-desc"] = "fake failure"
		}
		if f.mig != "none" {
			mi["ram"] = map[string]any{"transferred": 100 * f.migPolls, "remaining": 1000, "mbps": 8.0}
		}
		reply = mi
	case "query-replay":
		reply = map[string]any{"mode": f.mode, "icount": 4242}
	case "query-status":
		reply = map[string]any{"status": f.status}
	case "query-named-block-nodes":
		var out []map[string]string
		for n := range f.nodes {
			out = append(out, map[string]string{"node-name": n})
		}
		out = append(out, map[string]string{"node-name": "ft-rr0"})
		reply = out
	case "migrate-set-parameters", "nbd-server-start", "block-export-add", "migrate-incoming", "nbd-server-stop":
	default:
		return fmt.Errorf("fake: unexpected command %s", command)
	}
	if ret == nil {
		return nil
	}
	b, _ := json.Marshal(reply)
	return json.Unmarshal(b, ret)
}

func (f *fakeQEMU) sent(cmd string) int {
	n := 0
	for _, c := range f.cmds {
		if c == cmd {
			n++
		}
	}
	return n
}

func (f *fakeQEMU) index(cmd string) int {
	for i, c := range f.cmds {
		if c == cmd {
			return i
		}
	}
	return -1
}

func source(f *fakeQEMU) *Source {
	return &Source{QMP: f, LogPath: "/run/libvirt-ft/x/record.fifo", MigrateURI: "unix:/run/libvirt-ft/x/migrate.sock",
		NBDSocket: "/run/libvirt-ft/x/nbd.sock", Disks: []Disk{{Node: "ft-rr0", Export: "disk-format"}, {Node: "ft-rr1", Export: "disk1"}},
		Timeout: time.Minute}
}

func TestSourceSwitchesAtomicallyAndNeverContinues(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		s := source(f)
		var phases []string
		s.Progress = func(p Progress) {
			if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
				phases = append(phases, p.Phase)
			}
		}
		res, err := s.Run(context.Background())
		if err != nil {
			t.Fatalf("Run: %v (commands %v)", err, f.cmds)
		}
		if f.mode != "record" || f.status != "postmigrate" {
			t.Fatalf("after Run: mode %s, status %s; want record, postmigrate", f.mode, f.status)
		}
		if res.Icount != 4242 || res.DiskBytes != 6<<20 || res.MemoryBytes == 0 || res.Stopped.IsZero() {
			t.Fatalf("result %+v", res)
		}
		if f.sent("cont") != 0 || f.sent("stop") != 0 {
			t.Fatal("the source driver continued or stopped the VM itself")
		}
		// The mirrors end while the VM is stopped, before the switchover.
		if c, m := f.index("block-job-cancel"), f.index("migrate-continue"); c < 0 || c > m || f.sent("block-job-cancel") != 2 {
			t.Fatalf("mirror cancels and migrate-continue out of order: %v", f.cmds)
		}
		// Armed before the migration starts.
		if a, m := f.index("x-ft-record-at-switchover"), f.index("migrate"); a < 0 || a > m {
			t.Fatalf("armed after the migration started: %v", f.cmds)
		}
		if len(f.nodes) != 0 || len(f.jobs) != 0 || f.pauseBefore {
			t.Fatalf("left behind: nodes %v, jobs %v, pause-before-switchover %v", f.nodes, f.jobs, f.pauseBefore)
		}
		if strings.Join(phases, ",") != "disks,memory,switchover" {
			t.Fatalf("progress phases %v", phases)
		}
	})
}

// Each failure before the switchover undoes everything and leaves the VM
// running, unarmed, never recording.
func TestSourceUndoesOnFailure(t *testing.T) {
	cases := []struct {
		name   string
		setup  func(f *fakeQEMU, s *Source)
		want   string
		noMig  bool
		cancel bool
	}{
		{name: "nbd target refused", setup: func(f *fakeQEMU, s *Source) { f.failOn["blockdev-add"] = "no such socket" }, want: "no such socket", noMig: true},
		{name: "mirror vanishes", setup: func(f *fakeQEMU, s *Source) { f.vanishJob = true }, want: "ended before it was ready", noMig: true},
		{name: "arm refused", setup: func(f *fakeQEMU, s *Source) { f.failOn["x-ft-record-at-switchover"] = "uses an ioeventfd" }, want: "ioeventfd", noMig: true},
		{name: "migrate refused", setup: func(f *fakeQEMU, s *Source) { f.failOn["migrate"] = "blocked" }, want: "blocked", noMig: true},
		{name: "migration fails", setup: func(f *fakeQEMU, s *Source) { f.failMigAt = "active" }, want: "failed before pre-switchover"},
		{name: "continue refused", setup: func(f *fakeQEMU, s *Source) { f.failOn["migrate-continue"] = "bad state" }, want: "bad state", cancel: true},
		{name: "cancel refused", setup: func(f *fakeQEMU, s *Source) { f.failOn["block-job-cancel"] = "busy" }, want: "busy", cancel: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake()
				s := source(f)
				tc.setup(f, s)
				_, err := s.Run(context.Background())
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Run: %v, want an error with %q", err, tc.want)
				}
				if f.armed || f.mode != "none" {
					t.Fatalf("after a failed Run: armed %v, mode %s", f.armed, f.mode)
				}
				if f.pauseBefore {
					t.Fatal("pause-before-switchover left on after a failed Run")
				}
				if f.sent("cont") != 0 {
					t.Fatal("cont sent")
				}
				switch {
				case tc.name == "cancel refused":
					// Mirrors that would not end keep their NBD nodes,
					// and the error says the undo failed.
					if len(f.nodes) != 2 || !strings.Contains(err.Error(), "undoing") {
						t.Fatalf("nodes %v, error %v", f.nodes, err)
					}
				case len(f.nodes) != 0:
					t.Fatalf("NBD client nodes left: %v", f.nodes)
				}
				if tc.noMig && f.sent("migrate_cancel") != 0 {
					t.Fatalf("migrate_cancel without a migration: %v", f.cmds)
				}
				if tc.cancel && (f.sent("migrate_cancel") != 1 || f.mig != "cancelled") {
					t.Fatalf("the migration was not cancelled: %s, %v", f.mig, f.cmds)
				}
				if delete(f.failOn, "block-job-cancel"); len(f.jobs) != 0 && tc.name != "cancel refused" {
					t.Fatalf("mirror jobs left: %v", f.jobs)
				}
			})
		})
	}
}

func TestSourceContextEndsTheMigration(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.activePolls = 1 << 30 // never converges
		s := source(f)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := s.Run(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Run: %v, want the context's deadline", err)
		}
		if f.mig != "cancelled" || f.armed || len(f.jobs) != 0 || len(f.nodes) != 0 {
			t.Fatalf("after: migration %s, armed %v, jobs %v, nodes %v", f.mig, f.armed, f.jobs, f.nodes)
		}
	})
}

func TestSourceRefusesAQEMUThatDidNotRecord(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		s := source(f)
		// A QEMU without 0021: armed, but the switchover does not switch.
		s.QMP = &noSwitch{f}
		_, err := s.Run(context.Background())
		if err == nil || !strings.Contains(err.Error(), "not record") {
			t.Fatalf("Run: %v, want a refusal of mode none", err)
		}
		if f.sent("cont") != 0 {
			t.Fatal("cont sent")
		}
	})
}

// noSwitch is a QEMU that accepts the arming but completes the migration
// without recording.
type noSwitch struct{ *fakeQEMU }

func (n *noSwitch) Execute(command string, args, ret any) error {
	err := n.fakeQEMU.Execute(command, args, ret)
	if command == "x-ft-record-at-switchover" {
		n.armed = false
	}
	return err
}

func TestSourceNeedsItsPaths(t *testing.T) {
	if _, err := (&Source{QMP: newFake()}).Run(context.Background()); err == nil {
		t.Fatal("Run without paths succeeded")
	}
}

func TestDestinationRefusesAQEMUThatWouldRunTheGuest(t *testing.T) {
	for _, tc := range []struct{ mode, status, want string }{
		{"none", "inmigrate", "not play"},
		{"record", "inmigrate", "not play"},
		{"play", "paused", "not inmigrate"},
	} {
		f := newFake()
		f.mode, f.status = tc.mode, tc.status
		d := &Destination{QMP: f, MigrateURI: "unix:/m", NBDSocket: "/n", Exports: []string{"disk-format"}}
		err := d.Prepare()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("mode %s status %s: Prepare %v, want %q", tc.mode, tc.status, err, tc.want)
		}
		if f.sent("migrate-incoming") != 0 || f.sent("nbd-server-start") != 0 {
			t.Fatalf("mode %s status %s: prepared anyway: %v", tc.mode, tc.status, f.cmds)
		}
	}
}

func TestDestinationPrepareThenFinish(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.mode, f.status = "play", "inmigrate"
		d := &Destination{QMP: f, MigrateURI: "unix:/m", NBDSocket: "/n", Exports: []string{"disk-format", "disk1"}}
		if err := d.Prepare(); err != nil {
			t.Fatal(err)
		}
		want := "query-replay,query-status,migrate-set-capabilities,nbd-server-start,block-export-add,block-export-add,migrate-incoming"
		if got := strings.Join(f.cmds, ","); got != want {
			t.Fatalf("commands %s, want %s", got, want)
		}
		// The state arrives after a few polls; the QEMU stays paused (-S).
		f.mig, f.activePolls, f.loadAfter = "active", 1<<30, 5
		if err := d.Finish(context.Background()); err != nil {
			t.Fatal(err)
		}
		if f.sent("nbd-server-stop") != 1 || f.sent("cont") != 0 {
			t.Fatalf("commands %v", f.cmds)
		}
		f2 := newFake()
		f2.mig = "failed"
		if err := (&Destination{QMP: f2}).Finish(context.Background()); err == nil || !strings.Contains(err.Error(), "failed") {
			t.Fatalf("Finish of a failed migration: %v", err)
		}
	})
}

// A cancel that loses the race with the switchover: Run says so
// (ErrSwitchedOver) with the Result, and does not disarm or pretend the
// VM runs on.
func TestSourceReportsASwitchoverItCouldNotCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.activePolls = 1 << 30
		f.cancelTooLate = true
		s := source(f)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := s.Run(ctx)
		if !errors.Is(err, ErrSwitchedOver) {
			t.Fatalf("Run: %v, want ErrSwitchedOver", err)
		}
		if f.mode != "record" || f.status != "postmigrate" || f.sent("x-ft-record-disarm") != 0 || f.sent("cont") != 0 {
			t.Fatalf("mode %s, status %s, commands %v", f.mode, f.status, f.cmds)
		}
	})
}

// A driver that died at pre-switchover left a migration waiting, the
// arming, the capabilities and two mirrors with their NBD nodes: Recover
// removes all of it and never continues the VM; on a QEMU nothing touched
// it only turns the two capabilities off.
func TestRecoverUndoesWhatADeadDriverLeft(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		s := source(f)
		f.failOn["migrate-continue"] = "the driver died here"
		// Run up to pre-switchover, then forget its undo: as if killed.
		f.failOn["migrate_cancel"] = "unreachable"
		f.failOn["block-job-cancel"] = "unreachable"
		f.failOn["x-ft-record-disarm"] = "unreachable"
		f.failOn["blockdev-del"] = "unreachable"
		if _, err := s.Run(context.Background()); err == nil {
			t.Fatal("Run passed")
		}
		f.failOn = map[string]string{}
		f.pauseBefore = true // the undo's caps-off failed too, in effect
		if f.mig != "pre-switchover" || !f.armed || len(f.jobs) != 2 || len(f.nodes) != 2 {
			t.Fatalf("setup: mig %s armed %v jobs %d nodes %v", f.mig, f.armed, len(f.jobs), f.nodes)
		}
		f.cmds = nil
		if err := Recover(f, 0); err != nil {
			t.Fatal(err)
		}
		if f.mig != "cancelled" || f.armed || f.pauseBefore || len(f.jobs) != 0 || len(f.nodes) != 0 || f.sent("cont") != 0 {
			t.Fatalf("after Recover: mig %s armed %v pause-before %v jobs %v nodes %v cmds %v", f.mig, f.armed, f.pauseBefore, f.jobs, f.nodes, f.cmds)
		}

		clean := newFake()
		if err := Recover(clean, 0); err != nil {
			t.Fatal(err)
		}
		if clean.sent("migrate_cancel")+clean.sent("block-job-cancel")+clean.sent("blockdev-del") != 0 {
			t.Fatalf("Recover changed an untouched QEMU: %v", clean.cmds)
		}
	})
}

// Convert (a VM started without the ft element, plugin/convert.go): the
// same copy and migration, but nothing armed and no log: at the end the
// VM is paused in replay mode none, and one that records is refused. A
// failure before the migration's end leaves it running, as for a
// re-protection.
func TestSourceConvert(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		s := source(f)
		s.LogPath, s.Convert = "", true
		res, err := s.Run(context.Background())
		if err != nil {
			t.Fatalf("Run: %v (commands %v)", err, f.cmds)
		}
		if f.mode != "none" || f.status != "postmigrate" || f.sent("x-ft-record-at-switchover") != 0 {
			t.Fatalf("after Run: mode %s, status %s, armed %d times; want none, postmigrate, never armed", f.mode, f.status, f.sent("x-ft-record-at-switchover"))
		}
		if f.sent("cont") != 0 || res.Stopped.IsZero() || len(f.jobs) != 0 || len(f.nodes) != 0 {
			t.Fatalf("result %+v, commands %v, jobs %v, nodes %v", res, f.cmds, f.jobs, f.nodes)
		}

		f = newFake()
		f.mode = "record" // not what a VM without the ft element runs in
		s = source(f)
		s.LogPath, s.Convert = "", true
		if _, err := s.Run(context.Background()); !errors.Is(err, ErrSwitchedOver) || !strings.Contains(err.Error(), "not none") {
			t.Fatalf("Run on a recording VM: %v", err)
		}

		f = newFake()
		f.failMigAt = "active"
		s = source(f)
		s.LogPath, s.Convert = "", true
		if _, err := s.Run(context.Background()); err == nil || errors.Is(err, ErrSwitchedOver) || f.status != "running" {
			t.Fatalf("a failed migration: %v, status %s", err, f.status)
		}

		s = &Source{QMP: newFake(), MigrateURI: "unix:/x"}
		if _, err := s.Run(context.Background()); err == nil {
			t.Fatal("Run without LogPath or Convert: no error")
		}
	})
}
