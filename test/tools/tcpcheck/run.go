package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// deadlineMargin is added to -duration + -stall-limit for the deadline of
// the whole echo or stream connection.
const deadlineMargin = 5 * time.Second

// maxReported bounds the failures printed on stderr (all are counted).
const maxReported = 50

// tracker counts failures and measures stalls (time spent waiting for
// progress). Its Locked methods need mu held.
type tracker struct {
	mu         sync.Mutex
	cmd        string
	log        io.Writer
	start      time.Time
	stallLimit time.Duration

	failures int
	first    string

	waiting       bool      // progress is due
	waitStart     time.Time // since when (or the last progress)
	stallReported bool
	maxStall      time.Duration
	stalls        int
}

func newTracker(cmd string, log io.Writer, stallLimit time.Duration) *tracker {
	return &tracker{cmd: cmd, log: log, start: time.Now(), stallLimit: stallLimit}
}

func (t *tracker) at(now time.Time) string {
	return fmt.Sprintf("+%.3fs", now.Sub(t.start).Seconds())
}

func (t *tracker) failLocked(now time.Time, msg string) {
	t.failures++
	if t.failures == 1 {
		t.first = msg
	}
	switch {
	case t.failures <= maxReported:
		fmt.Fprintf(t.log, "tcpcheck %s: FAIL %s: %s\n", t.cmd, t.at(now), msg)
	case t.failures == maxReported+1:
		fmt.Fprintf(t.log, "tcpcheck %s: more failures, not reported one by one\n", t.cmd)
	}
}

func (t *tracker) fail(now time.Time, msg string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failLocked(now, msg)
}

// waitLocked notes that progress is due from now on (if it was not).
func (t *tracker) waitLocked(now time.Time) {
	if !t.waiting {
		t.waiting, t.waitStart, t.stallReported = true, now, false
	}
}

// progressLocked notes progress; more is due if stillWaiting.
func (t *tracker) progressLocked(now time.Time, stillWaiting bool) {
	if t.waiting {
		gap := now.Sub(t.waitStart)
		t.maxStall = max(t.maxStall, gap)
		if t.stallReported {
			fmt.Fprintf(t.log, "tcpcheck %s: %s: progress again after %v\n", t.cmd, t.at(now), gap.Round(time.Millisecond))
		}
	}
	t.waiting, t.waitStart, t.stallReported = stillWaiting, now, false
}

// checkStall reports a wait longer than the stall limit, once per stall.
func (t *tracker) checkStall(now time.Time, what func() string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.waiting && !t.stallReported && now.Sub(t.waitStart) > t.stallLimit {
		t.stallReported = true
		t.stalls++
		t.failLocked(now, fmt.Sprintf("stall: %s for %v (limit %v)", what(), now.Sub(t.waitStart).Round(time.Millisecond), t.stallLimit))
	}
}

// endLocked counts a wait still open at the end into the longest stall.
func (t *tracker) endLocked(now time.Time) {
	if t.waiting {
		t.maxStall = max(t.maxStall, now.Sub(t.waitStart))
	}
	t.waiting = false
}

func (t *tracker) summary() *summary {
	return &summary{cmd: t.cmd, failures: t.failures, first: t.first}
}

func stallCheckPeriod(limit time.Duration) time.Duration {
	return max(min(50*time.Millisecond, limit/4), time.Millisecond)
}

// open starts a subcommand: its tracker and its connection. A failed dial
// is recorded in the tracker and gives a nil connection.
func open(cmd string, c config, log io.Writer) (*tracker, *net.TCPConn) {
	t := newTracker(cmd, log, c.StallLimit)
	conn, err := dial(c)
	if err != nil {
		t.fail(time.Now(), err.Error())
		return t, nil
	}
	return t, conn
}

func dial(c config) (*net.TCPConn, error) {
	conn, err := net.DialTimeout("tcp", c.Addr, c.ConnectTimeout)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", c.Addr, err)
	}
	return conn.(*net.TCPConn), nil
}

// connError describes why a connection ended.
func connError(op string, err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF):
		return "connection closed by the guest (EOF) during " + op
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset during " + op
	case errors.Is(err, syscall.EPIPE):
		return "connection reset (broken pipe) during " + op
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "deadline exceeded during " + op
	}
	return fmt.Sprintf("%s: %v", op, err)
}

