package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"slices"
	"strconv"
	"time"
)

// Echo requests are single lines that carry their own sequence number and
// checksum, so that a reply can be both compared byte for byte with what
// was sent and diagnosed on its own when it differs:
//
//	<seq> <len> <crc> <payload>\n
//
// seq and len are decimal, crc is 8 lower-case hex digits: CRC-32 (IEEE)
// of seq as 8 big-endian bytes followed by the payload. The payload is len
// bytes from the base64url alphabet, derived from seq (so that no two
// requests are alike).

// MaxSize is the largest payload -size accepts.
const MaxSize = 1 << 16

// requestOverhead bounds the bytes of a request line besides its payload.
const requestOverhead = 20 + 1 + 5 + 1 + 8 + 1 + 1

const payloadAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

func requestCRC(seq uint64, payload []byte) uint32 {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seq)
	return crc32.Update(crc32.ChecksumIEEE(b[:]), crc32.IEEETable, payload)
}

// EncodeRequest returns the request line for seq with a size-byte payload.
func EncodeRequest(seq uint64, size int) []byte {
	payload := make([]byte, size)
	x := seq*0x9e3779b97f4a7c15 + 1
	for i := range payload {
		// splitmix64
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		z ^= z >> 31
		payload[i] = payloadAlphabet[z&63]
	}
	line := make([]byte, 0, size+requestOverhead)
	line = strconv.AppendUint(line, seq, 10)
	line = append(line, ' ')
	line = strconv.AppendInt(line, int64(size), 10)
	line = append(line, ' ')
	line = fmt.Appendf(line, "%08x", requestCRC(seq, payload))
	line = append(line, ' ')
	line = append(line, payload...)
	return append(line, '\n')
}

// Request is a parsed request line.
type Request struct {
	Seq     uint64
	CRC     uint32
	Payload []byte
}

// ParseRequest parses and checks one request line (with or without its
// trailing newline): the fields, the length and the checksum.
func ParseRequest(line []byte) (Request, error) {
	line = bytes.TrimSuffix(line, []byte("\n"))
	f := bytes.SplitN(line, []byte(" "), 4)
	if len(f) != 4 {
		return Request{}, errors.New("not a request line (want 4 fields)")
	}
	seq, err := parseDecimal(f[0])
	if err != nil {
		return Request{}, fmt.Errorf("seq: %w", err)
	}
	n, err := parseDecimal(f[1])
	if err != nil {
		return Request{}, fmt.Errorf("len: %w", err)
	}
	if n != uint64(len(f[3])) {
		return Request{}, fmt.Errorf("seq %d: payload has %d bytes, header says %d", seq, len(f[3]), n)
	}
	if len(f[2]) != 8 {
		return Request{}, fmt.Errorf("seq %d: checksum field %q", seq, f[2])
	}
	crc, err := strconv.ParseUint(string(f[2]), 16, 32)
	if err != nil || fmt.Sprintf("%08x", crc) != string(f[2]) {
		return Request{}, fmt.Errorf("seq %d: checksum field %q", seq, f[2])
	}
	if got := requestCRC(seq, f[3]); got != uint32(crc) {
		return Request{}, fmt.Errorf("seq %d: checksum mismatch (line says %08x, payload gives %08x)", seq, crc, got)
	}
	return Request{Seq: seq, CRC: uint32(crc), Payload: f[3]}, nil
}

// parseDecimal accepts only the canonical decimal form of a uint64: digits,
// no sign, no leading zero (except "0" itself).
func parseDecimal(b []byte) (uint64, error) {
	if len(b) == 0 {
		return 0, errors.New("empty number")
	}
	if len(b) > 1 && b[0] == '0' {
		return 0, fmt.Errorf("leading zero in %q", b)
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("not a decimal number: %q", quoteShort(b))
		}
		d := uint64(c - '0')
		if n > (math.MaxUint64-d)/10 {
			return 0, fmt.Errorf("number too large: %q", quoteShort(b))
		}
		n = n*10 + d
	}
	return n, nil
}

// quoteShort trims b for an error message.
func quoteShort(b []byte) string {
	const max = 40
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}

type pendingRequest struct {
	seq  uint64
	line []byte
	sent time.Time
}

