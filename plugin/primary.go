package plugin

import (
	"bytes"
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

// primaryRun is one run of a protected domain's primary on this host: from
// the prepare hook (seed, arm the backup, open FIFO A and the output gates,
// dial the log channel) through the log pump to the end of its QEMU. A
// go-live on this host also ends in a primaryRun: newLivePrimary adopts
// what the backup run hands over (the VM then runs alone, unprotected).
//
// Everything it acquires is pushed on its undo stack and released by close.
type primaryRun struct {
	env  env
	uuid string
	name string
	cfg  ftxml.Config
	log  logrus.FieldLogger
	undo undoStack

	stop     chan struct{} // closed by close
	stopOnce sync.Once

	mu     sync.Mutex
	state  ctl.State
	detail string
	// running: QEMU runs (the started hook, or adopted by go-live).
	running bool
	epoch   string
	disks   []string // the domain's disk images (in-step records)
	// cleanStop: the VM ended on purpose with its log ended
	// (ctl.DomainStatus.CleanStop).
	cleanStop bool
	peer      string // the backup daemon's address
	// hung: why the failover core killed this run's hung QEMU (KillVM).
	hung string

	// log channel figures: bytes sent and acknowledged, INSTRUCTION sum
	// of the log sent, the backup's executed icount
	sentBytes, ackedBytes uint64
	logInstr, backupIcnt  uint64
	icountChangedAt       time.Time
	lastHeartbeat         time.Time
	samples               []sample  // (instructions, time) to turn icount lag into ms
	lastSentAt            time.Time // when the latest log was sent: the log's head in time
	// heldMu guards how long the pump was held (heldTimes): by the lag
	// bound (heldLag) and by the window in holds that ended (heldWindow),
	// and the start of the window hold in progress (windowSince, zero
	// when none). A leaf lock: taken under ps.mu, nothing taken under it.
	heldMu              sync.Mutex
	heldLag, heldWindow time.Duration
	windowSince         time.Time
	stall               string // the backup's last stall (its words, from its bye)
	peerReport          string // the backup's go-live detail (its words, from its ByeLive)
	seeding             *ctl.Seeding
	switchedOver        bool
	// claimPaused: the VM was paused because the arbiter could not be
	// reached while the backup was lost (act, AcquireLock).
	claimPaused bool

	recordFIFO string
	rr         recordLog
	link       *peerConn
	gates      *outputGates
	lastGates  []ctl.Gate
	drv        *failover.Driver
	ps         *pumpState // the log pump's, once it runs
	// restartPaused: the VM was paused while the backup's daemon
	// restarts (quiesceForPeer); a resumed link or ReportUnprotected
	// resumes it.
	restartPaused   bool
	restartPausedAt time.Time
	// pauseDoubt: the VM may be paused with no mark that would resume
	// it: a pause after the adoption's late resume failed
	// (pauseAfterAdoptResume; the VM may run or may still be paused, and
	// unless another pause succeeded meanwhile the claim's mark is gone,
	// so that the next claim attempt pauses it), or succeeded after its
	// mark was lifted. A claim attempt whose pause fails does not take
	// the mark back from restartPaused; a resumed link and
	// ReportUnprotected resume it (resumeVM leaves a running VM as it
	// is). Cleared by the next successful marked pause and by those
	// resumes.
	pauseDoubt bool
	// pauseGen counts the pauses of this run's VM that succeeded
	// (pauseVM, pauseAfterAdoptResume): a pause that fails compares it
	// with the count taken before it began, so that it does not take
	// away the marks of a pause that succeeded meanwhile.
	pauseGen uint64
	// adoptResumed is closed when the resume that ends an adoption
	// (adoptPrimary) has returned, adoptCancel (closed once, by
	// endAdoptResume) stops its retries; nil for a run not adopted.
	// Every pause of the VM ends that resume first.
	adoptResumed, adoptCancel chan struct{}
	final                     failover.Status // the driver's last view, once closed
	finalTm                   failover.Timings

	// from: the backup run this live primary came from (go-live); its
	// failover core's timings stay in the status.
	from *backupRun

	// The running VM's title note (noteLoop): the user's own title and
	// description (userKnown: from the prepare hook's XML; else read from
	// the live XML once), and whether the loop runs.
	userTitle, userDesc string
	userKnown           bool
	notes               bool

	// Re-protection (protect.go). liveXML: its QEMU runs with the
	// definition of the backup that went live here (a re-protected VM),
	// so its hooks carry role backup. reprotectXML: the primary
	// definition the new backup was armed from. reprotecting: a
	// re-protection of this (live) run is under way. reprot: its view.
	liveXML      bool
	reprotectXML string
	reprotecting bool
	reprot       *ctl.Reprotect
	// primaryXML: the domain XML its prepare hook armed the backup from
	// (a re-protection after the backup was lost sends it again).
	primaryXML string
	// adoptedAlone: a VM that ran alone when this daemon started,
	// adopted with new gates (adoptalone.go): re-protectable like one
	// that went live here.
	adoptedAlone bool
	// origin: the backup run whose QEMU this is (a VM that went live
	// here, re-protected since): its close is this run's to do.
	origin *backupRun
	// logEnding: endLog has begun ending its record log (the pump stops;
	// the run no longer ends with it: qemuStopped closes it). logEnded:
	// the VM was seen running on without recording since.
	logEnding, logEnded bool
	// noAuto: the operator ended its protection (virt-ft unprotect) while
	// it ran alone: no automatic re-protection.
	noAuto bool
}

type sample struct {
	instr uint64
	at    time.Time
}

func newPrimaryRun(e env, uuid, name string, cfg ftxml.Config) *primaryRun {
	return &primaryRun{env: e, uuid: uuid, name: name, cfg: cfg, peer: peerAddr(cfg), state: ctl.StatePreparing,
		log: e.log.WithFields(logrus.Fields{"domain": name, "role": ftxml.RolePrimary}), stop: make(chan struct{})}
}

func (p *primaryRun) role() ctl.Role { return ctl.RolePrimary }

func (p *primaryRun) done() <-chan struct{} { return p.stop }

func (p *primaryRun) setState(state ctl.State, detail string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	stepState(p.log, &p.state, &p.detail, state, detail)
}

// setStateIf sets the state only while it is still from, and reports
// whether it did (backupRun.setStateIf's rule: a step that may run after
// the failover core acted never turns its state back).
func (p *primaryRun) setStateIf(from, state ctl.State, detail string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != from {
		return false
	}
	stepState(p.log, &p.state, &p.detail, state, detail)
	return true
}

// active reports whether this run is still under way: from its creation
// (the prepare hook, which may seed for minutes) until close.
func (p *primaryRun) active() bool {
	select {
	case <-p.stop:
		return false
	default:
		return true
	}
}

// heartbeatTimeout is the domain's heartbeat timeout (procs.go).
func (p *primaryRun) heartbeatTimeout() time.Duration { return p.cfg.HeartbeatTimeout }

// acceptsHook reports whether a hook for a QEMU whose XML gives role is
// this run's: a primary's, or, for a VM that went live here without a
// restart (packaging/qemu 0001), the former backup's XML it still runs
// with.
func (p *primaryRun) acceptsHook(role string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return role == ftxml.RolePrimary || ((p.from != nil || p.liveXML) && role == ftxml.RoleBackup)
}

func (p *primaryRun) started() {
	p.mu.Lock()
	p.running = true
	p.mu.Unlock()
	p.startNotes()
}

// noteEvery is how often the running primary's title note is brought up to
// date with its state (noteLoop).
const noteEvery = time.Second

// startNotes starts noteLoop once, for a primary that records (not one
// that went live here: its title is go-live's LiveNote).
func (p *primaryRun) startNotes() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.notes || p.from != nil {
		return
	}
	p.notes = true
	go p.noteLoop()
}

