package plugin

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	"github.com/libvirt-ft/libvirt-ft/qmp"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// snapshotName is the internal snapshot that carries the backup's state
// across the go-live restart of stock QEMU (docs/replay.md, go-live).
const snapshotName = "ft-golive"

// goLive turns the drained backup into a running primary on this host and
// makes it the domain's run (promote). Two paths:
//   - the patched QEMU (packaging/qemu 0001) left replay mode at END and
//     runs on: the backup's output gates send what they hold, the filters
//     go off, and the definition is made persistent here;
//   - stock QEMU: stop; savevm (the snapshot carries the "replay" vmstate
//     section, registered only by a QEMU started with rr=); destroy the
//     replaying QEMU; start the domain again with rr=record into a fresh
//     FIFO (read and discarded locally) and -loadvm; define its persistent
//     definition (without -loadvm) on this host.
func (b *backupRun) goLive() error {
	t0 := time.Now()
	client, release, err := b.env.qmp(b.uuid)
	if err != nil {
		return fmt.Errorf("go-live: the backup domain is gone: %w", err)
	}
	defer release()
	b.mu.Lock()
	paused := b.claimPaused
	b.claimPaused = false
	b.mu.Unlock()
	if paused {
		// Paused while the arbiter could not be reached; the claim is
		// won now: resume it, retrying while libvirt cannot.
		if err := client.Cont(); err != nil {
			b.log.WithError(err).Warn("go-live: cont after the claim; retrying")
			go b.env.resumeVM(b.uuid, b.stop)
		}
	}
	// The drain ends when the backup's icount reached the log's; the
	// patched QEMU leaves replay mode when it reads the END after it,
	// which may come a moment later. Stock QEMU gets that moment before
	// the stock path; the patched one refuses savevm under record/replay
	// (packaging/qemu 0014), so it gets longer and never takes that path.
	// A QEMU go-live cannot identify is waited for as if patched: taking
	// the stock path with a patched QEMU would halt the VM.
	kind := b.emulatorKind(client)
	wait := 2 * time.Second
	if kind != emulatorStock {
		wait = patchedEndWait
	}
	mode := ""
	for deadline := time.Now().Add(wait); ; {
		ri, err := client.QueryReplay()
		if err == nil {
			mode = ri.Mode
		}
		// A failed query (libvirt's monitor busy a moment) ends the wait
		// for stock QEMU, which has the savevm path; any other keeps
		// asking until the deadline.
		settled := (err == nil && mode != "play") || (err != nil && kind == emulatorStock)
		if settled || time.Now().After(deadline) {
			break
		}
		if !b.pause(drainPoll) {
			return errRunClosed
		}
	}
	if mode == "none" {
		return b.continuedLive(client, t0)
	}
	switch kind {
	case emulatorPatched:
		return fmt.Errorf("go-live: the patched QEMU is still in replay mode %q %v after the backup reached the log's end (it leaves it when it reads END)", mode, wait)
	case emulatorUnknown:
		b.log.Warnf("go-live: neither query-version nor --version identified the backup's QEMU, and it is still in replay mode %q after %v: taking the stock QEMU path", mode, wait)
	}
	return b.restartedLive(client, t0)
}

// patchedEndWait bounds how long go-live waits, after the drain, for the
// patched QEMU to read END and leave replay mode (normally milliseconds).
const patchedEndWait = 10 * time.Second

// emulatorKind is what go-live knows of the backup's QEMU build.
type emulatorKind int

const (
	// emulatorUnknown: neither the running QEMU (query-version) nor its
	// binary (--version) answered; go-live waits as for a patched one.
	emulatorUnknown emulatorKind = iota
	// emulatorStock: a QEMU 7.2 without packaging/qemu; at END its replay
	// stays in play mode and go-live restarts it (restartedLive).
	emulatorStock
	// emulatorPatched: packaging/qemu's build; it leaves replay mode at
	// END (0001) and refuses savevm under record/replay (0014).
	emulatorPatched
)

