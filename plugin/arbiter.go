package plugin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// arbiter is the split-brain test-and-set (DESIGN.md section 2, "Split
// brain"; FT paper section 2.3): before a backup goes live, or a primary goes
// on alone, it must create the lock file of the current pairing epoch on
// storage both hosts share. Creating a file with O_CREAT|O_EXCL is atomic on
// a local or NFSv3+ file system, so exactly one of the two wins; the loser
// halts its VM. The winner writes its identity, so asking again is
// idempotent.
type arbiter struct {
	dir string // empty: no shared storage configured: every claim wins
	me  string // this daemon's identity (its listen address)
}

// acquire tries the lock of (uuid, epoch). err means the storage could not
// be reached (neither won nor lost).
func (a arbiter) acquire(uuid, epoch string) (won bool, err error) {
	if a.dir == "" {
		return true, nil
	}
	path := filepath.Join(a.dir, fmt.Sprintf("%s.%s.lock", uuid, epoch))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err == nil {
		_, werr := f.WriteString(a.me + "\n")
		serr := f.Sync()
		cerr := f.Close()
		if e := errors.Join(werr, serr, cerr); e != nil {
			return false, fmt.Errorf("arbiter: writing %s: %w", path, e)
		}
		return true, nil
	}
	if !errors.Is(err, os.ErrExist) {
		return false, fmt.Errorf("arbiter: %w", err)
	}
	b, rerr := os.ReadFile(path)
	if rerr != nil {
		return false, fmt.Errorf("arbiter: %w", rerr)
	}
	return strings.TrimSpace(string(b)) == a.me, nil
}

// forget removes the lock files of older epochs of uuid (a new pairing).
func (a arbiter) forget(uuid, keepEpoch string) {
	if a.dir == "" {
		return
	}
	m, _ := filepath.Glob(filepath.Join(a.dir, uuid+".*.lock"))
	for _, p := range m {
		if !strings.HasSuffix(p, "."+keepEpoch+".lock") {
			_ = os.Remove(p)
		}
	}
}
