package plugin

// Re-protection, the primary host's side (issue 13, virt-ft protect): a
// VM that went live here after a failover and runs alone gets a new
// backup on a peer host without a reboot, the way VMware FT's "FT VMotion"
// does it (Scales et al. 2010, section 3.1). The steps (docs/replay.md
// §15, docs/protocol.md §11):
//
//  1. prepare-incoming arms the new backup on the peer: its QEMU waits
//     for the running VM's state (incoming.go).
//  2. FIFO A is created and read; the QEMU's migration and NBD
//     connections go to unix sockets here (reprotect.Listener), each piped
//     over its own mutual-TLS stream connection to the peer daemon.
//  3. plugin/reprotect.Source mirrors the disks, migrates the memory
//     live, and at the switchover starts the new record log into FIFO A
//     atomically with the saved state (packaging/qemu 0021). The VM is
//     then paused.
//  4. Paused: the output gates become a primary's again (their QEMU
//     connections kept, filters back on), the log channel of the new
//     pairing epoch is dialled, the log pump starts, and the VM continues.
//
// Until the log channel is up nothing on the peer can go live (its backup
// has no failover core yet), so any failure there ends with the VM running
// on alone here, its gates passing frames; a failure after the switchover
// also leaves its new log read and discarded here (a recording QEMU whose
// FIFO nobody reads would block). From the log channel on, the pairing is
// an ordinary one and its failover cores decide.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/libvirt-ft/libvirt-ft/failover"
	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	"github.com/libvirt-ft/libvirt-ft/plugin/reprotect"
	"github.com/libvirt-ft/libvirt-ft/qmp"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// reprotectBandwidth caps a re-protection's migration (bytes/s): QEMU
// 7.2's default (128 MiB/s) would make a large VM's memory converge slowly
// on a fast link; the lab's streams are local.
const reprotectBandwidth = 1 << 30

// protect answers virt-ft protect: it checks that name runs alone here
// after a failover and starts its re-protection onto peer ("" for the host
// it failed over from). Errors name the state and what to do.
func (d *Daemon) protect(name, peer string) (ctl.DomainStatus, error) {
	if name == "" {
		return ctl.DomainStatus{}, errors.New("protect: name the domain (virt-ft protect DOMAIN)")
	}
	if peer != "" {
		if _, _, err := splitPeer(peer); err != nil {
			return ctl.DomainStatus{}, fmt.Errorf("protect: --peer %q: %w", peer, err)
		}
	}
	name = d.resolveName(name)
	var dm *domain
	for _, x := range d.domains() {
		if s := x.status(); s.Name == name || strings.EqualFold(s.UUID, name) {
			dm = x
		}
	}
	if dm == nil || dm.current() == nil || !dm.current().active() {
		// A VM started without the ft element (convert.go).
		if def, err := d.definitionOf("protect", name); err == nil {
			if _, present, _ := ftxml.ParseConfig(def.XML); !present {
				return d.protectPlain(name, peer)
			}
		}
	}
	if dm == nil {
		return ctl.DomainStatus{}, fmt.Errorf("protect: domain %q is not known to libvirt-ftd here: virt-ft protect gives a backup to a VM that runs on this host, alone after a failover or started without the ft element (virsh list --all)", name)
	}
	live, s, err := d.claimReprotect(dm, name)
	if err != nil {
		return s, err
	}
	go func() { _ = d.reprotect(dm, live, peer) }()
	return s, nil
}

// claimReprotect checks that dm's run may be re-protected (reprotectable)
// and marks it as being re-protected (one at a time); the caller then runs
// reprotect.
func (d *Daemon) claimReprotect(dm *domain, name string) (*primaryRun, ctl.DomainStatus, error) {
	live, ok := dm.current().(*primaryRun)
	if !ok || !live.active() {
		s := dm.status()
		return nil, s, fmt.Errorf("protect: domain %q is %s here (role %s): only a VM that runs alone on this host (it went live after a failover, or lost its backup) can be re-protected; see virt-ft status", name, s.State, s.Role)
	}
	s := live.status()
	ok, why := live.reprotectable(false)
	live.mu.Lock()
	busy := live.reprotecting
	if ok && !busy {
		live.reprotecting = true
		live.reprot = &ctl.Reprotect{Phase: "arming"}
	}
	live.mu.Unlock()
	switch {
	case busy:
		return nil, s, fmt.Errorf("protect: domain %q: a re-protection is under way; follow it with virt-ft status", name)
	case !ok:
		return nil, s, fmt.Errorf("protect: domain %q is %s here (role %s): %s; only a VM that runs alone on this host (it went live after a failover, or lost its backup) can be re-protected; see virt-ft status", name, s.State, s.Role, why)
	}
	return live, s, nil
}