// patchedPackage is query-version's "package" of the QEMU packaging/qemu
// builds (configure --with-pkgversion=libvirt-ft, packaging/qemu/build.sh);
// a stock Debian QEMU says "Debian 1:7.2+dfsg-7+deb12u18+b3" there.
const patchedPackage = "libvirt-ft"

// emulatorKind tells the backup's QEMU build apart: first by asking the
// running process (query-version, which cannot be out of date with a
// binary replaced since it started), then, if libvirt's monitor does not
// answer, by the <emulator> binary's --version.
func (b *backupRun) emulatorKind(client *qmp.Client) emulatorKind {
	if v, err := client.QueryVersion(); err == nil {
		if strings.Contains(v.Package, patchedPackage) {
			return emulatorPatched
		}
		return emulatorStock
	}
	dom, err := ftxml.ParseDomain(b.backupXML)
	if err != nil {
		return emulatorUnknown
	}
	flushes, err := qemuBuildFlushes(domainEmulator(dom))
	switch {
	case err != nil:
		return emulatorUnknown
	case flushes:
		return emulatorPatched
	}
	return emulatorStock
}

// continuedLive: the backup's QEMU (with packaging/qemu's end-of-log
// patch) left replay mode at END and runs on as a normal QEMU: it is live
// already, with no restart. It does not record a new log.
func (b *backupRun) continuedLive(client *qmp.Client, t0 time.Time) error {
	// From now on this host speaks for the VM; before announce-self, whose
	// RARP frames pass the same filters. With the output gate, the
	// backup's gates hold every frame the guest transmitted and the
	// primary had not reported sent: replayed ones whose release the
	// primary may not have made (its last heartbeat's count lags by up to
	// one interval; duplicates are harmless to TCP) and the ones this
	// guest produced since it left replay mode at END. They are sent now,
	// in order, before the filters are turned off. Without the gate the
	// replayed guest's frames went into a null chardev (ftxml.Backup):
	// turn that filter off (frames sent between END and here are lost).
	gates := b.takeGates()
	if gates != nil && len(gates.gates) > 0 {
		n := gates.unprotect()
		// Then let frames bypass the gates: the live VM's network must
		// not depend on this daemon, and QEMU's own frames (announce-
		// self's RARP, sent raw) lose their raw flag through a
		// filter-redirector and reach the tap mangled. With the filter
		// off QEMU stops reading IN, so first wait until it has read
		// what was sent; a frame the guest transmits in the moment
		// between that and qom-set may be lost (TCP resends it).
		sent := gates.waitSent(500 * time.Millisecond)
		b.log.Infof("go-live: sent the %d frames the output gates held (replayed ones the primary had not reported sent, and the live guest's since END); all read by QEMU: %v", n, sent)
		gateFiltersOff(b, client, len(gates.gates))
	} else if dom, err := ftxml.ParseDomain(b.backupXML); err == nil && dom.Devices != nil {
		gateFiltersOff(b, client, len(dom.Devices.Interfaces))
	}
	if persistent, err := ftxml.LivePrimary(b.backupXML); err != nil {
		b.log.WithError(err).Warn("go-live: no persistent definition on this host: the running domain is transient; define it again from the primary host's definition")
	} else if err := b.env.hv.Define(persistent); err != nil {
		b.log.WithError(err).Warn("go-live: defining the persistent definition on this host")
	}
	b.wentLive(gates, "", &ctl.GoLive{Path: ctl.GoLiveContinued, TotalMS: time.Since(t0).Milliseconds()},
		"running on this host since go-live; no backup; not recording")
	go b.syncLiveDisks()
	return nil
}

