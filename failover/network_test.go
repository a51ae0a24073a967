package failover

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// A two-host "network" in the spirit of raft's raft_test.go network: a
// primary Node and a backup Node, each wrapped in a host that plays its
// daemon (the log pump, the feeder, the replaying QEMU, the lock client),
// joined by one TCP-like connection that can be cut per direction. The lock
// is a single shared test-and-set. Everything advances by whole ticks; no
// goroutines, no clocks.

type msgKind int

const (
	msgHeartbeat msgKind = iota
	msgLog
	msgAck
	msgBye
	msgClose // FIN: the sender closed its end
)

type msg struct {
	kind                 msgKind
	offset, bytes, instr uint64
	icount               uint64 // ack: the backup QEMU's icount
	end                  bool   // log: carries the primary's SHUTDOWN and END
	clean                bool
	reason               string
}

// flowWindowFrames is how many log frames fit between the primary's
// recording and the backup's replay before the primary stalls.
const flowWindowFrames = 8

var errLockUnreachable = errors.New("lock store unreachable")

type host struct {
	name string
	node *Node
	peer *host

	dead      bool // host down: no ticks, nothing in or out
	vmRunning bool // this host's QEMU for the domain runs
	inbox     []Event
	out       []msg // in flight towards peer, in order
	sideOpen  bool  // this end of the connection is open
	history   []Action

	// primary: the recording QEMU and the pump
	pumping            bool
	logInstr, logBytes uint64
	acked              uint64

	// backup: the feeder and the replaying QEMU
	feeding            bool
	endIn              int // ticks until END is written after FeedEnd; -1 none
	fedInstr, fedBytes uint64
	fedEnd             bool // the primary's SHUTDOWN/END was fed
	icount             uint64
	replaying          bool
	draining           bool
	target             uint64

	lockIn   int // ticks until the lock answers; -1 none
	goLiveIn int // ticks until GoLive finishes; -1 none
}

type network struct {
	cfg  Config
	p, b *host
	cut  map[string]bool // "primary->backup", "backup->primary"
	lock string          // holder, "" when free
	now  int64

	lockDelay     int    // ticks for a LockResult to come back
	goLiveDelay   int    // ticks GoLive takes
	endDelay      int    // ticks between FeedEnd and EndFed (frames may still be fed)
	replayRate    uint64 // instructions the backup executes per tick
	logEvery      int    // the primary emits a log frame every logEvery ticks; 0 = idle guest
	instrPerFrame uint64
	lockErrors    int // the next lockErrors lock attempts fail with an error
	// lagCeiling > 0: the backup's Config.LagCeiling, and the backup
	// samples its icount every tick while replicating.
	lagCeiling int

	trace      []string
	violations []string
}

type netOptions struct {
	lockDelay, goLiveDelay, endDelay, logEvery, lagCeiling int
	replayRate, instrPerFrame                              uint64
}

func defaultNetOptions() netOptions {
	return netOptions{lockDelay: 1, goLiveDelay: 3, endDelay: 1, logEvery: 5, replayRate: 400, instrPerFrame: 1000}
}

func newNetwork(t testing.TB, interval, timeout int, o netOptions) *network {
	t.Helper()
	mk := func(name string, role Role) *host {
		cfg := Config{Role: role, HeartbeatInterval: interval, HeartbeatTimeout: timeout}
		if role == RoleBackup {
			cfg.LagCeiling = o.lagCeiling
		}
		nd, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return &host{name: name, node: nd, vmRunning: true, sideOpen: true, pumping: role == RolePrimary,
			feeding: role == RoleBackup, replaying: role == RoleBackup, endIn: -1, lockIn: -1, goLiveIn: -1}
	}
	nw := &network{p: mk("primary", RolePrimary), b: mk("backup", RoleBackup), cut: map[string]bool{},
		lockDelay: o.lockDelay, goLiveDelay: o.goLiveDelay, endDelay: o.endDelay, replayRate: o.replayRate,
		logEvery: o.logEvery, instrPerFrame: o.instrPerFrame, lagCeiling: o.lagCeiling}
	nw.p.peer, nw.b.peer = nw.b, nw.p
	return nw
}

func (nw *network) host(name string) *host {
	switch name {
	case "primary":
		return nw.p
	case "backup":
		return nw.b
	}
	return nil
}

