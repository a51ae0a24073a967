package plugin

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/libvirt-ft/libvirt-ft/failover"
	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/qmp"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// qemuVersion is the local QEMU version as libvirt reports it ("7.2.22").
func (d *Daemon) qemuVersion() (string, error) {
	conn, err := d.lv.get()
	if err != nil {
		return "", err
	}
	v, err := conn.GetVersion()
	if err != nil {
		return "", fmt.Errorf("asking libvirt for the QEMU version: %w", err)
	}
	return fmt.Sprintf("%d.%d.%d", v/1000000, v/1000%1000, v%1000), nil
}

// prepareBackup arms a backup of the primary described by req: it generates
// the backup's domain XML (same machine, rr=replay), creates FIFO B and opens
// it with the feeder (version dword written). The backup domain itself is
// started when the first log entries arrive, because QEMU in replay mode
// reads the first event during its start-up.
func (d *Daemon) prepareBackup(req controlRequest, primaryHost string) error {
	ours, err := d.qemuVersion()
	if err != nil {
		return err
	}
	if ours != req.QEMUVersion {
		return fmt.Errorf("QEMU differs: primary host runs %s, backup host runs %s; install the same QEMU on both hosts", req.QEMUVersion, ours)
	}
	logVer, err := logchan.LogVersionForQEMU(ours)
	if err != nil {
		return err
	}
	if logVer != req.LogVersion {
		return fmt.Errorf("replay log version differs: primary %#x, backup %#x", req.LogVersion, logVer)
	}
	if c := d.lookup(req.UUID); c != nil && !c.idle() {
		if c.role == ftxml.RolePrimary {
			return fmt.Errorf("domain %q runs here as a primary", req.Name)
		}
		// A stale backup from an earlier run of the primary: replace it.
		c.close("replaced by a new backup")
		d.forget(req.UUID, c)
	}
	if conn, err := d.lv.get(); err == nil {
		if dom, err := conn.LookupDomainByUUIDString(req.UUID); err == nil {
			active, _ := dom.IsActive()
			dom.Free()
			if active {
				return fmt.Errorf("domain %q is already running on the backup host", req.Name)
			}
		}
	}
	backupXML, err := ftxml.Backup(req.XML, ftxml.HostConfig{PeerAddress: primaryHost})
	if err != nil {
		return err
	}
	cfg, _, err := ftxml.ParseConfig(backupXML)
	if err != nil {
		return err
	}
	fifo := ftxml.ReplayFIFOPath(*cfg, req.UUID)
	if err := logchan.CreateFIFO(fifo, d.qemuUID, d.qemuGID, 0o600); err != nil {
		return err
	}
	feeder, err := logchan.NewFeeder(fifo, logVer)
	if err != nil {
		_ = os.Remove(fifo)
		return err
	}
	// A small FIFO B keeps the backup's lag (and so the drain at go-live)
	// bounded by the window rather than by the pipe (64 KiB by default).
	if _, err := feeder.SetPipeSize(replayPipeBytes); err != nil {
		d.log.WithError(err).Warn("shrinking FIFO B")
	}
	bdom, err := ftxml.ParseDomain(backupXML)
	if err != nil {
		feeder.Close()
		_ = os.Remove(fifo)
		return err
	}
	c := d.controllerFor(req.UUID, req.Name, ftxml.RoleBackup)
	gates, err := c.openBackupGates(*cfg, bdom)
	if err != nil {
		feeder.Close()
		_ = os.Remove(fifo)
		d.forget(req.UUID, c)
		return fmt.Errorf("libvirt-ft: domain %q: %w", req.Name, err)
	}
	c.mu.Lock()
	c.cfg = *cfg
	c.backupXML, c.replayFIFO, c.feeder, c.gates = backupXML, fifo, feeder, gates
	c.epoch, c.primaryHost = req.Epoch, primaryHost
	c.goingLive, c.live = false, false
	c.sentBytes, c.ackedBytes, c.logInstr, c.backupIcnt = 0, 0, 0, 0
	c.started = false
	c.mu.Unlock()
	c.setState(StateArmed, "waiting for the primary's log")
	return nil
}

// cancelBackup undoes prepareBackup when the primary's prepare failed.
func (d *Daemon) cancelBackup(uuid string) {
	if c := d.lookup(uuid); c != nil && c.role == ftxml.RoleBackup {
		c.mu.Lock()
		started := c.started
		c.mu.Unlock()
		if !started {
			c.close("primary's prepare failed")
			d.forget(uuid, c)
		}
	}
}