// syncLiveDisks fsyncs each disk image of the VM that went live here
// (ftxml.DiskPaths of the backup definition) and records the outcome in
// the go-live's status (GoLive.DisksSyncedMS, DiskSyncError; virt-ft
// status's last event) and the log. While it replayed, its QEMU's flushes
// stopped at the OS (packaging/qemu 0024): what the guest had flushed
// before go-live may still be only in this host's page cache. QEMU
// flushes every writable disk at the end of the log on its own, but
// reports a failure only in its log, and for a disk opened with O_DIRECT
// a failed flush does not fail the guest's later ones; this is the
// daemon's own check. A writeback error QEMU's flush saw first may not
// reach this fsync (Linux reports one to each descriptor open at the time,
// and to a later one only if nobody saw it): QEMU's log has it then.
func (b *backupRun) syncLiveDisks() {
	b.mu.Lock()
	backupXML := b.backupXML
	b.mu.Unlock()
	t := time.Now()
	var failed []string
	var paths []string
	if dom, err := ftxml.ParseDomain(backupXML); err != nil {
		// Checked when the backup was armed: not expected.
		failed = append(failed, "the disk list: "+err.Error())
	} else {
		paths = ftxml.DiskPaths(dom)
	}
	for _, path := range paths {
		if err := syncFile(path); err != nil {
			failed = append(failed, err.Error()) // an *os.PathError: names path
		}
	}
	// The paths come from the primary host's definition: cleaned like
	// any peer text before a log line or virt-ft shows them.
	why := logchan.CleanText(strings.Join(failed, "; "), logchan.MaxPeerErrorBytes)
	b.mu.Lock()
	if b.wentLiveHow != nil {
		g := *b.wentLiveHow // a copy: readers may hold the old one
		g.DisksSyncedMS = max(time.Since(t).Milliseconds(), 1)
		g.DiskSyncError = why
		b.wentLiveHow = &g
	}
	b.mu.Unlock()
	if why != "" {
		b.log.Errorf("went live, but flushing its disks to stable storage failed: %s; what the guest wrote before go-live may not survive a crash of this host: check the disk, and protect the VM again so that its backup holds a copy", why)
		return
	}
	b.log.Infof("went live: its %d disks are flushed to stable storage (%d ms)", len(paths), time.Since(t).Milliseconds())
}