// reprotectable reports whether p may be re-protected now, or why not:
//   - a VM that went live here without a restart (the patched QEMU left
//     replay mode at END), or whose log was ended for an earlier attempt
//     (endLog): it runs alone and does not record;
//   - a primary that lost its backup and won the split-brain lock (its
//     failover core is unprotected): it records into a log read and
//     discarded here, which endLog ends first.
//
// auto (the automatic re-protection) also refuses a pairing whose
// protection the operator ended (virt-ft unprotect, on either host).
func (p *primaryRun) reprotectable(auto bool) (bool, string) {
	p.mu.Lock()
	running, state, detail, noAuto := p.running, p.state, p.detail, p.noAuto
	alone := (p.from != nil || p.logEnded || p.adoptedAlone) && p.recordFIFO == "" && (state == ctl.StateLive || state == ctl.StateUnprotected)
	recording := p.from == nil && !p.logEnding && p.recordFIFO != "" && p.primaryXML != "" && state == ctl.StateUnprotected && p.hung == "" && !p.switchedOver
	ending := p.logEnding && !p.logEnded
	drv := p.drv
	p.mu.Unlock()
	switch {
	case !running:
		return false, "its VM does not run"
	case auto && noAuto:
		return false, "its protection was ended on purpose (virt-ft unprotect)"
	case ending:
		return false, "its record log is being ended (it continues once the VM met its end)"
	case alone:
		return true, ""
	case recording && drv != nil:
		st, _ := drv.View()
		if st.State != failover.StateUnprotected {
			return false, fmt.Sprintf("its backup is being lost (failover state %s)", st.State)
		}
		if auto && st.Unprotected != "" {
			return false, "its protection was ended on purpose (" + st.Unprotected + ")"
		}
		return true, ""
	case state == ctl.StateLive && p.recordFIFO != "":
		return false, "it records (a re-protection failed after its switchover, or it went live by a restart with stock QEMU); restart the VM to protect it"
	}
	if detail == "" {
		detail = "it has a backup"
	}
	return false, detail
}

// Auto re-protection's pace (cfg.AutoReprotect): the failed host is asked
// whether its libvirt-ftd answers every autoReprotectPoll; a re-protection
// that fails is tried again after autoReprotectFirst, doubling up to
// autoReprotectMax.
const (
	autoReprotectPoll  = 2 * time.Second
	autoReprotectFirst = 5 * time.Second
	autoReprotectMax   = 5 * time.Minute
)

// autoReprotect watches live, a primary run or a VM that went live here,
// and re-protects it (issue 13, <ft:reprotect auto>) whenever it runs
// alone (reprotectable) and its peer's libvirt-ftd answers: the host it
// failed over from, or its backup host; with a backoff after each failed
// attempt. It ends when live ends, is replaced as the domain's run (a
// re-protection succeeded: the new run has its own), or the daemon stops.
func (d *Daemon) autoReprotect(dm *domain, live *primaryRun) {
	cfg := live.cfg
	live.mu.Lock()
	peer := live.peer // its backup's host
	live.mu.Unlock()
	if live.from != nil {
		cfg = live.from.cfg
		peer = peerAddr(cfg) // the host it failed over from
	}
	if !cfg.AutoReprotect {
		return
	}
	log := live.log.WithField("step", "auto re-protection")
	wait, backoff := autoReprotectPoll, autoReprotectFirst
	for {
		t := time.NewTimer(wait)
		select {
		case <-live.stop:
			t.Stop()
			return
		case <-d.quit:
			t.Stop()
			return
		case <-t.C:
		}
		wait = autoReprotectPoll
		if dm.current() != live {
			return // re-protected, or replaced
		}
		if ok, _ := live.reprotectable(true); !ok {
			continue // replicating, or not (yet) to be re-protected
		}
		if !d.peerAnswers(peer) {
			continue
		}
		if _, _, err := d.claimReprotect(dm, live.name); err != nil {
			continue // virt-ft protect is at it, or the VM is going
		}
		log.Infof("the host %s answers again: re-protecting onto it", peer)
		if err := d.reprotect(dm, live, ""); err == nil {
			return
		}
		log.Infof("trying again in %v", backoff)
		wait, backoff = backoff, min(2*backoff, autoReprotectMax)
	}
}

