package plugin

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"libvirt.org/go/libvirtxml"

	"github.com/libvirt-ft/libvirt-ft/failover"
	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// Controller states (ctl.DomainStatus.State).
const (
	StateDefined     = "defined"     // valid, rewritten, not running
	StateRefused     = "refused"     // cannot be protected; Detail says why
	StatePreparing   = "preparing"   // prepare hook running (seeding, arming)
	StateSeeding     = "seeding"     // copying disks to the backup host
	StateWaiting     = "waiting"     // primary: QEMU not yet recording
	StateReplicating = "replicating" // log flowing, backup acking
	StateUnprotected = "unprotected" // primary running without a backup
	StateArmed       = "armed"       // backup: FIFO ready, waiting for the log
	StateStopped     = "stopped"
	StateGoingLive   = "going-live" // backup: primary lost; draining, then going live
	StateLive        = "live"       // the former backup runs the VM (unprotected)
	// StateSwitchingOver: primary, planned switchover under way (virt-ft
	// failover): the log is cut, the backup is going live.
	StateSwitchingOver = "switching-over"
)

// controller drives one protected domain on this host.
type controller struct {
	d    *Daemon
	uuid string
	name string
	role string
	log  logrus.FieldLogger

	mu       sync.Mutex
	cfg      ftxml.Config
	state    string
	detail   string
	peerAddr string
	running  bool

	// log channel figures
	sentBytes, ackedBytes uint64
	receivedBytes         uint64    // backup: log received and queued for FIFO B
	icountChangedAt       time.Time // primary: when Ack.Executed last grew
	logInstr, backupIcnt  uint64
	lastHeartbeat         time.Time
	samples               []sample // primary: (instructions, time) to turn icount lag into ms
	lagMS                 int64

	// ring (backup) keeps the last MiB of the log fed, to place a stalled
	// replay in it; stall describes the last stall (its backup's, on a
	// primary: from the backup's bye).
	ring  *logRing
	stall string

	drv   *driver // the failover core, while the log channel lives
	epoch string  // pairing epoch: names the split-brain lock

	// primary
	recordFIFO string
	rr         *logchan.RecordReader
	link       *peerConn
	gates      *outputGates // the output gates (the backup's too, with the gate on; see openBackupGates)

	// backup
	primaryHost string
	goingLive   bool   // FeedEnd issued: the replaying QEMU's end is ours
	live        bool   // went live: this host now runs the VM
	goLiveInfo  string // the go-live time and its parts
	// lastFailover and lastGoLive keep the failover core's final state
	// and timings after the driver is gone (virt-ft status).
	lastFailover, lastGoLive string
	switchedOver             bool
	lastGate                 string // the output gates' last summary
	backupXML                string
	replayFIFO               string
	feeder                   *logchan.Feeder
	started                  bool
	stopOnce                 sync.Once
	done                     chan struct{}
}

type sample struct {
	instr uint64
	at    time.Time
}

func newController(d *Daemon, uuid, name, role string) *controller {
	return &controller{d: d, uuid: uuid, name: name, role: role, state: StateDefined,
		log: d.log.WithFields(logrus.Fields{"domain": name, "role": role}), done: make(chan struct{})}
}

func (c *controller) setState(state, detail string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != state || c.detail != detail {
		c.log.Infof("state %s %s", state, detail)
	}
	c.state, c.detail = state, detail
}

func (c *controller) setConfig(cfg ftxml.Config) {
	c.mu.Lock()
	c.cfg = cfg
	if c.role == ftxml.RolePrimary {
		c.peerAddr = peerAddr(cfg)
	}
	c.mu.Unlock()
}

func (c *controller) refuse(err error) { c.setState(StateRefused, err.Error()) }

func (c *controller) defined(warnings []string) {
	c.mu.Lock()
	running := c.running
	c.mu.Unlock()
	if running {
		return
	}
	detail := ""
	if len(warnings) > 0 {
		detail = fmt.Sprintf("%d warning(s): %s", len(warnings), warnings[0])
	}
	c.setState(StateDefined, detail)
}