// restartedLive is the stock QEMU go-live: stop, savevm, restart
// recording with -loadvm.
func (b *backupRun) restartedLive(client *qmp.Client, t0 time.Time) error {
	// Everything that can fail without touching the VM comes first: a
	// failure after stop would leave the replaying VM stopped.
	persistent, err := ftxml.LivePrimary(b.backupXML)
	if err != nil {
		return fmt.Errorf("go-live: generating the primary's XML: %w", err)
	}
	live, err := withLoadVM(persistent, snapshotName)
	if err != nil {
		return err
	}
	if err := client.Stop(); err != nil {
		return fmt.Errorf("go-live: stop: %w", err)
	}
	tStop := time.Now()
	// QEMU refuses a snapshot while replay has async events queued
	// (replay_can_snapshot, replay/replay-snapshot.c). Let the VM run a
	// moment and try again.
	// A QEMU that has left replay mode at END (a patched one go-live could
	// not identify) runs live already: it must not be destroyed, and its
	// savevm may succeed once it is out of replay mode. So the mode is
	// checked after every refusal, and again after the snapshot.
	leftReplay := func() bool {
		ri, err := client.QueryReplay()
		return err == nil && ri.Mode == "none"
	}
	var serr error
	for try := 0; try < 50; try++ {
		if serr = client.SaveVM(snapshotName); serr == nil {
			break
		}
		b.log.WithError(serr).Warnf("go-live: savevm refused (try %d)", try+1)
		_ = client.Cont()
		if leftReplay() {
			b.log.Warn("go-live: the backup's QEMU left replay mode at END; going on live without a restart")
			return b.continuedLive(client, t0)
		}
		if !b.pause(20 * time.Millisecond) {
			return errRunClosed
		}
		_ = client.Stop()
	}
	if serr != nil {
		return fmt.Errorf("go-live: %w", serr)
	}
	if leftReplay() {
		_ = client.Cont()
		b.log.Warn("go-live: the backup's QEMU left replay mode at END before its snapshot; going on live without a restart")
		return b.continuedLive(client, t0)
	}
	tSave := time.Now()
	if gone, err := b.env.hv.Destroy(b.uuid); !gone {
		return fmt.Errorf("go-live: stopping the replaying QEMU: %w", err)
	}
	b.mu.Lock()
	feeder, fifoB := b.feeder, b.replayFIFO
	b.feeder, b.replayFIFO = nil, ""
	b.mu.Unlock()
	if feeder != nil {
		feeder.Close()
	}
	if fifoB != "" {
		_ = os.Remove(fifoB)
	}
	// The new QEMU connects to the output gate sockets again (ftxml.Primary
	// with the gate on): it gets fresh gates that pass frames through, as
	// this host runs alone. The replayed frames the old gates held are
	// lost with the replaying QEMU on this path.
	b.releaseGates()
	var newGates *outputGates
	if ldom, err := ftxml.ParseDomain(live); err == nil {
		if newGates, err = openBackupGates(b.env, b.uuid, b.cfg, ldom); err != nil {
			return fmt.Errorf("go-live: output gates for the new primary: %w", err)
		}
		newGates.unprotect()
	}
	tDestroy := time.Now()
	if err := b.env.hv.Create(live); err != nil {
		if newGates != nil {
			newGates.close()
		}
		return fmt.Errorf("go-live: starting the new primary: %w", err)
	}
	if newGates != nil && len(newGates.gates) > 0 {
		if nc, rel, err := b.env.qmp(b.uuid); err == nil {
			gateFiltersOff(b, nc, len(newGates.gates))
			rel()
		}
	}
	tStart := time.Now()
	if err := b.env.hv.Define(persistent); err != nil {
		b.log.WithError(err).Warn("go-live: defining the persistent definition on this host")
	}
	b.mu.Lock()
	record := b.liveRecord
	b.mu.Unlock()
	b.wentLive(newGates, record, &ctl.GoLive{Path: ctl.GoLiveRestarted, TotalMS: tStart.Sub(t0).Milliseconds(), Recording: true,
		StopMS: tStop.Sub(t0).Milliseconds(), SaveVMMS: tSave.Sub(tStop).Milliseconds(),
		DestroyMS: tDestroy.Sub(tSave).Milliseconds(), StartMS: tStart.Sub(tDestroy).Milliseconds()},
		"running on this host since go-live; no backup")
	return nil
}

// wentLive makes the live VM the domain's run: a primaryRun that adopts
// gates and the record FIFO (stock path) and reports this run's go-live.
func (b *backupRun) wentLive(gates *outputGates, recordFIFO string, how *ctl.GoLive, detail string) {
	b.mu.Lock()
	b.live, b.goingLive, b.wentLiveHow = true, false, how
	b.mu.Unlock()
	b.log.Infof("went live: %s", goLiveText(how))
	b.env.metrics.wentLive(b.name, how)
	b.mu.Lock()
	backupXML, from := b.backupXML, b.primaryHost
	b.mu.Unlock()
	if title, desc, err := ftxml.LiveNote(backupXML, from); err == nil {
		if err := b.env.hv.SetLiveNote(b.uuid, title, desc); err != nil {
			b.log.WithError(err).Warn("went live: setting the domain's title (virsh list --title) failed")
		}
	}
	b.setState(ctl.StateLive, detail)
	p := newLivePrimary(b, gates, recordFIFO, detail)
	if b.promote != nil {
		b.promote(p)
	}
}

// newLivePrimary is the primary run of a VM that went live on this host
// from backup b: it runs alone, unprotected, holding the gates (their
// filters are off) and, on the stock path, the record FIFO drained locally.
func newLivePrimary(b *backupRun, gates *outputGates, recordFIFO, detail string) *primaryRun {
	p := newPrimaryRun(b.env, b.uuid, b.name, b.cfg)
	b.mu.Lock()
	p.peer = b.peer
	b.mu.Unlock()
	p.from, p.gates, p.recordFIFO, p.running = b, gates, recordFIFO, true
	p.state, p.detail = ctl.StateLive, detail
	p.epoch = b.epoch
	if err := b.env.pairings.save(pairingRecord{UUID: b.uuid, Name: b.name, Role: "live", Epoch: b.epoch, Peer: p.peer}); err != nil {
		b.log.WithError(err).Warn("went live: keeping the pairing record")
	}
	p.undo.push(func() { b.close("the live VM stopped") })
	p.undo.push(p.releaseGates)
	return p
}