func (nw *network) tracef(format string, args ...any) {
	nw.trace = append(nw.trace, fmt.Sprintf("%4d ", nw.now)+fmt.Sprintf(format, args...))
}

func (nw *network) violate(format string, args ...any) {
	v := fmt.Sprintf("tick %d: ", nw.now) + fmt.Sprintf(format, args...)
	nw.violations = append(nw.violations, v)
	nw.tracef("VIOLATION %s", v)
}

// traceTail returns the last lines of the trace, for failure messages.
func (nw *network) traceTail(n int) string {
	tr := nw.trace
	if len(tr) > n {
		tr = tr[len(tr)-n:]
	}
	return strings.Join(tr, "\n")
}

func (nw *network) send(h *host, m msg) {
	if h.dead || !h.sideOpen {
		return
	}
	h.out = append(h.out, m)
}

// deliver moves what from sent towards to, unless that direction is cut
// (then it waits, as TCP would retransmit it after a heal).
func (nw *network) deliver(from, to *host) {
	if nw.cut[from.name+"->"+to.name] || len(from.out) == 0 {
		return
	}
	q := from.out
	from.out = nil
	for _, m := range q {
		if to.dead || !to.sideOpen {
			return // nobody listens: dropped
		}
		switch m.kind {
		case msgHeartbeat:
			to.inbox = append(to.inbox, HeartbeatReceived{})
		case msgLog:
			if !to.feeding || !to.replaying {
				nw.tracef("%s drops a late log frame at offset %d", to.name, m.offset)
				continue
			}
			to.fedInstr += m.instr
			to.fedBytes += m.bytes
			to.fedEnd = to.fedEnd || m.end
			to.inbox = append(to.inbox, LogReceived{Offset: m.offset, Bytes: to.fedBytes, Instructions: to.fedInstr})
			nw.send(to, msg{kind: msgAck, offset: to.fedBytes, instr: to.fedInstr, icount: to.icount})
		case msgAck:
			to.acked = max(to.acked, m.instr)
			to.inbox = append(to.inbox, AckReceived{Offset: m.offset, Icount: m.icount})
		case msgBye:
			to.inbox = append(to.inbox, PeerBye{Clean: m.clean, Reason: m.reason})
		case msgClose:
			to.sideOpen = false
			to.out = nil
			to.inbox = append(to.inbox, ChannelDown{Reason: "closed by peer"})
		}
	}
}

// tick advances the whole network by one tick and checks the invariants.
func (nw *network) tick() {
	nw.now++
	nw.deliver(nw.p, nw.b)
	nw.deliver(nw.b, nw.p)
	for _, h := range []*host{nw.p, nw.b} {
		if h.dead {
			continue
		}
		in := h.inbox
		h.inbox = nil
		for _, ev := range in {
			before := h.node.State()
			h.node.Step(ev)
			if after := h.node.State(); after != before {
				nw.tracef("%s step %v: %v -> %v", h.name, ev, before, after)
			}
		}
		before := h.node.State()
		h.node.Tick()
		if after := h.node.State(); after != before {
			nw.tracef("%s tick: %v -> %v", h.name, before, after)
		}
		for _, a := range h.node.Ready() {
			nw.perform(h, a)
		}
		nw.model(h)
	}
	nw.check()
}

