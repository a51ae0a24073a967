package ftxml

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestIncoming(t *testing.T) {
	user := readTestdata(t, "two-disks-two-nics.xml")
	primary := mustPrimary(t, user, HostConfig{})
	backup := mustBackup(t, primary, HostConfig{})
	in, err := Incoming(backup)
	if err != nil {
		t.Fatal(err)
	}
	a := args(parse(t, in))
	i := slices.Index(a, "-icount")
	if i < 0 || !strings.HasSuffix(a[i+1], ",rrincoming=on") || rrMode(a[i+1]) != modeReplay {
		t.Errorf("-icount %q: want rr=replay with rrincoming=on", a[i+1])
	}
	if n := len(a); n < 2 || a[n-2] != "-incoming" || a[n-1] != "defer" {
		t.Errorf("args end %q, want -incoming defer", a[max(0, n-2):])
	}
	// Everything else is the backup's.
	b := args(parse(t, backup))
	if len(b)+2 != len(a) {
		t.Errorf("%d args, want the backup's %d plus 2", len(a), len(b))
	}
	if _, err := Incoming(primary); !errors.Is(err, ErrNotGeneratedBackup) {
		t.Errorf("Incoming(primary) = %v, want ErrNotGeneratedBackup", err)
	}
}

func TestReplayDisks(t *testing.T) {
	dom := parse(t, mustPrimary(t, readTestdata(t, "two-disks-two-nics.xml"), HostConfig{}))
	ds := ReplayDisks(dom)
	paths := DiskPaths(dom)
	if len(ds) != len(paths) || len(ds) < 2 {
		t.Fatalf("ReplayDisks = %+v, DiskPaths = %v", ds, paths)
	}
	a := strings.Join(args(dom), " ")
	for i, d := range ds {
		if d.Path != paths[i] {
			t.Errorf("disk %d: path %q, want %q", i, d.Path, paths[i])
		}
		// The generated blkreplay node sits on this format node.
		want := `"node-name":"` + d.Node + `","image":"` + d.Format + `"`
		if !strings.Contains(a, want) {
			t.Errorf("disk %d: no -blockdev with %s in %s", i, want, a)
		}
	}
}