// idle reports whether nothing is running for this domain.
func (c *controller) idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.running && c.link == nil && c.feeder == nil
}

func (c *controller) status() ctl.DomainStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := ctl.DomainStatus{Name: c.name, UUID: c.uuid, Role: c.role, Peer: c.peerAddr,
		State: c.state, Detail: c.detail, SwitchedOver: c.switchedOver, SentBytes: c.sentBytes, AckedBytes: c.ackedBytes,
		LogInstructions: c.logInstr, BackupIcount: c.backupIcnt, HeartbeatAgeMS: -1, LagMS: c.lagMS, Stall: c.stall}
	if c.gates != nil {
		s.OutputGate = c.gates.summary()
	} else {
		s.OutputGate = c.lastGate
	}
	if c.state == StateLive {
		// The former backup runs the VM: it is the primary now.
		s.Role = ftxml.RolePrimary
	}
	if c.sentBytes > c.ackedBytes {
		s.LagBytes = c.sentBytes - c.ackedBytes
	}
	if c.logInstr > c.backupIcnt {
		s.LagInstructions = c.logInstr - c.backupIcnt
	}
	if !c.lastHeartbeat.IsZero() {
		s.HeartbeatAgeMS = time.Since(c.lastHeartbeat).Milliseconds()
	}
	switch {
	case c.drv != nil:
		st, tm := c.drv.view()
		s.Failover = st.State.String()
		s.GoLive = timingSummary(tm)
	default:
		s.Failover, s.GoLive = c.lastFailover, c.lastGoLive
	}
	if c.goLiveInfo != "" {
		s.GoLive += " (" + c.goLiveInfo + ")"
	}
	return s
}

// timingSummary gives the parts of the last loss, go-live or switchover in
// ms (failover.Timings), or "" when there was none.
func timingSummary(tm failover.Timings) string {
	if tm.Detected == failover.NotYet {
		return ""
	}
	ms := func(t int64) string {
		if t == failover.NotYet {
			return "-"
		}
		return fmt.Sprintf("%d ms", t*int64(TickInterval/time.Millisecond))
	}
	return fmt.Sprintf("cause: %s; silence to detection %s, to drained %s, lock %s, to running %s; total %s",
		tm.Cause, ms(tm.Detection()), ms(tm.Drain()), ms(tm.Lock()), ms(tm.Start()), ms(tm.Total()))
}

func (c *controller) heartbeat() {
	c.mu.Lock()
	c.lastHeartbeat = time.Now()
	c.mu.Unlock()
}

// domainStarted is the "started" hook: QEMU runs.
func (c *controller) domainStarted() {
	c.mu.Lock()
	c.running = true
	c.mu.Unlock()
}

// restartingLive reports whether this host's domain is being restarted as a
// primary by go-live (its prepare hook then needs no peer).
func (c *controller) restartingLive() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.goingLive
}

func (c *controller) currentRole() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.role
}

// domainStopped is the "stopped"/"release" hook or libvirt's STOPPED event.
func (c *controller) domainStopped(why string) {
	c.mu.Lock()
	if c.goingLive {
		// The replaying QEMU that go-live stops on purpose.
		c.mu.Unlock()
		return
	}
	c.running = false
	role := c.role
	c.mu.Unlock()
	if role == ftxml.RoleBackup {
		c.close(why)
		c.d.forget(c.uuid, c)
		return
	}
	c.mu.Lock()
	fifo := c.recordFIFO
	rr, link, cfg := c.rr, c.link, c.cfg
	live := c.live
	c.mu.Unlock()
	if live {
		// The former backup's gates (its filters are off since
		// go-live): their QEMU is gone.
		c.releaseGates()
	}
	if rr != nil && link != nil && !rr.Connected() {
		if p, err := rr.Produced(); err == nil && p == 0 {
			// QEMU stopped without ever opening FIFO A (it failed to
			// start after the prepare hook): the pump would wait for it
			// forever, holding the log channel, the output gates and the
			// armed backup, and the next start would be refused as
			// "already replicating". There is no log: nothing to fail
			// over to.
			c.log.Warn("QEMU stopped before recording anything: releasing the log channel, the output gates and the backup")
			c.close(why)
			go c.cancelPeerBackup(cfg)
		}
	}
	// The pump sees EOF on FIFO A and finishes the channel; the FIFO file is
	// no longer needed once QEMU has exited.
	if fifo != "" {
		_ = os.Remove(fifo)
	}
	c.mu.Lock()
	if c.state != StateRefused {
		c.state, c.detail = StateStopped, why
	}
	c.mu.Unlock()
}

