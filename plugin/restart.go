package plugin

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	"github.com/libvirt-ft/libvirt-ft/plugin/reprotect"
	"github.com/libvirt-ft/libvirt-ft/qmp"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// A daemon that starts while protected domains run on its host (it
// crashed, was killed, or was restarted) resolves each of them before
// anything else can happen to it (docs/architecture.md §6):
//
//   - a backup still replaying (query-replay mode "play") is destroyed:
//     its log feed ended with the old daemon, so it can only stop at the
//     end of what it read; its primary has declared it lost and runs on;
//   - a primary (mode "record") stops by itself: packaging/qemu 0006
//     pauses a recording QEMU when its log cannot be written (the old
//     daemon held FIFO A's reading end), and its frames were dropped since
//     the old daemon's gate sockets closed. The new daemon claims the
//     pairing epoch's split-brain lock: if the peer already won it (its
//     backup went live), this copy is destroyed; if this host wins, the VM
//     is started again unprotected (QEMU stops recording at `cont`, 0006)
//     with its output filters off;
//   - a VM that went live here (mode "none", a "live" record) keeps
//     running: this host won its epoch's claim before it went live;
//   - a backup that left replay mode at the END its daemon fed before
//     claiming (mode "none", a "backup" record) claims like a primary:
//     losing destroys it, winning makes it the VM (filters off,
//     announce-self).
//
// Asking again after a win wins: the arbiter identity is kept across
// restarts (hostIdentity). With arbiter: none nothing can tell, so a
// primary stays paused for the operator.
//
// If the arbiter cannot be reached the primary stays paused and the claim
// is tried again: never a second running copy, never output its backup
// could not reproduce.

// pairingRecord is what this host keeps about a protected domain's
// pairing while its QEMU runs here, so that a restarted daemon can claim
// the right epoch. It lives in the run directory (pairingStore), which a
// reboot clears along with every QEMU.
type pairingRecord struct {
	UUID string `json:"uuid"`
	Name string `json:"name"`
	// Role is "primary" (recording here) or "live" (a former backup that
	// went live here).
	Role  string `json:"role"`
	Epoch string `json:"epoch"`
	Peer  string `json:"peer"`
}

// pairingStore keeps pairingRecords as <dir>/<uuid>.json. The zero value
// keeps nothing (tests that do not restart daemons).
type pairingStore struct{ dir string }

func (s pairingStore) path(uuid string) (string, bool) {
	if s.dir == "" || !logchan.ValidUUID(uuid) {
		return "", false
	}
	return filepath.Join(s.dir, strings.ToLower(uuid)+".json"), true
}

// save writes r atomically (a temporary file renamed over the record).
func (s pairingStore) save(r pairingRecord) error {
	p, ok := s.path(r.UUID)
	if !ok {
		return nil
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("pairing record: %w", err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("pairing record: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("pairing record: %w", err)
	}
	return nil
}

func (s pairingStore) load(uuid string) (pairingRecord, bool) {
	p, ok := s.path(uuid)
	if !ok {
		return pairingRecord{}, false
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return pairingRecord{}, false
	}
	var r pairingRecord
	if json.Unmarshal(b, &r) != nil || !strings.EqualFold(r.UUID, uuid) || r.Epoch == "" {
		return pairingRecord{}, false
	}
	return r, true
}

func (s pairingStore) remove(uuid string) {
	if p, ok := s.path(uuid); ok {
		_ = os.Remove(p)
	}
}

// hostIdentity names this host's daemon in arbiter claims (dirArbiter's
// lock files, etcd's claim values): host name, listen address and a
// random nonce kept in <runDir>/arbiter-id, so that a restarted daemon is
// the same claimer (asking again after a win wins) while two daemons on
// hosts of the same name (network namespaces) differ. Without a writable
// run directory the nonce is new in every process.
func hostIdentity(listen, runDir string) string {
	host, _ := os.Hostname()
	p := filepath.Join(runDir, "arbiter-id")
	if b, err := os.ReadFile(p); err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return id
		}
	}
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	id := fmt.Sprintf("%s %s %x", host, listen, nonce)
	if runDir != "" && os.MkdirAll(runDir, 0o755) == nil {
		tmp := p + ".tmp"
		if os.WriteFile(tmp, []byte(id+"\n"), 0o600) == nil {
			_ = os.Rename(tmp, p)
		}
	}
	return id
}

