package plugin

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"libvirt.org/go/libvirtxml"

	"github.com/libvirt-ft/libvirt-ft/failover"
	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	"github.com/libvirt-ft/libvirt-ft/plugin/gate"
	"github.com/libvirt-ft/libvirt-ft/qmp"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// backupRun is one run of a protected domain's backup on this host: armed
// by the primary's prepare-backup request (FIFO B, the feeder, the backup's
// output gates), it serves the primary's log channel, starts the replaying
// QEMU with the first log, feeds FIFO B, samples the replay, and, when its
// failover core says so, goes live (golive.go) and hands the VM to a new
// primaryRun (promote).
//
// Everything it acquires is pushed on its undo stack and released by close.
type backupRun struct {
	env  env
	uuid string
	name string
	// qemuName is the backup domain's name in its libvirt XML, the one
	// libvirt names its QEMU's pid file after (pidName); "" for a run
	// adopted after a planned restart, whose name is that one.
	qemuName  string
	cfg       ftxml.Config // the backup's (ftxml.Backup's output)
	backupXML string
	disks     []string // the domain's disk images (in-step records)
	// files: every host file its QEMU uses that a seed could replace
	// (domainFiles): kept from seeds while the backup is armed or runs.
	files       []string
	diverged    bool // the gates found the replayed frames differ
	primaryHost string
	epoch       string
	log         logrus.FieldLogger
	undo        undoStack
	// promote makes the live primary the domain's current run (go-live).
	promote func(*primaryRun)

	stop     chan struct{} // closed by close
	stopOnce sync.Once

	mu     sync.Mutex
	state  ctl.State
	detail string
	// sched: samples of the replaying QEMU's thread times (watchSched).
	sched schedRing
	peer  string // the primary daemon's address, once its channel is up
	// qemuStarted: the replaying QEMU was started (with the first log).
	qemuStarted bool
	running     bool
	// goingLive: FeedEnd issued; the replaying QEMU's end is go-live's.
	goingLive bool
	// claimPaused: its QEMU (out of replay at END, its output held) was
	// paused because the arbiter could not be reached; go-live resumes it.
	claimPaused bool
	// live: went live; live primary is the run now.
	live        bool
	wentLiveHow *ctl.GoLive

	// log figures: fed = bytes written into FIFO B, received = bytes
	// received and queued, fedInstr = INSTRUCTION sum fed, icount = the
	// replay's executed icount (sampled), counted as the log counts it:
	// from the log's first event (executedOf).
	fed, received    uint64
	fedInstr, icount uint64
	// icountBase: query-replay's icount where the log begins (guest
	// instructions): 0 for a replay from the VM's start, the migrated
	// icount for a re-protected backup (docs/replay.md §15: its replay
	// starts at the icount the state brought, its log's INSTRUCTION sums
	// from 0). Set before the replay runs (finishIncoming), never after.
	icountBase uint64
	// readIcount: the executed icount FIFO B's read position proves
	// (watchRead), at most icount's true value; acks carry the larger of
	// the two.
	readIcount    uint64
	readOff       bool // a query-replay sample came back below readIcount: no more read bounds
	lastHeartbeat time.Time

	replayFIFO string
	feeder     replayLog
	gates      *outputGates
	lastGates  []ctl.Gate
	ring       *logRing
	stall      *ctl.Stall
	stallText  string // the stall as told to the log and virt-ft status (the primary gets its first maxStallText bytes)
	behindText string // failover.BackupBehind as told to the primary and the log
	link       *peerConn
	drv        *failover.Driver
	final      failover.Status
	finalTm    failover.Timings
	// drainTo: go-live's drain target icount (WaitDrain), 0 when none;
	// the sampler samples fast while it is set.
	drainTo uint64
	wake    chan struct{}
	// liveRecord: the stock go-live path's record FIFO and its discarding
	// reader (prepareLive), handed to the live primary.
	liveRecord string
	// q holds received log frames until they are in FIFO B (startCore).
	q *frameQueue
	// awaitingResume: the primary's daemon said ByeRestarting (or this
	// run was adopted after this daemon's own restart): a resumed log
	// channel of the same epoch at the received offset may attach.
	awaitingResume bool
	// handingOver: this daemon stops for a planned restart (handOver);
	// linkEOF is closed when the primary closed its direction.
	handingOver bool
	linkEOF     chan struct{}
	// resuming: serveLog is deciding a resumed channel.
	resuming bool
	// incoming: armed by prepare-incoming (incoming.go); nil for a
	// backup that boots with its primary.
	incoming *incomingArming
	// convert: armed by a prepare-incoming with Convert (a VM started
	// without the ft element goes live here, incoming.go convertLive).
	convert bool
	// diskSizes: the prepare-incoming's DiskSizes (createDisks).
	diskSizes map[string]int64
}

// backupChecks runs every check of arming a backup of req on this host
// that has no side effect: the QEMU and log versions, the domain not
// running here, the peer policy (checkPeerDomain), the backup's XML, the
// emulator build. It returns the backup's XML, its libvirt-ft settings, its
// parsed domain and the log version (armBackup), or the refusal (also
// check-backup, for a primary's virt-ft check).
func backupChecks(e env, req logchan.ControlRequest, primaryHost string) (backupXML string, cfg *ftxml.Config, bdom *libvirtxml.Domain, logVer uint32, err error) {
	ours, err := e.hv.QEMUVersion()
	if err != nil {
		return "", nil, nil, 0, err
	}
	if ours != req.QEMUVersion {
		return "", nil, nil, 0, fmt.Errorf("QEMU differs: primary host runs %s, backup host runs %s; install the same QEMU on both hosts", req.QEMUVersion, ours)
	}
	logVer, err = logchan.LogVersionForQEMU(ours)
	if err != nil {
		return "", nil, nil, 0, err
	}
	if logVer != req.LogVersion {
		return "", nil, nil, 0, fmt.Errorf("replay log version differs: primary %#x, backup %#x", req.LogVersion, logVer)
	}
	if active, err := e.hv.IsActive(req.UUID); err != nil || active {
		return "", nil, nil, 0, fmt.Errorf("domain %q is already running on the backup host (or libvirt cannot tell: %v)", req.Name, err)
	}
	if err := e.cfg.checkPeerDomain(req.XML); err != nil {
		return "", nil, nil, 0, err
	}
	backupXML, err = ftxml.Backup(req.XML, ftxml.HostConfig{PeerAddress: primaryHost})
	if err != nil {
		return "", nil, nil, 0, err
	}
	cfg, _, err = ftxml.ParseConfig(backupXML)
	if err != nil {
		return "", nil, nil, 0, err
	}
	bdom, err = ftxml.ParseDomain(backupXML)
	if err != nil {
		return "", nil, nil, 0, err
	}
	if bdom.UUID != req.UUID {
		return "", nil, nil, 0, fmt.Errorf("prepare-backup for %q carries the XML of domain %q", req.UUID, bdom.UUID)
	}
	// The same QEMU build on both hosts (checkPeerDomain has made sure
	// the path is one of allowed-emulators before it is run here).
	emulator := domainEmulator(bdom)
	if emulator == "" {
		return "", nil, nil, 0, fmt.Errorf("/domain/devices/emulator: the domain names no emulator; name the same QEMU binary on both hosts (%s from libvirt-ft-qemu)", patchedQEMUPath)
	}
	build, err := e.hv.EmulatorBuild(emulator)
	if err != nil {
		return "", nil, nil, 0, fmt.Errorf("/domain/devices/emulator: the backup host cannot run it: %w; install the same libvirt-ft-qemu package on both hosts", err)
	}
	switch req.EmulatorBuild {
	case build:
	case "":
		return "", nil, nil, 0, fmt.Errorf("prepare-backup sent no emulator_build (the primary's QEMU build): the primary host's libvirt-ftd is older than this one; upgrade libvirt-ft on both hosts")
	default:
		return "", nil, nil, 0, fmt.Errorf("emulator_build: QEMU builds differ: %s is %q on the primary host and %q here; a backup replays only the log of the same build (the packaging/qemu patches change the log); install the same libvirt-ft-qemu package on both hosts", emulator, req.EmulatorBuild, build)
	}
	return backupXML, cfg, bdom, logVer, nil
}