// cancelPeerBackup asks the backup host to discard the backup it armed for
// this domain (it does so only while the backup domain has not started).
func (c *controller) cancelPeerBackup(cfg ftxml.Config) {
	qemuVer, err := c.d.qemuVersion()
	if err != nil {
		return
	}
	logVer, err := logchan.LogVersionForQEMU(qemuVer)
	if err != nil {
		return
	}
	ctrl, err := dialControl(peerAddr(cfg), c.d.cfg.dialTimeout(), c.uuid, qemuVer, logVer)
	if err != nil {
		c.log.WithError(err).Warn("cannot ask the backup host to discard the armed backup")
		return
	}
	defer ctrl.Close()
	_ = ctrl.request(controlRequest{Op: opCancelBackup, UUID: c.uuid}, nil)
}

// releaseGates closes the output gates, if any, keeping their last summary
// for virt-ft status.
func (c *controller) releaseGates() {
	c.mu.Lock()
	gates := c.gates
	c.gates = nil
	if gates != nil {
		c.lastGate = gates.summary()
	}
	c.mu.Unlock()
	if gates != nil {
		gates.close()
	}
}

// close releases everything this controller holds on this host.
func (c *controller) close(why string) {
	c.mu.Lock()
	link, feeder, rr, drv := c.link, c.feeder, c.rr, c.drv
	c.link, c.feeder, c.rr, c.drv = nil, nil, nil, nil
	fifoA, fifoB := c.recordFIFO, c.replayFIFO
	c.mu.Unlock()
	if drv != nil {
		drv.close()
		// Keep the last failover state and timings for virt-ft status.
		st, tm := drv.view()
		c.mu.Lock()
		c.lastFailover, c.lastGoLive = st.State.String(), timingSummary(tm)
		c.mu.Unlock()
	}
	if link != nil {
		if c.currentRole() == ftxml.RoleBackup {
			// Tell the primary at once that its backup is gone.
			link.bye(encodeBye(false, why))
		}
		link.Close()
	}
	c.releaseGates()
	if feeder != nil {
		feeder.Close()
	}
	if rr != nil {
		rr.Close()
	}
	for _, f := range []string{fifoA, fifoB} {
		if f != "" {
			_ = os.Remove(f)
			_ = os.Remove(filepath.Dir(f)) // only if empty
		}
	}
	c.stopOnce.Do(func() { close(c.done) })
}

// ---------------------------------------------------------------- primary

