package plugin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Arbiter is the split-brain test-and-set (FT paper, Scales et al. 2010,
// section 2.3; docs/architecture.md): before a backup goes live, or a
// primary goes on alone, it must win the claim of the current pairing
// epoch. Exactly one of the two daemons of a pairing wins; the loser halts
// its VM.
type Arbiter interface {
	// Acquire claims (uuid, epoch). An error means the arbiter could not
	// be reached: neither won nor lost. Asking again after a win wins.
	Acquire(uuid, epoch string) (won bool, err error)
	// Forget drops the claims of uuid's other epochs (a new pairing).
	Forget(uuid, keepEpoch string)
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
// empty lock.
func (a dirArbiter) Acquire(uuid, epoch string) (won bool, err error) {
	if a.dir == "" {
		return true, nil
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
	if lerr == nil {
		return true, nil
	}
	if !errors.Is(lerr, os.ErrExist) {
		return false, fmt.Errorf("arbiter: %w", lerr)
	}
	b, rerr := os.ReadFile(path)
	if rerr != nil {
		return false, fmt.Errorf("arbiter: %w", rerr)
	}
	return strings.TrimSpace(string(b)) == a.me, nil
}

// Forget removes the lock files of uuid's other epochs.
func (a dirArbiter) Forget(uuid, keepEpoch string) {
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