// armBackup arms a backup of the primary described by req on this host: it
// generates the backup's domain XML (same machine, rr=replay), creates FIFO
// B and opens it with the feeder (version dword written), and opens the
// backup's output gates. The backup domain itself is started when the
// first log entries arrive, because QEMU in replay mode reads the first
// event during its start-up. On error nothing is left behind.
func armBackup(e env, req logchan.ControlRequest, primaryHost string, promote func(*primaryRun)) (_ *backupRun, err error) {
	backupXML, cfg, bdom, logVer, err := backupChecks(e, req, primaryHost)
	if err != nil {
		return nil, err
	}
	qemuName := req.Name
	if bdom != nil && bdom.Name != "" {
		qemuName = bdom.Name
	}
	b := &backupRun{env: e, uuid: req.UUID, name: req.Name, qemuName: qemuName, cfg: *cfg, backupXML: backupXML, primaryHost: primaryHost,
		epoch: req.Epoch, convert: req.Convert, diskSizes: req.DiskSizes, promote: promote, stop: make(chan struct{}), wake: make(chan struct{}, 1), state: ctl.StateArmed,
		detail: "waiting for the primary's log",
		log:    e.log.WithFields(logrus.Fields{"domain": req.Name, "role": ftxml.RoleBackup})}
	defer func() {
		if err != nil {
			b.close("arming failed")
		}
	}()
	fifo := ftxml.ReplayFIFOPath(*cfg, req.UUID)
	feeder, err := e.pipes.Replay(fifo, e.qemuUID, e.qemuGID, logVer)
	if err != nil {
		return nil, err
	}
	b.undo.push(func() {
		_ = os.Remove(fifo)
		_ = os.Remove(filepath.Dir(fifo)) // only if empty
	})
	b.undo.push(func() { feeder.Close() })
	gates, err := openBackupGates(e, req.UUID, *cfg, bdom)
	if err != nil {
		return nil, fmt.Errorf("libvirt-ft: domain %q: %w", req.Name, err)
	}
	b.undo.push(b.releaseGates)
	b.replayFIFO, b.feeder, b.gates = fifo, feeder, gates
	b.disks = ftxml.DiskPaths(bdom)
	b.files = domainFiles(bdom)
	e.inStep.drop(req.UUID)
	b.log.Info("armed: waiting for the primary's log")
	return b, nil
}

func (b *backupRun) role() ctl.Role { return ctl.RoleBackup }

func (b *backupRun) done() <-chan struct{} { return b.stop }

func (b *backupRun) setState(state ctl.State, detail string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	stepState(b.log, &b.state, &b.detail, state, detail)
}

// setStateIf sets the state only while it is still from, and reports
// whether it did. A step that may run after a concurrent one (the
// re-protection's "state received" after the log channel came up) uses it,
// so that it never turns a later state back.
func (b *backupRun) setStateIf(from, state ctl.State, detail string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != from {
		return false
	}
	stepState(b.log, &b.state, &b.detail, state, detail)
	return true
}

// stepState sets a run's state and detail (under the run's lock), logging
// a change; both roles' setState and setStateIf use it.
func stepState(log logrus.FieldLogger, cur *ctl.State, curDetail *string, state ctl.State, detail string) {
	if *cur != state || *curDetail != detail {
		log.Infof("state %s %s", state, detail)
	}
	*cur, *curDetail = state, detail
}

func (b *backupRun) driver() *failover.Driver {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.drv
}

// active reports whether this run still holds anything on the host.
func (b *backupRun) active() bool {
	select {
	case <-b.stop:
		return false
	default:
		return true
	}
}

// heartbeatTimeout is the domain's heartbeat timeout (procs.go).
func (b *backupRun) heartbeatTimeout() time.Duration { return b.cfg.HeartbeatTimeout }

// hasStarted reports whether the replaying QEMU was started (the first log
// arrived).
func (b *backupRun) hasStarted() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.qemuStarted
}

func (b *backupRun) started() {
	b.mu.Lock()
	b.running = true
	b.mu.Unlock()
}

// restartingLive reports whether go-live is restarting this domain as a
// primary on this host (its prepare hook then needs no peer).
func (b *backupRun) restartingLive() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.goingLive
}

func (b *backupRun) failoverView() (failover.Status, failover.Timings) {
	b.mu.Lock()
	drv, st, tm := b.drv, b.final, b.finalTm
	b.mu.Unlock()
	if drv != nil {
		return drv.View()
	}
	return st, tm
}

func (b *backupRun) stallInfo() *ctl.Stall {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stall == nil {
		return nil
	}
	s := *b.stall
	return &s
}

func (b *backupRun) goLiveInfo() *ctl.GoLive {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.wentLiveHow == nil {
		return nil
	}
	g := *b.wentLiveHow
	return &g
}

func (b *backupRun) status() ctl.DomainStatus {
	st, tm := b.failoverView()
	b.mu.Lock()
	defer b.mu.Unlock()
	s := ctl.DomainStatus{Name: b.name, UUID: b.uuid, Role: ctl.RoleBackup, Peer: b.peer,
		State: b.state, Detail: b.detail, SentBytes: b.fed, AckedBytes: b.fed,
		LogInstructions: b.fedInstr, BackupIcount: b.icount, HeartbeatAgeMS: -1, Gates: b.lastGates}
	if b.stall != nil {
		st := *b.stall
		s.Stall = &st
	}
	if b.wentLiveHow != nil {
		g := *b.wentLiveHow
		s.GoLive = &g
	}
	if b.gates != nil {
		s.Gates = b.gates.stats()
	}
	if b.fedInstr > b.icount {
		s.LagInstructions = b.fedInstr - b.icount
	}
	if !b.lastHeartbeat.IsZero() {
		s.HeartbeatAgeMS = time.Since(b.lastHeartbeat).Milliseconds()
	}
	if st.Role != 0 {
		s.Failover = st.State.String()
		s.Loss = lossOf(tm)
		s.LagMS = st.Lag * int64(failover.TickInterval/time.Millisecond)
	}
	return s
}