// peerAnswers reports whether the libvirt-ftd at addr takes a TCP
// connection (the re-protection's own handshake tells the rest).
func (d *Daemon) peerAnswers(addr string) bool {
	e := d.env()
	nc, err := e.dial(addr, e.cfg.dialTimeout())
	if err != nil {
		return false
	}
	nc.Close()
	return true
}

// splitPeer parses "host" or "host:port" (the daemon's peer port when
// none).
func splitPeer(peer string) (host string, port int, err error) {
	host, ps, err := net.SplitHostPort(peer)
	if err != nil {
		return peer, 0, nil //nolint:nilerr // no port
	}
	port, err = strconv.Atoi(ps)
	if err != nil || port <= 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q is not a TCP port", ps)
	}
	return host, port, nil
}

// reprotect runs one re-protection of live (claimReprotect said it may)
// and makes the new primary run the domain's run, or leaves live running
// alone with the failure in its status (and returns it).
func (d *Daemon) reprotect(dm *domain, live *primaryRun, peerArg string) (err error) {
	t0 := time.Now()
	live.mu.Lock()
	state, detail := live.state, live.detail
	live.mu.Unlock()
	rp := &ctl.Reprotect{Phase: "arming"}
	live.setReprotect(rp)
	defer func() {
		live.mu.Lock()
		live.reprotecting = false
		live.mu.Unlock()
	}()
	var p *primaryRun
	p, err = d.newReprotectRun(live, peerArg)
	if err == nil {
		rp = &ctl.Reprotect{Phase: "arming", Peer: p.peer}
		live.setReprotect(rp)
		err = p.reprotectFrom(dm, live, rp, t0)
	}
	if err != nil {
		if p != nil {
			p.close("re-protection failed")
		}
		failed := *live.reprotectView()
		failed.Phase, failed.Error = "failed", err.Error()
		live.setReprotect(&failed)
		live.log.WithError(err).Error("re-protection failed; the VM runs on alone")
		live.mu.Lock()
		if live.state == state {
			live.detail = detail
			if live.logEnded && live.from == nil {
				live.detail = "backup lost; runs alone without recording (its log was ended to re-protect it)"
			}
		}
		live.mu.Unlock()
		return err
	}
	// The new pairing's own watch (its backup may be lost too), and the
	// VM's title saying so.
	go d.autoReprotect(dm, p)
	p.startNotes()
	return nil
}

// newReprotectRun is the primary run a re-protection of live builds: the
// persistent definition go-live made (ftxml.LivePrimary), its backup on
// peerArg or on the host the VM failed over from.
func (d *Daemon) newReprotectRun(live *primaryRun, peerArg string) (*primaryRun, error) {
	live.mu.Lock()
	primaryXML, origin, liveXML := live.primaryXML, live.origin, live.liveXML
	if peerArg == "" && live.from == nil {
		// Its backup's host, which a --peer may have chosen.
		peerArg = live.peer
	}
	live.mu.Unlock()
	if live.from != nil {
		var err error
		if primaryXML, err = ftxml.LivePrimary(live.from.backupXML); err != nil {
			return nil, err
		}
		origin = live.from
	}
	cfg, _, err := ftxml.ParseConfig(primaryXML)
	if err != nil {
		return nil, err
	}
	if peerArg != "" {
		host, port, _ := splitPeer(peerArg)
		cfg.PeerAddress = host
		if port != 0 {
			cfg.PeerPort = port
		}
	}
	p := newPrimaryRun(d.env(), live.uuid, live.name, *cfg)
	// live.liveXML: adopted by this daemon (a planned restart, or
	// adoptAlone), its QEMU runs with a backup's definition all the same.
	p.liveXML, p.origin, p.running = origin != nil || liveXML, origin, true
	p.reprotectXML, p.primaryXML = primaryXML, primaryXML
	return p, nil
}