// perform plays the daemon for one action.
func (nw *network) perform(h *host, a Action) {
	h.history = append(h.history, a)
	if _, ok := a.(SendHeartbeat); !ok {
		nw.tracef("%s does %v", h.name, a)
	}
	switch a := a.(type) {
	case SendHeartbeat:
		nw.send(h, msg{kind: msgHeartbeat})
	case CloseChannel:
		if h.sideOpen {
			nw.send(h, msg{kind: msgClose})
			h.sideOpen = false
		}
	case SendBye:
		nw.send(h, msg{kind: msgBye, clean: a.Clean, reason: a.Reason})
	case FeedEnd:
		if h != nw.b {
			nw.violate("%s: FeedEnd on the primary host", h.name)
		}
		h.endIn = nw.endDelay
	case WaitDrain:
		if h.feeding {
			nw.violate("%s: WaitDrain before END was written", h.name)
		}
		if a.Icount != h.fedInstr {
			nw.violate("%s: WaitDrain icount %d, but %d instructions were fed", h.name, a.Icount, h.fedInstr)
		}
		h.draining, h.target = true, a.Icount
	case AcquireLock:
		h.lockIn = nw.lockDelay
	case GoLive:
		if nw.lock != h.name {
			nw.violate("%s: GoLive without holding the lock (holder %q)", h.name, nw.lock)
		}
		if h.icount != h.fedInstr {
			nw.violate("%s: GoLive at icount %d with %d instructions fed", h.name, h.icount, h.fedInstr)
		}
		if !h.vmRunning {
			nw.violate("%s: GoLive without a running QEMU", h.name)
		}
		h.replaying, h.draining = false, false
		h.goLiveIn = nw.goLiveDelay
	case ReportUnprotected:
		if nw.lock != h.name {
			nw.violate("%s: ReportUnprotected without holding the lock (holder %q)", h.name, nw.lock)
		}
	case HaltVM, StopPrimaryVM:
		if h.vmRunning {
			h.vmRunning, h.replaying, h.pumping = false, false, false
			_, stop := a.(StopPrimaryVM)
			h.inbox = append(h.inbox, QEMUExited{Clean: stop})
		}
	case DrainLocally:
		h.pumping = false
	case Announce, Cleanup:
	case BackupBehind:
		if h != nw.b || h.node.State() != StateHalted {
			nw.violate("%s: %v but not a halting backup", h.name, a)
		}
	default:
		nw.violate("%s: unknown action %v", h.name, a)
	}
}

// model advances the QEMUs and the pending operations of host h.
func (nw *network) model(h *host) {
	// Flow control: FIFO B, the TCP buffers and FIFO A hold a bounded
	// amount of log; beyond it the primary's vCPU stalls.
	if h == nw.p && h.vmRunning && h.pumping && nw.logEvery > 0 && nw.now%int64(nw.logEvery) == 0 &&
		h.logInstr-nw.b.icount < flowWindowFrames*nw.instrPerFrame {
		m := msg{kind: msgLog, offset: h.logBytes, bytes: 4096, instr: nw.instrPerFrame}
		h.logInstr += m.instr
		h.logBytes += m.bytes
		nw.send(h, m)
	}
	if h.replaying && h.vmRunning {
		h.icount = min(h.fedInstr, h.icount+nw.replayRate)
		if h.fedEnd && h.icount == h.fedInstr {
			// The primary's SHUTDOWN was replayed: QEMU exits.
			h.vmRunning, h.replaying = false, false
			h.inbox = append(h.inbox, QEMUExited{Clean: true})
		}
	}
	if nw.lagCeiling > 0 && h.replaying && h.vmRunning && !h.draining && h.node.State() == StateReplicating {
		// FIFO B: log unread while the replay is behind what was fed.
		unread := uint64(0)
		if h.icount < h.fedInstr {
			unread = 4096
		}
		h.inbox = append(h.inbox, FeedUnread{Bytes: unread, Written: h.fedBytes}, BackupIcount{Icount: h.icount})
	}
	if h.endIn >= 0 {
		if h.endIn == 0 {
			h.feeding = false
			h.inbox = append(h.inbox, EndFed{Bytes: h.fedBytes, Instructions: h.fedInstr})
		}
		h.endIn--
	}
	if h.draining {
		h.inbox = append(h.inbox, BackupIcount{Icount: h.icount})
		if h.icount >= h.target {
			h.draining = false
		}
	}
	if h.lockIn >= 0 {
		if h.lockIn == 0 {
			switch {
			case nw.lockErrors > 0:
				nw.lockErrors--
				h.inbox = append(h.inbox, LockResult{Err: errLockUnreachable})
			case nw.lock == "" || nw.lock == h.name:
				nw.lock = h.name
				h.inbox = append(h.inbox, LockResult{Won: true})
			default:
				h.inbox = append(h.inbox, LockResult{Won: false})
			}
			nw.tracef("%s lock answer %v", h.name, h.inbox[len(h.inbox)-1])
		}
		h.lockIn--
	}
	if h.goLiveIn >= 0 {
		if h.goLiveIn == 0 {
			h.inbox = append(h.inbox, GoLiveDone{})
		}
		h.goLiveIn--
	}
}

// free reports whether h's VM runs and may release output without a
// backup's ack: a primary that went on alone, or a backup that went live.
func (h *host) free() bool {
	if h.dead || !h.vmRunning {
		return false
	}
	s := h.node.State()
	return s == StateUnprotected || s == StateLive
}