// noteLoop keeps the running VM's title (libvirt metadata, live only:
// what virt-manager's list and virsh list --title show) saying its
// protection state (ftxml.PrimaryTitle): starting, protected, UNPROTECTED,
// switching over. Checked every noteEvery; libvirt is called only on a
// change. Ends with the run; the title ends with the VM. Failures are
// logged once per change and retried (the title is a convenience: status
// and metrics are the record).
func (p *primaryRun) noteLoop() {
	t := time.NewTicker(noteEvery)
	defer t.Stop()
	var last, failed string
	for {
		p.mu.Lock()
		state, known := p.state, p.userKnown
		p.mu.Unlock()
		if !known {
			p.readUserNotes()
		}
		p.mu.Lock()
		title := ftxml.PrimaryTitle(p.name, p.cfg.PeerAddress, string(state), p.userTitle)
		desc, known := p.userDesc, p.userKnown
		p.mu.Unlock()
		if known && title != "" && title != last {
			if err := p.env.hv.SetLiveNote(p.uuid, title, desc); err != nil {
				if failed != title {
					p.log.WithError(err).Warn("setting the VM's title to its protection state (virsh list --title) failed; retrying")
					failed = title
				}
			} else {
				last = title
			}
		}
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
	}
}

// readUserNotes reads the user's own title and description from the
// running VM's live XML (a primary adopted after a daemon restart), with
// the note of an earlier run taken off.
func (p *primaryRun) readUserNotes() {
	defs, err := p.env.hv.Running()
	if err != nil {
		return
	}
	for _, d := range defs {
		if d.UUID != p.uuid {
			continue
		}
		dom, err := ftxml.ParseDomain(d.XML)
		if err != nil {
			return
		}
		p.mu.Lock()
		p.userTitle, p.userDesc, p.userKnown = ftxml.UserTitle(dom.Title, p.name, p.cfg.PeerAddress), dom.Description, true
		p.mu.Unlock()
		return
	}
}

func (p *primaryRun) driver() *failover.Driver {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.drv
}

func (p *primaryRun) status() ctl.DomainStatus {
	heldLag, heldWindow := p.heldTimes()
	p.mu.Lock()
	defer p.mu.Unlock()
	s := ctl.DomainStatus{Name: p.name, UUID: p.uuid, Role: ctl.RolePrimary, Peer: p.peer,
		State: p.state, Detail: p.detail, SwitchedOver: p.switchedOver, CleanStop: p.cleanStop || p.switchedOver, SentBytes: p.sentBytes, AckedBytes: p.ackedBytes,
		LogInstructions: p.logInstr, BackupIcount: p.backupIcnt, HeartbeatAgeMS: -1, LagMS: p.lagLocked().Milliseconds(),
		HeldLagMS: heldLag.Milliseconds(), HeldWindowMS: heldWindow.Milliseconds(),
		PeerReport: p.peerReport, Gates: p.lastGates}
	if p.reprot != nil {
		r := *p.reprot
		s.Reprotect = &r
	}
	if p.state == ctl.StateSeeding && p.seeding != nil {
		sd := *p.seeding
		s.Seeding = &sd
	}
	if p.stall != "" {
		s.Stall = &ctl.Stall{Report: p.stall}
	}
	if p.gates != nil {
		s.Gates = p.gates.stats()
	}
	if p.sentBytes > p.ackedBytes {
		s.LagBytes = p.sentBytes - p.ackedBytes
	}
	if p.logInstr > p.backupIcnt {
		s.LagInstructions = p.logInstr - p.backupIcnt
	}
	if !p.lastHeartbeat.IsZero() {
		s.HeartbeatAgeMS = time.Since(p.lastHeartbeat).Milliseconds()
	}
	st, tm := p.final, p.finalTm
	if p.drv != nil {
		st, tm = p.drv.View()
	}
	if p.from != nil {
		// A live former backup: its failover core did the go-live.
		st, tm = p.from.failoverView()
		s.Stall, s.GoLive = p.from.stallInfo(), p.from.goLiveInfo()
	}
	if p.drv != nil || p.from != nil || p.final.Role != 0 {
		s.Failover = st.State.String()
		s.Loss = lossOf(tm)
	}
	return s
}

// prepare runs in the prepare hook, before libvirt starts QEMU: it
// verifies (seeding if needed) the backup's disk copies, arms the backup on
// the peer host, creates FIFO A and opens it for reading, opens the output
// gates, dials the log channel and starts the log pump. On error nothing is
// left behind on either host: the undo stack releases what was acquired
// and the armed backup is cancelled.
func (p *primaryRun) prepare(xml string, dom *libvirtxml.Domain) (err error) {
	defer func() {
		if err != nil {
			p.setState(ctl.StateRefused, err.Error())
			p.close("prepare failed")
		}
	}()
	p.setState(ctl.StatePreparing, "contacting peer "+p.peer)
	p.mu.Lock()
	p.userTitle, p.userDesc, p.userKnown = dom.Title, dom.Description, true
	p.primaryXML = xml
	p.mu.Unlock()
	qemuVer, err := p.env.hv.QEMUVersion()
	if err != nil {
		return fmt.Errorf("libvirt-ft: domain %q: %w", p.name, err)
	}
	logVer, err := logchan.LogVersionForQEMU(qemuVer)
	if err != nil {
		return fmt.Errorf("libvirt-ft: domain %q: %w", p.name, err)
	}
	build, err := p.env.hv.EmulatorBuild(domainEmulator(dom))
	if err != nil {
		return fmt.Errorf("libvirt-ft: domain %q: /domain/devices/emulator: %w", p.name, err)
	}
	ctrl, err := dialControl(p.env, p.peer, p.uuid, qemuVer, logVer)
	if err != nil {
		return fmt.Errorf("libvirt-ft: domain %q: backup host %s: %w; is libvirt-ftd running there and is <ft:peer> right?", p.name, p.peer, err)
	}
	defer ctrl.Close()

	// Disks: the backup replays block I/O against byte-identical copies.
	p.env.inStep.drop(p.uuid)
	disks := ftxml.DiskPaths(dom)
	p.mu.Lock()
	p.disks = disks
	p.mu.Unlock()
	for _, path := range disks {
		if err := p.ensureSeeded(ctrl, path); err != nil {
			return fmt.Errorf("libvirt-ft: domain %q: disk %s: %w", p.name, path, err)
		}
	}

	p.setState(ctl.StatePreparing, "arming the backup on "+p.peer)
	epoch := strconv.FormatInt(time.Now().UnixNano(), 36)
	p.mu.Lock()
	p.epoch = epoch
	p.mu.Unlock()
	// Before QEMU starts: a daemon restarted while it runs must know the
	// epoch to claim (restart.go).
	if err := p.env.pairings.save(pairingRecord{UUID: p.uuid, Name: p.name, Role: "primary", Epoch: epoch, Peer: p.peer}); err != nil {
		return fmt.Errorf("libvirt-ft: domain %q: %w", p.name, err)
	}
	if err := ctrl.request(logchan.ControlRequest{Op: logchan.OpPrepareBackup, UUID: p.uuid, Name: p.name, XML: xml,
		QEMUVersion: qemuVer, LogVersion: logVer, EmulatorBuild: build, Epoch: epoch, Arbiter: p.env.cfg.arbiterName()}, nil); err != nil {
		return fmt.Errorf("libvirt-ft: domain %q: backup host %s refused the backup: %w", p.name, p.peer, err)
	}
	armed := true
	defer func() {
		if err != nil && armed {
			_ = ctrl.request(logchan.ControlRequest{Op: logchan.OpCancelBackup, UUID: p.uuid}, nil)
		}
	}()
	// The new pairing is armed: it becomes the domain's current epoch,
	// and the claims of earlier ones go (a claim of a forgotten epoch
	// loses). Without that both hosts' claims of this epoch would lose.
	if err := p.env.arbiter.Forget(p.uuid, epoch); err != nil {
		return fmt.Errorf("libvirt-ft: domain %q: the split-brain arbiter cannot record the new pairing: %w; check arbiter-etcd / arbiter-dir in %s", p.name, err, DefaultConfigPath)
	}

	fifo := ftxml.RecordFIFOPath(p.cfg, p.uuid)
	rr, err := p.env.pipes.Record(fifo, p.env.qemuUID, p.env.qemuGID)
	if err != nil {
		return fmt.Errorf("libvirt-ft: domain %q: %w", p.name, err)
	}
	p.undo.push(func() {
		_ = os.Remove(fifo)
		_ = os.Remove(filepath.Dir(fifo)) // only if empty
	})
	p.undo.push(func() { rr.Close() })
	gates, err := openGates(p.env, p.uuid, p.cfg, dom, rr)
	if err != nil {
		return fmt.Errorf("libvirt-ft: domain %q: %w", p.name, err)
	}
	p.undo.push(func() { p.releaseGates() })
	// Heartbeats tell the backup which frames left, so that at go-live it
	// sends only the rest (openBackupGates), and carry the frame digests.
	link, err := dialLog(p.env, p.peer, p.uuid, qemuVer, logVer, epoch, false, 0, gates)
	if err != nil {
		return fmt.Errorf("libvirt-ft: domain %q: log channel to %s: %w", p.name, p.peer, err)
	}
	p.undo.push(func() { link.Close() })
	p.mu.Lock()
	p.recordFIFO, p.rr, p.link, p.gates = fifo, rr, link, gates
	p.mu.Unlock()
	p.setState(ctl.StateWaiting, "waiting for QEMU to record")
	go p.pump(rr, link, gates, logchan.NewStreamDecoder())
	return nil
}

