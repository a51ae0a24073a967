package plugin

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
)

// The arbiter is named by arbiter:, or inferred from arbiter-etcd or
// arbiter-dir; bad combinations are refused at load with the key to fix.
func TestArbiterConfig(t *testing.T) {
	for _, c := range []struct {
		yaml, want, err string
	}{
		{"", "", ""},
		{"arbiter-etcd: {endpoints: [http://10.0.0.3:2379]}", ArbiterEtcd, ""},
		{"arbiter-dir: /srv/ft", ArbiterDir, ""},
		{"arbiter: none", ArbiterNone, ""},
		{"arbiter: etcd", "", "arbiter: etcd needs arbiter-etcd"},
		{"arbiter: dir", "", "arbiter: dir needs arbiter-dir"},
		{"arbiter: paxos", "", `arbiter "paxos": use etcd, dir or none`},
	} {
		path := filepath.Join(t.TempDir(), "libvirt-ftd.yaml")
		if err := os.WriteFile(path, []byte(c.yaml+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := LoadConfig(path)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%q: error %v, want %q", c.yaml, err, c.err)
		case c.err == "" && (err != nil || cfg.Arbiter != c.want):
			t.Errorf("%q: arbiter %q (%v), want %q", c.yaml, cfg.Arbiter, err, c.want)
		}
	}
}

// Without an arbiter a daemon refuses protection at define and at start,
// naming the keys to set; nothing starts.
func TestNoArbiterRefusesProtection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fp := newFakePair(t)
		defer func() { fp.shutdown(); synctest.Wait() }()
		fp.a.d.cfg.Arbiter = ""
		if err := fp.a.hv.Define(runDomainXML(t.TempDir())); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		s := fp.a.status(t, "web")
		if s.State != ctl.StateRefused || !strings.Contains(s.Detail, "arbiter-etcd") || !strings.Contains(s.Detail, "arbiter: none") {
			t.Fatalf("after define: %+v", s)
		}
		err := fp.a.hv.Create(runDomainXML(t.TempDir()))
		if err == nil || !errors.Is(err, ErrNoArbiter) {
			t.Fatalf("start without an arbiter: %v", err)
		}
		if fp.a.hv.running(runUUID) != nil || fp.b.hv.running(runUUID) != nil || len(fp.b.d.status("")) != 0 {
			t.Fatal("something started or was armed")
		}
	})
}