// preparePrimary runs in the prepare hook, before libvirt starts QEMU: it
// verifies (seeding if needed) the backup's disk copies, arms the backup on
// the peer host, creates FIFO A and opens it for reading, and starts the
// log pump. On error nothing is left behind on either host.
func (c *controller) preparePrimary(xml string, dom *libvirtxml.Domain) (err error) {
	c.mu.Lock()
	if c.link != nil {
		c.mu.Unlock()
		return fmt.Errorf("libvirt-ft: domain %q: already replicating", c.name)
	}
	cfg := c.cfg
	c.stopOnce = sync.Once{}
	c.done = make(chan struct{})
	c.sentBytes, c.ackedBytes, c.logInstr, c.backupIcnt, c.lagMS = 0, 0, 0, 0, 0
	c.samples = nil
	c.lastHeartbeat = time.Time{}
	c.mu.Unlock()
	c.setState(StatePreparing, "contacting peer "+peerAddr(cfg))
	fail := func(e error) error {
		c.setState(StateRefused, e.Error())
		return e
	}

	qemuVer, err := c.d.qemuVersion()
	if err != nil {
		return fail(fmt.Errorf("libvirt-ft: domain %q: %w", c.name, err))
	}
	logVer, err := logchan.LogVersionForQEMU(qemuVer)
	if err != nil {
		return fail(fmt.Errorf("libvirt-ft: domain %q: %w", c.name, err))
	}
	ctrl, err := dialControl(peerAddr(cfg), c.d.cfg.dialTimeout(), c.uuid, qemuVer, logVer)
	if err != nil {
		return fail(fmt.Errorf("libvirt-ft: domain %q: backup host %s: %w; is libvirt-ftd running there and is <ft:peer> right?", c.name, peerAddr(cfg), err))
	}
	defer ctrl.Close()

	// Disks: the backup replays block I/O against byte-identical copies.
	for _, path := range ftxml.DiskPaths(dom) {
		if err := c.ensureSeeded(ctrl, path); err != nil {
			return fail(fmt.Errorf("libvirt-ft: domain %q: disk %s: %w", c.name, path, err))
		}
	}

	armed := false
	defer func() {
		if err != nil && armed {
			_ = ctrl.request(controlRequest{Op: opCancelBackup, UUID: c.uuid}, nil)
		}
	}()
	c.setState(StatePreparing, "arming the backup on "+peerAddr(cfg))
	epoch := strconv.FormatInt(time.Now().UnixNano(), 36)
	c.mu.Lock()
	c.epoch = epoch
	c.mu.Unlock()
	c.d.arbiter().forget(c.uuid, epoch)
	if err := ctrl.request(controlRequest{Op: opPrepareBackup, UUID: c.uuid, Name: c.name, XML: xml,
		QEMUVersion: qemuVer, LogVersion: logVer, Epoch: epoch}, nil); err != nil {
		return fail(fmt.Errorf("libvirt-ft: domain %q: backup host %s refused the backup: %w", c.name, peerAddr(cfg), err))
	}
	armed = true

	fifo := ftxml.RecordFIFOPath(cfg, c.uuid)
	if err := logchan.CreateFIFO(fifo, c.d.qemuUID, c.d.qemuGID, 0o600); err != nil {
		return fail(fmt.Errorf("libvirt-ft: domain %q: %w", c.name, err))
	}
	rr, err := logchan.OpenRecordReader(fifo)
	if err != nil {
		_ = os.Remove(fifo)
		return fail(fmt.Errorf("libvirt-ft: domain %q: %w", c.name, err))
	}
	c.releaseGates() // a former backup's, left by a go-live: before listening on the same paths
	gates, err := c.openGates(cfg, dom, rr)
	if err != nil {
		rr.Close()
		_ = os.Remove(fifo)
		return fail(fmt.Errorf("libvirt-ft: domain %q: %w", c.name, err))
	}
	link, err := dialLog(peerAddr(cfg), c.d.cfg.dialTimeout(), c.uuid, qemuVer, logVer)
	if err != nil {
		gates.close()
		rr.Close()
		_ = os.Remove(fifo)
		return fail(fmt.Errorf("libvirt-ft: domain %q: log channel to %s: %w", c.name, peerAddr(cfg), err))
	}
	// Heartbeats tell the backup which frames left, so that at go-live it
	// sends only the rest (openBackupGates).
	link.released = gates.released
	c.mu.Lock()
	c.recordFIFO, c.rr, c.link, c.gates = fifo, rr, link, gates
	c.mu.Unlock()
	c.setState(StateWaiting, "waiting for QEMU to record")
	go c.pumpPrimary(cfg, rr, link)
	return nil
}