// ensureSeeded makes the backup's copy of path byte-identical to ours:
// compare SHA-256 digests; copy when they differ; verify after copying.
func (p *primaryRun) ensureSeeded(ctrl *peerConn, path string) error {
	if epoch, ok := p.env.inStepStore().inStep(p.uuid, "primary", path); ok && ctrl.peer.HasFeature(logchan.FeatureDisksInStep) {
		var ans logchan.InStepReply
		err := ctrl.request(logchan.ControlRequest{Op: logchan.OpInStep, UUID: p.uuid, Path: path, Epoch: epoch}, &ans)
		if err == nil && ans.InStep {
			p.log.Infof("disk %s: both copies unchanged since pairing %s ended in step (the guest shut down, the backup replayed it to the end): not read", path, epoch)
			return nil
		}
		if err != nil {
			return err
		}
	}
	if ctrl.peer.HasFeature(logchan.FeatureBlockSeed) {
		// (A disk over 16 TiB has too many blocks for one list: whole.)
		if fi, err := os.Stat(path); err == nil && fi.Size() <= int64(logchan.MaxSeedBlocks)*logchan.MaxSeedBlock {
			return p.ensureSeededBlocks(ctrl, path)
		}
	}
	// Both hosts hash at once: the backup host's answer comes while this
	// one reads its own copy.
	var remote logchan.FileDigest
	remoteErr := make(chan error, 1)
	go func() { remoteErr <- ctrl.request(logchan.ControlRequest{Op: logchan.OpHash, Path: path}, &remote) }()
	local, err := hashFile(path)
	if rerr := <-remoteErr; err == nil {
		err = rerr
	}
	if err != nil {
		return err
	}
	if remote.Exists && remote.SHA256 == local.SHA256 && remote.Size == local.Size {
		p.log.Infof("disk %s: backup copy identical (sha256 %s, %d bytes)", path, local.SHA256[:12], local.Size)
		return nil
	}
	p.log.Infof("disk %s: seeding %d bytes to the backup host", path, local.Size)
	if err := ctrl.seed(path, local, p.seedProgress(path)); err != nil {
		return fmt.Errorf("seeding the backup's copy: %w", err)
	}
	// A fresh digest: a reply without data must not pass on the first
	// answer's values.
	var after logchan.FileDigest
	if err := ctrl.request(logchan.ControlRequest{Op: logchan.OpHash, Path: path}, &after); err != nil {
		return err
	}
	if !after.Exists || after.SHA256 != local.SHA256 || after.Size != local.Size {
		return fmt.Errorf("backup's copy differs after seeding (sha256 %s, %d bytes here; %s, %d bytes there): refusing to replicate",
			local.SHA256, local.Size, clip(after.SHA256, 128), after.Size)
	}
	p.log.Infof("disk %s: seeded and verified (sha256 %s)", path, local.SHA256[:12])
	return nil
}

// ensureSeededBlocks is ensureSeeded with a backup host that takes delta
// seeds (blockseed.go): both hosts list their copy's blocks at once (from
// their caches when unchanged), and only the blocks that differ go over,
// zero blocks as holes. When the backup host has no copy of the same size
// it builds a new one and every block that is not zeros goes over.
func (p *primaryRun) ensureSeededBlocks(ctrl *peerConn, path string) error {
	return p.seedBlocksFrom(ctrl, path, path)
}

// seedBlocksFrom makes the backup host's file path a copy of this host's
// file src (the same path but in tests).
func (p *primaryRun) seedBlocksFrom(ctrl *peerConn, src, path string) error {
	id, err := statDisk(src)
	if err != nil {
		return err
	}
	bs := logchan.SeedBlockSize(id.Size)
	started := time.Now()
	var remote logchan.BlockList
	remoteErr := make(chan error, 1)
	go func() {
		remoteErr <- ctrl.request(logchan.ControlRequest{Op: logchan.OpBlocks, Path: path, Blocks: &logchan.BlockList{BlockSize: bs, Size: id.Size}}, &remote)
	}()
	local, _, err := p.env.blocks.blockList(src, bs, -1)
	if rerr := <-remoteErr; err == nil {
		err = rerr
	}
	if err == nil && !local.Exists {
		err = errors.New("the disk does not exist on this host")
	}
	if err == nil {
		err = remote.Check()
	}
	if err != nil {
		return err
	}
	hashed := time.Since(started)
	if local.Size != id.Size {
		return fmt.Errorf("the disk changed size on this host while it was listed: start again")
	}
	if remote.Exists && remote.Size == local.Size && remote.BlockSize == local.BlockSize && remote.Listed() && bytes.Equal(remote.Hashes, local.Hashes) {
		p.log.Infof("disk %s: backup copy identical (%d bytes, %d blocks of %d KiB, root %s; both listed in %v)",
			path, local.Size, local.Count(), bs>>10, local.Root()[:12], hashed.Round(time.Millisecond))
		return nil
	}
	fromOld := remote.Exists && remote.Size == local.Size && remote.BlockSize == local.BlockSize && remote.Listed()
	var send []int64
	var total int64
	for i := int64(0); i < local.Count(); i++ {
		switch {
		case fromOld && bytes.Equal(remote.Hash(i), local.Hash(i)):
		case !fromOld && local.Zero(i): // a hole in the new copy
		default:
			send = append(send, i)
			if !local.Zero(i) {
				total += local.Len(i)
			}
		}
	}
	if fromOld {
		p.log.Infof("disk %s: %d of %d blocks of %d KiB differ from the backup's copy: seeding %d bytes (listed in %v)",
			path, len(send), local.Count(), bs>>10, total, hashed.Round(time.Millisecond))
	} else {
		p.log.Infof("disk %s: the backup host has no copy of this size: seeding a new one, %d bytes in %d of %d blocks of %d KiB, the rest holes (listed in %v)",
			path, total, len(send), local.Count(), bs>>10, hashed.Round(time.Millisecond))
	}
	if err := ctrl.seedBlocks(src, path, local, send, total, p.seedProgress(path)); err != nil {
		return fmt.Errorf("seeding the backup's copy: %w", err)
	}
	if after, err := statDisk(src); err != nil || after != id {
		return fmt.Errorf("the disk changed on this host while it was seeded (%v): start again", err)
	}
	// A fresh list: a reply without data must not pass on the first
	// answer's values.
	var after logchan.BlockList
	if err := ctrl.request(logchan.ControlRequest{Op: logchan.OpBlocks, Path: path, Blocks: &logchan.BlockList{BlockSize: bs, Size: id.Size}}, &after); err != nil {
		return err
	}
	if err := after.Check(); err != nil {
		return fmt.Errorf("the backup's block list of %s after seeding: %w", path, err)
	}
	if !after.Exists || after.Size != local.Size || after.BlockSize != local.BlockSize || !after.Listed() || !bytes.Equal(after.Hashes, local.Hashes) {
		return fmt.Errorf("backup's copy differs after seeding (root %s here, %s there): refusing to replicate", local.Root(), after.Root())
	}
	p.log.Infof("disk %s: seeded and verified (%d bytes sent, root %s, %v in all)", path, total, local.Root()[:12], time.Since(started).Round(time.Millisecond))
	return nil
}