// reprotectFrom runs steps 1–4 (the file comment) for p, the new run, from
// live; p becomes dm's run once the VM records and its log channel is up.
// Everything p acquired is released by the caller's p.close on error; what
// it hands to live (its gates, the discarded log) live keeps.
func (p *primaryRun) reprotectFrom(dm *domain, live *primaryRun, rp *ctl.Reprotect, t0 time.Time) (err error) {
	e := p.env
	dom, qemuVer, logVer, build, err := emulatorOf(e, p.reprotectXML)
	if err != nil {
		return err
	}
	ctrl, err := dialFeature(e, p.peer, p.uuid, qemuVer, logVer, logchan.FeatureReprotect, "receive a running VM")
	if err != nil {
		return err
	}
	defer ctrl.Close()
	nics := 0
	if dom.Devices != nil {
		nics = len(dom.Devices.Interfaces)
	}
	live.mu.Lock()
	liveGates := live.gates
	live.mu.Unlock()
	if p.cfg.OutputGate && nics > 0 && (liveGates == nil || len(liveGates.gates) != nics) {
		// The new primary's frames would bypass the output rule.
		return fmt.Errorf("the live VM's output gates are not all in place (%d interfaces): re-protecting it would leave its output ungated; restart the VM to protect it", nics)
	}
	live.mu.Lock()
	recording := live.recordFIFO != "" && live.from == nil && !live.logEnding
	live.mu.Unlock()
	if recording {
		// Stock QEMU runs on recording nowhere rather than stopping at
		// its log's end (packaging/qemu 0006), and cannot arm (0021).
		// Asked of the running QEMU (query-version), as go-live does.
		c, rel, err := e.qmp(p.uuid)
		if err != nil {
			return err
		}
		v, err := c.QueryVersion()
		rel()
		if err != nil || !strings.Contains(v.Package, patchedPackage) {
			return fmt.Errorf("the VM's QEMU is not libvirt-ft's patched QEMU (%s; query-version: %q, %v): it cannot end its log to be re-protected", patchedQEMUPath, v.Package, err)
		}
	}
	epoch := strconv.FormatInt(time.Now().UnixNano(), 36)
	p.epoch = epoch
	live.setState(live.stateNow(), "re-protecting: arming the backup on "+p.peer)
	if err := ctrl.request(logchan.ControlRequest{Op: logchan.OpPrepareIncoming, UUID: p.uuid, Name: p.name, XML: p.reprotectXML,
		QEMUVersion: qemuVer, LogVersion: logVer, EmulatorBuild: build, Epoch: epoch, Arbiter: e.cfg.arbiterName()}, nil); err != nil {
		return fmt.Errorf("backup host %s refused the backup: %w", p.peer, err)
	}
	ctrl.Close() // idle through the copy: a cancel dials again
	linked := false
	defer func() {
		if err != nil && !linked {
			// Its QEMU waits for this VM: stop it (its own timeout
			// would, later). Logged first: the cancel ends the peer's
			// backup at once, and whoever watches it sees why here.
			p.log.WithError(err).Warn("re-protection failed: asking the backup host to discard the backup it armed")
			p.cancelPeerBackup()
		}
	}()
	if recording {
		// Its backup was lost: its log, read and discarded here, ends
		// first (a recording QEMU refuses the arming); only now that the
		// peer has taken the new backup. Before FIFO A is made again at
		// the same path.
		if err := live.endLog(); err != nil {
			return fmt.Errorf("ending the record log its lost backup had: %w", err)
		}
		live.mu.Lock()
		liveGates = live.gates
		live.mu.Unlock()
	}

	fifo := ftxml.RecordFIFOPath(p.cfg, p.uuid)
	rr, err := e.pipes.Record(fifo, e.qemuUID, e.qemuGID)
	if err != nil {
		return err
	}
	switched := false
	p.undo.push(func() {
		if !switched {
			rr.Close()
			_ = os.Remove(fifo)
		}
	})

	// Step 2: the streams.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	disks := ftxml.ReplayDisks(dom)
	migSock, nbdSock, listeners, err := p.reprotectStreams(ctx, filepath.Dir(fifo), qemuVer, logVer, epoch, len(disks))
	if err != nil {
		return err
	}

	// Step 3: the switchover.
	client, release, err := e.qmp(p.uuid)
	if err != nil {
		return err
	}
	defer release()
	// What an earlier attempt's undo could not remove (mirrors that would
	// not end keep their NBD nodes, whose names this one reuses).
	if err := reprotect.Recover(client, 0); err != nil {
		return fmt.Errorf("undoing an earlier re-protection's leftovers: %w", err)
	}
	src := reprotect.Source{QMP: client, LogPath: fifo, MigrateURI: "unix:" + migSock, NBDSocket: nbdSock,
		MaxBandwidth: reprotectBandwidth, Progress: func(pr reprotect.Progress) {
			v := *rp
			v.Phase, v.DoneBytes, v.TotalBytes, v.RateBytesPerSec = pr.Phase, pr.Done, pr.Total, pr.Rate
			live.setReprotect(&v)
		}}
	for _, rd := range disks {
		src.Disks = append(src.Disks, reprotect.Disk{Node: rd.Node, Export: rd.Format})
	}
	// The new pairing is the domain's current epoch from here: a claim of
	// the one the VM went live in loses from now on (prepare's rule). So
	// its record comes first: a daemon that dies from here on restarts
	// claiming the new epoch (restart.go), which nothing else can have
	// won before the new backup's log channel was up.
	if err := e.pairings.save(pairingRecord{UUID: p.uuid, Name: p.name, Role: "primary", Epoch: epoch, Peer: p.peer}); err != nil {
		return fmt.Errorf("keeping the pairing record: %w", err)
	}
	defer func() {
		if err != nil && !switched {
			// Alone again in the epoch it went live in.
			live.mu.Lock()
			rec := pairingRecord{UUID: live.uuid, Name: live.name, Role: "live", Epoch: live.epoch, Peer: live.peer}
			live.mu.Unlock()
			if serr := e.pairings.save(rec); serr != nil {
				p.log.WithError(serr).Warn("re-protection failed: restoring the pairing record")
			}
		}
	}()
	if err := e.arbiter.Forget(p.uuid, epoch); err != nil {
		return fmt.Errorf("the split-brain arbiter cannot record the new pairing: %w", err)
	}
	live.setState(live.stateNow(), "re-protecting onto "+p.peer+": copying the disks and memory")
	res, err := src.Run(ctx)
	if err != nil && !errors.Is(err, reprotect.ErrSwitchedOver) {
		return err // Source undid everything: the VM runs on as before
	}
	switched = true
	cancel() // the streams have ended
	if err != nil {
		// The switchover happened although Run failed after all: go on
		// only with a VM that records.
		p.log.WithError(err).Warn("re-protection: the migration completed although Run failed")
		if ri, qerr := client.QueryReplay(); qerr != nil || ri.Mode != "record" {
			live.aloneAfterSwitch(client, rr, fifo, epoch, false)
			return fmt.Errorf("after the switchover: %w", err)
		}
		err = nil
	}
	// Step 4: the VM is paused and records into FIFO A.
	exact := qemuFlushesLog(domainEmulator(dom))
	gates := &outputGates{exact: exact}
	if liveGates != nil {
		live.mu.Lock()
		live.gates = nil
		live.mu.Unlock()
		gates, err = liveGates.reprotected(e, rr, exact)
		if err != nil {
			// The old gates pass frames (their filters are off) or
			// are gone: the next attempt's check refuses.
			live.mu.Lock()
			live.gates = liveGates
			live.mu.Unlock()
			live.aloneAfterSwitch(client, rr, fifo, epoch, true)
			return fmt.Errorf("after the switchover: %w", err)
		}
		live.mu.Lock()
		live.gates = gates // released with live until p takes them
		live.mu.Unlock()
	}
	err = filtersOn(client, len(gates.gates))
	var link *peerConn
	if err == nil {
		link, err = dialLog(e, p.peer, p.uuid, qemuVer, logVer, epoch, false, 0, gates)
	}
	if err != nil {
		filtersOff(client, nics, p.log)
		gates.unprotect()
		live.aloneAfterSwitch(client, rr, fifo, epoch, true)
		return fmt.Errorf("after the switchover: %w", err)
	}
	linked = true
	p.undo.push(func() {
		_ = os.Remove(fifo)
		_ = os.Remove(filepath.Dir(fifo)) // only if empty
	})
	p.undo.push(func() { rr.Close() })
	p.undo.push(p.releaseGates)
	p.undo.push(func() { link.Close() })
	if origin := p.origin; origin != nil {
		p.undo.push(func() { origin.close("the live VM stopped") })
	}
	live.mu.Lock()
	live.gates = nil
	live.mu.Unlock()
	p.mu.Lock()
	p.recordFIFO, p.rr, p.link, p.gates = fifo, rr, link, gates
	p.disks = ftxml.DiskPaths(dom)
	p.state, p.detail = ctl.StateWaiting, "re-protected: waiting for the first log"
	p.mu.Unlock()
	dm.setRun(p)
	live.retire()
	go p.pump(rr, link, gates, logchan.NewStreamDecoder())
	if err := client.Cont(); err != nil {
		// Paused with its gates on and a backup that replays: the
		// primary's core decides (a hang is found by watchHang).
		p.log.WithError(err).Error("re-protection: cont after the switchover failed; retrying")
		go e.resumeVM(p.uuid, p.stop)
	}
	pause := time.Since(res.Stopped)
	var bytes int64
	for _, l := range listeners {
		bytes += l.Bytes.Load()
	}
	done := *rp
	done.Phase, done.PauseMS, done.MemoryBytes, done.DiskBytes, done.Icount, done.TotalMS =
		"done", pause.Milliseconds(), res.MemoryBytes, res.DiskBytes, res.Icount, time.Since(t0).Milliseconds()
	done.DoneBytes, done.TotalBytes, done.RateBytesPerSec = 0, 0, 0
	p.setReprotect(&done)
	p.log.Infof("re-protected onto %s in %v: the VM paused %d ms at the switchover, %d bytes of memory and %d of disk copied (%d through the streams), its new log starts at icount %d",
		p.peer, time.Since(t0).Round(time.Millisecond), pause.Milliseconds(), res.MemoryBytes, res.DiskBytes, bytes, res.Icount)
	return nil
}