// waitAtEnd is the wait after -duration (or a stop) of echo and stream:
// until done reports true, polled every 10 ms at most, or the reader ends
// (readerDone), checking stalls (due) meanwhile; a failure (timeout's
// message) when limit passes first.
func (t *tracker) waitAtEnd(limit time.Duration, done func() bool, timeout, due func() string, readerDone <-chan struct{}) {
	end := time.Now().Add(limit)
	poll := time.NewTicker(min(10*time.Millisecond, stallCheckPeriod(limit)))
	defer poll.Stop()
	for !done() {
		now := time.Now()
		if now.After(end) {
			t.fail(now, timeout())
			return
		}
		t.checkStall(now, due)
		select {
		case <-poll.C:
		case <-readerDone:
			return
		}
	}
}

// runEcho is `tcpcheck echo`.
func runEcho(c config, log io.Writer) *summary {
	t, conn := open("echo", c, log)
	if conn == nil {
		return t.summary()
	}
	defer conn.Close()
	start := time.Now()
	t.start = start
	conn.SetDeadline(start.Add(c.Duration + c.StallLimit + deadlineMargin))

	v := NewEchoVerifier(c.Size)
	var (
		rtts      []time.Duration
		requests  uint64
		throttled uint64
		closing   atomic.Bool
	)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		buf := make([]byte, 64<<10)
		for {
			n, err := conn.Read(buf)
			now := time.Now()
			if n > 0 {
				t.mu.Lock()
				pr := v.Feed(buf[:n], now)
				rtts = append(rtts, pr.RTTs...)
				for _, f := range pr.Failures {
					t.failLocked(now, f)
				}
				if pr.Lines > 0 {
					t.progressLocked(now, v.Outstanding() > 0)
				}
				t.mu.Unlock()
			}
			if err != nil {
				if !closing.Load() {
					t.fail(now, connError("echo", err))
				}
				return
			}
		}
	}()

	var seq uint64
	send := func() bool {
		line := EncodeRequest(seq, c.Size)
		now := time.Now()
		t.mu.Lock()
		if v.Outstanding() >= c.MaxOutstanding {
			throttled++
			t.mu.Unlock()
			return true
		}
		t.waitLocked(now)
		v.Sent(seq, line, now)
		seq++
		requests++
		t.mu.Unlock()
		if _, err := conn.Write(line); err != nil {
			t.fail(time.Now(), connError("send", err))
			return false
		}
		return true
	}
	outstanding := func() string {
		return fmt.Sprintf("no reply with %d requests outstanding", v.Outstanding())
	}

	end := time.NewTimer(c.Duration)
	defer end.Stop()
	tick := time.NewTicker(c.Interval)
	defer tick.Stop()
	check := time.NewTicker(stallCheckPeriod(c.StallLimit))
	defer check.Stop()
	alive := send()
sending:
	for alive {
		select {
		case <-tick.C:
			alive = send()
		case <-check.C:
			t.checkStall(time.Now(), outstanding)
		case <-readerDone:
			alive = false
		case <-end.C:
			break sending
		case <-c.stop:
			break sending
		}
	}
	// Wait up to the stall limit for the outstanding replies.
	if alive {
		left := func() int {
			t.mu.Lock()
			defer t.mu.Unlock()
			return v.Outstanding()
		}
		t.waitAtEnd(c.StallLimit, func() bool { return left() == 0 }, func() string {
			return fmt.Sprintf("%d requests unanswered %v after the last one was due", left(), c.StallLimit)
		}, outstanding, readerDone)
	}
	// Half-close: the echo service sees EOF and closes; anything it still
	// sends (a late duplicate) is checked until then.
	closing.Store(true)
	conn.CloseWrite()
	select {
	case <-readerDone:
	case <-time.After(time.Second):
	}
	conn.Close()
	<-readerDone

	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.endLocked(now)
	for _, f := range v.Finish() {
		t.failLocked(now, f)
	}
	st := Summarise(rtts)
	s := t.summary()
	s.add("addr", c.Addr)
	s.add("elapsed_s", now.Sub(start))
	s.add("requests", requests)
	s.add("verified", v.Verified())
	s.add("outstanding", v.Outstanding())
	s.add("throttled", throttled)
	s.add("max_stall_ms", t.maxStall.Milliseconds())
	s.add("stalls", t.stalls)
	s.add("rtt_median_ms", ms(st.Median))
	s.add("rtt_p99_ms", ms(st.P99))
	s.add("rtt_max_ms", ms(st.Max))
	return s
}