// seedProgress reports a seed of path (bytes done of total) in the run's
// status (virt-ft status) and state detail.
func (p *primaryRun) seedProgress(path string) func(done, total int64) {
	return func(done, total int64) {
		p.mu.Lock()
		p.seeding = &ctl.Seeding{Path: path, DoneBytes: done, TotalBytes: total}
		p.mu.Unlock()
		p.setState(ctl.StateSeeding, fmt.Sprintf("%s: %d/%d MiB (%d%%)", path, done>>20, total>>20, pct(done, total)))
	}
}

func pct(a, b int64) int64 {
	if b == 0 {
		return 100
	}
	return a * 100 / b
}

// pumpState is what the log pump shares with the log channel's receiver
// (one per link: a planned restart of either daemon replaces the link) and
// with a handover.
type pumpState struct {
	mu   sync.Mutex
	cond *sync.Cond
	// acked: the backup's acknowledged offset (bytes in FIFO B).
	acked uint64
	// acks counts the acks received (waitLag's wake-up).
	acks uint64
	// discard (DrainLocally): stop sending, keep reading.
	discard bool
	// held: the link is held for a planned restart of the backup's
	// daemon (it said ByeRestarting): nothing is sent until a resumed
	// link is attached (or discard).
	held bool
	// handover: this daemon stops for a planned restart; the pump ends
	// at its next read, leaving FIFO A and its decoder to handOver.
	handover bool
	dec      *logchan.Decoder
	ended    chan struct{} // closed when the pump returned
	// sentOnLink is the stream offset (exclusive end) of the log written
	// to the log channel: the most the backup can have received.
	sentOnLink atomic.Uint64
	// readSince is when the pump began its current read of FIFO A, in
	// ns of the monotonic clock since base; 0 while it is not reading
	// (sending, held by the window or lag bound, before QEMU's first log,
	// after its END): what watchHang watches.
	readSince atomic.Int64
	base      time.Time
}

// readingFor is how long the pump has been in its current read of FIFO
// A, and that read's start (readSince); 0, 0 when it is not reading.
func (ps *pumpState) readingFor() (time.Duration, int64) {
	since := ps.readSince.Load()
	if since == 0 {
		return 0, 0
	}
	return time.Since(ps.base) - time.Duration(since), since
}

func (ps *pumpState) setDiscard() {
	ps.mu.Lock()
	ps.discard = true
	ps.cond.Broadcast()
	ps.mu.Unlock()
}

func (ps *pumpState) setHeld(held bool) {
	ps.mu.Lock()
	ps.held = held
	ps.cond.Broadcast()
	ps.mu.Unlock()
}

// pump reads FIFO A, cuts it into whole events and sends them over the
// log channel, keeping at most WindowBytes unacknowledged. The failover
// core (a failover.Driver) decides what happens when the backup falls
// silent or the channel breaks: DrainLocally makes this loop keep reading
// FIFO A and discard (the primary never blocks on a dead backup), then the
// split-brain claim decides between going on unprotected and halting.
// dec is the stream decoder: a new one, or the one a daemon stopping for
// a planned restart left (ResumeStreamDecoder).
func (p *primaryRun) pump(reader recordLog, link *peerConn, gates *outputGates, dec *logchan.Decoder) {
	ps := &pumpState{dec: dec, ended: make(chan struct{}), base: time.Now()}
	ps.cond = sync.NewCond(&ps.mu)
	handedOver := false
	defer func() {
		close(ps.ended)
		if !handedOver {
			p.close("primary log ended")
		}
	}()
	window := uint64(p.env.cfg.WindowBytes)
	maxLag := time.Duration(p.env.cfg.MaxLagMS) * time.Millisecond
	ps.sentOnLink.Store(dec.Offset())
	ps.acked = dec.Offset()

	var drv *failover.Driver
	drv, err := failover.NewDriver(nodeConfig(failover.RolePrimary, p.cfg, p.env.cfg), func(a failover.Action) {
		p.act(a, drv, gates, ps.setDiscard)
	})
	if err != nil {
		p.setState(ctl.StateUnprotected, err.Error())
		return
	}
	p.mu.Lock()
	if !p.active() {
		// Closed while the pump started: close saw no driver to stop.
		p.mu.Unlock()
		return
	}
	p.drv, p.ps = drv, ps
	p.mu.Unlock()
	go drv.Run()
	go p.receive(link, drv, ps, gates)
	go p.watchHang(ps, drv)

	buf := make([]byte, 64<<10)
	first := dec.Offset() == 0
	// LIBVIRT_FT_TEE_DIR (diagnostics): keep a copy of the record log as
	// <dir>/<uuid>.rrstream (no header; test/tools/rrdump reads it).
	var tee *os.File
	if dir := os.Getenv("LIBVIRT_FT_TEE_DIR"); dir != "" {
		if f, err := os.OpenFile(filepath.Join(dir, p.uuid+".rrstream"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644); err == nil {
			tee = f
			defer f.Close()
		}
	}
	for {
		ps.mu.Lock()
		var waited time.Time
		for !ps.discard && !ps.handover && p.active() && p.sent()-ps.acked >= p.windowNow(window, maxLag) {
			if waited.IsZero() {
				waited = time.Now()
				p.heldMu.Lock()
				p.windowSince = waited
				p.heldMu.Unlock()
			}
			ps.cond.Wait()
		}
		sending, stopping := !ps.discard, ps.handover
		ps.mu.Unlock()
		if !waited.IsZero() {
			p.heldMu.Lock()
			p.heldWindow += time.Since(waited)
			p.windowSince = time.Time{}
			p.heldMu.Unlock()
		}
		if !p.active() {
			return // closed (close broadcasts)
		}
		if stopping {
			handedOver = true
			return
		}
		// The ack count before the check: an ack that lands between
		// the two ends the wait at once (waitLag), never lost.
		ps.mu.Lock()
		acks := ps.acks
		ps.mu.Unlock()
		if sending && p.lagging(maxLag) {
			t := time.Now()
			p.waitLag(ps, acks)
			p.heldMu.Lock()
			p.heldLag += time.Since(t)
			p.heldMu.Unlock()
			continue
		}

		if !first && !dec.Ended() {
			ps.readSince.Store(max(int64(time.Since(ps.base)), 1))
		}
		n, err := reader.Read(buf)
		ps.readSince.Store(0)
		if n > 0 && tee != nil {
			_, _ = tee.Write(buf[:n])
		}
		if n > 0 {
			if first {
				first = false
				// Only from waiting: a backup lost before QEMU's first
				// log leaves the run unprotected, and it says so.
				p.mu.Lock()
				if p.state == ctl.StateWaiting {
					p.state, p.detail = ctl.StateReplicating, ""
					p.log.Info("state replicating")
				}
				p.mu.Unlock()
			}
			chunk, derr := dec.Feed(buf[:n])
			if derr != nil {
				// A log we cannot parse cannot be replayed: the backup is lost.
				drv.Post(failover.ChannelDown{Reason: "log decode error: " + derr.Error()})
				ps.setDiscard()
			}
			if len(chunk.Data) > 0 {
				p.recordSent(len(chunk.Data), chunk.Instructions)
				if l := p.sendLink(ps); l != nil {
					// Before the write: the backup's ack of it may
					// arrive before sendLog returns.
					ps.sentOnLink.Store(chunk.Offset + uint64(len(chunk.Data)))
					if serr := l.sendLog(chunk.Offset, chunk.Data); serr != nil && p.currentLink() == l {
						drv.Post(failover.ChannelDown{Reason: serr.Error()})
						ps.setDiscard()
					}
				}
			}
		}
		if err != nil {
			ps.mu.Lock()
			stopping := ps.handover
			ps.mu.Unlock()
			if stopping && n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
				// handOver's read deadline: nothing was consumed. (An
				// EOF, QEMU exiting meanwhile, is its end as always.)
				handedOver = true
				return
			}
			select {
			case <-p.stop:
				// close closed FIFO A (the daemon is stopping, or QEMU
				// stopped before it ever recorded): nothing to report.
				return
			default:
			}
			if !errors.Is(err, io.EOF) {
				p.log.WithError(err).Warn("reading the record FIFO")
			}
			// QEMU exited: cleanly when its log ended with END (guest
			// shutdown, virsh shutdown/destroy), else it crashed or was
			// killed, and the backup must go live.
			// A QEMU the watchdog killed ended uncleanly whatever its log
			// says: a destroy's END, if the kill fell back to one, was
			// never sent (KillVM discards the log from then on).
			hung := p.hungKilled() != ""
			clean := dec.Ended() && !hung
			if l := p.currentLink(); l != nil {
				_ = l.flush()
			}
			st, _ := drv.View()
			inStep := clean && st.State == failover.StateReplicating && st.ChannelOpen
			drv.Post(failover.QEMUExited{Clean: clean})
			// Let the driver send the bye and close our direction.
			drv.WaitFor(func(st failover.Status) bool {
				return st.State == failover.StateStopped || st.State == failover.StateHalted
			}, 2*time.Second)
			if inStep {
				// The backup got the whole log: in step once libvirt says
				// the guest shut down and the backup's replay of it ended
				// too (instep.go).
				p.mu.Lock()
				c := inStepCandidate{uuid: p.uuid, epoch: p.epoch, role: "primary", disks: p.disks}
				p.mu.Unlock()
				p.env.inStep.offer(c)
			}
			end, _ := drv.View()
			switch {
			case end.State == failover.StateHalted:
				// Stopped by the core (a lost split-brain race): a destroy
				// ends the log cleanly too, but this is no clean stop.
				p.setState(ctl.StateStopped, "halted: "+end.Reason)
			case hung:
				p.setState(ctl.StateStopped, "primary QEMU hung and was killed so that the backup goes live: "+p.hungKilled())
			case clean:
				p.mu.Lock()
				p.cleanStop = true
				p.mu.Unlock()
				p.setState(ctl.StateStopped, "primary QEMU exited; log ended")
			default:
				p.setState(ctl.StateStopped, "primary QEMU died without ending its log")
			}
			return
		}
	}
}

