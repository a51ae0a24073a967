package plugin

import (
	"testing"
	"unicode/utf8"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// The define-time refusal (ftxml.PeerSafe) and the backup's refusal of a
// peer's text (logchan.ControlRequest.Check, which refuses what
// logchan.CleanText would change) must agree on every character: a domain
// one accepts and the other refuses fails at its first start.
func TestPeerSafeMatchesCleanText(t *testing.T) {
	for r := rune(0); r <= utf8.MaxRune; r++ {
		if !utf8.ValidRune(r) {
			continue
		}
		s := "a" + string(r) + "b"
		if got, want := ftxml.PeerSafe(s), logchan.CleanText(s, len(s)) == s; got != want {
			t.Fatalf("U+%04X: ftxml.PeerSafe %v, logchan.CleanText keeps it %v", r, got, want)
		}
	}
	for _, s := range []string{"\xff", "a\xc3", "ok"} {
		if got, want := ftxml.PeerSafe(s), logchan.CleanText(s, len(s)) == s; got != want {
			t.Errorf("%q: ftxml.PeerSafe %v, logchan.CleanText keeps it %v", s, got, want)
		}
	}
}

// The define-time length bounds equal the backup's (ControlRequest.Check).
func TestPeerBoundsMatchLogchan(t *testing.T) {
	if ftxml.MaxPeerNameBytes != logchan.MaxFieldBytes || ftxml.MaxPeerPathBytes != logchan.MaxPathBytes {
		t.Fatalf("ftxml bounds name %d, path %d; logchan's %d, %d", ftxml.MaxPeerNameBytes, ftxml.MaxPeerPathBytes, logchan.MaxFieldBytes, logchan.MaxPathBytes)
	}
}