// dialFeature opens a control connection to the backup host's daemon at
// peer and checks that it lists feature (Hello.Features); cannot words
// what that daemon could not do without it. Errors: the dial's, or the
// missing feature (the connection then closed).
func dialFeature(e env, peer, uuid, qemuVer string, logVer uint32, feature, cannot string) (*peerConn, error) {
	ctrl, err := dialControl(e, peer, uuid, qemuVer, logVer)
	if err != nil {
		return nil, fmt.Errorf("backup host %s: %w; is libvirt-ftd running there?", peer, err)
	}
	if !slices.Contains(ctrl.peer.Features, feature) {
		ctrl.Close()
		return nil, fmt.Errorf("backup host %s: its libvirt-ftd cannot %s (no %q feature); upgrade libvirt-ft there", peer, cannot, feature)
	}
	return ctrl, nil
}

// emulatorOf parses a primary definition and names what a prepare request
// from this host says of its QEMU: the version libvirt reports, the replay
// log version that goes with it, and the domain's emulator build
// (Hypervisor.EmulatorBuild). Errors: parse, an unsupported QEMU version,
// an emulator that cannot be read.
func emulatorOf(e env, primaryXML string) (dom *libvirtxml.Domain, qemuVer string, logVer uint32, build string, err error) {
	if dom, err = ftxml.ParseDomain(primaryXML); err != nil {
		return nil, "", 0, "", err
	}
	if qemuVer, err = e.hv.QEMUVersion(); err != nil {
		return nil, "", 0, "", err
	}
	if logVer, err = logchan.LogVersionForQEMU(qemuVer); err != nil {
		return nil, "", 0, "", err
	}
	if build, err = e.hv.EmulatorBuild(domainEmulator(dom)); err != nil {
		return nil, "", 0, "", fmt.Errorf("/domain/devices/emulator: %w", err)
	}
	return dom, qemuVer, logVer, build, nil
}

