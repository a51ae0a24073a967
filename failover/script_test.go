package failover

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Scenario scripts, in the spirit of raft's interaction tests: every file in
// testdata/*.txt is a list of commands, one a line; "#" starts a comment.
//
// One node:
//
//	new primary|backup interval=N timeout=N [retry=N] [stall=N] [lag-ceiling=N]
//	tick [N]                       call Tick N times (default 1)
//	step EVENT                     Step one event, in Event.String form:
//	                               heartbeat | log offset=N bytes=N instr=N |
//	                               ack offset=N icount=N | channel-up |
//	                               channel-down reason=S | bye clean=B reason=S |
//	                               backup-icount icount=N | end-fed bytes=N instr=N |
//	                               lock-result won=B [err=S] | go-live-done [err=S] |
//	                               qemu-exited clean=B | switchover-requested |
//	                               unprotect-requested
//	ready                          take and drop the pending actions
//	repeat N                       run the lines up to the matching "end"
//	...                            N times (both modes)
//	end
//	expect actions A [k=v..] [xN] B ...
//	                               Ready() returns exactly these actions, in
//	                               order; a token without "=" names an action,
//	                               k=v checks a field of the preceding one
//	                               (fields not given are not checked), xN
//	                               repeats the preceding one N times
//	expect no-actions
//	expect state S [phase=P]
//	expect phase P
//	expect role R
//	expect timings k=v ...         keys of Timings.String: detect drain lock start total
//	expect status k=v ...          keys: see statusFields
//
// Two nodes (the network harness of network_test.go):
//
//	net interval=N timeout=N [lock-delay=N golive-delay=N end-delay=N
//	    replay-rate=N log-every=N instr=N lag-ceiling=N]
//	tick [N]                       advance the network; invariants are
//	                               checked at every tick
//	cut [primary->backup|backup->primary]   (both ways without argument)
//	heal
//	kill NODE | crash NODE | shutdown primary | switchover NODE |
//	unprotect NODE
//	lock-errors N                  the next N lock attempts fail with an error
//	step NODE EVENT                Step an event into one node directly
//	expect NODE state|phase|role|timings|status ...   as above
//	expect NODE did ACTION [k=v..] | expect NODE did-not ACTION
//	expect lock NODE|none          who holds the shared lock
//	expect running LIST|none       whose VM runs, e.g. "primary,backup"
//	expect alone NODE|none         whose VM runs alone (Unprotected or Live)
//
// NODE is primary or backup (the host, whatever its node's role became).

func TestScenarios(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no scenario in testdata")
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			runScript(t, f)
		})
	}
}

type scriptRunner struct {
	t    *testing.T
	node *Node
	net  *network
}

func runScript(t *testing.T, path string) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []scriptLine
	sc := bufio.NewScanner(f)
	for no := 1; sc.Scan(); no++ {
		toks, err := tokenize(sc.Text())
		if err != nil {
			t.Fatalf("%s:%d: %v", path, no, err)
		}
		if len(toks) > 0 {
			lines = append(lines, scriptLine{no: no, text: strings.TrimSpace(sc.Text()), toks: toks})
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	r := &scriptRunner{t: t}
	if l, err := r.runBlock(lines); err != nil {
		msg := fmt.Sprintf("%s:%d: %s\n\t%v", path, l.no, l.text, err)
		if r.net != nil {
			msg += "\ntrace:\n" + r.net.traceTail(40)
		}
		t.Fatal(msg)
	}
}

type scriptLine struct {
	no   int
	text string
	toks []string
}

// runBlock runs lines; "repeat N" ... "end" runs the lines between N times
// (blocks nest). On error it returns the failing line.
func (r *scriptRunner) runBlock(lines []scriptLine) (scriptLine, error) {
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if l.toks[0] == "end" {
			return l, errors.New("end without repeat")
		}
		if l.toks[0] != "repeat" {
			if err := r.run(l.toks); err != nil {
				return l, err
			}
			continue
		}
		if len(l.toks) != 2 {
			return l, errors.New("repeat N")
		}
		n, err := strconv.Atoi(l.toks[1])
		if err != nil {
			return l, err
		}
		depth, j := 1, i+1
		for ; j < len(lines); j++ {
			switch lines[j].toks[0] {
			case "repeat":
				depth++
			case "end":
				depth--
			}
			if depth == 0 {
				break
			}
		}
		if depth != 0 {
			return l, errors.New("repeat without end")
		}
		for range n {
			if bad, err := r.runBlock(lines[i+1 : j]); err != nil {
				return bad, err
			}
		}
		i = j
	}
	return scriptLine{}, nil
}