// serveLog serves one log channel from the primary. The receiver keeps
// reading (heartbeats must be seen even while FIFO B is full); Log frames
// go to a queue that the feeding goroutine writes into FIFO B (whole events
// only, contiguous offsets) and acknowledges with the offset now in FIFO B
// and the backup QEMU's icount. A malformed frame drops the connection,
// never the VM. The failover core decides when to go live.
func (b *backupRun) serveLog(pc *peerConn, hello logchan.Hello) {
	host, _, _ := net.SplitHostPort(pc.remote())
	refuse := func(why string) {
		b.log.Warnf("log channel from %s refused: %s", pc.remote(), why)
		pc.bye(logchan.Bye{Reason: why})
		pc.Close()
	}
	if !b.armedBy(host) {
		// The log channel belongs to the host that armed this backup.
		refuse("the backup of " + b.uuid + " was armed by another host")
		return
	}
	if hello.Epoch != b.epoch {
		// ... and to the pairing (the prepare-backup) that armed it.
		refuse(fmt.Sprintf("the backup of %s was armed for pairing epoch %q, not %q", b.uuid, b.epoch, hello.Epoch))
		return
	}
	b.mu.Lock()
	var why string
	switch {
	case b.feeder == nil || !b.active() || b.goingLive || b.live:
		why = "no backup armed for " + b.uuid + " that waits for a log channel"
	case b.convert:
		// Armed to take over a VM started without the ft element: it
		// goes live (OpGoLiveIncoming) and never replays a log.
		why = "the backup of " + b.uuid + " was armed to go live, not to replay a log"
	case b.link != nil || (b.drv != nil && !hello.Resume) || b.resuming:
		// A second log channel for the same pairing is refused.
		why = "no backup armed for " + b.uuid + " that waits for a log channel"
	case hello.Resume && (!b.awaitingResume || b.drv == nil):
		why = "no planned restart of the pairing of " + b.uuid + " to resume from"
	case hello.Resume && hello.Offset != b.received:
		why = fmt.Sprintf("cannot resume the log at offset %d: the backup received %d bytes", hello.Offset, b.received)
	}
	drv := b.drv
	first := drv == nil
	switch {
	case why != "":
	case first:
		b.link, b.peer = pc, pc.remote()
	default:
		b.resuming = true // one resume at a time
	}
	b.mu.Unlock()
	if why != "" {
		refuse(why)
		return
	}
	pc.startWriter()
	b.undo.push(func() { pc.Close() })
	if first {
		b.setState(ctl.StateReplicating, "log channel up")
		if !b.startCore() {
			pc.Close()
			return
		}
		b.mu.Lock()
		ia := b.incoming
		b.mu.Unlock()
		if ia != nil {
			ia.channelUp() // finishIncoming continues the QEMU
		}
		b.receive(pc)
		return
	}
	// A resume: taken only while the core still waits for the primary's
	// restart, decided on its goroutine (a grace that ended meanwhile
	// started the go-live). The ack is queued before the link is the
	// run's; a heartbeat may still go first (the writer sends a pending
	// heartbeat before a pending ack), and the primary skips it.
	ok := drv.StepIf(func(st failover.Status) bool { return st.PeerRestarting && st.State == failover.StateReplicating }, failover.ChannelUp{})
	b.mu.Lock()
	b.resuming = false
	if ok && b.active() && !b.goingLive && !b.live {
		b.awaitingResume = false
		b.peer = pc.remote()
		b.mu.Unlock()
		pc.queueAck(b.ack())
		b.mu.Lock()
		b.link = pc
	} else {
		ok = false
	}
	b.mu.Unlock()
	if !ok {
		refuse("the backup of " + b.uuid + " no longer waits for its primary's restart")
		return
	}
	b.setState(ctl.StateReplicating, "log channel resumed after a planned restart")
	b.log.Info("log channel resumed after a planned restart")
	b.receive(pc)
}

// startCore starts this backup's failover core, the feed loop and the
// FIFO B sampler: with the first log channel, or at once for a run
// adopted after a planned restart (its primary must resume the channel
// within the heartbeat timeout, or the backup goes live). It reports false
// if the run closed meanwhile.
func (b *backupRun) startCore(first ...failover.Event) bool {
	q := &frameQueue{}
	q.cond = sync.NewCond(&q.mu)
	ring := newLogRing(logRingBytes)
	var drv *failover.Driver
	drv, err := failover.NewDriver(nodeConfig(failover.RoleBackup, b.cfg, b.env.cfg), func(a failover.Action) { b.act(a, drv, q) })
	if err != nil {
		b.setState(ctl.StateUnprotected, err.Error())
		return false
	}
	b.mu.Lock()
	if !b.active() || b.drv != nil {
		// Closed meanwhile (close saw no driver to stop), or started
		// already.
		b.mu.Unlock()
		return false
	}
	if b.feeder != nil {
		// An adopted run's log starts where the previous daemon's feeding
		// ended: the ring counts icounts from there, so that a stall is
		// placed in it.
		ring.total = b.feeder.Instructions()
	}
	b.ring, b.stall, b.stallText, b.drv, b.q = ring, nil, "", drv, q
	feeder := b.feeder
	b.mu.Unlock()
	for _, ev := range first {
		drv.Post(ev) // before any tick
	}
	go drv.Run()
	b.mu.Lock()
	gates := b.gates
	b.mu.Unlock()
	if gates != nil {
		// A diverged replay must never go live (failover.Diverged).
		gates.setOnMismatch(func(j int, m gate.Mismatch) {
			b.mu.Lock()
			b.diverged = true // never recorded in step (instep.go), whatever the core does
			b.mu.Unlock()
			drv.Post(failover.Diverged{Reason: fmt.Sprintf("interface %d (%s): %v", j, ftxml.GateFilterID(j), m)})
		})
	}
	go b.watchUnread(feeder, drv)
	go b.watchVCPU(drv)
	go b.watchSched()
	wrote := make(chan struct{}, 1)
	go b.watchRead(feeder, wrote)
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		defer close(wrote) // feedLoop was its only sender
		b.feedLoop(feeder, q, drv, wrote)
	}()
	// Without FeedEnd (the primary ended cleanly, the backup is discarded)
	// nothing else would wake feedLoop once the run is closed.
	go func() {
		select {
		case <-b.stop:
			q.set(false, true)
		case <-fed:
		}
	}()
	return true
}

func (b *backupRun) currentLink() *peerConn {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.link
}

