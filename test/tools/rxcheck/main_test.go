package main

import (
	"strings"
	"testing"
)

func frames(ss ...string) [][]byte {
	var out [][]byte
	for _, s := range ss {
		out = append(out, []byte(s))
	}
	return out
}

// withHdr prepends an h-byte virtio-net header to each frame.
func withHdr(h int, ss ...string) [][]byte {
	var out [][]byte
	for _, s := range ss {
		out = append(out, append(make([]byte, h), s...))
	}
	return out
}

func TestCompare(t *testing.T) {
	for _, tc := range []struct {
		name            string
		captured, log   [][]byte
		matched, hdr    int
		failureContains string
	}{
		{"identical", frames("a1", "b2", "c3"), frames("a1", "b2", "c3"), 3, 0, ""},
		{"log starts earlier and ends later", frames("b2", "c3"), frames("boot", "a1", "b2", "c3", "d4"), 2, 0, ""},
		{"12-byte vnet header", frames("b2", "c3"), withHdr(12, "a1", "b2", "c3"), 2, 12, ""},
		{"repeated first frame: the longest run wins", frames("arp", "x", "y"), frames("arp", "q", "arp", "x", "y"), 3, 0, ""},
		{"reordered", frames("a1", "b2", "c3"), frames("a1", "c3", "b2"), 1, 0, "captured frame 2"},
		{"changed byte", frames("a1", "b2"), frames("a1", "bX"), 1, 0, "first differing byte 1"},
		{"extra frame in the log", frames("a1", "b2"), frames("a1", "zz", "b2"), 1, 0, "differs from log packet 2"},
		{"lost at the end", frames("a1", "b2", "c3"), frames("a1", "b2"), 2, 0, "not in the log (it ends first)"},
		{"first frame missing", frames("q"), frames("a1"), 0, 0, "is not in the log"},
		{"empty capture", nil, frames("a1"), 0, 0, "no frame"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := compare(tc.captured, tc.log)
			if r.matched != tc.matched || r.hdr != tc.hdr {
				t.Errorf("matched %d hdr %d, want %d, %d (%v)", r.matched, r.hdr, tc.matched, tc.hdr, r)
			}
			if tc.failureContains == "" && r.failure != "" {
				t.Errorf("unexpected failure: %v", r)
			}
			if tc.failureContains != "" && !strings.Contains(r.failure, tc.failureContains) {
				t.Errorf("failure %q, want it to contain %q", r.failure, tc.failureContains)
			}
		})
	}
}