// ensureSeeded makes the backup's copy of path byte-identical to ours:
// compare SHA-256 digests; copy when they differ; verify after copying.
func (c *controller) ensureSeeded(ctrl *peerConn, path string) error {
	local, err := hashFile(path)
	if err != nil {
		return err
	}
	var remote hashReply
	if err := ctrl.request(controlRequest{Op: opHash, Path: path}, &remote); err != nil {
		return err
	}
	if remote.Exists && remote.SHA256 == local.SHA256 && remote.Size == local.Size {
		c.log.Infof("disk %s: backup copy identical (sha256 %s, %d bytes)", path, local.SHA256[:12], local.Size)
		return nil
	}
	c.log.Infof("disk %s: seeding %d bytes to the backup host", path, local.Size)
	progress := func(done, total int64) {
		c.setState(StateSeeding, fmt.Sprintf("%s: %d/%d MiB (%d%%)", path, done>>20, total>>20, pct(done, total)))
	}
	if err := ctrl.seed(path, local, progress); err != nil {
		return fmt.Errorf("seeding the backup's copy: %w", err)
	}
	if err := ctrl.request(controlRequest{Op: opHash, Path: path}, &remote); err != nil {
		return err
	}
	if !remote.Exists || remote.SHA256 != local.SHA256 {
		return fmt.Errorf("backup's copy differs after seeding (sha256 %s here, %s there): refusing to replicate", local.SHA256, remote.SHA256)
	}
	c.log.Infof("disk %s: seeded and verified (sha256 %s)", path, local.SHA256[:12])
	return nil
}

func pct(a, b int64) int64 {
	if b == 0 {
		return 100
	}
	return a * 100 / b
}