// resolveRetry is how long a restarted daemon waits between claims while
// the arbiter cannot be reached; ioErrorWait bounds the wait for a
// recording QEMU to stop on its own (packaging/qemu 0006).
const (
	resolveRetry = 2 * time.Second
	ioErrorWait  = 10 * time.Second
	ioErrorWatch = 2 * time.Minute
)

// resolveOrphans looks for protected domains that run here without a run
// of this daemon (it was restarted) and resolves each one (resolve). It
// runs after every (re)connection to libvirtd; a domain being resolved is
// not started twice.
func (d *Daemon) resolveOrphans() {
	// First what a daemon stopping for a planned restart handed over.
	d.adoptOnce.Do(d.adoptHandoversUnlessStopping)
	// A stopping daemon resolves nothing: the domains it hands over, or
	// leaves to the next daemon unadopted, have no run here and would
	// look like a crash's orphans (a primary claimed and resumed with its
	// filters off: ungated). d.stopping is closed before handOverAll
	// waits on adoptMu, whichever goroutine takes it first; resolve
	// checks again before it claims and before it resumes.
	if d.isStopping() {
		return
	}
	running, err := d.hv.Running()
	if err != nil {
		d.log.WithError(err).Warn("listing running domains")
		return
	}
	for _, def := range running {
		cfg, present, err := ftxml.ParseConfig(def.XML)
		if err == nil && !present {
			// A protect of a VM started without the ft element that no
			// run of this daemon carries on (its daemon died).
			if rec, ok := d.pairings.load(def.UUID); ok && rec.Role == convertRole {
				if dm := d.lookup(def.UUID); dm == nil || dm.current() == nil || !dm.current().active() {
					d.resolveOnce(def, func() { d.resolveConvert(def, rec) })
				}
			}
			continue
		}
		if err != nil {
			continue
		}
		if dm := d.lookup(def.UUID); dm != nil {
			if r := dm.current(); r != nil && r.active() {
				continue
			}
		}
		d.resolveOnce(def, func() { d.resolve(def, *cfg) })
	}
}

// beginStop marks the daemon as stopping (Run, at its context's end;
// handOverAll); idempotent.
func (d *Daemon) beginStop() { d.stoppingOnce.Do(func() { close(d.stopping) }) }

// isStopping reports whether the daemon began to stop (beginStop).
func (d *Daemon) isStopping() bool {
	select {
	case <-d.stopping:
		return true
	default:
		return false
	}
}

// leaveToNext reports whether resolve must leave uuid's domain as it is
// for the next daemon: this one is stopping, or it was handed over
// (handOverAll saves the record before its run closes).
func (d *Daemon) leaveToNext(uuid string) bool {
	return d.isStopping() || d.handovers.has(uuid)
}

// resolveOnce runs f in its own goroutine unless a resolution of def's
// domain is under way: a domain being resolved is not resolved twice.
func (d *Daemon) resolveOnce(def DomainDef, f func()) {
	d.mu.Lock()
	busy := d.resolving[def.UUID]
	if !busy {
		d.resolving[def.UUID] = true
	}
	d.mu.Unlock()
	if busy {
		return
	}
	go func() {
		defer func() {
			d.mu.Lock()
			delete(d.resolving, def.UUID)
			d.mu.Unlock()
		}()
		f()
	}()
}