// runStream is `tcpcheck stream`.
func runStream(c config, log io.Writer) *summary {
	t, conn := open("stream", c, log)
	if conn == nil {
		return t.summary()
	}
	defer conn.Close()
	start := time.Now()
	t.start = start
	conn.SetDeadline(start.Add(c.Duration + c.StallLimit + deadlineMargin))
	t.mu.Lock()
	t.waitLocked(start)
	t.mu.Unlock()

	var sc StreamChecker
	var closing atomic.Bool
	// lineReadFrom: when the last read that gave complete lines began
	// (guarded by t.mu): the end waits for a line from a read begun after
	// it, which holds everything sent before the end.
	var lineReadFrom time.Time
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		buf := make([]byte, 64<<10)
		for {
			began := time.Now()
			n, err := conn.Read(buf)
			now := time.Now()
			if n > 0 {
				t.mu.Lock()
				pr := sc.Feed(buf[:n])
				for _, f := range pr.Failures {
					t.failLocked(now, f)
				}
				if pr.Lines > 0 {
					t.progressLocked(now, true)
					lineReadFrom = began
				}
				t.mu.Unlock()
			}
			if err != nil {
				if !closing.Load() {
					t.fail(now, connError("stream", err))
				}
				return
			}
		}
	}()

	end := time.NewTimer(c.Duration)
	defer end.Stop()
	check := time.NewTicker(stallCheckPeriod(c.StallLimit))
	defer check.Stop()
	noLine := func() string { return "no complete line" }
	alive := true
reading:
	for {
		select {
		case <-check.C:
			t.checkStall(time.Now(), noLine)
		case <-readerDone:
			alive = false
			break reading
		case <-end.C:
			break reading
		case <-c.stop:
			break reading
		}
	}
	// The connection must still be alive at the end: one more line, from
	// a read begun after the end, within the stall limit (a stall under
	// way when the time is up would otherwise pass unreported), as echo
	// waits for its replies. A read begun before the end and counted
	// after it does not do: it may hold only lines from long before.
	t.mu.Lock()
	stalled := t.waiting && t.stallReported // failing already
	t.mu.Unlock()
	if alive && !stalled {
		ended := time.Now()
		t.waitAtEnd(c.StallLimit, func() bool {
			t.mu.Lock()
			defer t.mu.Unlock()
			return lineReadFrom.After(ended)
		}, func() string {
			return fmt.Sprintf("no complete line in the %v after the end", c.StallLimit)
		}, noLine, readerDone)
	}
	closing.Store(true)
	conn.Close()
	<-readerDone

	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.endLocked(now)
	for _, f := range sc.Finish() {
		t.failLocked(now, f)
	}
	if sc.Lines() == 0 {
		t.failLocked(now, "no counter line received")
	}
	s := t.summary()
	s.add("addr", c.Addr)
	s.add("elapsed_s", now.Sub(start))
	s.add("lines", sc.Lines())
	if first, last, ok := sc.Range(); ok {
		s.add("first", first)
		s.add("last", last)
	}
	s.add("bytes", sc.Bytes())
	s.add("max_stall_ms", t.maxStall.Milliseconds())
	s.add("stalls", t.stalls)
	return s
}

// runRTT is `tcpcheck rtt`.
func runRTT(c config, log io.Writer) *summary {
	t, conn := open("rtt", c, log)
	if conn == nil {
		return t.summary()
	}
	defer conn.Close()
	t.start = time.Now()
	rtts := make([]time.Duration, 0, c.Count)
	reply := make([]byte, c.Size+requestOverhead)
	for i := range c.Count {
		line := EncodeRequest(uint64(i), c.Size)
		t0 := time.Now()
		conn.SetDeadline(t0.Add(c.StallLimit))
		if _, err := conn.Write(line); err != nil {
			t.fail(time.Now(), connError(fmt.Sprintf("send of round trip %d", i), err))
			break
		}
		got := reply[:len(line)]
		if _, err := io.ReadFull(conn, got); err != nil {
			t.fail(time.Now(), connError(fmt.Sprintf("round trip %d", i), err))
			break
		}
		rtt := time.Since(t0)
		if string(got) != string(line) {
			msg := "reply differs from the request"
			if r, err := ParseRequest(got); err != nil {
				msg = "corrupted reply: " + err.Error()
			} else if r.Seq != uint64(i) {
				msg = fmt.Sprintf("reply for seq %d (lost, duplicated or reordered)", r.Seq)
			}
			t.fail(time.Now(), fmt.Sprintf("round trip %d: %s", i, msg))
			break
		}
		rtts = append(rtts, rtt)
	}
	if t.failures == 0 {
		// Nothing more may come: half-close and expect a clean EOF.
		conn.CloseWrite()
		conn.SetReadDeadline(time.Now().Add(c.StallLimit))
		n, err := io.Copy(io.Discard, conn)
		switch {
		case n > 0:
			t.fail(time.Now(), fmt.Sprintf("%d unexpected bytes after the last reply", n))
		case err != nil:
			t.fail(time.Now(), connError("close", err))
		}
	}
	st := Summarise(rtts)
	s := t.summary()
	s.add("addr", c.Addr)
	s.add("count", st.N)
	s.add("size", c.Size)
	s.add("min_us", st.Min.Microseconds())
	s.add("median_us", st.Median.Microseconds())
	s.add("p90_us", st.P90.Microseconds())
	s.add("p99_us", st.P99.Microseconds())
	s.add("max_us", st.Max.Microseconds())
	s.add("mean_us", st.Mean.Microseconds())
	return s
}