// check asserts the per-tick invariants.
func (nw *network) check() {
	if nw.p.free() && nw.b.free() {
		nw.violate("split brain: both VMs run alone (primary %v, backup %v)", nw.p.node.State(), nw.b.node.State())
	}
	for _, h := range []*host{nw.p, nw.b} {
		if h.free() && nw.lock != h.name {
			nw.violate("%s runs alone without the lock (holder %q)", h.name, nw.lock)
		}
	}
	// A primary whose VM keeps running after the backup went live must
	// have its output held: no ack may reach it any more.
	if nw.b.free() && nw.p.vmRunning && !nw.p.dead {
		if s := nw.p.node.State(); s == StateUnprotected {
			nw.violate("primary unprotected while the backup is live")
		}
	}
}

// Commands of the harness (used by the scripts and the sweep).

func (nw *network) kill(h *host) {
	h.dead, h.vmRunning, h.out = true, false, nil
	nw.tracef("%s host killed", h.name)
}

func (nw *network) crash(h *host) {
	if !h.vmRunning {
		return
	}
	h.vmRunning, h.replaying, h.pumping = false, false, false
	h.inbox = append(h.inbox, QEMUExited{Clean: false})
	nw.tracef("%s QEMU crashed", h.name)
}

// shutdown: the primary's guest powers off; the pump flushes the log's tail
// (SHUTDOWN, END) before the daemon says bye.
func (nw *network) shutdown(h *host) {
	if h != nw.p || !h.vmRunning {
		return
	}
	if h.pumping {
		m := msg{kind: msgLog, offset: h.logBytes, bytes: 16, instr: 10, end: true}
		h.logInstr += m.instr
		h.logBytes += m.bytes
		nw.send(h, m)
	}
	h.vmRunning, h.pumping = false, false
	h.inbox = append(h.inbox, QEMUExited{Clean: true})
	nw.tracef("%s guest shut down", h.name)
}

func (nw *network) switchover(h *host) {
	h.inbox = append(h.inbox, SwitchoverRequested{})
	nw.tracef("%s operator asks for a switchover", h.name)
}

func (nw *network) unprotect(h *host) {
	h.inbox = append(h.inbox, UnprotectRequested{})
	nw.tracef("%s operator asks to end protection", h.name)
}

func (nw *network) setCut(dir string, on bool) {
	if dir == "" {
		nw.cut["primary->backup"], nw.cut["backup->primary"] = on, on
	} else {
		nw.cut[dir] = on
	}
	nw.tracef("cut %q = %v", dir, on)
}

// running lists the hosts whose VM runs.
func (nw *network) running() string {
	var r []string
	for _, h := range []*host{nw.p, nw.b} {
		if !h.dead && h.vmRunning {
			r = append(r, h.name)
		}
	}
	if len(r) == 0 {
		return "none"
	}
	return strings.Join(r, ",")
}

// alone names the host whose VM runs alone, or "none".
func (nw *network) alone() string {
	for _, h := range []*host{nw.p, nw.b} {
		if h.free() {
			return h.name
		}
	}
	return "none"
}