// sendLink returns the link to send the next log on: it waits while the
// link is held for the backup daemon's planned restart; nil once the log
// is discarded (DrainLocally) or the run ends.
func (p *primaryRun) sendLink(ps *pumpState) *peerConn {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for ps.held && !ps.discard && !ps.handover && p.active() {
		ps.cond.Wait()
	}
	if ps.discard || !p.active() {
		return nil
	}
	return p.currentLink()
}

func (p *primaryRun) currentLink() *peerConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.link
}

// receive reads acks, heartbeats and byes from the backup on link until it
// breaks. A link that is no longer the run's (replaced after a planned
// restart, or held for one) ends quietly.
func (p *primaryRun) receive(link *peerConn, drv *failover.Driver, ps *pumpState, gates *outputGates) {
	for {
		m, err := link.recv()
		if err != nil {
			link.Close()
			ps.mu.Lock()
			held := ps.held
			ps.mu.Unlock()
			p.mu.Lock()
			stale := p.link != link
			if held && !stale {
				p.link = nil
			}
			p.mu.Unlock()
			if held || stale {
				if held && !stale {
					go p.reconnect(drv, ps, gates)
				}
				return
			}
			drv.Post(failover.ChannelDown{Reason: err.Error()})
			return
		}
		switch m.Kind {
		case logchan.MsgAck:
			if sent := ps.sentOnLink.Load(); m.Ack.Offset > sent || m.Ack.Received > sent {
				// The backup cannot hold more than was sent: a
				// protocol error, not progress.
				drv.Post(failover.ChannelDown{Reason: fmt.Sprintf("ack of offset %d (received %d) beyond the %d bytes sent", m.Ack.Offset, m.Ack.Received, sent)})
				ps.setDiscard()
				link.Close()
				return
			}
			gates.ack(m.Ack.Received)
			// The icount first: a pump held by the lag bound rechecks
			// it when woken (waitLag).
			icount := p.recordAck(m.Ack.Offset, m.Ack.Executed)
			ps.mu.Lock()
			ps.acked = max(ps.acked, m.Ack.Offset)
			ps.acks++
			ps.cond.Broadcast()
			ps.mu.Unlock()
			drv.Post(failover.AckReceived{Offset: m.Ack.Offset, Icount: icount, Fed: m.Ack.Fed})
		case logchan.MsgDigests:
			drv.Post(failover.ChannelDown{Reason: "a Digests frame from the backup"})
			ps.setDiscard()
			link.Close()
			return
		case logchan.MsgHeartbeat:
			p.heard()
			drv.Post(failover.HeartbeatReceived{})
		case logchan.MsgBye:
			// Clean once: the reason reaches the failover core, the
			// state detail and the logs (docs/protocol.md §6.4).
			m.Bye = cleanBye(m.Bye)
			p.peerBye(m.Bye)
			if m.Bye.Clean && m.Bye.Reason == failover.ByeRestarting {
				// The backup's daemon restarts on purpose: quiesce,
				// hand it everything, and wait for it (reconnect).
				ps.mu.Lock()
				already := ps.held || ps.discard
				ps.mu.Unlock()
				if !already {
					drv.Post(failover.PeerBye{Clean: true, Reason: m.Bye.Reason})
					go p.quiesceForPeer(link, ps, gates)
				}
				continue
			}
			drv.Post(failover.PeerBye{Clean: m.Bye.Clean, Reason: m.Bye.Reason})
		}
	}
}

// act carries out one action of the primary's failover core. It runs on
// the driver's goroutine: anything slow runs in its own goroutine.
func (p *primaryRun) act(a failover.Action, drv *failover.Driver, gates *outputGates, setDiscard func()) {
	switch a := a.(type) {
	case failover.SendHeartbeat:
		if link := p.currentLink(); link != nil {
			link.queueHeartbeat()
		}
	case failover.SendBye:
		if link := p.currentLink(); link != nil {
			link.bye(logchan.Bye{Clean: a.Clean, Reason: a.Reason})
		}
	case failover.CloseChannel:
		if link := p.currentLink(); link != nil {
			link.closeWrite()
		}
	case failover.DrainLocally:
		setDiscard()
		if a.Switchover {
			p.setState(ctl.StateSwitchingOver, "planned switchover: log sending stopped; waiting for the backup to go live")
		} else {
			p.setState(ctl.StateUnprotected, "backup lost: draining the log locally; claiming the split-brain lock")
		}
	case failover.AcquireLock:
		p.mu.Lock()
		epoch := p.epoch
		p.mu.Unlock()
		go func() {
			won, err := p.env.arbiter.Acquire(p.uuid, epoch)
			if err != nil {
				p.pauseForClaim(err)
			}
			drv.Post(failover.LockResult{Won: won, Err: err})
		}()
	case failover.ReportUnprotected:
		setDiscard()
		gates.unprotect()
		p.setState(ctl.StateUnprotected, a.Reason)
		p.mu.Lock()
		resume := p.claimPaused || p.pauseDoubt
		p.claimPaused, p.pauseDoubt = false, false
		p.mu.Unlock()
		if resume {
			go p.env.resumeVM(p.uuid, p.stop)
		}
	case failover.HaltVM:
		setDiscard()
		gates.drop()
		p.setState(ctl.StateStopped, "halting: "+a.Reason)
		go p.env.destroy(p.uuid, "split brain: "+a.Reason)
	case failover.KillVM:
		// The backup goes live from where the log sent so far ends:
		// nothing more of this QEMU's log goes to it (should QEMU wake
		// up, or end its log with END as libvirt's destroy would let
		// it), and nothing its gates hold leaves (the output rule).
		setDiscard()
		gates.drop()
		p.mu.Lock()
		p.hung = a.Reason
		p.mu.Unlock()
		p.setState(ctl.StateUnprotected, a.Reason+"; killing it so that the backup goes live")
		go p.killHung(drv, a.Reason)
	case failover.StopPrimaryVM:
		setDiscard()
		gates.drop()
		p.mu.Lock()
		p.switchedOver = true
		p.mu.Unlock()
		p.setState(ctl.StateStopped, "switched over: the backup on "+p.peer+" is live; stopping this host's VM")
		go p.env.destroy(p.uuid, "planned switchover: the backup is live")
	}
}

