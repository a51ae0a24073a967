package plugin

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"libvirt.org/go/libvirtxml"

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
	logInstr, backupIcnt  uint64
	lastHeartbeat         time.Time
	samples               []sample // primary: (instructions, time) to turn icount lag into ms
	lagMS                 int64

	// primary
	recordFIFO string
	rr         *logchan.RecordReader
	link       *peerConn

	// backup
	backupXML  string
	replayFIFO string
	feeder     *logchan.Feeder
	started    bool
	stopOnce   sync.Once
	done       chan struct{}
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
		State: c.state, Detail: c.detail, SentBytes: c.sentBytes, AckedBytes: c.ackedBytes,
		LogInstructions: c.logInstr, BackupIcount: c.backupIcnt, HeartbeatAgeMS: -1, LagMS: c.lagMS}
	if c.sentBytes > c.ackedBytes {
		s.LagBytes = c.sentBytes - c.ackedBytes
	}
	if c.logInstr > c.backupIcnt {
		s.LagInstructions = c.logInstr - c.backupIcnt
	}
	if !c.lastHeartbeat.IsZero() {
		s.HeartbeatAgeMS = time.Since(c.lastHeartbeat).Milliseconds()
	}
	return s
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

// domainStopped is the "stopped"/"release" hook or libvirt's STOPPED event.
func (c *controller) domainStopped(why string) {
	c.mu.Lock()
	c.running = false
	c.mu.Unlock()
	if c.role == ftxml.RoleBackup {
		c.close(why)
		c.d.forget(c.uuid, c)
		return
	}
	c.mu.Lock()
	fifo := c.recordFIFO
	c.mu.Unlock()
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

// close releases everything this controller holds on this host.
func (c *controller) close(why string) {
	c.mu.Lock()
	link, feeder, rr := c.link, c.feeder, c.rr
	c.link, c.feeder, c.rr = nil, nil, nil
	fifoA, fifoB := c.recordFIFO, c.replayFIFO
	c.mu.Unlock()
	if link != nil {
		link.bye(why)
		link.Close()
	}
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
	if err := ctrl.request(controlRequest{Op: opPrepareBackup, UUID: c.uuid, Name: c.name, XML: xml,
		QEMUVersion: qemuVer, LogVersion: logVer}, nil); err != nil {
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
	link, err := dialLog(peerAddr(cfg), c.d.cfg.dialTimeout(), c.uuid, qemuVer, logVer)
	if err != nil {
		rr.Close()
		_ = os.Remove(fifo)
		return fail(fmt.Errorf("libvirt-ft: domain %q: log channel to %s: %w", c.name, peerAddr(cfg), err))
	}
	c.mu.Lock()
	c.recordFIFO, c.rr, c.link = fifo, rr, link
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
// log channel, keeping at most WindowBytes unacknowledged. If the channel
// breaks, it keeps draining FIFO A (the primary must never block on a dead
// backup) and reports unprotected.
func (c *controller) pumpPrimary(cfg ftxml.Config, reader *logchan.RecordReader, link *peerConn) {
	defer c.close("primary log ended")
	dec := logchan.NewStreamDecoder()
	window := uint64(c.d.cfg.WindowBytes)

	var (
		mu     sync.Mutex
		cond   = sync.NewCond(&mu)
		acked  uint64
		broken bool
	)
	markBroken := func(why string) {
		mu.Lock()
		if !broken {
			broken = true
			c.setState(StateUnprotected, why)
		}
		cond.Broadcast()
		mu.Unlock()
	}
	// Receiver: acks and heartbeats from the backup.
	go func() {
		for {
			m, err := link.recv()
			if err != nil {
				markBroken("log channel lost: " + err.Error())
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
				c.recordAck(m.ack.Offset, m.ack.Executed)
			case msgHeartbeat:
				c.heartbeat()
			case msgBye:
				markBroken("backup said bye: " + m.text)
				return
			}
		}
	}()
	// Heartbeats both ways, independent of guest activity.
	hbDone := make(chan struct{})
	defer close(hbDone)
	go func() {
		t := time.NewTicker(cfg.HeartbeatInterval)
		defer t.Stop()
		for {
			select {
			case <-hbDone:
				return
			case <-t.C:
				if err := link.sendHeartbeat(); err != nil {
					markBroken("log channel lost: " + err.Error())
					return
				}
			}
		}
	}()

	buf := make([]byte, 64<<10)
	first := true
	for {
		mu.Lock()
		for !broken && c.sent()-acked >= window {
			cond.Wait()
		}
		lost := broken
		mu.Unlock()

		n, err := reader.Read(buf)
		if n > 0 {
			if first {
				first = false
				c.setState(StateReplicating, "")
			}
			chunk, derr := dec.Feed(buf[:n])
			if derr != nil {
				// A log we cannot parse cannot be replayed: the backup is lost.
				markBroken("log decode error: " + derr.Error())
				lost = true
			}
			if len(chunk.Data) > 0 {
				c.recordSent(len(chunk.Data), chunk.Instructions)
				if !lost {
					if serr := link.sendLog(chunk.Offset, chunk.Data); serr != nil {
						markBroken("log channel lost: " + serr.Error())
					}
				}
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				c.log.WithError(err).Warn("reading the record FIFO")
			}
			mu.Lock()
			lost = broken
			mu.Unlock()
			if !lost {
				_ = link.flush()
				// Give the backup time to ack the tail, then say goodbye.
				deadline := time.Now().Add(5 * time.Second)
				mu.Lock()
				for !broken && acked < c.sent() && time.Now().Before(deadline) {
					mu.Unlock()
					time.Sleep(20 * time.Millisecond)
					mu.Lock()
				}
				mu.Unlock()
			}
			c.setState(StateStopped, "primary QEMU exited; log ended")
			return
		}
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