// pumpPrimary reads FIFO A, cuts it into whole events and sends them over the
// log channel, keeping at most WindowBytes unacknowledged. The failover core
// (a failover.Node driven by a driver) decides what happens when the backup
// falls silent or the channel breaks: DrainLocally makes this loop keep
// reading FIFO A and discard (the primary never blocks on a dead backup),
// then the split-brain lock decides between going on unprotected and halting.
func (c *controller) pumpPrimary(cfg ftxml.Config, reader *logchan.RecordReader, link *peerConn) {
	defer c.close("primary log ended")
	dec := logchan.NewStreamDecoder()
	window := uint64(c.d.cfg.WindowBytes)
	maxLag := time.Duration(c.d.cfg.MaxLagMS) * time.Millisecond

	var (
		mu      sync.Mutex
		cond    = sync.NewCond(&mu)
		acked   uint64
		discard bool // DrainLocally: stop sending, keep reading
		// sentOnLink is the stream offset (exclusive end) of the log
		// written to the log channel: the most the backup can have
		// received.
		sentOnLink atomic.Uint64
	)
	setDiscard := func() {
		mu.Lock()
		discard = true
		cond.Broadcast()
		mu.Unlock()
	}
	c.mu.Lock()
	gates := c.gates
	c.stall = "" // a new pairing
	c.mu.Unlock()
	if gates == nil {
		gates = &outputGates{}
	}
	drv, err := newDriver(failover.RolePrimary, cfg, c.d.cfg.statusInterval(), func(a failover.Action) {
		switch a := a.(type) {
		case failover.SendHeartbeat:
			go func() { _ = link.sendHeartbeat() }()
		case failover.SendBye:
			link.bye(encodeBye(a.Clean, a.Reason))
		case failover.CloseChannel:
			link.closeWrite()
		case failover.DrainLocally:
			setDiscard()
			if a.Switchover {
				c.setState(StateSwitchingOver, "planned switchover: log sending stopped; waiting for the backup to go live")
			} else {
				c.setState(StateUnprotected, "backup lost: draining the log locally; claiming the split-brain lock")
			}
		case failover.AcquireLock:
			go func() {
				won, err := c.d.arbiter().acquire(c.uuid, c.epoch)
				c.post(failover.LockResult{Won: won, Err: err})
			}()
		case failover.ReportUnprotected:
			setDiscard()
			gates.unprotect()
			c.setState(StateUnprotected, a.Reason)

		case failover.HaltVM:
			setDiscard()
			gates.drop()
			c.setState(StateStopped, "halting: "+a.Reason)
			go c.d.destroyDomain(c.uuid, "split brain: "+a.Reason)
		case failover.StopPrimaryVM:
			setDiscard()
			gates.drop()
			c.mu.Lock()
			c.switchedOver = true
			c.mu.Unlock()
			c.setState(StateStopped, "switched over: the backup on "+c.peerAddr+" is live; stopping this host's VM")
			go c.d.destroyDomain(c.uuid, "planned switchover: the backup is live")
		}
	})
	if err != nil {
		c.setState(StateUnprotected, err.Error())
		return
	}
	c.mu.Lock()
	c.drv = drv
	c.mu.Unlock()
	go drv.run()
	defer drv.close()

	// Receiver: acks and heartbeats from the backup.
	go func() {
		for {
			m, err := link.recv()
			if err != nil {
				drv.post(failover.ChannelDown{Reason: err.Error()})
				link.Close()
				return
			}
			switch m.kind {
			case msgAck:
				mu.Lock()
				if m.ack.Offset > acked {
					acked = m.ack.Offset
				}
				cond.Broadcast()
				mu.Unlock()
				// Never more than this channel really carried: a
				// peer's Received beyond it covers no log it holds.
				gates.ack(min(m.ack.Received, sentOnLink.Load()))
				c.recordAck(m.ack.Offset, m.ack.Executed)
				drv.post(failover.AckReceived{Offset: m.ack.Offset, Icount: m.ack.Executed, Fed: m.ack.Fed})
			case msgHeartbeat:
				c.heartbeat()
				drv.post(failover.HeartbeatReceived{})
			case msgBye:
				reason, detail := splitByeDetail(m.clean, m.text)
				if detail != "" {
					c.mu.Lock()
					c.goLiveInfo = "backup: " + detail
					c.mu.Unlock()
				}
				if stall, ok := strings.CutPrefix(reason, "backup replay stalled"); ok && !m.clean {
					// The backup's replay stopped (failover.BackupStalled
					// there): keep where, for virt-ft status.
					c.mu.Lock()
					c.stall = peerText("replay stalled"+stall, 512)
					c.mu.Unlock()
				}
				drv.post(failover.PeerBye{Clean: m.clean, Reason: reason})
			}
		}
	}()

	buf := make([]byte, 64<<10)
	first := true
	// LIBVIRT_FT_TEE_DIR (diagnostics): keep a copy of the record log as
	// <dir>/<uuid>.rrstream (no header; test/tools/rrdump reads it).
	var tee *os.File
	if dir := os.Getenv("LIBVIRT_FT_TEE_DIR"); dir != "" {
		if f, err := os.Create(filepath.Join(dir, c.uuid+".rrstream")); err == nil {
			tee = f
			defer f.Close()
		}
	}
	for {
		mu.Lock()
		for !discard && c.sent()-acked >= window {
			cond.Wait()
		}
		sending := !discard
		mu.Unlock()
		if sending && c.lagging(maxLag) {
			// Time, not an ack, may end the wait (lagging stops holding
			// a backup that no longer advances): poll.
			time.Sleep(10 * time.Millisecond)
			continue
		}

		n, err := reader.Read(buf)
		if n > 0 && tee != nil {
			_, _ = tee.Write(buf[:n])
		}
		if n > 0 {
			if first {
				first = false
				c.setState(StateReplicating, "")
			}
			chunk, derr := dec.Feed(buf[:n])
			if derr != nil {
				// A log we cannot parse cannot be replayed: the backup is lost.
				drv.post(failover.ChannelDown{Reason: "log decode error: " + derr.Error()})
				setDiscard()
				sending = false
			}
			if len(chunk.Data) > 0 {
				c.recordSent(len(chunk.Data), chunk.Instructions)
				if sending {
					// Before the write: the backup's ack of it may
					// arrive before sendLog returns.
					sentOnLink.Store(chunk.Offset + uint64(len(chunk.Data)))
					if serr := link.sendLog(chunk.Offset, chunk.Data); serr != nil {
						drv.post(failover.ChannelDown{Reason: serr.Error()})
						setDiscard()
					}
				}
			}
		}
		if err != nil {
			c.mu.Lock()
			closed := c.rr != reader
			c.mu.Unlock()
			if closed {
				// c.close closed FIFO A (the daemon is stopping, or QEMU
				// stopped before it ever recorded): nothing to report.
				return
			}
			if !errors.Is(err, io.EOF) {
				c.log.WithError(err).Warn("reading the record FIFO")
			}
			// QEMU exited: cleanly when its log ended with END (guest
			// shutdown, virsh shutdown/destroy), else it crashed or was
			// killed, and the backup must go live.
			clean := dec.Ended()
			_ = link.flush()
			drv.post(failover.QEMUExited{Clean: clean})
			// Let the driver send the bye and close our direction.
			deadline := time.Now().Add(2 * time.Second)
			for time.Now().Before(deadline) {
				if st, _ := drv.view(); st.State == failover.StateStopped || st.State == failover.StateHalted {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if clean {
				c.setState(StateStopped, "primary QEMU exited; log ended")
			} else {
				c.setState(StateStopped, "primary QEMU died without ending its log")
			}
			return
		}
	}
}

// post hands an event to this controller's failover driver, if any.
func (c *controller) post(ev failover.Event) {
	c.mu.Lock()
	drv := c.drv
	c.mu.Unlock()
	if drv != nil {
		drv.post(ev)
	}
}

func (c *controller) sent() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sentBytes
}

func (c *controller) recordSent(n int, instr uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sentBytes += uint64(n)
	c.logInstr += instr
	now := time.Now()
	if len(c.samples) == 0 || now.Sub(c.samples[len(c.samples)-1].at) > 10*time.Millisecond {
		c.samples = append(c.samples, sample{instr: c.logInstr, at: now})
		if len(c.samples) > 4096 {
			c.samples = append(c.samples[:0], c.samples[2048:]...)
		}
	}
}

// lagging reports whether the primary must wait for its backup: the
// backup's executed icount (sampled by the backup every status interval,
// Ack.Executed) was reached by the primary more than max ago, and the
// backup is still advancing (its icount grew within the last three
// samples). A backup that stopped advancing may be waiting for log the
// primary has not sent yet (QEMU reads ahead of what it executes), so the
// primary never waits on it: that could never end. max 0: no bound; before
// the first sample (icount 0) the lag is unknown and holds nothing.
func (c *controller) lagging(max time.Duration) bool {
	if max <= 0 {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	advancing := now.Sub(c.icountChangedAt) < 3*time.Duration(c.d.cfg.StatusIntervalMS)*time.Millisecond
	return advancing && lagExceeded(c.samples, c.backupIcnt, c.logInstr, max, now)
}

// lagExceeded is lagging's age rule on explicit values: the backup's icount
// is below the log's and the primary reached it more than max before now.
func lagExceeded(samples []sample, backupIcount, logInstr uint64, max time.Duration, now time.Time) bool {
	if backupIcount == 0 || backupIcount >= logInstr {
		return false
	}
	for _, s := range samples {
		if s.instr >= backupIcount {
			return now.Sub(s.at) > max
		}
	}
	return false
}

// recordAck notes an acknowledgement; lag in ms is the primary's wall time
// between reaching the backup's icount and now.
func (c *controller) recordAck(offset, icount uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if offset > c.ackedBytes {
		c.ackedBytes = offset
	}
	if icount > c.backupIcnt {
		c.backupIcnt = icount
		c.icountChangedAt = time.Now()
	}
	c.lastHeartbeat = time.Now()
	c.lagMS = 0
	for _, s := range c.samples {
		if s.instr >= c.backupIcnt {
			c.lagMS = time.Since(s.at).Milliseconds()
			break
		}
	}
}