// bulkChunk is the size of one write or read.
const bulkChunk = 64 << 10

// runBulk is `tcpcheck bulk`.
func runBulk(c config, log io.Writer) *summary {
	t := newTracker("bulk", log, c.StallLimit)
	// s summarises: n bytes transferred, of which timed were transferred
	// in elapsed.
	s := func(n, timed int64, elapsed time.Duration) *summary {
		s := t.summary()
		s.add("addr", c.Addr)
		s.add("mode", c.Mode)
		s.add("bytes", n)
		s.add("elapsed_s", elapsed)
		rate := 0.0
		if elapsed > 0 && t.failures == 0 {
			rate = float64(timed) / 1e6 / elapsed.Seconds()
		}
		s.add("mb_per_s", rate)
		s.add("mbit_per_s", rate*8)
		return s
	}
	conn, err := dial(c)
	if err != nil {
		t.fail(time.Now(), err.Error())
		return s(0, 0, 0)
	}
	defer conn.Close()
	t.start = time.Now()
	overall := t.start.Add(c.Timeout)
	stepDeadline := func() time.Time {
		d := time.Now().Add(c.StallLimit)
		if d.After(overall) {
			return overall
		}
		return d
	}
	buf := make([]byte, bulkChunk)

	if c.Mode == "rx" {
		for i := range buf {
			buf[i] = byte('a' + i%26)
		}
		// -fill random: every chunk fresh from ChaCha8 (about 1 GB/s of
		// one core here), so that no window of a compressor finds a
		// repeat; the pattern compresses to nothing.
		var rnd *rand.ChaCha8
		if c.Fill == "random" {
			var seed [32]byte
			binary.LittleEndian.PutUint64(seed[:], uint64(time.Now().UnixNano()))
			rnd = rand.NewChaCha8(seed)
		}
		start := time.Now()
		var sent int64
		for sent < c.Bytes {
			n := int(min(int64(len(buf)), c.Bytes-sent))
			if rnd != nil {
				_, _ = rnd.Read(buf[:n])
			}
			conn.SetWriteDeadline(stepDeadline())
			w, err := conn.Write(buf[:n])
			sent += int64(w)
			if err != nil {
				t.fail(time.Now(), connError(fmt.Sprintf("send after %d bytes", sent), err))
				return s(sent, sent, time.Since(start))
			}
		}
		// The sink closes when it has read everything and seen EOF. The
		// data still in flight may take long to drain: only -timeout
		// bounds this wait.
		conn.CloseWrite()
		conn.SetReadDeadline(overall)
		n, err := io.Copy(io.Discard, conn)
		elapsed := time.Since(start)
		switch {
		case err != nil:
			t.fail(time.Now(), connError("wait for the guest's close", err))
		case n > 0:
			t.fail(time.Now(), fmt.Sprintf("the sink sent %d bytes", n))
		}
		return s(sent, sent, elapsed)
	}

	var got, counted, nonzero int64
	var first time.Time
	firstBad := int64(-1)
	for got < c.Bytes {
		conn.SetReadDeadline(stepDeadline())
		n, err := conn.Read(buf[:min(int64(len(buf)), c.Bytes-got)])
		if n > 0 {
			now := time.Now()
			if first.IsZero() {
				first = now
			} else {
				counted += int64(n)
			}
			for i, b := range buf[:n] {
				if b != 0 {
					if firstBad < 0 {
						firstBad = got + int64(i)
					}
					nonzero++
				}
			}
			got += int64(n)
		}
		if err != nil && got < c.Bytes {
			t.fail(time.Now(), connError(fmt.Sprintf("receive after %d bytes", got), err))
			break
		}
	}
	var elapsed time.Duration
	if !first.IsZero() {
		elapsed = time.Since(first)
	}
	if got > 0 && counted == 0 {
		fmt.Fprintf(log, "tcpcheck bulk: all %d bytes came in the first read: too few to time (mb_per_s=0); use a larger -bytes\n", got)
	}
	if nonzero > 0 {
		t.fail(time.Now(), fmt.Sprintf("%d non-zero bytes from the source, the first at offset %d", nonzero, firstBad))
	}
	return s(got, counted, elapsed)
}
