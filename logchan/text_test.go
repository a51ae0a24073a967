package logchan

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCleanText(t *testing.T) {
	for _, c := range []struct {
		in   string
		max  int
		want string
	}{
		{"refused\x1b[31m\nby\tpeer", 100, "refused [31m by peer"},
		{"stalled\x1b[31m at\nicount 5", 100, "stalled [31m at icount 5"},
		{"abcdef", 3, "abc"},
		{"a\u009b31mb\u202egnp.exe\u2066c\u200dd", 100, "a 31mb gnp.exe c d"},
		{"a\u009b31mb", 100, "a 31mb"},                 // C1: a one-character CSI
		{"x\u202egnp\u2066y\u200dz", 100, "x gnp y z"}, // bidi override, isolate, ZWJ
		{"line\u2028break\u2029para", 100, "line break para"},
		{"ab\u00e9", 3, "ab?"}, // a rune cut in two
		{"abc", 0, ""},
		{"abc", -1, ""},
	} {
		if got := CleanText(c.in, c.max); got != c.want {
			t.Errorf("CleanText(%q, %d) = %q; want %q", c.in, c.max, got, c.want)
		}
	}
	// Never longer than max, always valid UTF-8, whatever the input.
	in := strings.Repeat("é\x00\u202e\xff", 300)
	for max := 0; max < 50; max++ {
		got := CleanText(in, max)
		if len(got) > max || !utf8.ValidString(got) {
			t.Fatalf("CleanText(..., %d) = %q (%d bytes)", max, got, len(got))
		}
	}
}