// receive reads the primary's log channel pc until it breaks or ends: log
// frames are checked and queued for FIFO B, heartbeats tell which frames
// the primary's gates sent. The end of a channel after the primary's
// ByeRestarting, or during this daemon's own handover, is expected.
func (b *backupRun) receive(pc *peerConn) {
	drv := b.driver()
	q := b.queue()
	if drv == nil || q == nil {
		pc.Close()
		return
	}
	b.mu.Lock()
	received := b.received
	b.mu.Unlock()
	for {
		m, err := pc.recv()
		if err != nil {
			b.mu.Lock()
			handing, restarting, current := b.handingOver, b.awaitingResume, b.link == pc
			if current && (handing || restarting) {
				b.link = nil
			}
			eof := b.linkEOF
			b.mu.Unlock()
			if handing && current {
				if eof != nil {
					close(eof)
				}
				return
			}
			pc.Close()
			if current && !restarting {
				drv.Post(failover.ChannelDown{Reason: err.Error()})
			}
			return // an old channel (a resumed one replaced it), or the primary's restart
		}
		switch m.Kind {
		case logchan.MsgHeartbeat:
			b.mu.Lock()
			b.lastHeartbeat = time.Now()
			gates := b.gates
			b.mu.Unlock()
			drv.Post(failover.HeartbeatReceived{})
			if gates != nil && len(m.Heartbeat.Released) > 0 {
				gates.forget(m.Heartbeat.Released)
			}
		case logchan.MsgDigests:
			b.mu.Lock()
			gates := b.gates
			b.mu.Unlock()
			if gates != nil {
				gates.verify(m.Digests)
			}
		case logchan.MsgBye:
			// Clean once: the reason reaches the failover core, the
			// state detail and the logs (docs/protocol.md §6.4).
			m.Bye = cleanBye(m.Bye)
			if m.Bye.Clean && m.Bye.Reason == failover.ByeRestarting {
				b.mu.Lock()
				b.awaitingResume = !b.handingOver
				b.mu.Unlock()
				// Only while replicating, as for the bye below: a state the
				// core set meanwhile stands.
				b.setStateIf(ctl.StateReplicating, ctl.StateReplicating, "the primary host's libvirt-ftd restarts (planned): waiting for its log channel")
			}
			if m.Bye.Clean && endsReplay(m.Bye.Reason) {
				// Before the core hears it: its answer (a halt, a
				// go-live) then sets the state after this detail, never
				// before it.
				b.setStateIf(ctl.StateReplicating, ctl.StateReplicating, "primary said bye: "+logchan.CleanText(m.Bye.Reason, 512)+"; replaying to the end of its log")
			}
			drv.Post(failover.PeerBye{Clean: m.Bye.Clean, Reason: m.Bye.Reason})
		case logchan.MsgLog:
			// Check the frame at once and acknowledge it as received:
			// everything queued is written into FIFO B before any END,
			// so the primary's output gate may release what it covers.
			if m.Offset != received {
				drv.Post(failover.ChannelDown{Reason: fmt.Sprintf("log frame at offset %d, expected %d", m.Offset, received)})
				pc.Close()
				return
			}
			if _, err := logchan.ScanEvents(m.Data); err != nil {
				drv.Post(failover.ChannelDown{Reason: fmt.Sprintf("log frame at offset %d: %v", m.Offset, err)})
				pc.Close()
				return
			}
			if ok, idle := q.pushIdle(m); ok {
				received += uint64(len(m.Data))
				b.mu.Lock()
				b.received = received
				started := b.qemuStarted
				b.mu.Unlock()
				// The feed's ack may join this one when feedLoop writes
				// the frame at once: it was idle, the frame is small and
				// the QEMU runs (peerConn.queueAckSoon).
				if idle && started && len(m.Data) <= coalesceFrameMax {
					pc.queueAckSoon(b.ack())
				} else {
					pc.queueAck(b.ack())
				}
			}
		case logchan.MsgAck:
			drv.Post(failover.ChannelDown{Reason: "an ack from the primary"})
			pc.Close()
			return
		}
	}
}

func (b *backupRun) queue() *frameQueue {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.q
}

// ack is the acknowledgement of this backup's current progress.
func (b *backupRun) ack() logchan.Ack {
	b.mu.Lock()
	defer b.mu.Unlock()
	return logchan.Ack{Offset: b.fed, Executed: max(b.icount, b.readIcount), Fed: b.fedInstr, Received: b.received}
}

// frameQueue holds received Log frames until they are in FIFO B. Its size
// is bounded by the primary's window (it sends no more unacknowledged
// bytes).
type frameQueue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	frames []logchan.Message
	at     []time.Time // when each of frames was pushed
	end    bool        // FeedEnd: write what is queued, then END; drop later frames
	closed bool
	// waiting: feedLoop waits in popAt for a frame (pushIdle's answer).
	waiting bool
}

// pushIdle is push, also reporting whether feedLoop was waiting for a
// frame with nothing queued: it then writes this one next, at once.
func (q *frameQueue) pushIdle(m logchan.Message) (ok, idle bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	idle = q.waiting && len(q.frames) == 0
	ok = !q.end && !q.closed
	if ok {
		q.frames = append(q.frames, m)
		q.at = append(q.at, time.Now())
	}
	q.cond.Broadcast()
	return ok, idle
}

// push queues m and reports whether it will be written into FIFO B (false
// once FeedEnd or a close came: the frame is dropped).
func (q *frameQueue) push(m logchan.Message) bool {
	ok, _ := q.pushIdle(m)
	return ok
}

// pop waits for a frame; ok false ends the feeding: end true means "write
// END now" (FeedEnd came and every frame queued before it was popped), end
// false that the queue was closed without FeedEnd. A queue closed after
// FeedEnd still yields its frames, then END, on purpose: they were
// acknowledged as received (the primary's output gate may have released
// what they cover), and a replaying QEMU left in replay mode would be
// destroyed by the next daemon, losing the VM if its primary is really
// gone; out of replay mode it waits, unannounced and with its output
// filters' sockets closed, for the next daemon's claim (restart.go).
// Checked in review (sessions 19 and 20).
func (q *frameQueue) pop() (m logchan.Message, ok bool, end bool) {
	m, _, ok, end = q.popAt()
	return m, ok, end
}

// popAt is pop, also returning when the frame was pushed (its receipt).
func (q *frameQueue) popAt() (m logchan.Message, at time.Time, ok bool, end bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.frames) == 0 && !q.end && !q.closed {
		q.waiting = true
		q.cond.Wait()
		q.waiting = false
	}
	if len(q.frames) > 0 {
		m, at = q.frames[0], q.at[0]
		q.frames, q.at = q.frames[1:], q.at[1:]
		return m, at, true, false
	}
	return logchan.Message{}, time.Time{}, false, q.end
}

func (q *frameQueue) set(end, closed bool) {
	q.mu.Lock()
	q.end = q.end || end
	q.closed = q.closed || closed
	q.cond.Broadcast()
	q.mu.Unlock()
}

// endsReplay reports whether a clean Bye with this reason leaves the backup
// replaying to the end of the log it has (ByeShutdown, or a reason for
// humans only), rather than restarting, switching over, going live or
// halting, whose steps set the state themselves (failover/types.go).
func endsReplay(reason string) bool {
	switch reason {
	case failover.ByeRestarting, failover.ByeSwitchover, failover.ByeLive, failover.ByeUnprotect:
		return false
	}
	return true
}

// coalesceFrameMax is the largest Log frame (bytes) whose receipt ack
// waits for its feed's (queueAckSoon): ScanEvents and the FIFO B write of
// 4 KiB take a few µs; an echo's frames are 100–300 bytes.
const coalesceFrameMax = 4096

