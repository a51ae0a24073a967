package plugin

import (
	"os"
	"path/filepath"
	"testing"
)

func TestArbiterExactlyOneWins(t *testing.T) {
	dir := t.TempDir()
	a := dirArbiter{dir: dir, me: "10.0.0.1:7480"}
	b := dirArbiter{dir: dir, me: "10.0.0.2:7480"}
	wonB, err := b.Acquire("u", "e1")
	if err != nil || !wonB {
		t.Fatalf("first claim: won %v err %v", wonB, err)
	}
	wonA, err := a.Acquire("u", "e1")
	if err != nil || wonA {
		t.Fatalf("second claim must lose: won %v err %v", wonA, err)
	}
	// Asking again is idempotent for the holder (a retry after a lost reply).
	if again, err := b.Acquire("u", "e1"); err != nil || !again {
		t.Fatalf("holder asking again: won %v err %v", again, err)
	}
	// A new pairing epoch is a new lock.
	if won, _ := a.Acquire("u", "e2"); !won {
		t.Fatal("new epoch: the first claim must win")
	}
	if err := a.Forget("u", "e2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "u.e1.lock")); !os.IsNotExist(err) {
		t.Fatal("forget kept an old epoch's lock")
	}
	if _, err := os.Stat(filepath.Join(dir, "u.e2.lock")); err != nil {
		t.Fatal("forget removed the current epoch's lock")
	}
	// A forgotten epoch loses for everyone, its former holder included.
	for _, x := range []dirArbiter{a, b} {
		if won, err := x.Acquire("u", "e1"); err != nil || won {
			t.Fatalf("%s claiming a forgotten epoch: won %v err %v", x.me, won, err)
		}
	}
	if won, err := a.Acquire("u", "e2"); err != nil || !won {
		t.Fatalf("the current epoch's holder: won %v err %v", won, err)
	}
	// Names that are paths are refused.
	if _, err := a.Acquire("u", "../../etc/x"); err == nil {
		t.Fatal("an epoch with a path was accepted")
	}
}

func TestArbiterWithoutSharedStorageWins(t *testing.T) {
	if won, err := (dirArbiter{}).Acquire("u", "e"); !won || err != nil {
		t.Fatalf("won %v err %v", won, err)
	}
}

func TestArbiterUnreachableIsAnError(t *testing.T) {
	a := dirArbiter{dir: filepath.Join(t.TempDir(), "missing"), me: "x"}
	if won, err := a.Acquire("u", "e"); won || err == nil {
		t.Fatalf("won %v err %v: an unreachable arbiter is neither a win nor a loss", won, err)
	}
}

// Two daemons with the same listen string (the default ":7480" on both
// hosts) must not both win.
func TestArbiterSameListenOneWinner(t *testing.T) {
	dir := t.TempDir()
	a := dirArbiter{dir: dir, me: hostIdentity(":7480", "")}
	b := dirArbiter{dir: dir, me: hostIdentity(":7480", "")}
	wa, errA := a.Acquire("u", "e1")
	wb, errB := b.Acquire("u", "e1")
	if errA != nil || errB != nil || !wa || wb {
		t.Fatalf("a won %v (%v), b won %v (%v): want exactly a", wa, errA, wb, errB)
	}
	if again, err := a.Acquire("u", "e1"); !again || err != nil {
		t.Fatalf("the holder asking again: %v, %v", again, err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".claim-*")); len(m) != 0 {
		t.Fatalf("temporary claim files left: %v", m)
	}
}

// A Forget that comes late (its caller gave up on a hung mount) never
// takes the current epoch back to an older pairing.
func TestArbiterForgetNeverGoesBack(t *testing.T) {
	dir := t.TempDir()
	a := dirArbiter{dir: dir, me: "10.0.0.1:7480"}
	if err := a.Forget("u", "e3"); err != nil {
		t.Fatal(err)
	}
	if err := a.Forget("u", "e2"); err == nil {
		t.Fatal("an older epoch replaced the current one")
	}
	if won, err := a.Acquire("u", "e3"); err != nil || !won {
		t.Fatalf("the current epoch: won %v err %v", won, err)
	}
	if err := a.Forget("u", "e3"); err != nil {
		t.Fatalf("forgetting again for the same epoch: %v", err)
	}
}