// runBackupLog serves one log channel from the primary. The receiver keeps
// reading (heartbeats must be seen even while FIFO B is full); Log frames go
// to a queue that the feeding goroutine writes into FIFO B (whole events
// only, contiguous offsets) and acknowledges with the offset now in FIFO B
// and the backup QEMU's icount. A malformed frame drops the connection,
// never the VM. The failover core decides when to go live.
func (c *controller) runBackupLog(pc *peerConn) {
	c.mu.Lock()
	feeder := c.feeder
	cfg := c.cfg
	c.link = pc
	c.peerAddr = pc.remote()
	c.mu.Unlock()
	if feeder == nil {
		pc.bye(encodeBye(false, "no backup armed"))
		pc.Close()
		return
	}
	c.setState(StateReplicating, "log channel up")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	q := &frameQueue{}
	q.cond = sync.NewCond(&q.mu)
	ring := newLogRing(logRingBytes)
	c.mu.Lock()
	c.ring, c.stall = ring, ""
	c.mu.Unlock()
	drv, err := newDriver(failover.RoleBackup, cfg, c.d.cfg.statusInterval(), func(a failover.Action) { c.backupAction(a, pc, q) })
	if err != nil {
		c.setState(StateUnprotected, err.Error())
		pc.Close()
		return
	}
	c.mu.Lock()
	c.drv = drv
	done := c.done
	c.mu.Unlock()
	go drv.run()
	go c.watchUnread(feeder)
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		c.feedLoop(ctx, pc, feeder, q, drv)
	}()
	// Without FeedEnd (the primary ended cleanly, the backup is discarded)
	// nothing else would wake feedLoop once the controller is closed.
	go func() {
		select {
		case <-done:
			q.set(false, true)
		case <-fed:
		}
	}()

	var received uint64
	for {
		m, err := pc.recv()
		if err != nil {
			drv.post(failover.ChannelDown{Reason: err.Error()})
			pc.Close()
			return
		}
		switch m.kind {
		case msgHeartbeat:
			c.heartbeat()
			drv.post(failover.HeartbeatReceived{})
			if len(m.released) > 0 {
				c.mu.Lock()
				gates := c.gates
				c.mu.Unlock()
				if gates != nil {
					gates.forget(m.released)
				}
			}
		case msgBye:
			drv.post(failover.PeerBye{Clean: m.clean, Reason: m.text})
			if m.clean {
				c.setState(StateReplicating, "primary said bye: "+m.text+"; replaying to the end of its log")
			}
		case msgLog:
			// Check the frame at once and acknowledge it as received:
			// everything queued is written into FIFO B before any END,
			// so the primary's output gate may release what it covers.
			if m.offset != received {
				drv.post(failover.ChannelDown{Reason: fmt.Sprintf("log frame at offset %d, expected %d", m.offset, received)})
				pc.Close()
				return
			}
			if _, err := logchan.ScanEvents(m.data); err != nil {
				drv.post(failover.ChannelDown{Reason: fmt.Sprintf("log frame at offset %d: %v", m.offset, err)})
				pc.Close()
				return
			}
			if q.push(m) {
				received += uint64(len(m.data))
				c.mu.Lock()
				c.receivedBytes = received
				fed, icount, instr := c.ackedBytes, c.backupIcnt, c.logInstr
				c.mu.Unlock()
				go func(r uint64) { _ = pc.sendAck(fed, icount, instr, r) }(received)
			}
		}
	}
}

// frameQueue holds received Log frames until they are in FIFO B. Its size is
// bounded by the primary's window (it sends no more unacknowledged bytes).
type frameQueue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	frames []message
	end    bool // FeedEnd: write what is queued, then END; drop later frames
	closed bool
}

// push queues m and reports whether it will be written into FIFO B (false
// once FeedEnd or a close came: the frame is dropped).
func (q *frameQueue) push(m message) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	ok := !q.end && !q.closed
	if ok {
		q.frames = append(q.frames, m)
	}
	q.cond.Broadcast()
	return ok
}