// feedLoop writes queued frames into FIFO B and acknowledges them; after
// each write it signals wrote (watchRead), without waiting.
func (b *backupRun) feedLoop(feeder replayLog, q *frameQueue, drv *failover.Driver, wrote chan<- struct{}) {
	for {
		m, received, ok, end := q.popAt()
		if !ok {
			if end {
				// Frames after END are the live guest's: compare no more.
				b.mu.Lock()
				gates := b.gates
				b.mu.Unlock()
				if gates != nil {
					gates.stopVerify()
				}
				if err := feeder.WriteEnd(); err != nil {
					b.log.WithError(err).Error("writing END into FIFO B")
				}
				drv.Post(failover.EndFed{Bytes: feeder.Offset(), Instructions: feeder.Instructions()})
			}
			return
		}
		// serveLog queued only contiguous frames of whole events. Start
		// the backup QEMU with the first frame, before writing it: a
		// frame larger than FIFO B's pipe would block until QEMU reads.
		b.mu.Lock()
		start := !b.qemuStarted
		b.qemuStarted = true
		before := b.fedInstr
		ring := b.ring
		b.mu.Unlock()
		if start {
			go b.startQEMU()
		}
		// Feeder.Write refuses anything but whole events, writing nothing.
		if err := feeder.Write(m.Data); err != nil {
			drv.Post(failover.ChannelDown{Reason: fmt.Sprintf("log frame at offset %d: %v", m.Offset, err)})
			if pc := b.currentLink(); pc != nil {
				pc.Close()
			}
			q.set(false, true)
			return
		}
		instr := feeder.Instructions()
		if ring != nil {
			ring.add(m.Offset, m.Data, instr-before)
		}
		b.mu.Lock()
		b.fed += uint64(len(m.Data))
		b.fedInstr = instr
		fed := b.fed
		b.mu.Unlock()
		waited := int64(time.Since(received) / failover.TickInterval)
		drv.Post(failover.LogReceived{Offset: m.Offset, Bytes: fed, Instructions: instr, Waited: waited})
		if pc := b.currentLink(); pc != nil {
			pc.queueAck(b.ack())
		}
		select {
		case wrote <- struct{}{}:
		default: // watchRead has a signal pending already
		}
	}
}

// readAckInterval is how often watchRead samples FIFO B's read position
// while the backup's QEMU has log left to read in it (ms); it backs off,
// doubling up to readAckSlowest, while the bound stands still.
const readAckInterval = 5 * time.Millisecond

// readAckSlowest bounds watchRead's back-off (ms): QEMU reads its log in
// 4 KiB pieces, so a replay that is moving can leave the bound standing
// for tens of ms (4 KiB is about 13 ms of a bulk transmit's log), and a
// primary held by the lag bound waits for the next sample after it grows.
const readAckSlowest = 4 * readAckInterval

// watchRead tells the primary, every readAckInterval while the replaying
// QEMU has log unread in FIFO B, the executed icount its reading proves
// (replayLog.ExecutedAtLeast, a lower bound) whenever that grew. These acks
// are the lag bound's fresh samples (Config.MaxLagMS, docs/protocol.md §7):
// query-replay comes only every status interval, through libvirtd, and a
// primary held by the lag bound sends no log to be acknowledged, so each
// hold lasted until the next of those samples (up to status-interval-ms
// plus the monitor's answer, which took 4.6 ms at the median and up to
// hundreds of ms; BENCHMARKS.md, session 42). Once QEMU has read all that
// was fed, the bound cannot grow until more is written: it waits for
// feedLoop's signal (wrote) rather than polling an idle backup, and ends
// when feedLoop has ended (wrote closed) and nothing is left unread. While
// log stays unread and the bound stands still (QEMU not running yet, a
// stalled or dead replay) it samples less often, down to every
// readAckSlowest. sampleIcount turns it off (b.readOff) if a query-replay sample
// ever comes back below a bound taken before it.
func (b *backupRun) watchRead(feeder replayLog, wrote <-chan struct{}) {
	t := time.NewTimer(readAckInterval)
	defer t.Stop()
	var last uint64 // the largest bound seen (a link that comes back gets it in its first ack)
	every := readAckInterval
	pending := false // QEMU had log unread at the last sample
	for {
		if !pending {
			select {
			case <-b.stop:
				return
			case _, ok := <-wrote:
				if !ok {
					return // feedLoop ended (END fed, or the run closing)
				}
			}
			every = readAckInterval
		}
		t.Reset(every)
		select {
		case <-b.stop:
			return
		case <-t.C:
		}
		n, unread, err := feeder.ExecutedAtLeast()
		if err != nil {
			return // the feeder was closed
		}
		pending = unread > 0
		grew := n > last
		if grew {
			last, every = n, readAckInterval
		} else {
			every = min(2*every, readAckSlowest)
		}
		b.mu.Lock()
		live, off := b.live, b.readOff
		if !off {
			b.readIcount = max(b.readIcount, n)
		}
		link := b.link
		b.mu.Unlock()
		if live || off {
			return
		}
		if grew && link != nil {
			link.queueAck(b.ack())
		}
	}
}

// act carries out one action of the backup's failover core. It runs on
// the driver's goroutine: anything slow runs in its own goroutine.
func (b *backupRun) act(a failover.Action, drv *failover.Driver, q *frameQueue) {
	pc := b.currentLink() // nil while the primary's daemon restarts: its methods do nothing
	if !b.active() {
		switch a.(type) {
		case failover.FeedEnd, failover.AcquireLock, failover.GoLive, failover.Announce:
			// This run is closing (close): never start or carry on a
			// go-live then. Fail closed: the replaying QEMU stays in
			// replay mode and is destroyed, or judged by the next daemon.
			b.log.Warnf("not acting on %v: this backup run is closing", a)
			return
		}
	}
	switch a := a.(type) {
	case failover.SendHeartbeat:
		pc.queueHeartbeat()
	case failover.SendBye:
		bye := logchan.Bye{Clean: a.Clean, Reason: a.Reason}
		b.mu.Lock()
		stall, behind, info := b.stallText, b.behindText, goLiveText(b.wentLiveHow)
		b.mu.Unlock()
		if !a.Clean && stall != "" && strings.HasPrefix(a.Reason, "backup replay stalled") {
			// The bye after BackupStalled: tell the primary where in
			// the log the replay stopped (its status shows it), cut to
			// what the primary keeps.
			bye.Reason = "backup " + clip(stall, maxStallText)
		}
		if !a.Clean && behind != "" && strings.HasPrefix(a.Reason, "backup replay too far behind") {
			// The bye after BackupBehind, in ms.
			bye.Reason = "backup " + behind
		}
		if a.Reason == failover.ByeLive {
			// Tell the old primary how the go-live went (virt-ft status
			// there shows it after a switchover). On the driver's
			// goroutine: the node may be read.
			bye.Detail = drv.Node().Timings().Summary()
			if info != "" {
				bye.Detail += " (" + info + ")"
			}
		}
		pc.bye(bye)
	case failover.CloseChannel:
		// Half-close first: a full close with unread heartbeats in the
		// receive buffer makes Linux send a reset that can discard a
		// ByeLive just written. The primary closes its side on the bye;
		// the full close follows in any case.
		pc.closeWrite()
		time.AfterFunc(2*time.Second, func() { pc.Close() })
	case failover.FeedEnd:
		b.mu.Lock()
		b.goingLive = true
		b.mu.Unlock()
		b.setState(ctl.StateGoingLive, "primary lost: feeding END after the last whole event")
		q.set(true, false)
	case failover.WaitDrain:
		b.setState(ctl.StateGoingLive, fmt.Sprintf("draining: waiting for the backup to reach icount %d", a.Icount))
		b.mu.Lock()
		b.drainTo = a.Icount
		b.mu.Unlock()
		notify(b.wake)
	case failover.AcquireLock:
		go func() {
			if !b.active() {
				// close began since act's check: never claim the epoch
				// for a go-live that will not follow. A claim already
				// on its way when close begins can still win; that is
				// logged below (the window is one arbiter round trip).
				b.log.Warn("not claiming the split-brain lock: this backup run is closing")
				return
			}
			won, err := b.env.arbiter.Acquire(b.uuid, b.epoch)
			if won && err == nil && !b.active() {
				b.log.Errorf("the split-brain lock of epoch %s was won while this backup run was closing: the VM waits here, out of replay mode and unannounced, until the next libvirt-ftd claims again (it wins) and resumes it", b.epoch)
			}
			if err != nil && b.active() {
				b.mu.Lock()
				already := b.claimPaused
				b.claimPaused = true
				b.mu.Unlock()
				if !already && !b.env.pauseVM(b.uuid, "the arbiter cannot be reached ("+err.Error()+"); the VM waits until the split-brain claim is decided") {
					b.mu.Lock()
					b.claimPaused = false
					b.mu.Unlock()
				}
			}
			drv.Post(failover.LockResult{Won: won, Err: err})
		}()
	case failover.GoLive:
		b.setState(ctl.StateGoingLive, "going live: leaving replay mode at the end of the log")
		go func() { drv.Post(failover.GoLiveDone{Err: b.goLive()}) }()
	case failover.Announce:
		go b.announce()
	case failover.Cleanup:
		go b.cleanupAfterLive()
	case failover.HaltVM:
		// The replaying QEMU's end is no longer go-live's own: let
		// qemuStopped clean up when it is gone.
		b.mu.Lock()
		b.goingLive = false
		b.mu.Unlock()
		b.setState(ctl.StateStopped, "halting: "+a.Reason)
		go func() {
			// Its QEMU may already be gone (a go-live that failed after
			// destroying it): then no stop hook closes the run.
			b.env.destroyUntilGone(b.uuid, a.Reason, b.stop)
			b.close("halted: " + a.Reason)
		}()
	case failover.ReportUnprotected:
		b.setState(ctl.StateUnprotected, a.Reason)
	case failover.BackupStalled:
		b.noteStall(a)
	case failover.BackupBehind:
		lag := time.Duration(a.Lag) * failover.TickInterval
		ceiling := time.Duration(a.Ceiling) * failover.TickInterval
		text := fmt.Sprintf("replay too far behind: the oldest log not executed was received %d ms before the last icount sample (ceiling %d ms); icount %d, log up to icount %d fed",
			lag.Milliseconds(), ceiling.Milliseconds(), a.Icount, a.Fed)
		b.mu.Lock()
		b.behindText = text
		b.mu.Unlock()
		b.log.Error(text + "; this backup stops and the primary runs on alone")
	case failover.BackupResumed:
		d := time.Duration(a.Ticks) * failover.TickInterval
		st := nodeConfig(failover.RoleBackup, b.cfg, b.env.cfg).StallTimeout
		bound := time.Duration(st) * failover.TickInterval
		slow := time.Duration(failover.SlowStallBound(st)) * failover.TickInterval
		b.log.Infof("the replay stood still for %d ms with log unread, then went on at icount %d (a stall is declared at %d ms, or at %d ms while its vCPU runs with the monitor silent)%s",
			d.Milliseconds(), a.Icount, bound.Milliseconds(), slow.Milliseconds(), b.standCPU(d))
		b.env.metrics.replayStood(b.name, d)
	}
}