// reprotectStreams listens on the re-protection's unix sockets in dir:
// rp-mig.sock for the migration and, with ndisks > 0, rp-nbd.sock for the
// disk copies (ndisks connections). Each connection that admitQEMU admits
// (the domain's own QEMU) is piped over its own stream to the peer
// (dialStream, epoch's). They serve until ctx ends; the listeners count
// the bytes. Errors: a socket cannot be made.
func (p *primaryRun) reprotectStreams(ctx context.Context, dir, qemuVer string, logVer uint32, epoch string, ndisks int) (migSock, nbdSock string, listeners []*reprotect.Listener, err error) {
	e := p.env
	migSock, nbdSock = filepath.Join(dir, "rp-mig.sock"), filepath.Join(dir, "rp-nbd.sock")
	for _, l := range []struct {
		path, kind string
		max        int
	}{{migSock, logchan.StreamMigration, 1}, {nbdSock, logchan.StreamNBD, ndisks}} {
		if l.max == 0 {
			continue
		}
		_ = os.Remove(l.path) // a former daemon's
		kind := l.kind
		ln := &reprotect.Listener{Path: l.path, Max: l.max, UID: e.qemuUID, GID: e.qemuGID,
			Dial: func(context.Context) (net.Conn, error) {
				return dialStream(e, p.peer, p.uuid, qemuVer, logVer, epoch, kind)
			},
			Admit: func(c net.Conn) error {
				err := admitQEMU(c, p.uuid, p.name, qemuProcs{})
				if err != nil {
					p.log.WithError(err).Warnf("re-protection %s socket: connection refused", kind)
				}
				return err
			}}
		if err := ln.Listen(); err != nil {
			return "", "", nil, err
		}
		listeners = append(listeners, ln)
		go func() {
			if err := ln.Serve(ctx); err != nil {
				p.log.WithError(err).Warnf("re-protection %s socket", kind)
			}
		}()
	}
	return migSock, nbdSock, listeners, nil
}