// tokenize splits a line on blanks; a double-quoted part (Go syntax) may
// hold blanks; "#" outside quotes starts a comment.
func tokenize(line string) ([]string, error) {
	var toks []string
	for i := 0; i < len(line); {
		c := line[i]
		if c == ' ' || c == '\t' {
			i++
			continue
		}
		if c == '#' {
			break
		}
		var b strings.Builder
		for i < len(line) && line[i] != ' ' && line[i] != '\t' {
			if line[i] != '"' {
				b.WriteByte(line[i])
				i++
				continue
			}
			j := i + 1
			for j < len(line) && line[j] != '"' {
				if line[j] == '\\' {
					j++
				}
				j++
			}
			if j >= len(line) {
				return nil, errors.New("unterminated quote")
			}
			s, err := strconv.Unquote(line[i : j+1])
			if err != nil {
				return nil, err
			}
			b.WriteString(s)
			i = j + 1
		}
		toks = append(toks, b.String())
	}
	return toks, nil
}

// item is "name k=v k=v" parsed from script tokens or from a String().
type item struct {
	name  string
	attrs map[string]string
	keys  []string
}

func (it item) String() string {
	kv := make([]string, 0, 2*len(it.keys))
	for _, k := range it.keys {
		kv = append(kv, k, it.attrs[k])
	}
	return format(it.name, kv...)
}

func parseItems(toks []string) ([]item, error) {
	var items []item
	for _, tok := range toks {
		if k, v, ok := strings.Cut(tok, "="); ok {
			if len(items) == 0 {
				return nil, fmt.Errorf("%q before any name", tok)
			}
			last := &items[len(items)-1]
			last.attrs[k] = v
			last.keys = append(last.keys, k)
			continue
		}
		if len(tok) > 1 && tok[0] == 'x' {
			if n, err := strconv.Atoi(tok[1:]); err == nil {
				if len(items) == 0 || n < 1 {
					return nil, fmt.Errorf("bad repetition %q", tok)
				}
				for range n - 1 {
					last := items[len(items)-1]
					items = append(items, item{name: last.name, attrs: last.attrs, keys: last.keys})
				}
				continue
			}
		}
		items = append(items, item{name: tok, attrs: map[string]string{}})
	}
	return items, nil
}

func mustItem(s string) item {
	toks, err := tokenize(s)
	if err != nil {
		panic(err)
	}
	items, err := parseItems(toks)
	if err != nil || len(items) != 1 {
		panic(fmt.Sprintf("cannot parse %q back: %v", s, err))
	}
	return items[0]
}

// matches reports whether got (a String form) has want's name and every
// field want gives.
func matches(want item, got string) bool {
	g := mustItem(got)
	if g.name != want.name {
		return false
	}
	for _, k := range want.keys {
		if g.attrs[k] != want.attrs[k] {
			return false
		}
	}
	return true
}

// kvCheck compares the given keys against a String-like "k=v k=v" line.
func kvCheck(want []string, got string) error {
	g := mustItem("_ " + got)
	for _, tok := range want {
		k, v, ok := strings.Cut(tok, "=")
		if !ok {
			return fmt.Errorf("want k=v, got %q", tok)
		}
		gv, ok := g.attrs[k]
		if !ok {
			return fmt.Errorf("unknown key %q in %q", k, got)
		}
		if gv != v {
			return fmt.Errorf("%s=%s, want %s (all: %s)", k, gv, v, got)
		}
	}
	return nil
}

func intAttr(attrs map[string]string, key string, def int) (int, error) {
	v, ok := attrs[key]
	if !ok {
		return def, nil
	}
	return strconv.Atoi(v)
}

func uintAttr(attrs map[string]string, key string) (uint64, error) {
	v, ok := attrs[key]
	if !ok {
		return 0, nil
	}
	return strconv.ParseUint(v, 10, 64)
}

