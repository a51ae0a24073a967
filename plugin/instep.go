package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/libvirt-ft/libvirt-ft/logchan"
)

// Disks in step (issue 13, item 4; docs/replay.md §14). A protected start
// makes the backup's disk copies byte-identical to the primary's: it hashes
// both in full, and copies when they differ. After a pairing whose guest
// shut down cleanly and whose backup replayed that shutdown, the two copies
// are identical already: the backup applied the same writes (replay), and
// neither was written since. Each host then records the identity of its
// copies (device, inode, size, mtime and ctime: any write changes them), and
// the next start skips both hashes when both records still match the files.
//
// A record is written only with positive evidence: on the primary, its QEMU
// ended the run with a clean log end while replicating and libvirt reported
// the guest's own shutdown (EventGuestShutdown); on the backup, the primary
// said its VM ended and sent the whole log, the backup fed all of it, its
// gates found no differing frame, and libvirt reported the guest's shutdown
// of the replaying QEMU (it replayed the guest's; a kill from the host is
// not one). Anything else (a failover, a lost or halted backup, a kill, a
// seed) leaves no record, or a stale one that no longer matches, and the
// next start hashes.

// inStepDisk is one disk copy's identity as a file.
type inStepDisk struct {
	Path    string `json:"path"`
	Dev     uint64 `json:"dev"`
	Ino     uint64 `json:"ino"`
	Size    int64  `json:"size"`
	MtimeNs int64  `json:"mtime_ns"`
	CtimeNs int64  `json:"ctime_ns"`
}

// inStepRecord says that this host's copies of a domain's disks ended the
// pairing Epoch in step with the peer's, in Role.
type inStepRecord struct {
	UUID  string       `json:"uuid"`
	Epoch string       `json:"epoch"`
	Role  string       `json:"role"` // "primary" or "backup"
	At    time.Time    `json:"at"`
	Disks []inStepDisk `json:"disks"`
}

// inStepStore keeps inStepRecords as <dir>/<uuid>.json (a directory that
// survives a reboot, unlike the run directory: the disks do). The zero
// value keeps nothing.
type inStepStore struct{ dir string }

// racyWindow: a file changed this recently when its identity is taken may
// change again without its ctime moving (file times have the kernel's
// coarse clock): such a record is not written (git's "racily clean").
const racyWindow = 50 * time.Millisecond

// statDisk is path's identity; an error for anything but a regular file.
func statDisk(path string) (inStepDisk, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return inStepDisk{}, err
	}
	return diskIdentity(fi, path)
}

// diskIdentity is the identity of the file fi describes, named path; an
// error for anything but a regular file.
func diskIdentity(fi os.FileInfo, path string) (inStepDisk, error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.Mode().IsRegular() {
		return inStepDisk{}, fmt.Errorf("%s is not a regular file", path)
	}
	return inStepDisk{Path: path, Dev: uint64(st.Dev), Ino: st.Ino, Size: st.Size,
		MtimeNs: st.Mtim.Nano(), CtimeNs: st.Ctim.Nano()}, nil
}

func (s inStepStore) path(uuid string) (string, bool) {
	if s.dir == "" || !logchan.ValidUUID(uuid) {
		return "", false
	}
	return filepath.Join(s.dir, strings.ToLower(uuid)+".json"), true
}