// aloneAfterSwitch runs live on alone when a re-protection failed after
// its switchover and before its pairing took over: the VM is paused,
// recording into FIFO A from the new epoch (record) or not at all. Its
// frames already pass its gates (their filters are off). The new epoch is
// the arbiter's current one since the switchover, and the new backup may
// have a failover core (its log channel's handshake may have ended well on
// its side only): so the VM continues only once this host holds the new
// epoch's lock (H1 of helper-70's review). Lost, the backup runs the VM and
// this copy is destroyed; the arbiter unreachable, the VM stays paused and
// the claim is tried again. A recording VM's new log is read and discarded
// from now on, and the run counts as recording (not re-protectable: its
// QEMU refuses a second arming while it records).
func (p *primaryRun) aloneAfterSwitch(client *qmp.Client, rr recordLog, fifo, epoch string, record bool) {
	if record {
		go func() {
			_, _ = io.Copy(io.Discard, rr)
			rr.Close()
			_ = os.Remove(fifo)
		}()
		p.mu.Lock()
		p.recordFIFO = fifo
		p.mu.Unlock()
	} else {
		rr.Close()
		_ = os.Remove(fifo)
	}
	p.setState(ctl.StateLive, "a re-protection failed after its switchover: the VM is paused until this host holds the new pairing's split-brain lock")
	for {
		won, err := p.env.arbiter.Acquire(p.uuid, epoch)
		switch {
		case err == nil && won:
			p.mu.Lock()
			p.epoch = epoch
			p.mu.Unlock()
			if err := p.env.pairings.save(pairingRecord{UUID: p.uuid, Name: p.name, Role: "primary", Epoch: epoch, Peer: p.peer}); err != nil {
				p.log.WithError(err).Warn("keeping the pairing record")
			}
			if err := client.Cont(); err != nil {
				p.log.WithError(err).Error("re-protection failed after the switchover and the VM did not continue; retrying")
				go p.env.resumeVM(p.uuid, p.stop)
			}
			how := "not recording"
			if record {
				how = "recording into a log nobody replays"
			}
			p.setState(ctl.StateLive, "running on this host since go-live; no backup (a re-protection failed after its switchover; "+how+")")
			return
		case err == nil:
			why := "a re-protection failed after its switchover and the new backup won the split-brain lock: it runs the VM; this copy was destroyed"
			p.log.Warn(why)
			p.setState(ctl.StateStopped, why)
			p.env.destroyUntilGone(p.uuid, why, p.stop)
			return
		}
		p.log.WithError(err).Warn("re-protection failed after its switchover: the arbiter cannot be reached; the VM stays paused")
		select {
		case <-p.stop:
			return
		case <-time.After(time.Second):
		}
	}
}

// filtersOn turns the filter-redirector of interfaces 0..n-1 on (qom-set
// <id> status on): every frame the guest transmits goes through its output
// gate again. The first failure is returned.
func filtersOn(client *qmp.Client, n int) error {
	for j := 0; j < n; j++ {
		if err := client.Execute("qom-set", map[string]any{"path": "/objects/" + ftxml.GateFilterID(j),
			"property": "status", "value": "on"}, nil); err != nil {
			return fmt.Errorf("turning the output gate of interface %d on (qom-set %s status on): %w", j, ftxml.GateFilterID(j), err)
		}
	}
	return nil
}

// setReprotect and reprotectView keep the re-protection's view for status.
func (p *primaryRun) setReprotect(r *ctl.Reprotect) {
	p.mu.Lock()
	p.reprot = r
	p.mu.Unlock()
}

func (p *primaryRun) reprotectView() *ctl.Reprotect {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reprot == nil {
		return &ctl.Reprotect{}
	}
	r := *p.reprot
	return &r
}