// TestNetworkSweep runs every failure kind at many moments and with many
// timings, and asserts that no tick ever has two VMs running alone, that
// every go-live is drained and locked, and that the outcome is the expected
// one.
func TestNetworkSweep(t *testing.T) {
	const interval, timeout, horizon = 5, 40, 400
	type outcome struct{ alone, running string }
	scenarios := []struct {
		name string
		// act runs at tick at; then2 (if set) runs at tick at+gap.
		act, then2 func(nw *network)
		want       func(gap int) []outcome // acceptable outcomes
	}{
		{name: "kill-primary", act: func(nw *network) { nw.kill(nw.p) },
			want: func(int) []outcome { return []outcome{{"backup", "backup"}} }},
		{name: "kill-backup", act: func(nw *network) { nw.kill(nw.b) },
			want: func(int) []outcome { return []outcome{{"primary", "primary"}} }},
		{name: "crash-primary-qemu", act: func(nw *network) { nw.crash(nw.p) },
			want: func(int) []outcome { return []outcome{{"backup", "backup"}} }},
		{name: "crash-backup-qemu", act: func(nw *network) { nw.crash(nw.b) },
			want: func(int) []outcome { return []outcome{{"primary", "primary"}} }},
		{name: "partition", act: func(nw *network) { nw.setCut("", true) },
			want: func(int) []outcome { return []outcome{{"primary", "primary"}, {"backup", "backup"}} }},
		{name: "partition-then-heal", act: func(nw *network) { nw.setCut("", true) },
			then2: func(nw *network) { nw.setCut("", false) },
			want: func(gap int) []outcome {
				failedOver := []outcome{{"primary", "primary"}, {"backup", "backup"}}
				replicating := outcome{"none", "primary,backup"}
				switch {
				case gap+interval+2 < timeout: // healed in time, whatever the heartbeat phase
					return []outcome{replicating}
				case gap >= timeout:
					return failedOver
				}
				return append(failedOver, replicating)
			}},
		{name: "cut-primary-to-backup", act: func(nw *network) { nw.setCut("primary->backup", true) },
			want: func(int) []outcome { return []outcome{{"primary", "primary"}, {"backup", "backup"}} }},
		{name: "cut-backup-to-primary", act: func(nw *network) { nw.setCut("backup->primary", true) },
			want: func(int) []outcome { return []outcome{{"primary", "primary"}, {"backup", "backup"}} }},
		{name: "clean-shutdown", act: func(nw *network) { nw.shutdown(nw.p) },
			want: func(int) []outcome { return []outcome{{"none", "none"}} }},
		{name: "switchover-from-backup", act: func(nw *network) { nw.switchover(nw.b) },
			want: func(int) []outcome { return []outcome{{"backup", "backup"}} }},
		{name: "switchover-from-primary", act: func(nw *network) { nw.switchover(nw.p) },
			want: func(int) []outcome { return []outcome{{"backup", "backup"}} }},
		{name: "switchover-then-partition", act: func(nw *network) { nw.switchover(nw.b) },
			then2: func(nw *network) { nw.setCut("", true) },
			want:  func(int) []outcome { return []outcome{{"primary", "primary"}, {"backup", "backup"}} }},
		{name: "switchover-then-kill-primary", act: func(nw *network) { nw.switchover(nw.b) },
			then2: func(nw *network) { nw.kill(nw.p) },
			want:  func(int) []outcome { return []outcome{{"backup", "backup"}} }},
		{name: "partition-then-kill-primary", act: func(nw *network) { nw.setCut("", true) },
			then2: func(nw *network) { nw.kill(nw.p) },
			// The primary may have won the lock before dying: then the
			// VM is gone (the lock is never released), which is safe.
			want: func(int) []outcome { return []outcome{{"backup", "backup"}, {"none", "none"}} }},
	}
	n := 0
	for _, sc := range scenarios {
		for _, at := range []int{1, 7, 23, 60} {
			for _, gap := range []int{0, 3, 20, 45} {
				if sc.then2 == nil && gap != 0 {
					continue
				}
				for _, lockDelay := range []int{0, 2, 9} {
					for _, rate := range []uint64{100, 5000} {
						for _, logEvery := range []int{0, 1, 7} {
							for _, lockErrs := range []int{0, 2} {
								o := defaultNetOptions()
								o.lockDelay, o.replayRate, o.logEvery = lockDelay, rate, logEvery
								nw := newNetwork(t, interval, timeout, o)
								nw.lockErrors = lockErrs
								name := fmt.Sprintf("%s/at=%d/gap=%d/lock=%d/rate=%d/log=%d/lockerr=%d",
									sc.name, at, gap, lockDelay, rate, logEvery, lockErrs)
								for i := 1; i <= horizon; i++ {
									if i == at {
										sc.act(nw)
									}
									if sc.then2 != nil && i == at+gap {
										sc.then2(nw)
									}
									nw.tick()
									if len(nw.violations) > 0 {
										break
									}
								}
								n++
								if len(nw.violations) > 0 {
									t.Fatalf("%s: %s\ntrace:\n%s", name, nw.violations[0], nw.traceTail(60))
								}
								got := outcome{nw.alone(), nw.running()}
								ok := false
								for _, w := range sc.want(gap) {
									ok = ok || w == got
								}
								if !ok {
									t.Fatalf("%s: outcome %+v, want one of %+v\ntrace:\n%s", name, got, sc.want(gap), nw.traceTail(60))
								}
							}
						}
					}
				}
			}
		}
	}
	t.Logf("%d runs", n)
}
