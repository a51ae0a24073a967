package plugin

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A record holds while the files are untouched; any write, a replaced
// file, another role or another domain does not match.
func TestInStepStore(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "web.qcow2")
	if err := os.WriteFile(disk, []byte("disk"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(disk, old, old); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * racyWindow) // ctime (the chtimes) out of the racy window
	s := inStepStore{dir: filepath.Join(dir, "in-step")}
	if err := s.save(runUUID, "e1", "backup", []string{disk}); err != nil {
		t.Fatal(err)
	}
	if e, ok := s.inStep(runUUID, "backup", disk); !ok || e != "e1" {
		t.Fatalf("inStep: %q %v", e, ok)
	}
	for _, c := range []struct{ uuid, role, path string }{
		{runUUID, "primary", disk},
		{"11111111-2222-3333-4444-555555555555", "backup", disk},
		{runUUID, "backup", filepath.Join(dir, "other.qcow2")},
	} {
		if _, ok := s.inStep(c.uuid, c.role, c.path); ok {
			t.Errorf("in step for %+v", c)
		}
	}
	f, err := os.OpenFile(disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("D"), 0) // same size, same contents length
	f.Close()
	if _, ok := s.inStep(runUUID, "backup", disk); ok {
		t.Fatal("in step after a write")
	}
	// Just written: save waits out the racy window once, then records.
	if err := s.save(runUUID, "e2", "primary", []string{disk}); err != nil {
		t.Fatal(err)
	}
	if e, ok := s.inStep(runUUID, "primary", disk); !ok || e != "e2" {
		t.Fatalf("after the wait: %q %v", e, ok)
	}
	s.forget(runUUID)
	if _, ok := s.inStep(runUUID, "primary", disk); ok {
		t.Fatal("in step after forget")
	}
	if err := (inStepStore{}).save(runUUID, "e", "primary", []string{disk}); err != nil {
		t.Fatal(err) // the zero store keeps nothing
	}
}

type warnLog struct{ n int }

func (w *warnLog) Warnf(string, ...any) { w.n++ }
func (w *warnLog) Infof(string, ...any) {}

// A candidate is recorded only with libvirt's shutdown event for the same
// domain, in either order; drop (a new run) forgets what waits.
func TestInStepMatcher(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "web.qcow2")
	if err := os.WriteFile(disk, []byte("disk"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * racyWindow)
	var w warnLog
	m := newInStepMatcher(inStepStore{dir: filepath.Join(dir, "in-step")}, &w)
	m.save = func(f func()) { f() }
	c := inStepCandidate{uuid: runUUID, epoch: "e1", role: "backup", disks: []string{disk}}
	recorded := func() bool { _, ok := m.store.inStep(runUUID, "backup", disk); return ok }

	m.offer(c) // the stopped hook first
	if recorded() {
		t.Fatal("recorded without a shutdown event")
	}
	m.guestShutdown("11111111-2222-3333-4444-555555555555") // another domain's
	m.stopped("11111111-2222-3333-4444-555555555555", true)
	m.guestShutdown(runUUID)
	if recorded() {
		t.Fatal("recorded before the QEMU ended")
	}
	m.stopped(runUUID, true)
	if !recorded() {
		t.Fatal("not recorded: candidate, guest shutdown, QEMU ended")
	}
	m.store.forget(runUUID)

	m.offer(c) // a host signal: SHUTDOWN but not the guest's
	m.stopped(runUUID, true)
	m.guestShutdown(runUUID)
	if recorded() {
		t.Fatal("recorded after a stop without the guest's shutdown")
	}
	m.drop(runUUID)

	m.guestShutdown(runUUID) // the events first
	m.stopped(runUUID, true)
	m.offer(c)
	if !recorded() {
		t.Fatal("not recorded: shutdown, then its candidate")
	}
	m.store.forget(runUUID)

	m.offer(c)
	m.drop(runUUID) // a new run starts
	m.guestShutdown(runUUID)
	m.stopped(runUUID, true)
	if recorded() || w.n != 0 {
		t.Fatalf("recorded after drop (warnings %d)", w.n)
	}
	var none *inStepMatcher // tests without a matcher
	none.offer(c)
	none.guestShutdown(runUUID)
	none.stopped(runUUID, true)
	none.drop(runUUID)
}