// stateNow is the run's state (for messages that keep it).
func (p *primaryRun) stateNow() ctl.State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// retire ends a run that a re-protection replaced as the domain's run:
// its failover core stops and its loops end, but its undo does not run
// (what it held is the new run's now: the QEMU, its gates, the went-live
// backup run; the FIFO A path it would remove is the new run's too).
func (p *primaryRun) retire() {
	p.mu.Lock()
	drv, link := p.drv, p.link
	p.drv, p.link = nil, nil
	p.mu.Unlock()
	if link != nil {
		link.Close() // a lost backup's channel
	}
	if drv != nil {
		st, tm := stopCore(drv, p.log)
		p.mu.Lock()
		p.final, p.finalTm = st, tm
		p.mu.Unlock()
	}
	p.stopOnce.Do(func() { close(p.stop) })
}

// endLogWait bounds how long endLog waits for the VM to meet the end of
// its log (its next write into the closed FIFO; a recording guest writes
// its log many times a second, even idle).
const endLogWait = 30 * time.Second

// endLog ends the record log of p, a primary whose backup was lost (its
// log is read and discarded here): the pump stops, FIFO A's reader closes,
// QEMU's next write fails and pauses the VM (packaging/qemu 0006), and
// cont makes it run on without recording (replay mode none), as a VM that
// went live does: ready to be re-protected. From the reader's close on,
// the VM pauses at its next write whatever happens here, so the cont is
// made in any case: if it does not come within endLogWait, a watcher
// makes it when it does, and endLog returns an error. There is no way
// back once it began: a pump that never stops leaves the run "ending"
// (not re-protectable) until it ends. Errors: the VM did not pause in
// time; the run ended.
func (p *primaryRun) endLog() error {
	p.mu.Lock()
	ps, rr, fifo := p.ps, p.rr, p.recordFIFO
	p.mu.Unlock()
	hl, ok := rr.(handoverLog)
	if ps == nil || !ok {
		return errors.New("its log pump does not run")
	}
	// From here the pump's end is not the run's (qemuStopped closes it),
	// and there is no way back: the pump stops at its next read.
	p.mu.Lock()
	p.logEnding = true
	p.mu.Unlock()
	ps.mu.Lock()
	ps.handover = true
	ps.cond.Broadcast()
	ps.mu.Unlock()
	_ = hl.SetReadDeadline(time.Unix(1, 0))
	ended := make(chan error, 1)
	go func() { ended <- p.finishLogEnd(ps, rr, fifo) }()
	select {
	case err := <-ended:
		return err
	case <-time.After(endLogWait):
		return fmt.Errorf("the VM did not reach the end of its log within %v (it continues once it does)", endLogWait)
	case <-p.stop:
		return errReprotectClosed
	}
}

// finishLogEnd is endLog's rest, once the pump stopped: FIFO A's reader
// closes and the VM is continued at its log's end (contAtLogEnd).
func (p *primaryRun) finishLogEnd(ps *pumpState, rr recordLog, fifo string) error {
	select {
	case <-ps.ended:
	case <-p.stop:
		return errReprotectClosed
	}
	p.mu.Lock()
	p.rr, p.recordFIFO = nil, ""
	running := p.running
	p.mu.Unlock()
	if !running {
		// QEMU stopped meanwhile (its hook found the pump still
		// running): the run ends here.
		p.close("the VM stopped")
		return errors.New("the VM stopped")
	}
	rr.Close()
	_ = os.Remove(fifo)
	p.log.Info("ending the record log (its backup was lost) to re-protect the VM: it pauses at its next write and continues without recording")
	return p.contAtLogEnd()
}

// contAtLogEnd waits until the VM paused at the end of its log (run state
// io-error) and continues it, which ends its recording (0006), until it
// runs without recording (logEnded); it gives up only when the run ends.
func (p *primaryRun) contAtLogEnd() error {
	warned := false
	for {
		if client, release, err := p.env.qmp(p.uuid); err == nil {
			st, serr := client.QueryStatus()
			ri, rerr := client.QueryReplay()
			switch {
			case serr == nil && st.Status == "io-error":
				if err := client.Cont(); err != nil {
					p.log.WithError(err).Warn("continuing the VM at its log's end; retrying")
				}
			case serr == nil && st.Running && rerr == nil && ri.Mode == "none":
				release()
				p.mu.Lock()
				p.logEnded = true
				p.mu.Unlock()
				p.log.Info("the VM runs on without recording")
				return nil
			case rerr == nil && ri.Mode == "record" && st.Running && !warned:
				warned = true
				p.log.Info("waiting for the VM's next log write (it pauses there)")
			}
			release()
		}
		select {
		case <-p.stop:
			return errReprotectClosed
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// errReprotectClosed ends a re-protection step whose run ended meanwhile.
var errReprotectClosed = errors.New("re-protection: the run ended")