func boolAttr(attrs map[string]string, key string) (bool, error) {
	v, ok := attrs[key]
	if !ok {
		return false, nil
	}
	return strconv.ParseBool(v)
}

func errAttr(attrs map[string]string) error {
	if v, ok := attrs["err"]; ok && v != "" {
		return errors.New(v)
	}
	return nil
}

// parseEvent turns the Event.String form back into an Event.
func parseEvent(toks []string) (Event, error) {
	items, err := parseItems(toks)
	if err != nil {
		return nil, err
	}
	if len(items) != 1 {
		return nil, fmt.Errorf("want one event, got %d", len(items))
	}
	it := items[0]
	a := it.attrs
	var errs []error
	U := func(k string) uint64 { v, err := uintAttr(a, k); errs = append(errs, err); return v }
	B := func(k string) bool { v, err := boolAttr(a, k); errs = append(errs, err); return v }
	var ev Event
	switch it.name {
	case "heartbeat":
		ev = HeartbeatReceived{}
	case "log":
		ev = LogReceived{Offset: U("offset"), Bytes: U("bytes"), Instructions: U("instr"), Waited: int64(U("waited"))}
	case "ack":
		ev = AckReceived{Offset: U("offset"), Icount: U("icount"), Fed: U("fed")}
	case "channel-down":
		ev = ChannelDown{Reason: a["reason"]}
	case "channel-up":
		ev = ChannelUp{}
	case "bye":
		ev = PeerBye{Clean: B("clean"), Reason: a["reason"]}
	case "backup-icount":
		ev = BackupIcount{Icount: U("icount")}
	case "backup-executing":
		ev = BackupExecuting{}
	case "feed-unread":
		ev = FeedUnread{Bytes: U("bytes"), Written: U("written")}
	case "end-fed":
		ev = EndFed{Bytes: U("bytes"), Instructions: U("instr")}
	case "lock-result":
		ev = LockResult{Won: B("won"), Err: errAttr(a)}
	case "go-live-done":
		ev = GoLiveDone{Err: errAttr(a)}
	case "qemu-exited":
		ev = QEMUExited{Clean: B("clean")}
	case "switchover-requested":
		ev = SwitchoverRequested{}
	case "unprotect-requested":
		ev = UnprotectRequested{}
	case "diverged":
		ev = Diverged{Reason: a["reason"]}
	case "primary-hung":
		ev = PrimaryHung{Reason: a["reason"]}
	default:
		return nil, fmt.Errorf("unknown event %q", it.name)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	// Catch typos in field names: the event must print every key given
	// a non-zero value.
	got := mustItem(ev.String())
	for _, k := range it.keys {
		if _, ok := got.attrs[k]; !ok && a[k] != "" && a[k] != "0" && a[k] != "false" {
			return nil, fmt.Errorf("event %s has no field %q", it.name, k)
		}
	}
	return ev, nil
}

func statusFields(s Status) string {
	return format("_",
		"role", s.Role.String(), "state", s.State.String(), "phase", s.Phase.String(),
		"reason", s.Reason, "ticks", strconv.FormatInt(s.Ticks, 10),
		"silence", strconv.FormatInt(s.Silence, 10),
		"channel-open", strconv.FormatBool(s.ChannelOpen), "peer-ended", strconv.FormatBool(s.PeerEnded),
		"switchover", strconv.FormatBool(s.Switchover), "peer-restarting", strconv.FormatBool(s.PeerRestarting), "hung", s.Hung,
		"log-offset", u(s.LogOffset), "fed-bytes", u(s.FedBytes), "fed-instr", u(s.FedInstructions),
		"icount", u(s.BackupIcount), "unread", u(s.Unread), "lag", strconv.FormatInt(s.Lag, 10), "max-lag", strconv.FormatInt(s.MaxLag, 10), "target", u(s.DrainTarget),
		"acked-offset", u(s.AckedOffset), "acked-icount", u(s.AckedIcount), "acked-fed", u(s.AckedFed),
		"lock-attempts", strconv.Itoa(s.LockAttempts), "ignored", strconv.Itoa(s.Ignored),
		"last-ignored", s.LastIgnored)[2:]
}

func (r *scriptRunner) run(toks []string) error {
	cmd, args := toks[0], toks[1:]
	kv := map[string]string{}
	for _, a := range args {
		if k, v, ok := strings.Cut(a, "="); ok {
			kv[k] = v
		}
	}
	switch cmd {
	case "new":
		if len(args) < 1 {
			return errors.New("new primary|backup ...")
		}
		var role Role
		switch args[0] {
		case "primary":
			role = RolePrimary
		case "backup":
			role = RoleBackup
		default:
			return fmt.Errorf("unknown role %q", args[0])
		}
		cfg := Config{Role: role}
		var errs [5]error
		cfg.HeartbeatInterval, errs[0] = intAttr(kv, "interval", 10)
		cfg.HeartbeatTimeout, errs[1] = intAttr(kv, "timeout", 100)
		cfg.LockRetryInterval, errs[2] = intAttr(kv, "retry", 0)
		cfg.StallTimeout, errs[3] = intAttr(kv, "stall", 0)
		cfg.LagCeiling, errs[4] = intAttr(kv, "lag-ceiling", 0)
		if err := errors.Join(errs[:]...); err != nil {
			return err
		}
		n, err := New(cfg)
		if err != nil {
			return err
		}
		r.node, r.net = n, nil
		return nil
	case "net":
		o := defaultNetOptions()
		var errs []error
		I := func(k string, def int) int { v, err := intAttr(kv, k, def); errs = append(errs, err); return v }
		interval, timeout := I("interval", 10), I("timeout", 100)
		o.lockDelay, o.goLiveDelay, o.endDelay = I("lock-delay", o.lockDelay), I("golive-delay", o.goLiveDelay), I("end-delay", o.endDelay)
		o.logEvery, o.lagCeiling = I("log-every", o.logEvery), I("lag-ceiling", 0)
		o.replayRate, o.instrPerFrame = uint64(I("replay-rate", int(o.replayRate))), uint64(I("instr", int(o.instrPerFrame)))
		if err := errors.Join(errs...); err != nil {
			return err
		}
		r.net, r.node = newNetwork(r.t, interval, timeout, o), nil
		return nil
	case "tick":
		n := 1
		if len(args) > 0 {
			var err error
			if n, err = strconv.Atoi(args[0]); err != nil {
				return err
			}
		}
		for range n {
			switch {
			case r.net != nil:
				r.net.tick()
				if len(r.net.violations) > 0 {
					return fmt.Errorf("invariant violated: %v", r.net.violations)
				}
			case r.node != nil:
				r.node.Tick()
			default:
				return errors.New("no node: use new or net first")
			}
		}
		return nil
	case "step":
		if r.net != nil {
			if len(args) < 2 {
				return errors.New("step NODE EVENT")
			}
			h := r.net.host(args[0])
			if h == nil {
				return fmt.Errorf("unknown node %q", args[0])
			}
			ev, err := parseEvent(args[1:])
			if err != nil {
				return err
			}
			h.inbox = append(h.inbox, ev)
			return nil
		}
		if r.node == nil {
			return errors.New("no node: use new first")
		}
		ev, err := parseEvent(args)
		if err != nil {
			return err
		}
		r.node.Step(ev)
		return nil
	case "ready":
		if r.node == nil {
			return errors.New("ready needs a single node")
		}
		r.node.Ready()
		return nil
	case "expect":
		return r.expect(args)
	}
	if r.net != nil {
		return r.netCommand(cmd, args)
	}
	return fmt.Errorf("unknown command %q", cmd)
}

func (r *scriptRunner) netCommand(cmd string, args []string) error {
	nw := r.net
	arg := ""
	if len(args) > 0 {
		arg = args[0]
	}
	h := nw.host(arg)
	needHost := func() error {
		if h == nil {
			return fmt.Errorf("%s needs primary or backup, got %q", cmd, arg)
		}
		return nil
	}
	switch cmd {
	case "cut":
		if arg != "" && arg != "primary->backup" && arg != "backup->primary" {
			return fmt.Errorf("cut: unknown direction %q", arg)
		}
		nw.setCut(arg, true)
	case "heal":
		nw.setCut("", false)
	case "kill", "crash", "shutdown", "switchover", "unprotect":
		if err := needHost(); err != nil {
			return err
		}
		map[string]func(*host){"kill": nw.kill, "crash": nw.crash, "shutdown": nw.shutdown, "switchover": nw.switchover, "unprotect": nw.unprotect}[cmd](h)
	case "lock-errors":
		n, err := strconv.Atoi(arg)
		if err != nil {
			return err
		}
		nw.lockErrors = n
	default:
		return fmt.Errorf("unknown command %q", cmd)
	}
	return nil
}

func (r *scriptRunner) expect(args []string) error {
	if len(args) == 0 {
		return errors.New("expect what?")
	}
	if r.net != nil {
		nw := r.net
		switch args[0] {
		case "lock", "running", "alone":
			if len(args) != 2 {
				return fmt.Errorf("expect %s VALUE", args[0])
			}
			got := map[string]string{"lock": nw.lock, "running": nw.running(), "alone": nw.alone()}[args[0]]
			if got == "" {
				got = "none"
			}
			if got != args[1] {
				return fmt.Errorf("%s is %s, want %s", args[0], got, args[1])
			}
			return nil
		}
		h := nw.host(args[0])
		if h == nil {
			return fmt.Errorf("expect NODE ...: unknown node %q", args[0])
		}
		if len(args) >= 3 && (args[1] == "did" || args[1] == "did-not") {
			items, err := parseItems(args[2:])
			if err != nil || len(items) != 1 {
				return fmt.Errorf("expect NODE %s ACTION [k=v..]", args[1])
			}
			found := false
			for _, a := range h.history {
				found = found || matches(items[0], a.String())
			}
			if found != (args[1] == "did") {
				var hist []string
				for _, a := range h.history {
					if _, hb := a.(SendHeartbeat); !hb {
						hist = append(hist, a.String())
					}
				}
				return fmt.Errorf("%s %s %v; its actions (heartbeats left out): %q", args[0], args[1], items[0], hist)
			}
			return nil
		}
		return expectNode(h.node, nil, args[1:])
	}
	if r.node == nil {
		return errors.New("no node: use new first")
	}
	return expectNode(r.node, r.node.Ready, args)
}

// expectNode checks one node. ready is nil when actions are not the
// script's to take (the network performs them).
func expectNode(n *Node, ready func() []Action, args []string) error {
	if len(args) == 0 {
		return errors.New("expect what?")
	}
	what, rest := args[0], args[1:]
	one := func() (string, error) {
		if len(rest) < 1 {
			return "", fmt.Errorf("expect %s VALUE", what)
		}
		return rest[0], nil
	}
	switch what {
	case "state":
		v, err := one()
		if err != nil {
			return err
		}
		if got := n.State().String(); got != v {
			return fmt.Errorf("state %s (%s), want %s", got, n.Status().Reason, v)
		}
		if len(rest) > 1 {
			return kvCheck(rest[1:], "phase="+n.Phase().String())
		}
		return nil
	case "phase", "role":
		v, err := one()
		if err != nil {
			return err
		}
		got := n.Phase().String()
		if what == "role" {
			got = n.Role().String()
		}
		if got != v {
			return fmt.Errorf("%s %s, want %s", what, got, v)
		}
		return nil
	case "timings":
		return kvCheck(rest, n.Timings().String())
	case "status":
		return kvCheck(rest, statusFields(n.Status()))
	case "no-actions", "actions":
		if ready == nil {
			return errors.New("actions are performed by the network; use expect NODE did ACTION")
		}
		want, err := parseItems(rest)
		if err != nil {
			return err
		}
		if what == "no-actions" && len(want) > 0 {
			return errors.New("expect no-actions takes no argument")
		}
		got := ready()
		gs := make([]string, len(got))
		for i, a := range got {
			gs[i] = a.String()
		}
		ok := len(got) == len(want)
		for i := 0; ok && i < len(want); i++ {
			ok = matches(want[i], gs[i])
		}
		if !ok {
			ws := make([]string, len(want))
			for i, w := range want {
				ws[i] = w.String()
			}
			return fmt.Errorf("actions:\n\tgot  %q\n\twant %q", gs, ws)
		}
		return nil
	}
	return fmt.Errorf("unknown expectation %q", what)
}