// killHung carries out KillVM: SIGKILL (Hypervisor.Kill), else libvirt's
// destroy until the domain is gone (SIGTERM first: a QEMU that still runs
// its main loop may end its log with END, which the pump no longer sends).
// If QEMU has still not exited after killDeadline (a process stuck in the
// kernel), the Driver is told it exited uncleanly all the same: the
// backup goes live from the log it was sent, and this QEMU, whatever it
// still does, reaches neither the backup (the log is discarded) nor the
// network (its gates drop every frame).
func (p *primaryRun) killHung(drv *failover.Driver, reason string) {
	if err := p.env.hv.Kill(p.uuid, p.name); err != nil {
		p.log.WithError(err).Error("killing the hung recording QEMU with SIGKILL failed; destroying it through libvirt instead")
		go p.env.destroyUntilGone(p.uuid, reason, p.stop)
	}
	p.mu.Lock()
	ps := p.ps
	p.mu.Unlock()
	var ended <-chan struct{}
	if ps != nil {
		ended = ps.ended
	}
	select {
	case <-p.stop:
	case <-ended:
	case <-time.After(killDeadline):
		p.log.Errorf("the hung recording QEMU has not exited %v after it was killed: telling the backup to go live anyway (this host's copy is cut off: its log is no longer sent and its gates drop every frame)", killDeadline)
		p.setState(ctl.StateStopped, "primary QEMU hung and could not be killed; the backup goes live; this host's copy is cut off (log not sent, output dropped): destroy it by hand: "+reason)
		drv.Post(failover.QEMUExited{Clean: false})
	}
}

// killDeadline bounds how long killHung waits for a killed QEMU to exit
// before the backup is told to go live regardless.
const killDeadline = 15 * time.Second

// hungKilled is why KillVM killed this run's QEMU, "" if it did not.
func (p *primaryRun) hungKilled() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.hung
}

// hangProbeTimeout is the least time watchHang gives QEMU's monitor to
// answer once the record log has been silent for the hang probe bound.
const hangProbeTimeout = 5 * time.Second

// watchHang is the primary's watchdog for a hung recording QEMU: "a halt
// in the flow of log entries or acknowledgments could indicate the
// failure of a VM" (Scales et al. 2010, section 2.3). A running guest
// logs constantly (an idle one still logs clock checkpoints several times
// a second), but QEMU may keep up to 4 KiB of log in its stdio buffer
// (flushed at a 5 ms pace when FIFO A has room, patch 0034) and a paused
// guest logs nothing, so silence alone proves nothing. When the
// pump has waited in one read of FIFO A for the hang probe bound
// (ftxml.Config.HangProbe: <ft:heartbeat stall-timeout-ms>, default twice
// timeout-ms), the
// watchdog asks QEMU's monitor for its status (query-status through
// libvirt): a QEMU that answers, in whatever state, or a libvirt that
// answers with an error, is not hung, and is asked again a probe timeout
// later while the silence lasts. QEMU's first answer in a silence (its
// run state and replay position) is logged at info level, so that a
// paused VM can be told from a guest that stopped logging. One that does not answer within the probe
// timeout (that bound, at least 5 s) while the log stays silent is
// reported to the failover core (failover.PrimaryHung), which kills it
// while a backup is in step (KillVM: the backup goes live) and otherwise
// leaves it alone. The hangs QEMU 7.2 had under record/replay (docs/replay.md
// §8.6) all held its main loop, and with it the monitor.
func (p *primaryRun) watchHang(ps *pumpState, drv *failover.Driver) {
	silence := p.cfg.HangProbe()
	probe := max(silence, hangProbeTimeout)
	tick := time.NewTicker(max(silence/4, 10*time.Millisecond))
	defer tick.Stop()
	var answer chan error // the probe under way; nil when none
	var nextProbe time.Time
	var told int64   // the silence (its read's start) QEMU's answer described
	var asking int64 // the silence the probe under way describes; 0: none
	for {
		select {
		case <-p.stop:
			return
		case <-ps.ended:
			return
		case <-tick.C:
		}
		silent, since := ps.readingFor()
		if since == 0 || silent < silence || time.Now().Before(nextProbe) {
			continue
		}
		if answer == nil {
			answer = make(chan error, 1)
			// The first answered probe of a silence also logs what
			// QEMU says.
			asking = 0
			if told != since {
				asking = since
			}
			go p.probeMonitor(answer, silent, asking != 0)
		}
		timer := time.NewTimer(probe)
		select {
		case <-p.stop:
			timer.Stop()
			return
		case <-ps.ended:
			timer.Stop()
			return
		case err := <-answer:
			timer.Stop()
			answer = nil
			nextProbe = time.Now().Add(probe)
			if err != nil {
				p.log.WithError(err).Debug("hang watchdog: QEMU's monitor could not be asked")
			} else if asking != 0 {
				told = asking
			}
			continue
		case <-timer.C:
		}
		if _, now := ps.readingFor(); now != since {
			continue // the log moved while the monitor was asked
		}
		// Unanswered: hung only if libvirt (asked without a job) says
		// the domain runs and its monitor has had a command outstanding
		// for at least the hang probe bound (not the probe timeout: libvirt
		// starts counting only once the probe is inside the monitor). A
		// probe that waits for another job's lock (a start, a suspend,
		// libvirtd busy) leaves the monitor idle; a paused guest logs
		// nothing and is not hung.
		running, busy, err := p.monitorBusy()
		nextProbe = time.Now().Add(probe)
		if err != nil || !running || busy < silence {
			p.log.WithError(err).Debugf("hang watchdog: the monitor did not answer in %v, but libvirt says running=%v, monitor busy for %v: not hung", probe, running, busy)
			continue
		}
		if _, now := ps.readingFor(); now != since {
			continue
		}
		select {
		case <-p.stop:
			return
		case <-ps.ended:
			return
		default:
		}
		// Reported again every probe timeout while it lasts: the core
		// ignores it unless a backup is in step (and once it killed).
		silent, _ = ps.readingFor()
		reason := fmt.Sprintf("record log silent for %v and QEMU's monitor busy with an unanswered command for %v",
			silent.Round(time.Millisecond), busy.Round(time.Millisecond))
		p.log.Error("recording QEMU hung: " + reason)
		drv.Post(failover.PrimaryHung{Reason: reason})
	}
}

// monitorBusy is Hypervisor.MonitorBusy, given up after 5 s (a libvirtd
// that does not answer makes nothing hung).
func (p *primaryRun) monitorBusy() (running bool, busy time.Duration, err error) {
	type answer struct {
		running bool
		busy    time.Duration
		err     error
	}
	c := make(chan answer, 1)
	go func() {
		r, b, err := p.env.hv.MonitorBusy(p.uuid)
		c <- answer{r, b, err}
	}()
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case a := <-c:
		return a.running, a.busy, a.err
	case <-t.C:
		return false, 0, errors.New("libvirt did not answer GetState/GetControlInfo in 5 s")
	case <-p.stop:
		return false, 0, errors.New("the run ended")
	}
}

// probeMonitor asks the running QEMU for its status (query-status) and
// sends the outcome on answer when QEMU or libvirt answers, which a hung
// QEMU never does. With describe it then asks for the replay position
// (query-replay) and logs both at info level, after the answer: what QEMU
// says in a silence of the record log (silent long) tells a paused VM (or
// one stopped by a log write error) from a guest that logs nothing while
// it runs, and asking must not delay the proof of life.
func (p *primaryRun) probeMonitor(answer chan<- error, silent time.Duration, describe bool) {
	client, release, err := p.env.qmp(p.uuid)
	if err != nil {
		answer <- err
		return
	}
	defer release()
	st, err := client.QueryStatus()
	answer <- err
	if err != nil || !describe {
		return
	}
	state := "status " + st.Status
	if ri, rerr := client.QueryReplay(); rerr == nil {
		state += fmt.Sprintf(", replay mode %s at icount %d", ri.Mode, ri.Icount)
	}
	p.log.Infof("hang watchdog: the record log has been silent for %v; QEMU answers: %s", silent.Round(time.Millisecond), state)
}