// pop waits for a frame; ok false means "write END now" (or closed).
func (q *frameQueue) pop() (m message, ok bool, end bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.frames) == 0 && !q.end && !q.closed {
		q.cond.Wait()
	}
	if len(q.frames) > 0 {
		m = q.frames[0]
		q.frames = q.frames[1:]
		return m, true, false
	}
	return message{}, false, q.end
}

func (q *frameQueue) set(end, closed bool) {
	q.mu.Lock()
	q.end = q.end || end
	q.closed = q.closed || closed
	q.cond.Broadcast()
	q.mu.Unlock()
}

// feedLoop writes queued frames into FIFO B and acknowledges them.
func (c *controller) feedLoop(ctx context.Context, pc *peerConn, feeder *logchan.Feeder, q *frameQueue, drv *driver) {
	var fed uint64
	for {
		m, ok, end := q.pop()
		if !ok {
			if end {
				if err := feeder.WriteEnd(); err != nil {
					c.log.WithError(err).Error("writing END into FIFO B")
				}
				drv.post(failover.EndFed{Bytes: feeder.Offset(), Instructions: feeder.Instructions()})
			}
			return
		}
		// runBackupLog queued only contiguous frames of whole events.
		// Start the backup QEMU with the first frame, before writing it:
		// a frame larger than FIFO B's pipe would block until QEMU reads.
		c.mu.Lock()
		start := !c.started
		c.started = true
		c.mu.Unlock()
		if start {
			go c.startBackupDomain()
		}
		// Feeder.Write refuses anything but whole events, writing nothing.
		if err := feeder.Write(m.data); err != nil {
			drv.post(failover.ChannelDown{Reason: fmt.Sprintf("log frame at offset %d: %v", m.offset, err)})
			pc.Close()
			q.set(false, true)
			return
		}
		fed += uint64(len(m.data))
		before := c.fedInstructions()
		instr := feeder.Instructions()
		c.ringAdd(m.offset, m.data, instr-before)
		c.mu.Lock()
		c.sentBytes, c.ackedBytes, c.logInstr = fed, fed, instr
		icount, received := c.backupIcnt, c.receivedBytes
		c.mu.Unlock()
		drv.post(failover.LogReceived{Offset: m.offset, Bytes: fed, Instructions: instr})
		go func() { _ = pc.sendAck(fed, icount, instr, received) }()
	}
}

// backupAction carries out one action of the backup's failover core.
func (c *controller) backupAction(a failover.Action, pc *peerConn, q *frameQueue) {
	switch a := a.(type) {
	case failover.SendHeartbeat:
		go func() { _ = pc.sendHeartbeat() }()
	case failover.SendBye:
		text := encodeBye(a.Clean, a.Reason)
		c.mu.Lock()
		stall := c.stall
		c.mu.Unlock()
		if !a.Clean && stall != "" && strings.HasPrefix(a.Reason, "backup replay stalled") {
			// The bye after BackupStalled: tell the primary where in
			// the log the replay stopped (its status shows it).
			text = encodeBye(false, "backup "+stall)
		}
		if a.Reason == failover.ByeLive {
			// Tell the old primary how the go-live went (virt-ft status
			// there shows it after a switchover). Same goroutine as the
			// driver: the node may be read here.
			c.mu.Lock()
			drv, info := c.drv, c.goLiveInfo
			c.mu.Unlock()
			if drv != nil {
				text += byeDetailSep + timingSummary(drv.node.Timings())
				if info != "" {
					text += " (" + info + ")"
				}
			}
		}
		pc.bye(text)
	case failover.CloseChannel:
		// Half-close first: a full close with unread heartbeats in the
		// receive buffer makes Linux send a reset that can discard a
		// ByeLive just written. The primary closes its side on the bye;
		// the full close follows in any case.
		pc.closeWrite()
		time.AfterFunc(2*time.Second, func() { pc.Close() })
	case failover.FeedEnd:
		c.mu.Lock()
		c.goingLive = true
		c.mu.Unlock()
		c.setState(StateGoingLive, "primary lost: feeding END after the last whole event")
		q.set(true, false)
	case failover.WaitDrain:
		c.setState(StateGoingLive, fmt.Sprintf("draining: waiting for the backup to reach icount %d", a.Icount))
		go c.waitDrain(a.Icount)
	case failover.AcquireLock:
		go func() {
			won, err := c.d.arbiter().acquire(c.uuid, c.epoch)
			c.post(failover.LockResult{Won: won, Err: err})
		}()
	case failover.GoLive:
		c.setState(StateGoingLive, "going live: stop, savevm, restart recording")
		go func() { c.post(failover.GoLiveDone{Err: c.goLive()}) }()
	case failover.Announce:
		go c.announce()
	case failover.Cleanup:
		go c.cleanupAfterLive()
	case failover.HaltVM:
		// The replaying QEMU's end is no longer go-live's own: let
		// domainStopped clean up when it is gone.
		c.mu.Lock()
		c.goingLive = false
		c.mu.Unlock()
		c.setState(StateStopped, "halting: "+a.Reason)
		go c.destroyUntilGone(a.Reason)
	case failover.ReportUnprotected:
		c.setState(StateUnprotected, a.Reason)
	case failover.BackupStalled:
		c.mu.Lock()
		ring := c.ring
		c.mu.Unlock()
		c.noteStall(a, ring)
	}
}

