package logchan

import (
	"strings"
	"unicode"
)

// MaxPeerErrorBytes bounds the error text of a peer's ControlReply or
// HelloReply kept for this host's logs and virt-ft output (bytes).
const MaxPeerErrorBytes = 1024

// CleanText makes text a peer sent fit for a status line or a log line:
// it is cut to at most max bytes (a rune cut in two becomes "?"), and
// control characters (C0, DEL and C1: Unicode category Cc), format
// characters (Cf: bidi overrides and isolates U+202A–U+202E and
// U+2066–U+2069, zero-width marks) and the line and paragraph separators
// U+2028 and U+2029 become spaces. So no terminal escape, reordering or
// line break of the peer's reaches virt-ft's output or the journal. The
// result is valid UTF-8 and never longer than max bytes.
func CleanText(text string, max int) string {
	if max < 0 {
		max = 0
	}
	if len(text) > max {
		text = text[:max]
	}
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(text, "?"))
}
