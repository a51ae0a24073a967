// Command tcpcheck drives and verifies TCP traffic to the libvirt-ft test
// guest (test/guest/rootfs): continuity checks for end-to-end tests in which
// the guest fails over while clients stay connected, and measurements for
// benchmarks.
//
//	tcpcheck echo   -addr HOST:PORT -duration D [-interval 20ms] [-size 64] [-max-outstanding 64] [-stall-limit 4s]
//	tcpcheck stream -addr HOST:PORT -duration D [-stall-limit 4s]
//	tcpcheck rtt    -addr HOST:PORT -count N [-size 64] [-stall-limit 4s]
//	tcpcheck bulk   -addr HOST:PORT -mode rx|tx -bytes N [-fill pattern|random] [-stall-limit 4s] [-timeout 2m]
//
// All take -connect-timeout (default 5s). Each prints one summary line of
// key=value fields on stdout (first_failure last, quoted) and reports each
// failure on stderr when it happens. Exit status: 0 when everything
// verified, 1 on any failure, 2 on a usage error. Run `tcpcheck help` for
// what each subcommand checks and measures.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const usageText = `usage: tcpcheck COMMAND -addr HOST:PORT [flags]

Commands (guest ports: 7001 counter stream, 7002 echo, 7004 sink, 7005 source):

  echo    -addr HOST:PORT -duration D [-interval 20ms] [-size 64] [-stop-file F]
          [-max-outstanding 64] [-stall-limit 4s]
      One connection to a byte echo service. Every -interval it sends a
      request line "<seq> <len> <crc32> <payload>\n" (payload of -size
      bytes), pipelined: it does not wait for replies, but holds back while
      -max-outstanding requests are unanswered. Every reply byte must equal
      the request bytes in order; a lost, duplicated, reordered or corrupted
      reply, an EOF or reset, or more than -stall-limit without a reply
      while requests are outstanding is a failure. After -duration it waits
      up to -stall-limit for the outstanding replies. SIGUSR1, or the file
      -stop-file names appearing, ends the sending early, as -duration does
      (a test that is done sooner).

  stream  -addr HOST:PORT -duration D [-stall-limit 4s] [-stop-file F]
      Reads a counter stream (decimal numbers, one per line, each the
      previous plus 1; the first may be any number) for -duration. A lost,
      duplicated or reordered line, any other byte, an EOF or reset, or more
      than -stall-limit without a complete line is a failure. SIGUSR1 or
      -stop-file ends the reading early, as -duration does; either way it
      then waits up to -stall-limit for one more line (the connection must
      be alive at the end).

  rtt     -addr HOST:PORT -count N [-size 64] [-stall-limit 4s]
      N sequential round trips (one request line of -size payload bytes,
      wait for its whole echo) on one connection to an echo service; prints
      min, median, p90, p99 (nearest rank), max and mean in µs. Each reply is
      verified; a round trip longer than -stall-limit is a failure.

  bulk    -addr HOST:PORT -mode rx|tx -bytes N [-fill pattern|random] [-stall-limit 4s] [-timeout 2m]
      Throughput in MB/s (10^6 bytes/s) on one connection.
      rx (guest receives; sink service): sends N bytes, then half-closes
         and waits for the guest to close; measured from the first byte
         written to the guest's close (so all N bytes reached the guest's
         application, plus about one round trip).
      tx (guest transmits; source service): reads N bytes, which must all
         be zero; measured from the arrival of the first byte to that of the
         Nth (the first read's bytes are not counted).
      A write or read that makes no progress for -stall-limit, or a run
      longer than -timeout, is a failure.

Common flags: -connect-timeout 5s. No command runs forever: echo and stream
stop at -duration + -stall-limit + 5s, rtt after -stall-limit per round
trip, bulk after -timeout.

Output: one line "tcpcheck COMMAND key=value ..." on stdout with
result=pass|fail, failures=N and first_failure="..." last; failures are
also reported on stderr as they happen (and the end of a stall). Exit
status 0 when everything verified, 1 on a failure, 2 on a usage error.
max_stall_ms (echo, stream) is the longest wait for progress: for a reply
while requests were outstanding (echo), for a complete line (stream).
`

func main() {
	stop := make(chan struct{})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	go func() { <-sig; close(stop) }()
	stopEarly = stop
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// stopEarly ends echo and stream before -duration once closed (main:
// SIGUSR1); nil: never.
var stopEarly <-chan struct{}

// errUsage marks a usage error that has been reported already.
var errUsage = errors.New("usage")

// run runs one command line and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return 2
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usageText)
		return 0
	case "echo", "stream", "rtt", "bulk":
	default:
		fmt.Fprintf(stderr, "tcpcheck: unknown command %q\n\n%s", args[0], usageText)
		return 2
	}
	cmd, rest := args[0], args[1:]
	fs := flag.NewFlagSet("tcpcheck "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage of tcpcheck %s (see tcpcheck help):\n", cmd)
		fs.PrintDefaults()
	}
	c := config{stop: stopEarly}
	var stopFile string
	fs.StringVar(&c.Addr, "addr", "", "guest service `HOST:PORT` (required)")
	fs.DurationVar(&c.ConnectTimeout, "connect-timeout", 5*time.Second, "TCP connect timeout")
	fs.DurationVar(&c.StallLimit, "stall-limit", 4*time.Second, "longest wait without progress before a failure is reported")
	switch cmd {
	case "echo":
		fs.DurationVar(&c.Duration, "duration", 0, "how long to send requests (required)")
		fs.DurationVar(&c.Interval, "interval", 20*time.Millisecond, "time between requests")
		fs.IntVar(&c.Size, "size", 64, "payload bytes per request")
		fs.IntVar(&c.MaxOutstanding, "max-outstanding", 64, "most unanswered requests before sending holds back")
	case "stream":
		fs.DurationVar(&c.Duration, "duration", 0, "how long to read (required)")
	}
	if cmd == "echo" || cmd == "stream" {
		fs.StringVar(&stopFile, "stop-file", "", "end early, as -duration does, once this `file` exists (checked every 100 ms)")
	}
	switch cmd {
	case "rtt":
		fs.IntVar(&c.Count, "count", 0, "round trips (required)")
		fs.IntVar(&c.Size, "size", 64, "payload bytes per request")
	case "bulk":
		fs.StringVar(&c.Mode, "mode", "", "rx (client sends to the guest's sink) or tx (client reads the guest's source) (required)")
		fs.Int64Var(&c.Bytes, "bytes", 0, "bytes to transfer (required)")
		fs.StringVar(&c.Fill, "fill", "pattern", "rx only: what the client sends, pattern (a repeated a-z, compresses to nothing) or random (a fresh pseudo-random stream, incompressible)")
		fs.DurationVar(&c.Timeout, "timeout", 2*time.Minute, "longest the whole transfer may take")
	}
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "tcpcheck %s: unexpected argument %q\n", cmd, fs.Arg(0))
		fs.Usage()
		return 2
	}
	if err := c.validate(cmd); err != nil {
		fmt.Fprintf(stderr, "tcpcheck %s: %v\n", cmd, err)
		fs.Usage()
		return 2
	}
	if stopFile != "" {
		c.stop = stopOnFile(stopFile, c.stop)
	}
	var s *summary
	switch cmd {
	case "echo":
		s = runEcho(c, stderr)
	case "stream":
		s = runStream(c, stderr)
	case "rtt":
		s = runRTT(c, stderr)
	case "bulk":
		s = runBulk(c, stderr)
	}
	fmt.Fprintln(stdout, s.String())
	if s.failures > 0 {
		return 1
	}
	return 0
}

// config holds the flags of all commands.
type config struct {
	Addr           string
	ConnectTimeout time.Duration
	StallLimit     time.Duration
	Duration       time.Duration
	Interval       time.Duration
	Size           int
	MaxOutstanding int
	Count          int
	Mode           string
	Bytes          int64
	Fill           string
	Timeout        time.Duration
	// stop, when closed, ends echo and stream as -duration does
	// (SIGUSR1; nil: never).
	stop <-chan struct{}
}

func (c *config) validate(cmd string) error {
	if c.Addr == "" {
		return errors.New("-addr HOST:PORT is required")
	}
	host, port, err := net.SplitHostPort(c.Addr)
	if err != nil {
		return fmt.Errorf("-addr %q: %v", c.Addr, err)
	}
	if p, err := strconv.ParseUint(port, 10, 16); host == "" || err != nil || p == 0 {
		return fmt.Errorf("-addr %q: want HOST:PORT with a numeric port", c.Addr)
	}
	if c.ConnectTimeout <= 0 {
		return errors.New("-connect-timeout must be > 0")
	}
	if c.StallLimit <= 0 {
		return errors.New("-stall-limit must be > 0")
	}
	switch cmd {
	case "echo", "stream":
		if c.Duration <= 0 {
			return errors.New("-duration is required and must be > 0")
		}
	}
	switch cmd {
	case "echo":
		if c.Interval <= 0 {
			return errors.New("-interval must be > 0")
		}
		if c.MaxOutstanding < 1 {
			return errors.New("-max-outstanding must be >= 1")
		}
	case "rtt":
		if c.Count < 1 {
			return errors.New("-count is required and must be >= 1")
		}
	case "bulk":
		if c.Mode != "rx" && c.Mode != "tx" {
			return fmt.Errorf("-mode must be rx or tx, not %q", c.Mode)
		}
		if c.Bytes < 1 {
			return errors.New("-bytes is required and must be >= 1")
		}
		if c.Fill != "pattern" && c.Fill != "random" {
			return fmt.Errorf("-fill must be pattern or random, not %q", c.Fill)
		}
		if c.Fill == "random" && c.Mode != "rx" {
			return errors.New("-fill random is for -mode rx (the guest's source sends zeros)")
		}
		if c.Timeout <= 0 {
			return errors.New("-timeout must be > 0")
		}
	}
	if cmd == "echo" || cmd == "rtt" {
		if c.Size < 1 || c.Size > MaxSize {
			return fmt.Errorf("-size must be between 1 and %d", MaxSize)
		}
	}
	return nil
}

// summary is the result line: ordered key=value fields, then the failure
// count and the first failure.
type summary struct {
	cmd      string
	keys     []string
	vals     []string
	failures int
	first    string
}

func (s *summary) add(key string, val any) {
	var v string
	switch x := val.(type) {
	case time.Duration:
		v = strconv.FormatFloat(x.Seconds(), 'f', 3, 64)
	case float64:
		v = strconv.FormatFloat(x, 'f', 3, 64)
	case string:
		v = x
		if v == "" || strings.ContainsAny(v, " \t\n\"=") {
			v = strconv.Quote(v)
		}
	default:
		v = fmt.Sprint(x)
	}
	s.keys = append(s.keys, key)
	s.vals = append(s.vals, v)
}

func (s *summary) String() string {
	var b strings.Builder
	b.WriteString("tcpcheck " + s.cmd)
	result := "pass"
	if s.failures > 0 {
		result = "fail"
	}
	b.WriteString(" result=" + result)
	for i, k := range s.keys {
		b.WriteString(" " + k + "=" + s.vals[i])
	}
	first := "none"
	if s.failures > 0 {
		first = strconv.Quote(s.first)
	}
	fmt.Fprintf(&b, " failures=%d first_failure=%s", s.failures, first)
	return b.String()
}

// ms formats a duration in milliseconds with microsecond precision.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// stopOnFile returns a channel closed once path exists or also is closed
// (polled every 100 ms).
func stopOnFile(path string, also <-chan struct{}) <-chan struct{} {
	stop := make(chan struct{})
	go func() {
		defer close(stop)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if _, err := os.Stat(path); err == nil {
				return
			}
			select {
			case <-also:
				return
			case <-tick.C:
			}
		}
	}()
	return stop
}