// save records that paths ended pairing epoch in step, in role. It takes
// each file's identity now; a file changed within racyWindow is waited
// for once, then refused (nothing is recorded).
func (s inStepStore) save(uuid, epoch, role string, paths []string) error {
	p, ok := s.path(uuid)
	if !ok {
		return nil
	}
	if len(paths) == 0 {
		// A run adopted after a planned restart does not know its disks:
		// it records nothing (an older record no longer matches anyway).
		return nil
	}
	s.forget(uuid)
	// On stable storage first: a crash must not leave an identity that
	// matches older blocks. QEMU's flush at exit does not reach the disk
	// with cache=unsafe, nor for a replaying backup's QEMU that is killed
	// or crashes (packaging/qemu 0024: its flushes stop at the OS until
	// replay_finish, which a clean exit runs first), so this does.
	for _, path := range paths {
		if err := syncFile(path); err != nil {
			return err
		}
	}
	rec := inStepRecord{UUID: uuid, Epoch: epoch, Role: role}
	var first []inStepDisk
	for attempt := 0; ; attempt++ {
		rec.Disks, rec.At = nil, time.Now()
		racy, wait := false, racyWindow
		for _, path := range paths {
			d, err := statDisk(path)
			if err != nil {
				return err
			}
			window := racyWindow
			if d.CtimeNs%1e9 == 0 && d.MtimeNs%1e9 == 0 {
				window = 2 * time.Second // a file system with whole-second times
			}
			if rec.At.Sub(time.Unix(0, max(d.CtimeNs, d.MtimeNs))) < window {
				racy, wait = true, max(wait, window)
			}
			rec.Disks = append(rec.Disks, d)
		}
		if attempt > 0 && !equalDisks(first, rec.Disks) {
			return errors.New("a disk was written while its identity was taken: not recorded")
		}
		if !racy {
			break
		}
		if attempt > 0 {
			return errors.New("a disk was written while its identity was taken: not recorded")
		}
		first = rec.Disks
		time.Sleep(2 * wait)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// syncFile flushes path's data to stable storage (fsync).
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func equalDisks(a, b []inStepDisk) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// inStep returns the epoch in which path, a disk of uuid, ended in step in
// role, if this host recorded it and the file is unchanged since.
func (s inStepStore) inStep(uuid, role, path string) (string, bool) {
	p, ok := s.path(uuid)
	if !ok {
		return "", false
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return "", false
	}
	var rec inStepRecord
	if json.Unmarshal(b, &rec) != nil || rec.Role != role || rec.Epoch == "" || !strings.EqualFold(rec.UUID, uuid) {
		return "", false
	}
	for _, d := range rec.Disks {
		if d.Path != path {
			continue
		}
		now, err := statDisk(path)
		if err != nil || now != d {
			return "", false
		}
		return rec.Epoch, true
	}
	return "", false
}

// forget drops uuid's record.
func (s inStepStore) forget(uuid string) {
	if p, ok := s.path(uuid); ok {
		_ = os.Remove(p)
	}
}

// inStepCandidate is a run that ended in step by its own account: its disks
// are recorded once libvirt reports that its QEMU stopped because the guest
// shut down (inStepMatcher).
type inStepCandidate struct {
	uuid, epoch, role string
	disks             []string
}

// inStepMatchWindow bounds how far apart a candidate and its shutdown event
// may arrive (libvirt runs the stopped hook, then sends the event).
const inStepMatchWindow = 10 * time.Second

// inStepMatcher pairs a run's candidate with libvirt's shutdown event for
// the same domain, in either order, and then saves the record.
type inStepMatcher struct {
	store inStepStore
	log   inStepLog
	save  func(func()) // runs the save (go in the daemon; inline in tests)

	mu        sync.Mutex
	cands     map[string]inStepCandidate
	candAt    map[string]time.Time
	guest     map[string]time.Time // the guest shut down; its QEMU may still be flushing
	shutdowns map[string]time.Time // then its QEMU ended: the disks are final
}

// inStepLog is what inStepMatcher logs to (a logrus entry).
type inStepLog interface {
	Infof(string, ...any)
	Warnf(string, ...any)
}

func newInStepMatcher(store inStepStore, log inStepLog) *inStepMatcher {
	return &inStepMatcher{store: store, log: log, save: func(f func()) { go f() },
		cands: map[string]inStepCandidate{}, candAt: map[string]time.Time{}, guest: map[string]time.Time{},
		shutdowns: map[string]time.Time{}}
}

// offer: a run of c.uuid ended in step by its own account.
func (m *inStepMatcher) offer(c inStepCandidate) {
	if m == nil {
		return
	}
	m.mu.Lock()
	now := time.Now()
	if at, ok := m.shutdowns[c.uuid]; ok && now.Sub(at) < inStepMatchWindow {
		delete(m.shutdowns, c.uuid)
		m.mu.Unlock()
		m.record(c)
		return
	}
	m.cands[c.uuid], m.candAt[c.uuid] = c, now
	m.mu.Unlock()
}

// guestShutdown: libvirt reported that uuid's guest shut down by itself
// (EventGuestShutdown); its QEMU has not necessarily ended yet.
func (m *inStepMatcher) guestShutdown(uuid string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	now := time.Now()
	for u, at := range m.guest {
		if now.Sub(at) >= inStepMatchWindow {
			delete(m.guest, u)
		}
	}
	m.guest[uuid] = now
	m.mu.Unlock()
}

// stopped: libvirt reported uuid's QEMU ended (EventStopped); shutdown
// tells whether after a SHUTDOWN. After the guest's own shutdown the
// disks are final; any other end drops what waits.
func (m *inStepMatcher) stopped(uuid string, shutdown bool) {
	if m == nil {
		return
	}
	m.mu.Lock()
	at, ok := m.guest[uuid]
	delete(m.guest, uuid)
	if !shutdown || !ok || time.Since(at) >= inStepMatchWindow {
		delete(m.cands, uuid)
		delete(m.candAt, uuid)
		delete(m.shutdowns, uuid)
		m.mu.Unlock()
		return
	}
	m.shutdownLocked(uuid) // unlocks
}

// shutdownLocked: uuid's QEMU ended after its guest's own shutdown. Called
// with mu held; it unlocks it (the save runs without it).
func (m *inStepMatcher) shutdownLocked(uuid string) {
	now := time.Now()
	if c, ok := m.cands[uuid]; ok && now.Sub(m.candAt[uuid]) < inStepMatchWindow {
		delete(m.cands, uuid)
		delete(m.candAt, uuid)
		m.mu.Unlock()
		m.record(c)
		return
	}
	for u, at := range m.shutdowns { // every domain's shutdowns come here
		if now.Sub(at) >= inStepMatchWindow {
			delete(m.shutdowns, u)
		}
	}
	m.shutdowns[uuid] = now
	m.mu.Unlock()
}

// drop forgets what waits for uuid: a new run of it starts.
func (m *inStepMatcher) drop(uuid string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	delete(m.cands, uuid)
	delete(m.candAt, uuid)
	delete(m.guest, uuid)
	delete(m.shutdowns, uuid)
	m.mu.Unlock()
}

func (m *inStepMatcher) record(c inStepCandidate) {
	m.save(func() {
		if err := m.store.save(c.uuid, c.epoch, c.role, c.disks); err == nil {
			m.log.Infof("domain %s: its disks ended pairing %s in step (%s); the next start reads them only if they changed", c.uuid, c.epoch, c.role)
		} else {
			m.log.Warnf("domain %s: its disks ended pairing %s in step, but could not be recorded (the next start hashes them): %v", c.uuid, c.epoch, err)
		}
	})
}