// startQEMU creates the transient backup domain (libvirt starts QEMU with
// rr=replay on FIFO B) and then samples its icount.
func (b *backupRun) startQEMU() {
	if err := b.env.hv.Create(b.backupXML); err != nil {
		b.setState(ctl.StateUnprotected, "starting the backup domain failed: "+err.Error())
		b.close("backup domain failed to start")
		return
	}
	if !b.active() {
		// The run ended while libvirt started its domain (the primary
		// cancelled, or unprotected, before the backup's QEMU ran): its
		// HaltVM found nothing to destroy, so nothing else will.
		b.env.destroyUntilGone(b.uuid, "the backup run ended while its domain started", nil)
		return
	}
	b.started()
	b.log.Info("backup domain started in replay mode")
	go b.sampleIcount()
}

// sampleIcount samples the replaying QEMU's executed icount
// (query-replay) every status interval, and every drainPoll while go-live
// drains (WaitDrain), until the run closes or the domain went live: for the
// lag figures the primary sees in acks, for the failover core's stall rule
// (failover.Config.StallTimeout), which must see every sample while it
// feeds END too, and for the drain. A failed sample (libvirtd restarted,
// the monitor is busy) looks the domain up again the next time, so that a
// healthy backup is never taken for a stalled one because of a stale
// handle.
func (b *backupRun) sampleIcount() {
	var client *qmp.Client
	release := func() {}
	defer func() { release() }()
	var nextOpen time.Time // back-off after failed opens
	failures := 0
	fellBack := false // pollingQMP warned of its fallback in this run
	interval := b.env.cfg.statusInterval()
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		case <-b.wake:
		}
		b.mu.Lock()
		live, drv, link, target := b.live, b.drv, b.link, b.drainTo
		b.mu.Unlock()
		if live {
			return
		}
		next := interval
		if target > 0 {
			next = drainPoll
		}
		t.Reset(next)
		if client == nil {
			// A failed open (libvirtd restarting, the domain going)
			// is tried again after a back-off, up to 1 s, not at
			// every interval: each try is a whole connection. Not
			// while go-live drains: it waits for this sample.
			if target == 0 && time.Now().Before(nextOpen) {
				continue
			}
			cl, rel, err := b.env.pollingQMP(b.uuid, &fellBack)
			if err != nil {
				failures++
				nextOpen = time.Now().Add(min(interval<<min(failures, 10), time.Second))
				continue
			}
			failures = 0
			client, release = cl, rel
		}
		b.mu.Lock()
		bound := b.readIcount // taken before the sample: the sample must not be below it
		b.mu.Unlock()
		ri, err := client.QueryReplay()
		if err != nil {
			release()
			client, release = nil, func() {}
			continue
		}
		executed := b.executedOf(ri)
		if ri.Mode == "play" && executed < bound {
			b.readBoundBroken(executed, bound)
		}
		icount := executed
		if ri.Mode == "none" && target > 0 {
			// A QEMU carrying packaging/qemu's end-of-log patch left
			// replay mode on reading END: it executed the whole log.
			icount = target
		}
		if target > 0 && icount >= target {
			b.mu.Lock()
			b.drainTo = 0
			b.mu.Unlock()
		}
		b.mu.Lock()
		b.icount = max(b.icount, executed)
		b.mu.Unlock()
		// The failover core watches this icount for a stalled replay
		// (Config.StallTimeout) and the drain.
		if drv != nil {
			drv.Post(failover.BackupIcount{Icount: icount})
		}
		// Tell the primary how far this backup has executed even when
		// no log flows (it may be waiting for the backup to catch up:
		// Config.MaxLagMS).
		if link != nil {
			link.queueAck(b.ack())
		}
	}
}

// executedOf is the replay's executed icount (guest instructions) counted
// from the log's first event, as the log's INSTRUCTION sums, the primary's
// lag figures and the failover core's drain target count it: query-replay's
// icount less icountBase. A sample below the base (never seen: QEMU's icount
// does not go back) reads 0, nothing executed.
func (b *backupRun) executedOf(ri qmp.ReplayInfo) uint64 {
	b.mu.Lock()
	base := b.icountBase
	b.mu.Unlock()
	if ri.Icount < base {
		return 0
	}
	return ri.Icount - base
}