// gateFiltersOff turns the filter-redirector of interfaces 0..n-1 off
// (qom-set <id> status off): frames go straight to the network.
func gateFiltersOff(b *backupRun, client *qmp.Client, n int) {
	filtersOff(client, n, b.log.WithField("step", "go-live"))
}

// withLoadVM adds -loadvm NAME to a domain's qemu:commandline.
func withLoadVM(domainXML, name string) (string, error) {
	dom, err := ftxml.ParseDomain(domainXML)
	if err != nil {
		return "", err
	}
	if dom.QEMUCommandline == nil {
		dom.QEMUCommandline = &libvirtxml.DomainQEMUCommandline{}
	}
	dom.QEMUCommandline.Args = append(dom.QEMUCommandline.Args,
		libvirtxml.DomainQEMUCommandlineArg{Value: "-loadvm"}, libvirtxml.DomainQEMUCommandlineArg{Value: name})
	return dom.Marshal()
}

// prepareLive is the prepare hook of the domain restarting as a primary on
// this host during a stock go-live: no peer to ask; create the record FIFO
// and drain it locally so the new primary never blocks (it runs
// unprotected).
func (b *backupRun) prepareLive(*libvirtxml.Domain) error {
	fifo := ftxml.RecordFIFOPath(b.cfg, b.uuid)
	rr, err := b.env.pipes.Record(fifo, b.env.qemuUID, b.env.qemuGID)
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.liveRecord = fifo
	b.mu.Unlock()
	go func() {
		_, _ = io.Copy(io.Discard, rr)
		rr.Close()
		_ = os.Remove(fifo)
	}()
	return nil
}

// announce advertises the VM's MAC from its new host (QMP announce-self:
// RARP frames), so that switches learn where it went.
func (b *backupRun) announce() {
	client, release, err := b.env.qmp(b.uuid)
	if err != nil {
		return
	}
	defer release()
	if err := client.AnnounceSelf(); err != nil {
		b.log.WithError(err).Warn("announce-self")
		return
	}
	b.log.Info("announced the VM's MAC (announce-self)")
}

// cleanupAfterLive deletes the go-live snapshot: the new primary has
// loaded it.
func (b *backupRun) cleanupAfterLive() {
	b.mu.Lock()
	live := b.live
	b.mu.Unlock()
	if !live {
		return
	}
	client, release, err := b.env.qmp(b.uuid)
	if err != nil {
		return
	}
	defer release()
	if _, err := client.HumanMonitorCommand("delvm " + snapshotName); err != nil {
		b.log.WithError(err).Warn("deleting the go-live snapshot")
	}
}

// goLiveText words a go-live for the log and for the old primary (the
// detail of the ByeLive: the peer's operator reads it in virt-ft status).
func goLiveText(g *ctl.GoLive) string {
	switch {
	case g == nil:
		return ""
	case g.Path == ctl.GoLiveContinued:
		return fmt.Sprintf("the backup's QEMU left replay mode at the end of the log and ran on (%d ms)", g.TotalMS)
	default:
		return fmt.Sprintf("stop %d ms, savevm %d ms, destroy %d ms, start with -loadvm %d ms", g.StopMS, g.SaveVMMS, g.DestroyMS, g.StartMS)
	}
}

// errRunClosed ends a go-live whose run was closed (the daemon stops).
var errRunClosed = errors.New("go-live: the backup run was closed")

// pause waits d, or less if the run is closed meanwhile; it reports
// whether the run is still open.
func (b *backupRun) pause(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-b.stop:
		return false
	case <-t.C:
		return true
	}
}
