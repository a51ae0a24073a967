package main

import (
	"slices"
	"testing"
)

func TestSysmonEnv(t *testing.T) {
	cases := []struct {
		name    string
		in      []string
		want    []string
		changed bool
	}{
		{"no GODEBUG", []string{"PATH=/bin", "LISTEN_FDS=2"},
			[]string{"PATH=/bin", "LISTEN_FDS=2", "GODEBUG=" + sysmonGODEBUG}, true},
		{"other settings kept", []string{"GODEBUG=madvdontneed=1", "HOME=/"},
			[]string{"HOME=/", "GODEBUG=madvdontneed=1," + sysmonGODEBUG}, true},
		{"empty GODEBUG", []string{"GODEBUG="},
			[]string{"GODEBUG=" + sysmonGODEBUG}, true},
		{"schedtrace set by the admin wins", []string{"GODEBUG=schedtrace=0", "A=b"},
			[]string{"GODEBUG=schedtrace=0", "A=b"}, false},
		{"already set (after the re-execution)", []string{"GODEBUG=x=1," + sysmonGODEBUG},
			[]string{"GODEBUG=x=1," + sysmonGODEBUG}, false},
		{"a longer name is not schedtrace", []string{"GODEBUG=noschedtrace=1"},
			[]string{"GODEBUG=noschedtrace=1," + sysmonGODEBUG}, true},
	}
	for _, c := range cases {
		got, changed := sysmonEnv(c.in)
		if changed != c.changed || !slices.Equal(got, c.want) {
			t.Errorf("%s: sysmonEnv(%q) = %q, %v; want %q, %v", c.name, c.in, got, changed, c.want, c.changed)
		}
	}
}