// EchoVerifier checks the reply stream of an echo connection against the
// requests sent on it. Every reply line must equal the oldest outstanding
// request byte for byte. When one does not, the reply is parsed to say what
// went wrong (lost, duplicated, reordered or corrupted) and the verifier
// resynchronises on it, so that one fault counts as one failure.
// Not safe for concurrent use.
type EchoVerifier struct {
	pending  []pendingRequest // in sequence order, contiguous seqs
	buf      []byte           // received bytes of an incomplete line
	maxLine  int
	sent     bool
	lastSent uint64
	verified uint64
}

// NewEchoVerifier returns a verifier for requests with payloads of at most
// size bytes.
func NewEchoVerifier(size int) *EchoVerifier {
	return &EchoVerifier{maxLine: size + requestOverhead}
}

// Sent records a request (seq must be the previous one plus 1) before it
// is written.
func (v *EchoVerifier) Sent(seq uint64, line []byte, at time.Time) {
	v.pending = append(v.pending, pendingRequest{seq: seq, line: line, sent: at})
	v.sent, v.lastSent = true, seq
}

// Outstanding is the number of requests not yet answered.
func (v *EchoVerifier) Outstanding() int { return len(v.pending) }

// Verified is the number of replies that matched their request.
func (v *EchoVerifier) Verified() uint64 { return v.verified }

// EchoProgress is what one Feed found.
type EchoProgress struct {
	Lines    int             // complete reply lines consumed
	RTTs     []time.Duration // of the verified ones
	Failures []string
}

// Feed takes received bytes (in any pieces) and checks every complete line.
func (v *EchoVerifier) Feed(p []byte, at time.Time) EchoProgress {
	var pr EchoProgress
	v.buf = append(v.buf, p...)
	start := 0
	for {
		i := bytes.IndexByte(v.buf[start:], '\n')
		if i < 0 {
			break
		}
		line := v.buf[start : start+i+1]
		start += i + 1
		pr.Lines++
		v.checkLine(line, at, &pr)
	}
	v.buf = append(v.buf[:0], v.buf[start:]...)
	if len(v.buf) > v.maxLine {
		pr.Failures = append(pr.Failures, fmt.Sprintf("garbage: %d bytes without a newline (%q)", len(v.buf), quoteShort(v.buf)))
		v.buf = v.buf[:0]
		v.popHead()
	}
	return pr
}

func (v *EchoVerifier) popHead() {
	if len(v.pending) > 0 {
		v.pending[0] = pendingRequest{}
		v.pending = v.pending[1:]
	}
}

func (v *EchoVerifier) checkLine(line []byte, at time.Time, pr *EchoProgress) {
	fail := func(format string, args ...any) {
		pr.Failures = append(pr.Failures, fmt.Sprintf(format, args...))
	}
	if len(v.pending) == 0 {
		if r, err := ParseRequest(line); err == nil && v.sent && r.Seq <= v.lastSent {
			fail("duplicated or reordered reply: seq %d again or late (no reply due)", r.Seq)
		} else {
			fail("unexpected reply with no request outstanding: %q", quoteShort(line))
		}
		return
	}
	head := v.pending[0]
	if bytes.Equal(line, head.line) {
		v.verified++
		pr.RTTs = append(pr.RTTs, at.Sub(head.sent))
		v.popHead()
		return
	}
	r, err := ParseRequest(line)
	switch {
	case err != nil:
		fail("corrupted reply where seq %d was due: %v", head.seq, err)
		v.popHead()
	case r.Seq < head.seq:
		fail("duplicated or reordered reply: seq %d again or late (seq %d due)", r.Seq, head.seq)
	case !v.sent || r.Seq > v.lastSent:
		fail("reply for seq %d that was never sent (seq %d due)", r.Seq, head.seq)
	case r.Seq > head.seq:
		fail("lost or reordered replies: seq %d..%d missing, seq %d arrived", head.seq, r.Seq-1, r.Seq)
		for len(v.pending) > 0 && v.pending[0].seq < r.Seq {
			v.popHead()
		}
		v.checkLine(line, at, pr)
	default:
		fail("corrupted reply for seq %d: differs from the request", r.Seq)
		v.popHead()
	}
}

// Finish reports an incomplete reply line left at the end, if any.
func (v *EchoVerifier) Finish() []string {
	if len(v.buf) > 0 {
		return []string{fmt.Sprintf("incomplete reply at the end: %d bytes %q", len(v.buf), quoteShort(v.buf))}
	}
	return nil
}

// maxCounterLine bounds a counter line: 20 digits of a uint64 and "\n".
const maxCounterLine = 21