// resolveConvert decides the fate of a VM started without the ft element
// whose protection (convert.go) this host's daemon did not finish: its
// record says the epoch. A migration left waiting, its mirrors and NBD
// nodes are undone first (reprotect.Recover; QEMU runs the VM on). A VM
// still running was not handed over: the peer's waiting QEMU is cancelled
// and the VM runs on unprotected. A VM the migration completed (paused,
// postmigrate) may run on the peer already: the epoch's claim decides, as
// in handOff: won, it continues here; lost, it is destroyed (the peer runs
// it); the arbiter unreachable, it stays paused and the claim is asked
// again every few seconds.
func (d *Daemon) resolveConvert(def DomainDef, rec pairingRecord) {
	log := d.log.WithFields(logrus.Fields{"domain": def.Name, "part": "restart"})
	e := d.env()
	dm := d.entry(def.UUID, def.Name)
	for {
		client, release, err := e.qmp(def.UUID)
		if err != nil {
			log.WithError(err).Warn("cannot reach the QEMU of an unfinished protect; trying again at the next rescan")
			return
		}
		if !d.sameQEMU(def) {
			release()
			return
		}
		if err := reprotect.Recover(client, 0); err != nil {
			log.WithError(err).Warn("undoing what an unfinished protect left")
		}
		var mi struct {
			Status string `json:"status"`
		}
		merr := client.Execute("query-migrate", nil, &mi)
		st, serr := client.QueryStatus()
		if merr != nil || serr != nil {
			release()
			log.Warnf("an unfinished protect: query-migrate %v, query-status %v; trying again at the next rescan", merr, serr)
			return
		}
		if mi.Status != "completed" || st.Status != "postmigrate" {
			release()
			why := "libvirt-ftd restarted while it protected this VM; its migration had not completed, so the VM runs on here, unprotected (virt-ft protect again)"
			log.Warn(why)
			dm.note(ctl.StateUnprotected, why)
			p := newPrimaryRun(e, def.UUID, def.Name, ftxml.Config{PeerAddress: rec.Peer})
			p.peer = rec.Peer
			p.cancelPeerBackup()
			d.pairings.remove(def.UUID)
			return
		}
		won, cerr := e.arbiter.Acquire(def.UUID, rec.Epoch)
		if !d.sameQEMU(def) {
			release()
			return
		}
		switch {
		case cerr == nil && won:
			_ = client.Execute("migrate-set-capabilities", map[string]any{"capabilities": []map[string]any{
				{"capability": "pause-before-switchover", "state": false},
				{"capability": "return-path", "state": false},
			}}, nil)
			err := client.Cont()
			release()
			if err != nil {
				go e.resumeVM(def.UUID, d.quit)
			}
			why := "libvirt-ftd restarted after this VM's migration to " + rec.Peer + " and won its claim: the VM runs on here, unprotected (virt-ft protect again)"
			log.Warn(why)
			dm.note(ctl.StateUnprotected, why)
			d.pairings.remove(def.UUID)
			return
		case cerr == nil:
			release()
			why := "libvirt-ftd restarted after this VM's migration to " + rec.Peer + ", which runs it: this copy was destroyed"
			log.Warn(why)
			dm.note(ctl.StateStopped, why)
			e.destroyUntilGone(def.UUID, why, d.quit)
			d.pairings.remove(def.UUID)
			return
		}
		release()
		log.WithError(cerr).Warn("an unfinished protect: the split-brain arbiter cannot be reached; the VM stays paused")
		dm.note(ctl.StateUnprotected, "paused after its migration to "+rec.Peer+" while the split-brain arbiter cannot be reached: "+cerr.Error())
		select {
		case <-d.quit:
			return
		case <-time.After(3 * time.Second):
		}
	}
}