// readBoundBroken turns the read-position bound (watchRead) off for the
// rest of the run: a query-replay sample (icount) came back below a bound
// taken before it, so QEMU reads FIFO B further ahead than
// logchan.QEMUReadAhead (another C library's buffering, a QEMU that
// buffers its log itself). The acks already sent only made the lag look
// shorter than it was; the output rule never rests on them (it uses
// Ack.Received).
func (b *backupRun) readBoundBroken(icount, bound uint64) {
	b.mu.Lock()
	already := b.readOff
	b.readOff, b.readIcount = true, 0
	b.mu.Unlock()
	if !already {
		b.log.Warnf("the replay's icount %d is below the %d its reading of FIFO B implied: this QEMU reads its log further ahead than %d bytes, so the lag bound goes back to query-replay's samples alone (max-lag-ms is then kept less tightly, nothing else changes)",
			icount, bound, logchan.QEMUReadAhead)
	}
}

// drainPoll is how often go-live's drain samples the replay's icount.
const drainPoll = 5 * time.Millisecond

// watchUnread samples the log its QEMU has not read from FIFO B every
// status interval and hands it to the failover core (FeedUnread), for the
// stall rule. It does not use the QEMU monitor, which a replay waiting for
// log holds.
func (b *backupRun) watchUnread(feeder replayLog, drv *failover.Driver) {
	b.whileReplaying(b.env.cfg.statusInterval(), func(running bool) bool {
		if !running {
			// libvirt has not resumed the QEMU yet (it starts paused):
			// its main loop may have read log it cannot replay before
			// the vCPU runs, and a slow start is no stall. The first
			// sample once it runs is progress (FeedUnread), so the bound
			// starts then.
			return true
		}
		n, err := feeder.Unread()
		if err != nil {
			return false // the feeder was closed
		}
		// Offset counts the events written, not the 4-byte version QEMU
		// read first: Written - Bytes is what QEMU read of the events,
		// give or take those 4 bytes.
		drv.Post(failover.FeedUnread{Bytes: uint64(n), Written: feeder.Offset() + 4})
		return true
	})
}

// whileReplaying calls sample every interval, with whether libvirt has
// let the replaying QEMU run yet, until the run closes, the domain went
// live, or sample returns false. It is the loop of the backup's periodic
// watchers (watchUnread, watchVCPU).
func (b *backupRun) whileReplaying(interval time.Duration, sample func(running bool) bool) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		}
		b.mu.Lock()
		live, running := b.live, b.running
		b.mu.Unlock()
		if live || !sample(running) {
			return
		}
	}
}

// pidName is the name libvirt gives the backup QEMU's pid file
// (Hypervisor.VCPUTime, SchedTimes): the backup XML's domain name.
func (b *backupRun) pidName() string {
	if b.qemuName != "" {
		return b.qemuName
	}
	return b.name
}

// vcpuWindow is how often watchVCPU compares the replay's vCPU time with
// the wall clock; a report counts
// for at least 1 s (failover.Node.slowNotStopped), so up to three may be
// late or missed.
const vcpuWindow = 250 * time.Millisecond

// watchVCPU tells the failover core (BackupExecuting) when the replaying
// QEMU's vCPU thread was on a CPU for at least half of the last
// vcpuWindow: a replay executing slowly holds the replay mutex for each
// vCPU turn (a whole log event without packaging/qemu 0018, 2^18
// instructions with it) and its monitor answers nothing meanwhile, and
// the core must not take that for a stall (docs/replay.md §12). The time
// is read from /proc (Hypervisor.VCPUTime), without libvirt or the
// monitor. Errors (the domain is gone) skip a window: no report, so the
// core applies the plain stall bound.
func (b *backupRun) watchVCPU(drv *failover.Driver) {
	var lastCPU time.Duration
	var lastAt time.Time
	warned := false // the first error of this run is logged
	b.whileReplaying(vcpuWindow, func(running bool) bool {
		if !running {
			lastAt = time.Time{}
			return true
		}
		cpu, err := b.env.hv.VCPUTime(b.uuid, b.pidName())
		now := time.Now()
		if err != nil {
			// A domain that is gone or being torn down is the run's end
			// (its stop hook follows), not a failure to report. The
			// message avoids "stalled", which test/e2e/distro.sh takes
			// for a verdict.
			if !warned && !isGoneOrStopping(err) && !errors.Is(err, errNoQEMU) && b.active() {
				warned = true
				b.log.WithError(err).Warn("reading the replay's vCPU time (/proc schedstat) failed: a slow replay gets only the plain stall bound")
			}
			lastAt = time.Time{}
			return true
		}
		if !lastAt.IsZero() && vcpuBusy(cpu-lastCPU, now.Sub(lastAt)) {
			drv.Post(failover.BackupExecuting{})
		}
		lastCPU, lastAt = cpu, now
		return true
	})
}

// watchSched samples the replaying QEMU's thread times every vcpuWindow
// into b.sched, for the words a stand or a stall gets in the log and in
// the stall report (standCPU). Diagnostic only, on its own goroutine: a
// slow read of /proc never delays watchVCPU's reports, which the stall
// rule uses. The ring covers the slow stall bound. A failed read adds no
// sample: the times are cumulative, so a gap inside a window is harmless,
// and schedRing.over refuses one that starts before a long gap or ends on
// a stale sample. The first failure that is not the QEMU's end (a /proc
// permission problem) is logged once.
func (b *backupRun) watchSched() {
	warned := false
	stall := nodeConfig(failover.RoleBackup, b.cfg, b.env.cfg).StallTimeout
	slow := time.Duration(failover.SlowStallBound(stall)) * failover.TickInterval
	b.mu.Lock()
	b.sched = schedRingFor(slow)
	b.mu.Unlock()
	b.whileReplaying(vcpuWindow, func(running bool) bool {
		if !running {
			return true // libvirt has not let it run yet
		}
		st, err := b.env.hv.SchedTimes(b.uuid, b.pidName())
		now := time.Now()
		if err == nil {
			// A failed read adds nothing (see above); a window across
			// two QEMUs is refused (schedRing.over).
			b.mu.Lock()
			b.sched.add(now, st)
			b.mu.Unlock()
		}
		if err != nil && !warned && !errors.Is(err, errNoQEMU) && !isGoneOrStopping(err) && b.active() {
			warned = true
			b.log.WithError(err).Warn("reading the replaying QEMU's thread times from /proc failed: stands and stalls are logged without them")
		}
		return true
	})
}

// standCPU words how the replaying QEMU's threads spent the last d (a
// stand or a stall: describeStand), "" without the samples to tell.
func (b *backupRun) standCPU(d time.Duration) string {
	b.mu.Lock()
	diff, wall, ok := b.sched.over(time.Now(), d)
	b.mu.Unlock()
	if !ok {
		return ""
	}
	return "; " + describeStand(diff, wall)
}

// vcpuBusy reports whether a vCPU that used cpu of CPU time over wall of
// elapsed time ran for at least half of it. A negative cpu (the QEMU was
// replaced between samples) is not busy.
func vcpuBusy(cpu, wall time.Duration) bool {
	return cpu >= 0 && wall > 0 && 2*cpu >= wall
}