// StreamChecker checks the guest's counter stream: decimal numbers, one per
// line ("\n"), each the previous plus 1; the first may be any number. On a
// fault it resynchronises so that one fault counts as one failure.
// Not safe for concurrent use.
type StreamChecker struct {
	buf    []byte
	have   bool // prev is valid
	resync bool // accept the next number as a new base (after garbage)
	prev   uint64
	first  uint64
	lines  uint64
	bytes  uint64
}

// StreamProgress is what one Feed found.
type StreamProgress struct {
	Lines    int // complete lines consumed
	Failures []string
}

// Feed takes received bytes (in any pieces) and checks every complete line.
func (c *StreamChecker) Feed(p []byte) StreamProgress {
	var pr StreamProgress
	c.bytes += uint64(len(p))
	c.buf = append(c.buf, p...)
	start := 0
	for {
		i := bytes.IndexByte(c.buf[start:], '\n')
		if i < 0 {
			break
		}
		line := c.buf[start : start+i]
		start += i + 1
		pr.Lines++
		if f := c.checkLine(line); f != "" {
			pr.Failures = append(pr.Failures, f)
		}
	}
	c.buf = append(c.buf[:0], c.buf[start:]...)
	if len(c.buf) >= maxCounterLine {
		pr.Failures = append(pr.Failures, fmt.Sprintf("garbage: %d bytes without a newline after %s: %q", len(c.buf), c.after(), quoteShort(c.buf)))
		c.buf = c.buf[:0]
		c.resync = true
	}
	return pr
}

func (c *StreamChecker) after() string {
	if !c.have {
		return "the start"
	}
	return strconv.FormatUint(c.prev, 10)
}

func (c *StreamChecker) checkLine(line []byte) string {
	n, err := parseDecimal(line)
	if err != nil {
		f := fmt.Sprintf("garbage line after %s: %v", c.after(), err)
		c.resync = true
		return f
	}
	c.lines++
	if !c.have || c.resync {
		if !c.have {
			c.first = n
		}
		c.have, c.resync, c.prev = true, false, n
		return ""
	}
	switch {
	case n == c.prev+1:
		c.prev = n
		return ""
	case n <= c.prev:
		return fmt.Sprintf("duplicated or reordered line: %d after %d", n, c.prev)
	default:
		f := fmt.Sprintf("lost lines: %d..%d missing (%d after %d)", c.prev+1, n-1, n, c.prev)
		c.prev = n
		return f
	}
}

// Finish checks the incomplete line left when the stream is cut: it must
// be the beginning of the next number.
func (c *StreamChecker) Finish() []string {
	if len(c.buf) == 0 {
		return nil
	}
	if c.have && !c.resync {
		if want := strconv.FormatUint(c.prev+1, 10); !bytes.HasPrefix([]byte(want), c.buf) {
			return []string{fmt.Sprintf("incomplete last line %q is not the start of %s", quoteShort(c.buf), want)}
		}
		return nil
	}
	for _, b := range c.buf {
		if b < '0' || b > '9' {
			return []string{fmt.Sprintf("incomplete last line %q is not a number", quoteShort(c.buf))}
		}
	}
	return nil
}

// Lines is the number of valid number lines seen.
func (c *StreamChecker) Lines() uint64 { return c.lines }

// Bytes is the number of bytes fed.
func (c *StreamChecker) Bytes() uint64 { return c.bytes }

// Range returns the first and last number seen (ok false before any).
func (c *StreamChecker) Range() (first, last uint64, ok bool) {
	return c.first, c.prev, c.have
}

// Percentile returns the p-th percentile (0 < p <= 100) of sorted by the
// nearest-rank method: the smallest value with at least p% of the values at
// or below it. Zero for an empty slice.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Stats summarises a set of durations.
type Stats struct {
	N                                int
	Min, Median, P90, P99, Max, Mean time.Duration
}

// Summarise computes Stats of d (which it sorts).
func Summarise(d []time.Duration) Stats {
	if len(d) == 0 {
		return Stats{}
	}
	slices.Sort(d)
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return Stats{
		N:      len(d),
		Min:    d[0],
		Median: Percentile(d, 50),
		P90:    Percentile(d, 90),
		P99:    Percentile(d, 99),
		Max:    d[len(d)-1],
		Mean:   sum / time.Duration(len(d)),
	}
}