// waitDrain samples the backup QEMU's icount until it reached target.
func (c *controller) waitDrain(target uint64) {
	client, done, err := c.d.domainQMP(c.uuid)
	if err != nil {
		return
	}
	defer done()
	for {
		ri, err := client.QueryReplay()
		if err == nil && ri.Mode == "none" {
			// A QEMU carrying packaging/qemu's end-of-log patch left replay
			// mode on reading END: it executed the whole log.
			c.post(failover.BackupIcount{Icount: target})
			return
		}
		if err == nil {
			c.post(failover.BackupIcount{Icount: ri.Icount})
			if ri.Icount >= target {
				return
			}
		}
		select {
		case <-c.done:
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// startBackupDomain creates the transient backup domain (libvirt starts QEMU
// with rr=replay on FIFO B) and then samples its icount for lag figures and
// the stall rule.
func (c *controller) startBackupDomain() {
	conn, err := c.d.lv.get()
	if err == nil {
		var dom *libvirt.Domain
		dom, err = conn.DomainCreateXML(c.backupXML, 0)
		if err == nil {
			dom.Free()
			c.domainStarted()
			c.log.Info("backup domain started in replay mode")
			go c.sampleIcount()
			return
		}
	}
	c.setState(StateUnprotected, "starting the backup domain failed: "+err.Error())
	c.close("backup domain failed to start")
	c.d.forget(c.uuid, c)
}

// sampleIcount samples the replaying QEMU's executed icount every
// status-interval-ms (query-replay) until the controller closes or the
// domain went live: for the lag figures the primary sees in acks, and for
// the failover core's stall rule (failover.Config.StallTimeout), which must
// see every sample while it feeds END too. A failed sample (libvirtd
// restarted, the monitor is busy) looks the domain up again the next time,
// so that a healthy backup is never taken for a stalled one because of a
// stale handle.
func (c *controller) sampleIcount() {
	var client *qmp.Client
	release := func() {}
	defer func() { release() }()
	c.whileReplaying(func() bool {
		if client == nil {
			cl, done, err := c.d.domainQMP(c.uuid)
			if err != nil {
				return true
			}
			client, release = cl, done
		}
		ri, err := client.QueryReplay()
		if err != nil {
			release()
			client, release = nil, func() {}
			return true
		}
		// The failover core watches this icount for a stalled replay
		// (Config.StallTimeout).
		c.post(failover.BackupIcount{Icount: ri.Icount})
		c.mu.Lock()
		if ri.Icount > c.backupIcnt {
			c.backupIcnt = ri.Icount
		}
		link, fed, icount, instr, received := c.link, c.ackedBytes, c.backupIcnt, c.logInstr, c.receivedBytes
		c.mu.Unlock()
		// Tell the primary how far this backup has executed even when
		// no log flows (it may be waiting for the backup to catch up:
		// Config.MaxLagMS). Not on this goroutine: a full socket must not
		// delay the next sample.
		if link != nil {
			go func() { _ = link.sendAck(fed, icount, instr, received) }()
		}
		return true
	})
}

// whileReplaying (backup) calls sample every status interval until the
// controller closes, the domain went live, or sample returns false.
func (c *controller) whileReplaying(sample func() bool) {
	c.mu.Lock()
	done := c.done
	c.mu.Unlock()
	t := time.NewTicker(c.d.cfg.statusInterval())
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		c.mu.Lock()
		live := c.live
		c.mu.Unlock()
		if live || !sample() {
			return
		}
	}
}