// noteStall records a stalled replay (failover.BackupStalled) for the
// status and the log: where in the log the backup stopped and, with
// keep-stall-log, the stretch of log around that point.
func (b *backupRun) noteStall(a failover.BackupStalled) {
	b.mu.Lock()
	ring := b.ring
	b.mu.Unlock()
	p := stallPoint{Icount: a.Icount}
	if ring != nil {
		p = ring.at(a.Icount)
	}
	noProgress := a.Ticks * int64(failover.TickInterval/time.Millisecond)
	info := &ctl.Stall{Icount: a.Icount, NextEvent: p.Kind, Offset: p.Offset, NoProgressMS: noProgress, QueuedIcount: a.Fed}
	text := fmt.Sprintf("replay stalled at %s; no progress for %d ms with log up to icount %d queued", p, noProgress, a.Fed)
	cpu := b.standCPU(time.Duration(noProgress) * time.Millisecond)
	if b.env.cfg.KeepStallLog && ring != nil {
		path := filepath.Join(filepath.Dir(ftxml.RecordFIFOPath(b.cfg, b.uuid)),
			fmt.Sprintf("stall-%s-%d.rrstream", ftxml.RoleBackup, time.Now().Unix()))
		off, instr := ring.bounds()
		info.KeptLog, info.BaseOffset, info.BaseIcount = path, off, instr
		text += fmt.Sprintf("; the log around it is kept in %s (rrdump -base-offset %d -base-icount %d -icount %d %s)",
			path, off, instr, a.Icount, path)
		// Off the driver's goroutine: up to 2 MiB to write.
		data := ring.snapshot()
		go func() {
			// The directory may be gone: a daemon stopping for a planned
			// restart removes FIFO B's path, and with it the directory.
			err := os.MkdirAll(filepath.Dir(path), 0o700)
			if err == nil {
				err = os.WriteFile(path, data, 0o600)
			}
			if err != nil {
				b.log.WithError(err).Warn("keeping the log around the stall")
			}
		}()
	}
	// The backup's own log and virt-ft status keep the whole text (up to
	// maxStallReport), with the kept log's path and its rrdump command;
	// the bye to the primary carries its first maxStallText bytes
	// (act, SendBye), so a long state-directory path cannot push the
	// bye past logchan.MaxByeBytes.
	text = logchan.CleanText(text+cpu, maxStallReport)
	// Report: the backup's own virt-ft status shows the whole text, the
	// events after the first at its icount among it.
	info.Report = text
	b.mu.Lock()
	b.stall, b.stallText = info, text
	b.mu.Unlock()
	b.log.Error(text)
}

// qemuStopped is the stopped/release hook or libvirt's STOPPED event for
// the replaying QEMU. Go-live stops it on purpose; any other stop ends the
// backup, and the primary hears of it (an unclean bye).
func (b *backupRun) qemuStopped(why string) {
	b.mu.Lock()
	if b.goingLive {
		b.mu.Unlock()
		return
	}
	b.running = false
	b.mu.Unlock()
	b.close(why)
}

// releaseGates closes the backup's output gates, keeping their summary.
func (b *backupRun) releaseGates() {
	b.mu.Lock()
	gates := b.gates
	b.gates = nil
	if gates != nil {
		b.lastGates = gates.stats()
	}
	b.mu.Unlock()
	if gates != nil {
		gates.close()
	}
}

// takeGates hands the backup's output gates to the live primary.
func (b *backupRun) takeGates() *outputGates {
	b.mu.Lock()
	defer b.mu.Unlock()
	g := b.gates
	b.gates = nil
	return g
}

// close releases everything this run holds on this host (its undo stack)
// and stops its failover core; before going live it tells the primary at
// once that its backup is gone (an unclean bye). Safe to call more than
// once.
func (b *backupRun) close(why string) {
	first := false
	b.stopOnce.Do(func() { first = true; close(b.stop) })
	if first {
		b.log.Infof("backup run ends: %s", why)
	}
	b.mu.Lock()
	drv, link, live := b.drv, b.link, b.live
	b.drv = nil
	b.mu.Unlock()
	if drv != nil {
		// The failover core stops before the primary hears the bye: the
		// primary closes the channel on it, and a core still running
		// would take that for the primary's loss and go live (feed END:
		// the replaying QEMU leaves replay mode) while this run closes.
		// Found in review (session 19) behind a flaky unit test.
		st, tm := stopCore(drv, b.log)
		b.mu.Lock()
		b.final, b.finalTm = st, tm
		b.mu.Unlock()
		if st.MaxLag > 0 {
			// How close this run came to the lag ceiling (docs/replay.md §12).
			ceiling := time.Duration(nodeConfig(failover.RoleBackup, b.cfg, b.env.cfg).LagCeiling) * failover.TickInterval
			b.log.Infof("the replay's lag peaked at %d ms, at an icount sample with log unread (the lag ceiling is %d ms)",
				(time.Duration(st.MaxLag) * failover.TickInterval).Milliseconds(), ceiling.Milliseconds())
		}
	}
	if first && link != nil && !live {
		link.bye(logchan.Bye{Reason: why})
	}
	if drv != nil {
		b.mu.Lock()
		st := b.final
		c := inStepCandidate{uuid: b.uuid, epoch: b.epoch, role: "backup", disks: b.disks}
		fed, received := b.fed, b.received
		allFed := fed == received
		gates := b.gates
		b.mu.Unlock()
		if st.State == failover.StateReplicating && st.PeerEnded && !live {
			switch {
			case !allFed:
				b.log.Infof("not in step (the next start hashes the disks): %d of the %d log bytes received were fed", fed, received)
			case !b.framesAgreed(gates):
			default:
				// The primary's VM ended cleanly and sent its whole log,
				// all of it is in FIFO B, and the replayed frames matched
				// every digest: in step once libvirt says the replay shut
				// down by itself (instep.go).
				b.env.inStep.offer(c)
			}
		} else if st.PeerEnded && !live {
			b.log.Infof("not in step (the next start hashes the disks): the run ended in failover state %s (%s)", st.State, st.Reason)
		}
	}
	b.undo.run()
}

// driverStopWait bounds how long a run's close waits for its failover
// core's goroutine to return: longer than the action it may be carrying
// out (a bye or heartbeat written to an unresponsive peer: writeTimeout).
const driverStopWait = writeTimeout + time.Second

// stopCore stops a run's failover core (primary or backup) and waits, up
// to driverStopWait, until its goroutine has returned, so that no action
// of it runs once the caller goes on closing the run. A backup run also
// ignores go-live actions once it is closing (act), should the wait end
// first. It returns the core's last view, for the run's final status.
func stopCore(drv *failover.Driver, log logrus.FieldLogger) (failover.Status, failover.Timings) {
	drv.Stop()
	select {
	case <-drv.Done():
	case <-time.After(driverStopWait):
		log.Warnf("the failover core did not stop within %v; closing anyway", driverStopWait)
	}
	return drv.View()
}

// framesAgreed waits, up to a second, until the backup's gates have
// compared every frame digest the primary sent (the last came with its
// bye; the gates may still be reading the replay's last frames), and
// reports whether they all matched. No gates (output gate off): true.
func (b *backupRun) framesAgreed(gates *outputGates) bool {
	if gates == nil {
		return true
	}
	deadline := time.Now().Add(time.Second)
	for {
		b.mu.Lock()
		diverged := b.diverged
		b.mu.Unlock()
		if diverged {
			return false
		}
		if gates.settled() {
			return true
		}
		if time.Now().After(deadline) {
			b.log.Warn("the replayed frames were not all compared with the primary's digests: its disks are not recorded in step (the next start hashes them)")
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// armedBy reports whether host (an IP address, as the peer connection
// shows it) armed this backup.
func (b *backupRun) armedBy(host string) bool {
	return host != "" && host == b.primaryHost
}