// pauseForClaim pauses the VM (once) while the split-brain claim cannot
// be decided: the backup may be going live, so this copy must not run on
// (the output is held anyway). The claim is retried; winning resumes it
// (ReportUnprotected), losing destroys it (HaltVM).
func (p *primaryRun) pauseForClaim(err error) {
	p.mu.Lock()
	already, gen := p.claimPaused, p.pauseGen
	p.claimPaused = true
	p.mu.Unlock()
	if already {
		return
	}
	// Marked and out of doubt once paused, in pauseVM's callback: a
	// stale pause failing meanwhile may have taken the mark set above
	// (pauseAfterAdoptResume), and the follow-up pause this one may start
	// can mark the run in doubt again only after it (helper-146, 147).
	if p.pauseVM("the arbiter cannot be reached ("+err.Error()+"); the VM waits until the split-brain claim is decided", handoverTimeout, false, func() { p.claimPaused, p.pauseDoubt = true, false }) != nil {
		// Unmarked, unless a planned restart's pause succeeded
		// meanwhile: its mark stands (helper-139); not after a failed
		// pause left the VM's state in doubt (pauseDoubt). Another
		// pause that succeeded meanwhile with no restart's mark (a
		// stale one, which took this claim's early mark for its own)
		// left the VM paused with nothing to resume it: in doubt
		// (helper-148).
		p.mu.Lock()
		if p.pauseGen != gen && !p.restartPaused {
			p.pauseDoubt = true
		}
		p.claimPaused = p.restartPaused && !p.pauseDoubt
		p.mu.Unlock()
		return
	}
	p.setState(ctl.StateUnprotected, "backup lost; the arbiter cannot be reached ("+err.Error()+"): the VM is paused until the split-brain claim is decided")
}

// peerBye notes what the backup's bye says for the status: the go-live
// detail of a ByeLive, or where its replay stalled.
func (p *primaryRun) peerBye(b logchan.Bye) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if b.Detail != "" {
		p.peerReport = b.Detail // cut and cleaned by cleanBye
	}
	if stall, ok := strings.CutPrefix(b.Reason, "backup replay stalled"); ok && !b.Clean {
		// The backup's replay stopped (failover.BackupStalled there):
		// where, the kept log's path and rrdump command, and how its
		// QEMU spent the stall fit in maxStallText.
		p.stall = logchan.CleanText("replay stalled"+stall, maxStallText)
	}
	if behind, ok := strings.CutPrefix(b.Reason, "backup replay too far behind"); ok && !b.Clean {
		// The backup gave up on its lag (failover.BackupBehind there).
		p.stall = logchan.CleanText("replay too far behind"+behind, 512)
	}
}

func (p *primaryRun) heard() {
	p.mu.Lock()
	p.lastHeartbeat = time.Now()
	p.mu.Unlock()
}

func (p *primaryRun) sent() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sentBytes
}

func (p *primaryRun) recordSent(n int, instr uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sentBytes += uint64(n)
	p.logInstr += instr
	now := time.Now()
	p.lastSentAt = now
	if last := len(p.samples) - 1; last >= 0 && now.Sub(p.samples[last].at) <= 10*time.Millisecond {
		// Within 10 ms of the last sample: it covers this log too, at
		// its earlier time (a lag up to 10 ms too long, never too
		// short; without this, an icount in log sent since the last
		// sample had no sample and read as no lag).
		p.samples[last].instr = p.logInstr
		return
	}
	p.samples = append(p.samples, sample{instr: p.logInstr, at: now})
	if len(p.samples) > 4096 {
		p.samples = append(p.samples[:0], p.samples[2048:]...)
	}
}

// heldTimes is how long the pump was held in this run by the lag bound
// and by the window, a window hold in progress included
// (ctl.DomainStatus.HeldLagMS, HeldWindowMS): neither ever decreases, as
// the metric built on them must not.
func (p *primaryRun) heldTimes() (lag, window time.Duration) {
	p.heldMu.Lock()
	defer p.heldMu.Unlock()
	window = p.heldWindow
	if !p.windowSince.IsZero() {
		window += time.Since(p.windowSince)
	}
	return p.heldLag, window
}

// waitLag holds the pump while the lag bound holds it (lagging): until
// the next ack (it carries the backup's latest icount sample), until the
// backup would count as no longer advancing (3 status intervals after
// its icount last grew: lagging's rule, the one way time alone ends a
// hold), or until the pump must stop (discard, handover, close). It waits
// on the pump's condition, not a poll: the hold ends with the ack that
// ends it. acks is ps.acks read before the pump's lagging check: an ack
// counted since ends the wait at once.
func (p *primaryRun) waitLag(ps *pumpState, acks uint64) {
	p.mu.Lock()
	recheck := max(time.Until(p.advancingUntilLocked()), time.Millisecond)
	p.mu.Unlock()
	ps.mu.Lock()
	defer ps.mu.Unlock()
	expired := false
	t := time.AfterFunc(recheck, func() {
		ps.mu.Lock()
		expired = true
		ps.cond.Broadcast()
		ps.mu.Unlock()
	})
	defer t.Stop()
	for ps.acks == acks && !expired && !ps.discard && !ps.handover && p.active() {
		ps.cond.Wait()
	}
}

// lagging reports whether the primary must wait for its backup: the
// backup's executed icount (sampled by the backup every status interval,
// Ack.Executed) is more than max behind the head of the log sent, in the
// time between the primary's sends (runLag), and the backup is still
// advancing (its icount grew within the last three samples). Measured to
// the latest send, not to now: a primary held here sends nothing, so its
// head stands still while its backup catches up, and the hold ends once
// the backup is within max of it (measured to now, the lag grew during the
// hold itself, and a hold could only end by the advancing rule, a primary
// idle for three samples each time). The first send after a hold is
// stamped with its own time, so the hold's length counts in the lag again
// until the backup passes the log sent before it: holds still come in
// runs, shorter ones. A backup that stopped advancing may be waiting for
// log the primary has not sent yet (QEMU reads ahead of what it executes),
// so the primary never waits on it: that could never end. max 0: no bound;
// before the first sample (icount 0) the lag is unknown and holds nothing.
func (p *primaryRun) lagging(max time.Duration) bool {
	if max <= 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return time.Now().Before(p.advancingUntilLocked()) && p.lagLocked() > max
}