// resolve decides the fate of one protected domain found running after a
// restart (see the top of this file). The decision is shown in virt-ft
// status and the log. Every step that changes the VM first checks that the
// QEMU is still the one examined (def.ID): an operator may destroy and
// start the domain meanwhile, and the new QEMU is not this one's business.
func (d *Daemon) resolve(def DomainDef, cfg ftxml.Config) {
	name := def.Name
	log := d.log.WithFields(logrus.Fields{"domain": name, "part": "restart"})
	dm := d.entry(def.UUID, name)
	e := d.env()
	client, release, err := e.qmp(def.UUID)
	if err != nil {
		log.WithError(err).Warn("cannot reach the QEMU left running; trying again at the next rescan")
		return
	}
	defer release()
	same := func() bool { return d.sameQEMU(def) }
	ri, err := client.QueryReplay()
	if err != nil || !same() {
		log.WithError(err).Warn("query-replay")
		return
	}
	rec, haveRec := d.pairings.load(def.UUID)
	// pauseForOperator fails closed: the VM stays paused until the
	// operator decides where it runs.
	pauseForOperator := func(what string) {
		_ = client.Stop()
		why := "paused: libvirt-ftd restarted and " + what + " (" + d.pairings.dir +
			"); check where the VM runs with virt-ft status on the peer host, then virsh destroy it here or virsh resume it"
		log.Error(why)
		dm.note(ctl.StateRefused, why)
	}
	if ri.Mode == "none" || ri.Mode == "record" {
		// A re-protection its daemon did not finish (protect.go) may have
		// left a migration waiting at its switchover with the VM
		// stopped, the arming, disk mirrors: undo them first. Nothing
		// here changes a VM no re-protection touched.
		if err := reprotect.Recover(client, 0); err != nil {
			log.WithError(err).Warn("undoing what an unfinished re-protection left")
		}
		if !same() {
			return
		}
	}
	wonAlready := false // resolveConvertBackup claimed and continued it
	if haveRec && (rec.Role == convertBackupRole || rec.Role == convertOrderedRole) {
		// Armed to run a VM started without the ft element (convert.go):
		// its log, END, is in FIFO B since the arming. Still replaying
		// (paused before its cont), it runs here only if its go-live was
		// ordered and this host wins the epoch (it may have won it before
		// the restart): then it reads END at cont. Either way it goes on
		// below as a backup that left replay mode.
		if ri.Mode == "play" {
			var ok bool
			if ri, ok = d.resolveConvertBackup(def, rec, client, log); !ok {
				return
			}
			wonAlready = true
		}
		rec.Role = "backup"
	}
	switch {
	case ri.Mode == "play":
		why := "libvirt-ftd restarted while this host replayed the backup: its log feed ended, so the backup was destroyed; the primary runs on, unprotected, on its host"
		log.Warn(why)
		dm.note(ctl.StateStopped, why)
		d.pairings.remove(def.UUID)
		e.destroyUntilGone(def.UUID, why, d.quit)
		return
	case haveRec && rec.Role == "live" && ri.Mode == "record":
		// A live VM records only once a re-protection switched it, and
		// that saves a "primary" record first: this one is not
		// understood, so fail closed.
		pauseForOperator("finds this VM recording although its record says it runs alone")
		return
	case haveRec && rec.Role == "live":
		// It went live here (or a restarted daemon resumed it here): this
		// host won its epoch's claim before; nothing can win it any more.
		detail := fmt.Sprintf("running here since it went live (epoch %s), alone and unprotected; libvirt-ftd restarted", rec.Epoch)
		log.Info(detail)
		dm.note(ctl.StateUnprotected, detail)
		if ri.Mode == "none" && same() {
			d.adoptAlone(dm, def, cfg, rec, adoptPeer(cfg, rec.Role, rec.Peer), client, ctl.StateUnprotected, detail, log)
		}
		return
	case haveRec && rec.Role == "operator":
		dm.note(ctl.StateRefused, "left to the operator after a restart (arbiter: none): check where the VM runs, then virsh destroy or virsh resume it")
		return
	case ri.Mode != "record" && ri.Mode != "none":
		log.Warnf("query-replay mode %q: leaving the domain alone", ri.Mode)
		return
	}
	// A primary (recording), or a backup that left replay mode at the END
	// its daemon fed before claiming: both must claim the epoch.
	if !haveRec {
		// Without the epoch there is nothing to claim: fail closed.
		pauseForOperator("has no record of this VM's pairing")
		return
	}
	ioErr := false
	if ri.Mode == "record" {
		dm.note(ctl.StateResolving, "libvirt-ftd restarted: waiting for the recording QEMU to stop (its log has no reader)")
		ioErr = d.waitIOError(client, log)
	}
	if !ioErr && !wonAlready {
		_ = client.Stop()
	}
	if d.cfg.Arbiter == ArbiterNone || d.arb == nil {
		why := fmt.Sprintf("paused: libvirt-ftd restarted and arbiter is none, so nothing tells whether the peer %s runs the VM now; check virt-ft status there, then virsh destroy it here or virsh resume it", rec.Peer)
		log.Error(why)
		dm.note(ctl.StateRefused, why)
		if same() {
			d.notePaused(def)
		}
		// Once: a later rescan (libvirtd reconnecting) must not pause
		// it again after the operator resumed it.
		rec.Role = "operator"
		_ = d.pairings.save(rec)
		return
	}
	won := wonAlready
	for !won {
		if d.leaveToNext(def.UUID) {
			log.Info("libvirt-ftd is stopping: the paused VM is left to the next daemon")
			return
		}
		if !same() {
			log.Info("the QEMU being resolved is gone; leaving the domain to its new run")
			return
		}
		dm.note(ctl.StateResolving, fmt.Sprintf("libvirt-ftd restarted: the VM is paused; claiming the split-brain lock of epoch %s", rec.Epoch))
		won, err = d.arb.Acquire(def.UUID, rec.Epoch)
		if err == nil {
			break
		}
		log.WithError(err).Warnf("the arbiter cannot be reached; the VM stays paused; trying again in %s", resolveRetry)
		dm.note(ctl.StateResolving, fmt.Sprintf("the VM is paused: the arbiter cannot be reached (%v); trying again", err))
		select {
		case <-d.quit:
			return
		case <-time.After(resolveRetry):
		}
	}
	if !same() {
		return
	}
	if !won {
		why := fmt.Sprintf("libvirt-ftd restarted; the other host (%s) won the split-brain claim of epoch %s, so it runs the VM: this host's copy was destroyed", rec.Peer, rec.Epoch)
		log.Warn(why)
		e.destroyUntilGone(def.UUID, why, d.quit)
		d.pairings.remove(def.UUID)
		dm.note(ctl.StateStopped, why)
		return
	}
	// This host won: the peer can no longer run the VM for this epoch.
	// The VM runs on alone; its frames go straight to the network. Not
	// from a stopping daemon (the next one resolves it again: it has won
	// already, Acquire says so again).
	if d.leaveToNext(def.UUID) {
		log.Info("libvirt-ftd is stopping: the paused VM is left to the next daemon")
		return
	}
	if cfg.OutputGate || ri.Mode == "none" {
		if dom, err := ftxml.ParseDomain(def.XML); err == nil && dom.Devices != nil {
			filtersOff(client, len(dom.Devices.Interfaces), log)
		}
	}
	if err := client.Cont(); err != nil {
		log.WithError(err).Error("cont")
		dm.note(ctl.StateRefused, "won the split-brain claim but cannot resume the VM: "+err.Error()+"; virsh resume it")
		return
	}
	if ri.Mode == "record" && !ioErr {
		// Paused before it met its log's end (a re-protection's VM at
		// its switchover): it records until its first write fails
		// (0006), which pauses it once more; that cont ends recording.
		if d.waitIOError(client, log) && same() {
			if err := client.Cont(); err != nil {
				log.WithError(err).Error("cont after the log's end")
				dm.note(ctl.StateRefused, "won the split-brain claim but cannot resume the VM: "+err.Error()+"; virsh resume it")
				return
			}
		}
	}
	wasBackup := rec.Role == "backup"
	peer := adoptPeer(cfg, rec.Role, rec.Peer)
	rec.Role = "live"
	_ = d.pairings.save(rec)
	detail := fmt.Sprintf("libvirt-ftd restarted: the backup on %s was lost with it; this host won the split-brain claim (epoch %s) and runs the VM alone, unprotected and not recording; restart the domain to protect it again", rec.Peer, rec.Epoch)
	if wasBackup {
		// The former backup is the VM now: advertise its MAC and keep a
		// persistent definition here, as a go-live does.
		if err := client.AnnounceSelf(); err != nil {
			log.WithError(err).Warn("announce-self")
		}
		if persistent, err := ftxml.LivePrimary(def.XML); err != nil {
			log.WithError(err).Warn("no persistent definition on this host: the running domain is transient; define it again from the primary host's definition")
		} else if err := e.hv.Define(persistent); err != nil {
			log.WithError(err).Warn("defining the persistent definition here")
		}
		detail = fmt.Sprintf("libvirt-ftd restarted while its backup went live: this host won the split-brain claim (epoch %s) and runs the VM alone, unprotected; the primary on %s halts", rec.Epoch, rec.Peer)
	}
	if same() {
		d.noteUnprotected(def, cfg, wasBackup, rec.Peer)
	}
	log.Warn(detail)
	dm.note(ctl.StateUnprotected, detail)
	if (ri.Mode != "record" || ioErr) && same() {
		// It runs alone without recording: re-protectable.
		d.adoptAlone(dm, def, cfg, rec, peer, client, ctl.StateUnprotected, detail, log)
	}
	if ri.Mode == "record" && !ioErr {
		// It was paused before its log failed: it may record into the
		// dead log, fail and stop once more; resume it then (cont ends
		// its recording, packaging/qemu 0006).
		d.watchIOError(def, client, log)
	}
}

