package plugin

import (
	"regexp"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
)

// plainWebXML is the test domain without the ft element: a VM libvirt
// starts as a plain one.
func plainWebXML(t *testing.T) string {
	return regexp.MustCompile(`(?s)<metadata>.*</metadata>`).ReplaceAllString(runDomainXML(t.TempDir()), "")
}

// startPlainWeb defines and starts "web" without the ft element on host a.
func startPlainWeb(t *testing.T, fp *fakePair) *fakeQEMU {
	t.Helper()
	if err := fp.a.hv.Define(plainWebXML(t)); err != nil {
		t.Fatal(err)
	}
	synctest.Wait()
	if err := fp.a.hv.start("web"); err != nil {
		t.Fatal(err)
	}
	q := fp.a.hv.running(runUUID)
	if mode, _ := q.state(); mode != "none" {
		t.Fatalf("the plain VM's replay mode is %s", mode)
	}
	return q
}

// virt-ft protect of a VM started without the ft element: each refusal
// changes nothing; an attempt the peer cannot take (the fake QEMU cannot
// receive a running VM) fails with the VM running on here as before, no
// pairing record left, and nothing left on the peer.
func TestProtectPlain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp := newFakePair(t)
		t.Cleanup(func() {
			fp.shutdown()
			synctest.Wait()
		})
		q := startPlainWeb(t, fp)
		for _, c := range []struct {
			name, peer string
			setup      func()
			want       string
		}{
			{"web", "", nil, "has no ft element, so no backup host"},
			{"web", "10.0.0.2:99999", nil, "is not a TCP port"},
			{"nosuch", "10.0.0.2", nil, "is not known to libvirt-ftd here"},
			{"web", "10.0.0.2", func() { q.mu.Lock(); q.stock = true; q.mu.Unlock() }, "is not libvirt-ft's"},
			{"web", "10.0.0.2", func() { q.mu.Lock(); q.stock, q.paused = false, true; q.mu.Unlock() }, "resume it first"},
			{"web", "10.0.0.2", func() {
				q.mu.Lock()
				q.paused = false
				q.mu.Unlock()
				// A definition edited since the start (more memory).
				if err := fp.a.hv.Define(strings.Replace(plainWebXML(t), "262144", "524288", 1)); err != nil {
					t.Fatal(err)
				}
				synctest.Wait()
			}, "differs from the running VM"},
		} {
			if c.setup != nil {
				c.setup()
			}
			if _, err := fp.a.d.protect(c.name, c.peer); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("protect(%q, %q): %v, want %q", c.name, c.peer, err, c.want)
			}
		}
		if err := fp.a.hv.Define(plainWebXML(t)); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if fp.b.hv.running(runUUID) != nil || fp.a.d.lookup(runUUID) != nil && fp.a.d.lookup(runUUID).current() != nil {
			t.Fatal("a refused protect left something behind")
		}

		s, err := fp.a.d.protect("web", "10.0.0.2")
		if err != nil {
			t.Fatalf("protect: %v", err)
		}
		if s.Reprotect == nil || !s.Reprotect.Moves {
			t.Fatalf("protect's first status: %+v", s)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		st := fp.a.status(t, "web")
		if st.Reprotect == nil || st.Reprotect.Phase != "failed" {
			t.Fatalf("host a after the attempt: %s %q %+v", st.State, st.Detail, st.Reprotect)
		}
		if mode, _ := q.state(); mode != "none" || q.paused || fp.a.hv.running(runUUID) != q {
			t.Fatalf("host a's VM after the attempt: mode %s, paused %v", mode, q.paused)
		}
		if _, ok := fp.a.d.pairings.load(runUUID); ok {
			t.Fatal("host a kept a pairing record of the failed attempt")
		}
		if fp.b.hv.running(runUUID) != nil {
			t.Fatal("host b's QEMU that could not receive the VM was left running")
		}
		if def, _, _ := fp.a.hv.Definition("web"); strings.Contains(def.XML, "ft:ft") {
			t.Fatal("host a's definition got the ft element although the VM stays here unprotected")
		}
		// The next protect may start.
		if _, err := fp.a.d.protect("web", "10.0.0.2"); err != nil {
			t.Fatalf("protect again after a failure: %v", err)
		}
		time.Sleep(time.Second)
		synctest.Wait()
	})
}

// go-live-incoming is taken only for a backup armed to take over a
// running VM, by the host that armed it, for its epoch.
func TestGoLiveIncomingRefusals(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, _ := replicating(t)
		b := fp.b.d.lookup(runUUID).current().(*backupRun)
		b.mu.Lock()
		epoch := b.epoch
		b.mu.Unlock()
		for _, c := range []struct {
			host, uuid, epoch, want string
		}{
			{"10.0.0.1", "00000000-0000-4000-8000-000000000001", epoch, "no backup of"},
			{"10.0.0.3", runUUID, epoch, "no backup of"},
			{"10.0.0.1", runUUID, epoch, "was not armed to take over a running VM"},
		} {
			err := fp.b.d.goLiveIncoming(logchan.ControlRequest{Op: logchan.OpGoLiveIncoming, UUID: c.uuid, Epoch: c.epoch}, c.host)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("go-live-incoming from %s for %s: %v, want %q", c.host, c.uuid, err, c.want)
			}
		}
		if s := fp.b.status(t, "web"); s.State != ctl.StateReplicating {
			t.Fatalf("host b after refused orders: %s %q", s.State, s.Detail)
		}
	})
}