// windowNow is the window in force (bytes): window (window-bytes) while
// the lag bound holds the backup's lag in time (max > 0, the backup's
// icount known and still advancing: lagging's rule), else at most
// standWindowBytes. While the backup stands still, at the start before its
// first icount sample, or with max-lag-ms -1, the lag bound holds nothing
// and the window is the only bound of how far the primary runs ahead, and
// so of the drain at go-live; a big window pays only while the lag bound
// keeps that lag short. A change to the larger window comes with an ack
// (its icount grew), which wakes a waiting pump; a change to the smaller
// one needs no wake-up. Errors: none.
func (p *primaryRun) windowNow(window uint64, max time.Duration) uint64 {
	if window <= standWindowBytes || max <= 0 {
		return min(window, standWindowBytes)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.backupIcnt == 0 || !time.Now().Before(p.advancingUntilLocked()) {
		return standWindowBytes
	}
	return window
}

// advancingUntilLocked is when the backup stops counting as advancing
// (lagging's rule): three status intervals after its icount last grew.
// Called with p.mu held.
func (p *primaryRun) advancingUntilLocked() time.Time {
	return p.icountChangedAt.Add(3 * p.env.cfg.statusInterval())
}

// lagLocked is the backup's lag (lagExceeded's measure, also virt-ft
// status's LAG (ms)); called with p.mu held.
func (p *primaryRun) lagLocked() time.Duration {
	return backupLag(p.samples, p.backupIcnt, p.logInstr, p.lastSentAt)
}

// lagExceeded is lagging's rule on explicit values: the backup's lag
// (backupLag) is more than max.
func lagExceeded(samples []sample, backupIcount, logInstr uint64, max time.Duration, head time.Time) bool {
	return backupLag(samples, backupIcount, logInstr, head) > max
}

// backupLag is the time between the primary sending the log that reaches
// backupIcount and head (the time it sent its latest log), when the
// backup's icount is known (above 0) and below the log's; else 0. samples
// are (instructions sent, time) in order.
func backupLag(samples []sample, backupIcount, logInstr uint64, head time.Time) time.Duration {
	if backupIcount == 0 || backupIcount >= logInstr {
		return 0
	}
	return runLag(samples, backupIcount, head)
}

// runLag is the primary's wall time between sending the log that reaches
// icount (the first sample at or past it) and head; 0 when no sample
// reaches icount.
func runLag(samples []sample, icount uint64, head time.Time) time.Duration {
	for _, s := range samples {
		if s.instr >= icount {
			return max(head.Sub(s.at), 0)
		}
	}
	return 0
}

// recordAck notes an acknowledgement (the lag it implies: lagLocked).
// icount (Ack.Executed) counts at most up to the instructions in the log
// sent so far (logInstr, counted before each send): an honest backup
// cannot have executed more of the log than it was sent, but a backup that
// went on as a normal QEMU after END (a switchover) does, and a hostile
// one could claim any figure. Kept as it came, one huge value would read
// as "caught up" for the rest of the run and turn the lag bound off.
// It returns the icount as counted.
func (p *primaryRun) recordAck(offset, icount uint64) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ackedBytes = max(p.ackedBytes, offset)
	icount = min(icount, p.logInstr)
	if icount > p.backupIcnt {
		p.backupIcnt = icount
		p.icountChangedAt = time.Now()
	}
	p.lastHeartbeat = time.Now()
	return icount
}

// qemuStopped is the stopped/release hook or libvirt's STOPPED event for
// this run's QEMU.
func (p *primaryRun) qemuStopped(why string) {
	p.mu.Lock()
	p.running = false
	rr, link, live := p.rr, p.link, p.from != nil || p.logEnding || p.adoptedAlone
	p.mu.Unlock()
	if live {
		// The VM that went live here (or ran alone when this daemon
		// started: adoptalone.go) is gone: release the former backup's
		// gates (their filters are off since go-live) and the backup
		// run that went live.
		defer p.close(why)
	}
	if rr != nil && link != nil && !rr.Connected() {
		if n, err := rr.Produced(); err == nil && n == 0 {
			// QEMU stopped without ever opening FIFO A (it failed to
			// start after the prepare hook): the pump would wait for it
			// forever, holding the log channel, the output gates and the
			// armed backup, and the next start would be refused as
			// "already replicating". There is no log: nothing to fail
			// over to.
			p.log.Warn("QEMU stopped before recording anything: releasing the log channel, the output gates and the backup")
			p.close(why)
			go p.cancelPeerBackup()
		}
	}
	// The pump sees EOF on FIFO A and finishes the channel; the FIFO
	// file is no longer needed once QEMU has exited.
	p.mu.Lock()
	fifo := p.recordFIFO
	if p.hung != "" {
		why = "primary QEMU hung and was killed so that the backup goes live: " + p.hung
	}
	if p.state != ctl.StateRefused {
		p.state, p.detail = ctl.StateStopped, why
	}
	p.mu.Unlock()
	if fifo != "" {
		_ = os.Remove(fifo)
	}
	p.env.pairings.remove(p.uuid)
}

// cancelPeerBackup asks the backup host to discard the backup it armed for
// this domain (it does so only while the backup domain has not started).
func (p *primaryRun) cancelPeerBackup() {
	qemuVer, err := p.env.hv.QEMUVersion()
	if err != nil {
		return
	}
	logVer, err := logchan.LogVersionForQEMU(qemuVer)
	if err != nil {
		return
	}
	ctrl, err := dialControl(p.env, p.peer, p.uuid, qemuVer, logVer)
	if err != nil {
		p.log.WithError(err).Warn("cannot ask the backup host to discard the armed backup")
		return
	}
	defer ctrl.Close()
	_ = ctrl.request(logchan.ControlRequest{Op: logchan.OpCancelBackup, UUID: p.uuid}, nil)
}

// releaseGates closes the output gates, if any, keeping their last
// summary for virt-ft status.
func (p *primaryRun) releaseGates() {
	p.mu.Lock()
	gates := p.gates
	p.gates = nil
	if gates != nil {
		p.lastGates = gates.stats()
	}
	p.mu.Unlock()
	if gates != nil {
		gates.close()
	}
}

// close releases everything this run holds on this host (its undo stack)
// and stops its failover core, keeping the core's last view for the
// status. Safe to call more than once and from any goroutine.
func (p *primaryRun) close(why string) {
	p.stopOnce.Do(func() { close(p.stop) })
	p.mu.Lock()
	drv, ps := p.drv, p.ps
	p.drv, p.link, p.rr = nil, nil, nil
	p.mu.Unlock()
	if ps != nil {
		// A pump waiting for the window or a held link sees the end.
		ps.mu.Lock()
		ps.cond.Broadcast()
		ps.mu.Unlock()
	}
	if drv != nil {
		// Let an action batch under way (a claim, a kill) finish before
		// the undo releases what it uses.
		st, tm := stopCore(drv, p.log)
		p.mu.Lock()
		p.final, p.finalTm = st, tm
		p.mu.Unlock()
	}
	p.undo.run()
}

// nodeConfig converts a domain's heartbeat settings into the failover
// core's ticks. sample is the daemon's status interval (how often a backup
// samples its QEMU): the stall bound is at least ten of them, so that a
// stall is never a matter of a sample or two.
func nodeConfig(role failover.Role, cfg ftxml.Config, hc Config) failover.Config {
	sample := hc.statusInterval()
	fc := failover.Config{Role: role,
		HeartbeatInterval: failover.Ticks(cfg.HeartbeatInterval), HeartbeatTimeout: failover.Ticks(cfg.HeartbeatTimeout),
		StallTimeout: max(failover.Ticks(cfg.Stall()), 10*failover.Ticks(sample))}
	fc.RestartGrace = failover.Ticks(restartGrace(cfg, hc))
	// The lag ceiling assumes the primary's lag bound holds a healthy but
	// slower backup close behind: with the bound off (max-lag-ms -1) there
	// is no ceiling, and a long bound lifts it to four times the bound.
	if hc.MaxLagMS > 0 {
		fc.LagCeiling = max(failover.DefaultLagCeiling(fc.StallTimeout), 4*failover.Ticks(time.Duration(hc.MaxLagMS)*time.Millisecond))
	}
	return fc
}

// defaultRestartGrace is the least restart grace by default: it covers the
// restarting side's quiesce (its replay catching up: handOver is bounded
// by handoverTimeout, 3 s) and the next process's start.
const defaultRestartGrace = 5 * time.Second

// restartGrace is how long a peer restarting on purpose has to bring the
// log channel back: Config.RestartGraceMS, else the larger of the heartbeat
// timeout and defaultRestartGrace (5 s).
func restartGrace(cfg ftxml.Config, hc Config) time.Duration {
	if hc.RestartGraceMS > 0 {
		return time.Duration(hc.RestartGraceMS) * time.Millisecond
	}
	return max(cfg.HeartbeatTimeout, defaultRestartGrace)
}

// lossOf gives the failover core's timings in ms for the status; nil
// before any loss.
func lossOf(tm failover.Timings) *ctl.Loss {
	if tm.Detected == failover.NotYet {
		return nil
	}
	ms := func(t int64) int64 {
		if t == failover.NotYet {
			return -1
		}
		return t * int64(failover.TickInterval/time.Millisecond)
	}
	return &ctl.Loss{Cause: tm.Cause, DetectionMS: ms(tm.Detection()), DrainMS: ms(tm.Drain()), LockMS: ms(tm.Lock()),
		StartMS: ms(tm.Start()), TotalMS: ms(tm.Total())}
}