// sameQEMU reports whether def's QEMU (its libvirt domain ID) still runs.
func (d *Daemon) sameQEMU(def DomainDef) bool {
	same, known := d.sameQEMUKnown(def)
	return same && known
}

// sameQEMUKnown is sameQEMU that tells a libvirt error (known false: the
// caller may ask again) from an answer: the QEMU is still def's (same), or
// it is gone or another one runs.
func (d *Daemon) sameQEMUKnown(def DomainDef) (same, known bool) {
	running, err := d.hv.Running()
	if err != nil {
		return false, false
	}
	for _, r := range running {
		if r.UUID == def.UUID {
			return r.ID == def.ID, true
		}
	}
	return false, true
}

// watchIOError resumes def's VM if it stops with an I/O error within
// ioErrorWatch (see resolve).
func (d *Daemon) watchIOError(def DomainDef, client *qmp.Client, log logrus.FieldLogger) {
	deadline := time.Now().Add(ioErrorWatch)
	for time.Now().Before(deadline) && d.sameQEMU(def) {
		if st, err := client.QueryStatus(); err == nil && st.Status == "io-error" {
			log.Info("the VM stopped on its dead record log after all; resuming it without recording")
			_ = client.Cont()
			return
		}
		select {
		case <-d.quit:
			return
		case <-time.After(time.Second):
		}
	}
}

