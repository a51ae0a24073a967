package plugin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Arbiter is the split-brain test-and-set (FT paper, Scales et al. 2010,
// section 2.3; docs/architecture.md): before a backup goes live, or a
// primary goes on alone, it must win the claim of the current pairing
// epoch. Exactly one of the two daemons of a pairing wins; the loser halts
// its VM.
type Arbiter interface {
	// Acquire claims (uuid, epoch). An error means the arbiter could not
	// be reached: neither won nor lost. Asking again after a win wins. A
	// claim of an epoch that is no longer the domain's current one (a
	// later pairing Forgot it) loses, so that a daemon that comes back
	// late can never win a forgotten epoch.
	Acquire(uuid, epoch string) (won bool, err error)
	// Forget makes epoch uuid's current pairing and drops the claims of
	// its other epochs. Called once the new pairing is armed; an error
	// (the arbiter cannot be reached) refuses the start, since claims of
	// the new epoch would then lose on both hosts.
	Forget(uuid, epoch string) error
}

// validEpoch: an epoch is base-36 nanoseconds (primaryRun.prepare), at most
// 12 characters of [0-9a-z] (base-36 of any int64 below 36^12 fits); anything
// else from a peer is refused (it names lock files and keys).
func validEpoch(e string) bool {
	if e == "" || len(e) > 12 {
		return false
	}
	for _, c := range e {
		if (c < '0' || c > '9') && (c < 'a' || c > 'z') {
			return false
		}
	}
	return true
}

// epochBefore reports whether epoch a was born before b (both valid:
// base-36 nanoseconds, so their values order them).
func epochBefore(a, b string) bool {
	x, _ := strconv.ParseInt(a, 36, 64)
	y, _ := strconv.ParseInt(b, 36, 64)
	return x < y
}

// dirArbiter is the shared-directory Arbiter: the claim is a lock file on
// storage both hosts mount. Creating a name with link(2) is atomic on a
// local or NFSv3+ file system, so exactly one of the two wins. The
// winner's identity is in the file, so asking again is idempotent.
type dirArbiter struct {
	dir string // empty: no shared storage configured: every claim wins
	me  string // this host's identity (hostIdentity): kept across daemon restarts
}

// Acquire tries the lock file of (uuid, epoch). The file appears with its
// content in one step: the identity is written to a private temporary file
// that is then hard-linked to the lock's name (link(2) fails with EEXIST if
// the name exists, atomically, also on NFS), so a reader never sees an
// empty lock. Then the domain's current epoch (<uuid>.current, written by
// Forget before it removes old locks) must be this one: a lock taken of a
// forgotten epoch loses.
func (a dirArbiter) Acquire(uuid, epoch string) (won bool, err error) {
	if a.dir == "" {
		return true, nil
	}
	if !validEpoch(epoch) || !validName(uuid) {
		return false, fmt.Errorf("arbiter: bad claim %q/%q", uuid, epoch)
	}
	path := filepath.Join(a.dir, fmt.Sprintf("%s.%s.lock", uuid, epoch))
	tmp, err := os.CreateTemp(a.dir, ".claim-*")
	if err != nil {
		return false, fmt.Errorf("arbiter: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.WriteString(a.me + "\n")
	serr := tmp.Sync()
	cerr := tmp.Close()
	if e := errors.Join(werr, serr, cerr); e != nil {
		return false, fmt.Errorf("arbiter: writing %s: %w", tmp.Name(), e)
	}
	lerr := os.Link(tmp.Name(), path)
	if lerr != nil && !errors.Is(lerr, os.ErrExist) {
		return false, fmt.Errorf("arbiter: %w", lerr)
	}
	if lerr != nil {
		b, rerr := os.ReadFile(path)
		if rerr != nil {
			return false, fmt.Errorf("arbiter: %w", rerr)
		}
		if strings.TrimSpace(string(b)) != a.me {
			return false, nil
		}
	}
	cur, err := os.ReadFile(filepath.Join(a.dir, uuid+".current"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("arbiter: %w", err)
	}
	if err == nil && strings.TrimSpace(string(cur)) != epoch {
		return false, nil
	}
	return true, nil
}

// Forget writes uuid's current epoch, then removes the lock files of its
// other epochs.
func (a dirArbiter) Forget(uuid, epoch string) error {
	if a.dir == "" {
		return nil
	}
	if !validEpoch(epoch) || !validName(uuid) {
		return fmt.Errorf("arbiter: bad epoch %q/%q", uuid, epoch)
	}
	cur := filepath.Join(a.dir, uuid+".current")
	// Never go back: a Forget that finishes late (its caller gave up on
	// a hung mount) must not undo a newer pairing's.
	if b, err := os.ReadFile(cur); err == nil {
		if old := strings.TrimSpace(string(b)); validEpoch(old) && !epochBefore(old, epoch) {
			if old == epoch {
				return nil
			}
			return fmt.Errorf("arbiter: %s already has a newer pairing (epoch %s)", uuid, old)
		}
	}
	tmp, err := os.CreateTemp(a.dir, ".current-*")
	if err != nil {
		return fmt.Errorf("arbiter: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.WriteString(epoch + "\n")
	serr := tmp.Sync()
	cerr := tmp.Close()
	if e := errors.Join(werr, serr, cerr); e != nil {
		return fmt.Errorf("arbiter: writing %s: %w", tmp.Name(), e)
	}
	if err := os.Rename(tmp.Name(), cur); err != nil {
		return fmt.Errorf("arbiter: %w", err)
	}
	m, _ := filepath.Glob(filepath.Join(a.dir, uuid+".*.lock"))
	for _, p := range m {
		e := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), uuid+"."), ".lock")
		if validEpoch(e) && epochBefore(e, epoch) {
			_ = os.Remove(p)
		}
	}
	return nil
}

// validName: a domain UUID as it names arbiter files (no separators).
func validName(uuid string) bool {
	return uuid != "" && !strings.ContainsAny(uuid, "/\\.") && len(uuid) <= 64
}