// A daemon restarted while it protected a VM started without the ft
// element (a convert record): a VM whose migration had not completed runs
// on; one paused after it runs here only if this host wins the epoch,
// else it is destroyed (the peer runs it).
func TestResolveConvert(t *testing.T) {
	for _, c := range []struct {
		name        string
		migrated    bool
		peerWon     bool
		wantRunning bool
		wantPaused  bool
	}{
		{name: "not migrated", wantRunning: true},
		{name: "migrated, won here", migrated: true, wantRunning: true},
		{name: "migrated, the peer won", migrated: true, peerWon: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fp := newFakePair(t)
				t.Cleanup(func() {
					fp.shutdown()
					synctest.Wait()
				})
				q := startPlainWeb(t, fp)
				const epoch = "convert1"
				if err := fp.a.d.pairings.save(pairingRecord{UUID: runUUID, Name: "web", Role: convertRole, Epoch: epoch, Peer: "10.0.0.2:7480"}); err != nil {
					t.Fatal(err)
				}
				if c.migrated {
					q.mu.Lock()
					q.migStatus, q.postmigrate, q.paused = "completed", true, true
					q.mu.Unlock()
				}
				if c.peerWon {
					if won, err := (fakeArbiter{me: "10.0.0.2", s: fp.arb}).Acquire(runUUID, epoch); !won || err != nil {
						t.Fatalf("the peer's claim: %v %v", won, err)
					}
				}
				fp.crash(fp.a)
				fp.restart(fp.a)
				synctest.Wait()
				running := fp.a.hv.running(runUUID) != nil
				paused := q.isPaused()
				if running != c.wantRunning || (running && paused != c.wantPaused) {
					t.Fatalf("after the restart: running %v paused %v, want %v %v", running, paused, c.wantRunning, c.wantPaused)
				}
				if _, ok := fp.a.d.pairings.load(runUUID); ok {
					t.Fatal("the convert record outlived its resolution")
				}
				if s := fp.a.status(t, "web"); (c.wantRunning && s.State != ctl.StateUnprotected) || (!c.wantRunning && s.State != ctl.StateStopped) {
					t.Fatalf("status after the restart: %s %q", s.State, s.Detail)
				}
			})
		})
	}
}

// The peer's side after its daemon restarted during a protect of a VM
// started without the ft element: without the go-live order its QEMU is
// destroyed and no claim is made (the VM's host decides); ordered, it
// claims, and a lost claim destroys it.
func TestResolveConvertBackup(t *testing.T) {
	for _, c := range []struct {
		name string
		role string
		aWon bool
	}{
		{name: "not ordered", role: convertBackupRole},
		{name: "ordered, the other host won", role: convertOrderedRole, aWon: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fp, _ := replicating(t)
				b := fp.b.d.lookup(runUUID).current().(*backupRun)
				b.mu.Lock()
				epoch := b.epoch
				b.mu.Unlock()
				fp.crash(fp.b)
				if err := fp.b.d.pairings.save(pairingRecord{UUID: runUUID, Name: "web", Role: c.role, Epoch: epoch, Peer: "10.0.0.1"}); err != nil {
					t.Fatal(err)
				}
				if c.aWon {
					if won, err := (fakeArbiter{me: "10.0.0.1", s: fp.arb}).Acquire(runUUID, epoch); !won || err != nil {
						t.Fatalf("host a's claim: %v %v", won, err)
					}
				}
				fp.restart(fp.b)
				synctest.Wait()
				if fp.b.hv.running(runUUID) != nil {
					t.Fatal("host b's QEMU runs on")
				}
				fp.arb.mu.Lock()
				winner := fp.arb.claims[runUUID+"/"+epoch]
				fp.arb.mu.Unlock()
				if winner == "10.0.0.2" {
					t.Fatalf("host b holds epoch %s", epoch)
				}
				want := "won epoch"
				if c.role == convertBackupRole {
					want = "before its go-live was ordered"
				}
				if s := fp.b.status(t, "web"); !strings.Contains(s.Detail, want) {
					t.Fatalf("host b: %s %q, want %q", s.State, s.Detail, want)
				}
				if _, ok := fp.b.d.pairings.load(runUUID); ok {
					t.Fatal("host b's record outlived the resolution")
				}
			})
		})
	}
}

// reprotectBase, what a re-protection of an adopted VM arms from: the
// persistent definition, refused when it no longer describes the running
// VM (edited since its start) or has no ft element with role primary.
func TestReprotectBase(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp, _ := replicating(t)
		running, err := fp.a.hv.Running()
		if err != nil || len(running) != 1 {
			t.Fatalf("Running: %v %d", err, len(running))
		}
		live := running[0]
		if _, err := fp.a.d.reprotectBase(live); err != nil {
			t.Fatalf("the definition the VM runs: %v", err)
		}
		def, _, _ := fp.a.hv.Definition("web")
		if err := fp.a.hv.Define(strings.Replace(def.XML, "262144", "524288", 1)); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if _, err := fp.a.d.reprotectBase(live); err == nil || !strings.Contains(err.Error(), "differs from the running VM") {
			t.Fatalf("an edited definition: %v", err)
		}
		if err := fp.a.hv.Define(plainWebXML(t)); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if _, err := fp.a.d.reprotectBase(live); err == nil || !strings.Contains(err.Error(), "no ft element") {
			t.Fatalf("a definition without the ft element: %v", err)
		}
	})
}