// waitIOError waits (at most ioErrorWait) for a recording QEMU whose log
// has no reader to stop on its own with an I/O error (packaging/qemu
// 0006). Only then does `cont` make it stop recording; a QEMU that was
// merely paused would record again into the dead log.
func (d *Daemon) waitIOError(client *qmp.Client, log logrus.FieldLogger) bool {
	deadline := time.Now().Add(ioErrorWait)
	for {
		st, err := client.QueryStatus()
		if err == nil && st.Status == "io-error" {
			return true
		}
		if time.Now().After(deadline) {
			log.Warnf("the recording QEMU did not stop on its own within %s (status %q; is it libvirt-ft's patched QEMU?): pausing it", ioErrorWait, st.Status)
			return false
		}
		select {
		case <-d.quit:
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// filtersOff turns the output gate's filter-redirector of interfaces
// 0..n-1 off (qom-set <id> status off): frames go straight to the network.
func filtersOff(client *qmp.Client, n int, log logrus.FieldLogger) {
	for j := 0; j < n; j++ {
		if err := client.Execute("qom-set", map[string]any{"path": "/objects/" + ftxml.GateFilterID(j),
			"property": "status", "value": "off"}, nil); err != nil {
			log.WithError(err).Errorf("cannot open interface %d to the network (qom-set %s status off); the VM runs without it", j, ftxml.GateFilterID(j))
		}
	}
}

// noteUnprotected sets the title of a VM that a restarted daemon leaves
// running unprotected to say so (notePaused: one it paused), in place of
// its earlier run's note (ftxml.PrimaryTitle, or ftxml.LiveNote for a
// former backup, whose title was the backup's). Best effort: logged.
func (d *Daemon) noteUnprotected(def DomainDef, cfg ftxml.Config, wasBackup bool, peer string) {
	var title, desc string
	if wasBackup {
		host, _, err := net.SplitHostPort(peer)
		if err != nil {
			host = peer
		}
		t, ds, err := ftxml.LiveNote(def.XML, host)
		if err != nil {
			return
		}
		title, desc = t, ds
	} else {
		dom, err := ftxml.ParseDomain(def.XML)
		if err != nil {
			return
		}
		title, desc = ftxml.PrimaryTitle(def.Name, cfg.PeerAddress, string(ctl.StateUnprotected), ftxml.UserTitle(dom.Title, def.Name, cfg.PeerAddress)), dom.Description
	}
	if err := d.hv.SetLiveNote(def.UUID, title, desc); err != nil {
		d.log.WithField("domain", def.Name).WithError(err).Warn("setting the VM's title to unprotected failed")
	}
}

// notePaused sets the title of a VM a restarted daemon paused for the
// operator (ftxml.PausedNote). Best effort: logged.
func (d *Daemon) notePaused(def DomainDef) {
	title, desc, err := ftxml.PausedNote(def.XML)
	if err != nil {
		return
	}
	if err := d.hv.SetLiveNote(def.UUID, title, desc); err != nil {
		d.log.WithField("domain", def.Name).WithError(err).Warn("setting the VM's title to paused failed")
	}
}

// resolveConvertBackup resolves a QEMU armed here to run a VM started
// without the ft element (a convert-backup or convert-ordered record)
// whose daemon restarted before it went live. Without the go-live order
// (convert-backup) it never claims: its QEMU is destroyed and the VM runs
// on where it came from (which claims if it handed the VM over). Ordered,
// it claims the epoch, again while the arbiter cannot be reached (an
// error is no proof the earlier claim failed): lost, it is destroyed;
// won, it continues, reads END, and the caller goes on with it in replay
// mode none (ok). ri is its query-replay then.
func (d *Daemon) resolveConvertBackup(def DomainDef, rec pairingRecord, client *qmp.Client, log logrus.FieldLogger) (ri qmp.ReplayInfo, ok bool) {
	e := d.env()
	dm := d.entry(def.UUID, def.Name)
	destroy := func(why string) {
		log.Warn(why)
		dm.note(ctl.StateStopped, why)
		d.pairings.remove(def.UUID)
		e.destroyUntilGone(def.UUID, why, d.quit)
	}
	if rec.Role != convertOrderedRole {
		destroy("libvirt-ftd restarted while this host took over a VM started without the ft element, before its go-live was ordered: its QEMU was destroyed; the VM runs on " + rec.Peer)
		return ri, false
	}
	for {
		if !d.sameQEMU(def) {
			return ri, false
		}
		won, err := e.arbiter.Acquire(def.UUID, rec.Epoch)
		if !d.sameQEMU(def) {
			return ri, false
		}
		if err == nil && !won {
			destroy(fmt.Sprintf("libvirt-ftd restarted; the VM started without the ft element runs on %s (it won epoch %s): this host's copy was destroyed", rec.Peer, rec.Epoch))
			return ri, false
		}
		if err == nil {
			break
		}
		dm.note(ctl.StateResolving, fmt.Sprintf("the VM's state is here, paused: the arbiter cannot be reached (%v); trying again", err))
		select {
		case <-d.quit:
			return ri, false
		case <-time.After(resolveRetry):
		}
	}
	if err := client.Cont(); err != nil {
		log.WithError(err).Error("cont")
		dm.note(ctl.StateRefused, "won the split-brain claim but cannot resume the VM: "+err.Error()+"; virsh resume it")
		return ri, false
	}
	for deadline := time.Now().Add(patchedEndWait); ; {
		var err error
		ri, err = client.QueryReplay()
		if err == nil && ri.Mode == "none" {
			return ri, true
		}
		if time.Now().After(deadline) {
			log.Errorf("won the claim and continued, but the QEMU is still in replay mode (%v): it did not read END", err)
			dm.note(ctl.StateRefused, "won the split-brain claim, but the QEMU did not leave replay mode; virt-ft status, then restart the domain")
			return ri, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
