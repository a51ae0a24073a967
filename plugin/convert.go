package plugin

// Protecting a VM started without the ft element (issue 13, virt-ft
// protect DOMAIN --peer HOST; docs/protocol.md §12, docs/replay.md §16).
// Such a VM runs plain TCG: no icount, no record log, no output gate, and
// a QEMU cannot start counting instructions while it runs. So its state
// moves into a QEMU that has icount, on the peer host, and the peer runs
// it from there:
//
//  1. prepare-incoming with Convert arms the domain's backup on the peer
//     as for a re-protection (its QEMU waits with rr=replay,rrincoming=on
//     and -incoming, its disks exported over NBD, incoming.go), from this
//     host's definition with the ft element added (peer: this host).
//  2. reprotect.Source (Convert) mirrors the disks and migrates the VM
//     live over the re-protection streams, without arming a record start:
//     at the end this VM is paused and the peer's QEMU has its state.
//  3. go-live-incoming asks the peer to run it: the peer claims the
//     pairing's epoch and, won, lets its QEMU read a log of only END, so
//     it leaves replay mode and runs on with icount (packaging/qemu 0001;
//     0022 keeps its clock and TSC going), live, gated, announced.
//  4. This host's copy is destroyed and its definition gets the ft
//     element; the peer's live VM re-protects itself onto this host
//     (automatic re-protection), which makes this host its backup.
//
// Which copy runs after the migration is decided by the arbiter alone: the
// peer runs it only once it won the epoch; if the peer does not answer
// ok, this host claims the epoch itself: won, its copy continues (nothing
// happened), lost, the peer runs it and this copy is destroyed; the
// arbiter unreachable, the copy stays paused and the claim is asked again
// (fail closed: never two running copies). Before the migration has
// completed nothing is decided: a failure undoes it (reprotect.Source) and
// the VM runs on here as before.
//
// The VM moves to the peer; virt-ft failover moves it back once it is
// protected.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	"github.com/libvirt-ft/libvirt-ft/plugin/reprotect"
	"github.com/libvirt-ft/libvirt-ft/qmp"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// convertRole is the pairing record of a protection of a VM started
// without the ft element while its migration runs (restart.go
// resolveConvert); convertBackupRole the peer's, from its arming until it
// runs the VM (then "live").
// convertOrderedRole the peer's once the go-live order came (it claims
// from then on, also after a restart; before it, a restart destroys its
// copy and never claims).
const (
	convertRole        = "convert"
	convertBackupRole  = "convert-backup"
	convertOrderedRole = "convert-ordered"
)

// protectPlain answers virt-ft protect for a running domain without the ft
// element: every check first (nothing changes on a refusal), then the
// steps above in the background; virt-ft status follows them. Errors name
// what stands in the way and what to do.
func (d *Daemon) protectPlain(arg, peer string) (ctl.DomainStatus, error) {
	def, err := d.definitionOf("protect", arg)
	if err != nil {
		return ctl.DomainStatus{}, err
	}
	if _, present, _ := ftxml.ParseConfig(def.XML); present {
		return ctl.DomainStatus{}, fmt.Errorf("protect: domain %q has the ft element but libvirt-ftd runs no protection of it here: it is protected from its next start (virt-ft status)", def.Name)
	}
	if active, err := d.hv.IsActive(def.UUID); err != nil {
		return ctl.DomainStatus{}, fmt.Errorf("protect: %w", err)
	} else if !active {
		return ctl.DomainStatus{}, fmt.Errorf("protect: domain %q is not running: virt-ft enable %s --peer HOST protects it from its next start", def.Name, def.Name)
	}
	if peer == "" {
		return ctl.DomainStatus{}, fmt.Errorf("protect: domain %q has no ft element, so no backup host: name one (virt-ft protect %s --peer HOST[:PORT])", def.Name, def.Name)
	}
	cfg := ftxml.DefaultConfig()
	if err := setPeer(&cfg, peer); err != nil {
		return ctl.DomainStatus{}, fmt.Errorf("protect: --peer %q: %w", peer, err)
	}
	if err := d.cfg.arbiterMissing(); err != nil {
		return ctl.DomainStatus{}, fmt.Errorf("protect: %w", err)
	}
	if d.cfg.Arbiter == ArbiterNone || d.arb == nil {
		// After the migration two paused copies exist, and only the
		// arbiter can say which one runs: a lost answer from the peer
		// would otherwise run both.
		return ctl.DomainStatus{}, fmt.Errorf("protect: domain %q: moving a VM started without the ft element needs a split-brain arbiter (arbiter: none in %s): configure arbiter-etcd or arbiter-dir, or protect it from its next start (virt-ft enable)", def.Name, DefaultConfigPath)
	}
	primaryXML, err := convertDefinition(def.XML, cfg)
	if err != nil {
		return ctl.DomainStatus{}, fmt.Errorf("protect: domain %q cannot be protected, nothing changed: %w", def.Name, err)
	}
	liveDef, err := d.sameAsRunning(def)
	if err != nil {
		return ctl.DomainStatus{}, fmt.Errorf("protect: domain %q: %w", def.Name, err)
	}
	e := d.env()
	client, release, err := e.qmp(def.UUID)
	if err != nil {
		return ctl.DomainStatus{}, fmt.Errorf("protect: domain %q: its QEMU: %w", def.Name, err)
	}
	v, verr := client.QueryVersion()
	st, serr := client.QueryStatus()
	release()
	switch {
	case verr != nil || !strings.Contains(v.Package, patchedPackage):
		return ctl.DomainStatus{}, fmt.Errorf("protect: domain %q runs a QEMU that is not libvirt-ft's (query-version package %q): its migration under TCG would lose guest writes (packaging/qemu 0020) and its peer needs the same build; set <emulator> to %s, restart it, and protect it then", def.Name, v.Package, patchedQEMUPath)
	case serr != nil:
		return ctl.DomainStatus{}, fmt.Errorf("protect: domain %q: query-status: %w", def.Name, serr)
	case !st.Running:
		return ctl.DomainStatus{}, fmt.Errorf("protect: domain %q is %s, not running: resume it first (virsh resume)", def.Name, st.Status)
	}
	d.mu.Lock()
	resolving := d.resolving[def.UUID]
	d.mu.Unlock()
	if resolving {
		return ctl.DomainStatus{}, fmt.Errorf("protect: domain %q: libvirt-ftd is resolving an earlier protect of it after a restart (virt-ft status)", def.Name)
	}
	dm := d.entry(def.UUID, def.Name)
	p := newPrimaryRun(e, def.UUID, def.Name, cfg)
	p.running = true
	p.state, p.detail = ctl.StateUnprotected, "protecting: arming the backup on "+p.peer
	p.reprot = &ctl.Reprotect{Phase: "arming", Peer: p.peer, Moves: true}
	if !dm.claimIdle(p) {
		p.close("a run of the domain exists")
		return dm.status(), fmt.Errorf("protect: domain %q: libvirt-ftd runs something for it here already (virt-ft status)", def.Name)
	}
	// The run, closed at the end, stays the domain's record (virt-ft
	// status: done or failed) until the peer's re-protection arms a
	// backup here, or a next protect.
	go func() {
		if err := p.convert(primaryXML, func() (bool, bool) { return d.sameQEMUKnown(liveDef) }); err != nil {
			p.log.WithError(err).Error("protecting the VM started without the ft element failed")
		}
	}()
	return p.status(), nil
}

// setPeer sets cfg's backup host from "host" or "host:port". Errors: a
// port that is not 1-65535.
func setPeer(cfg *ftxml.Config, peer string) error {
	host, port := peer, ""
	if h, p, err := net.SplitHostPort(peer); err == nil {
		host, port = h, p
	}
	if host == "" {
		return errors.New("no host")
	}
	cfg.PeerAddress = host
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("the port must be a number from 1 to 65535 (default %d)", cfg.PeerPort)
		}
		cfg.PeerPort = n
	}
	return nil
}

// convertDefinition is a plain definition with the ft element cfg added,
// checked as a start would check it (ftxml.Validate) and rewritten for
// record/replay (ftxml.NeedsRewrite, as libvirt's DEFINED event would).
func convertDefinition(plainXML string, cfg ftxml.Config) (string, error) {
	dom, err := ftxml.ParseDomain(plainXML)
	if err != nil {
		return "", err
	}
	if err := ftxml.SetConfig(dom, cfg); err != nil {
		return "", err
	}
	if _, err := ftxml.Validate(dom); err != nil {
		return "", err
	}
	out, err := dom.Marshal()
	if err != nil {
		return "", err
	}
	rewritten, _, err := ftxml.NeedsRewrite(out)
	return rewritten, err
}

// sameAsRunning refuses a domain whose persistent definition differs from
// what runs in what the backup is built from: the backup's QEMU is made
// from the definition, and the running VM's state must load into it.
// Compared: vCPUs, memory, machine type, disks (target, image) and
// interfaces (MAC), in document order. Errors say what differs.
// It returns the running domain (its live XML and libvirt ID, for
// sameQEMU).
func (d *Daemon) sameAsRunning(def DomainDef) (DomainDef, error) {
	running, err := d.hv.Running()
	if err != nil {
		return DomainDef{}, err
	}
	var live DomainDef
	for _, r := range running {
		if strings.EqualFold(r.UUID, def.UUID) {
			live = r
		}
	}
	if live.XML == "" {
		return DomainDef{}, errors.New("it is not running")
	}
	a, err := ftxml.ParseDomain(def.XML)
	if err != nil {
		return DomainDef{}, err
	}
	b, err := ftxml.ParseDomain(live.XML)
	if err != nil {
		return DomainDef{}, err
	}
	if x, y := domainShape(a), domainShape(b); !slices.Equal(x, y) {
		return DomainDef{}, fmt.Errorf("its definition (virsh dumpxml --inactive) differs from the running VM (%s against %s): its backup is made from the definition; shut it down and start it again, or undo the change, then protect it", strings.Join(x, " "), strings.Join(y, " "))
	}
	return live, nil
}

// domainShape lists what sameAsRunning compares.
func domainShape(dom *libvirtxml.Domain) []string {
	var out []string
	if dom.VCPU != nil {
		out = append(out, fmt.Sprintf("vcpus=%d", dom.VCPU.Value))
	}
	if dom.Memory != nil {
		out = append(out, fmt.Sprintf("memory=%d%s", dom.Memory.Value, dom.Memory.Unit))
	}
	if dom.OS != nil && dom.OS.Type != nil {
		out = append(out, "machine="+dom.OS.Type.Machine)
	}
	if dom.Devices == nil {
		return out
	}
	for _, disk := range dom.Devices.Disks {
		src := ""
		if disk.Source != nil && disk.Source.File != nil {
			src = disk.Source.File.File
		}
		tgt := ""
		if disk.Target != nil {
			tgt = disk.Target.Dev
		}
		out = append(out, "disk="+tgt+":"+src)
	}
	for _, nic := range dom.Devices.Interfaces {
		mac := ""
		if nic.MAC != nil {
			mac = strings.ToLower(nic.MAC.Address)
		}
		out = append(out, "nic="+mac)
	}
	return out
}

// convert runs steps 1-4 (the file comment) for p, whose domain runs here
// without the ft element; primaryXML is its definition with the ft element
// (convertDefinition); same reports whether the domain's QEMU is still
// the one protect examined (known false: libvirt could not say). It returns once the peer runs the VM (nil), or
// once the VM runs on here unprotected (an error saying why), or, the
// daemon stopping, with the VM paused for the next daemon to resolve.
func (p *primaryRun) convert(primaryXML string, same func() (same, known bool)) (err error) {
	e := p.env
	t0 := time.Now()
	defer func() {
		if err != nil {
			r := *p.reprotectView()
			r.Phase, r.Error = "failed", err.Error()
			p.setReprotect(&r)
			p.setState(ctl.StateUnprotected, "protecting failed: "+err.Error())
		}
		p.close("protect ended")
	}()
	dom, qemuVer, logVer, build, err := emulatorOf(e, primaryXML)
	if err != nil {
		return err
	}
	client, release, err := e.qmp(p.uuid)
	if err != nil {
		return err
	}
	defer release()
	disks, sizes, err := plainDisks(client, dom)
	if err != nil {
		return err
	}
	ctrl, err := dialFeature(e, p.peer, p.uuid, qemuVer, logVer, logchan.FeatureConvert, "take over a VM started without the ft element")
	if err != nil {
		return err
	}
	defer ctrl.Close()
	epoch := strconv.FormatInt(time.Now().UnixNano(), 36)
	p.mu.Lock()
	p.epoch = epoch
	p.mu.Unlock()
	if err := ctrl.request(logchan.ControlRequest{Op: logchan.OpPrepareIncoming, UUID: p.uuid, Name: p.name, XML: primaryXML,
		QEMUVersion: qemuVer, LogVersion: logVer, EmulatorBuild: build, Epoch: epoch, Arbiter: e.cfg.arbiterName(), Convert: true,
		DiskSizes: sizes}, nil); err != nil {
		return fmt.Errorf("backup host %s refused the backup: %w", p.peer, err)
	}
	ctrl.Close()
	migrated := false
	defer func() {
		if !migrated {
			// Its QEMU waits for this VM: stop it (its own timeout
			// would, later).
			p.cancelPeerBackup()
		}
	}()
	// From here a restarted daemon must know (restart.go).
	if err := e.pairings.save(pairingRecord{UUID: p.uuid, Name: p.name, Role: convertRole, Epoch: epoch, Peer: p.peer}); err != nil {
		return fmt.Errorf("keeping the pairing record: %w", err)
	}
	keepRecord := false
	defer func() {
		if !keepRecord {
			e.pairings.remove(p.uuid)
		}
	}()
	if err := e.arbiter.Forget(p.uuid, epoch); err != nil {
		return fmt.Errorf("the split-brain arbiter cannot record the new pairing: %w", err)
	}
	dir := filepath.Dir(ftxml.RecordFIFOPath(p.cfg, p.uuid))
	if err := logchan.MkdirAllOwned(dir, e.qemuUID, e.qemuGID); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	migSock, nbdSock, listeners, err := p.reprotectStreams(ctx, dir, qemuVer, logVer, epoch, len(disks))
	if err != nil {
		return err
	}
	defer func() {
		_ = os.Remove(migSock)
		_ = os.Remove(nbdSock)
	}()
	if err := reprotect.Recover(client, 0); err != nil {
		return fmt.Errorf("undoing an earlier protection's leftovers: %w", err)
	}
	rp := &ctl.Reprotect{Phase: "arming", Peer: p.peer, Moves: true}
	src := reprotect.Source{QMP: client, Convert: true, MigrateURI: "unix:" + migSock, NBDSocket: nbdSock, Disks: disks,
		MaxBandwidth: reprotectBandwidth, Progress: func(pr reprotect.Progress) {
			v := *rp
			v.Phase, v.DoneBytes, v.TotalBytes, v.RateBytesPerSec = pr.Phase, pr.Done, pr.Total, pr.Rate
			p.setReprotect(&v)
		}}
	p.setState(ctl.StateUnprotected, "protecting: copying the disks and memory to "+p.peer)
	res, err := src.Run(ctx)
	// The go-live order goes only to a peer known to hold the state (the
	// migration completed, this VM paused after it); unknown, this host
	// claims without ordering (the peer never claims unordered, so this
	// host wins and its copy runs on).
	order := true
	if err != nil && !errors.Is(err, reprotect.ErrSwitchedOver) {
		switch migrationState(client, p.stop) {
		case migrationNotDone:
			return err // Source undid everything: the VM runs on here as before
		case migrationUnknown:
			p.log.WithError(err).Warn("protect: the copy failed and QEMU does not say whether the migration completed; claiming the pairing's epoch here without ordering the peer")
			order = false
		default:
			p.log.WithError(err).Warn("protect: the migration completed although the copy reported an error")
		}
	}
	if res.Stopped.IsZero() {
		res.Stopped = time.Now()
	}
	// The migration completed: the VM is paused here and its state has
	// loaded on the peer (return-path). From here only the arbiter
	// decides where it runs.
	migrated, keepRecord = true, true
	cancel()
	p.setState(ctl.StateUnprotected, "protecting: the VM's state is on "+p.peer+"; asking it to run the VM")
	tMigrated := time.Now()
	peerRuns, tRuns, err := p.handOff(client, qemuVer, logVer, epoch, order, same)
	if !peerRuns {
		if err != errHandOffStopped {
			keepRecord = false // this copy runs on: nothing left to resolve
		}
		return err
	}
	// The peer runs the VM: this copy must never run again.
	p.setState(ctl.StateStopped, "moved: the VM runs on "+p.peer+", which re-protects it onto this host")
	e.destroyUntilGone(p.uuid, "protect: the VM runs on "+p.peer+" now", nil)
	if err := e.hv.Define(primaryXML); err != nil {
		p.log.WithError(err).Warn("protect: giving this host's definition the ft element (virt-ft enable does it too)")
	}
	keepRecord = false
	var bytes int64
	for _, l := range listeners {
		bytes += l.Bytes.Load()
	}
	done := *p.reprotectView()
	// The pause: from the VM seen stopped here (the migration's
	// switchover) to the peer's answer that it runs it.
	done.Phase, done.PauseMS, done.MemoryBytes, done.DiskBytes, done.TotalMS = "done", tRuns.Sub(res.Stopped).Milliseconds(),
		res.MemoryBytes, res.DiskBytes, time.Since(t0).Milliseconds()
	done.DoneBytes, done.TotalBytes, done.RateBytesPerSec = 0, 0, 0
	p.setReprotect(&done)
	p.log.Infof("protect: the VM moved to %s in %v: paused %d ms until it ran there (%d ms to the migration's end, %d ms for the peer's claim and go-live); %d bytes of memory and %d of disk (%d through the streams)",
		p.peer, time.Since(t0).Round(time.Millisecond), done.PauseMS, tMigrated.Sub(res.Stopped).Milliseconds(), tRuns.Sub(tMigrated).Milliseconds(),
		res.MemoryBytes, res.DiskBytes, bytes)
	return nil
}

// errHandOffStopped: the daemon stopped while handOff waited for the
// arbiter; the VM stays paused for the next daemon (resolveConvert).
var errHandOffStopped = errors.New("protect: libvirt-ftd stopped while the split-brain arbiter decided; the VM stays paused for the next libvirt-ftd")

// handOff decides, after the migration, which copy runs (the file
// comment). The peer's ok is checked against the arbiter before this copy
// goes: the epoch's claim here must lose (the peer holds it); a claim won
// here means the peer does not run the VM after all, and this copy
// continues. Without an ok, the same claim decides. It reports whether the
// peer runs the VM, and when it said so (its ok; else when the claim
// lost); false means this host's copy runs on (resumed), with the error
// saying why, or errHandOffStopped. The VM stays paused while
// the arbiter cannot be reached; same false (the domain's QEMU changed
// under it) ends it without touching the new QEMU.
func (p *primaryRun) handOff(client *qmp.Client, qemuVer string, logVer uint32, epoch string, order bool, same func() (same, known bool)) (bool, time.Time, error) {
	e := p.env
	var answered time.Time
	err := errors.New("the go-live order was not sent (the migration's end is unknown)")
	if order {
		var ctrl *peerConn
		if ctrl, err = dialControl(e, p.peer, p.uuid, qemuVer, logVer); err == nil {
			_ = ctrl.nc.SetDeadline(time.Now().Add(goLiveIncomingWait + 20*time.Second))
			err = ctrl.request(logchan.ControlRequest{Op: logchan.OpGoLiveIncoming, UUID: p.uuid, Epoch: epoch}, nil)
			answered = time.Now()
			ctrl.Close()
		}
	}
	if err != nil {
		p.log.WithError(err).Warn("protect: the peer did not confirm it runs the VM; claiming the pairing's epoch here")
	}
	for {
		won, cerr := e.arbiter.Acquire(p.uuid, epoch)
		// Whether this QEMU is still the VM's: asked again while
		// libvirt cannot say (the VM stays paused meanwhile).
		isSame, known := same()
		for !known {
			select {
			case <-p.stop:
				return false, answered, errHandOffStopped
			case <-time.After(time.Second):
			}
			isSame, known = same()
		}
		if !isSame {
			return false, answered, fmt.Errorf("the domain's QEMU here was destroyed or replaced while the arbiter decided (%v); left alone", err)
		}
		switch {
		case cerr == nil && won:
			if err == nil {
				err = errors.New("the peer answered that it runs the VM, but this host won the pairing's epoch")
				p.log.Error("protect: " + err.Error() + "; this copy continues")
			}
			// The peer can never win it now: this copy continues, with
			// the migration's capabilities off again (an operator's
			// next migration must not stop before its switchover).
			_ = client.Execute("migrate-set-capabilities", map[string]any{"capabilities": []map[string]any{
				{"capability": "pause-before-switchover", "state": false},
				{"capability": "return-path", "state": false},
			}}, nil)
			if cerr := client.Cont(); cerr != nil {
				p.log.WithError(cerr).Error("protect: cont after the claim; retrying")
				go e.resumeVM(p.uuid, nil)
			}
			return false, answered, fmt.Errorf("the backup host did not take the VM (%v): it runs on here, unprotected", err)
		case cerr == nil:
			if err != nil {
				answered = time.Now()
			}
			return true, answered, nil
		}
		p.setState(ctl.StateUnprotected, "protecting: paused after the migration while the split-brain arbiter cannot be reached (it decides which host runs the VM): "+cerr.Error())
		p.log.WithError(cerr).Warn("protect: the split-brain arbiter cannot be reached; the VM stays paused")
		select {
		case <-p.stop:
			return false, answered, errHandOffStopped
		case <-time.After(time.Second):
		}
	}
}

// migrationEnd is what migrationState knows of the VM's last migration.
type migrationEnd int

const (
	migrationNotDone migrationEnd = iota // failed or cancelled: the VM runs here
	migrationDone                        // completed, the VM paused after it
	migrationUnknown                     // QEMU did not say
)

// migrationState asks QEMU (query-migrate, query-status) how the VM's
// last migration ended, again for up to a minute while it does not answer
// (libvirt's monitor may be reconnecting), or until stop closes.
func migrationState(client *qmp.Client, stop <-chan struct{}) migrationEnd {
	for deadline := time.Now().Add(time.Minute); ; {
		var mi struct {
			Status string `json:"status"`
		}
		merr := client.Execute("query-migrate", nil, &mi)
		st, serr := client.QueryStatus()
		switch {
		case merr == nil && serr == nil && mi.Status == "completed" && st.Status == "postmigrate":
			return migrationDone
		case merr == nil && serr == nil && mi.Status != "completed" && st.Running:
			return migrationNotDone
		}
		if time.Now().After(deadline) {
			return migrationUnknown
		}
		select {
		case <-stop:
			return migrationUnknown
		case <-time.After(time.Second):
		}
	}
}

// plainDisks pairs each disk of dom (the definition with the ft element)
// with the block node its running plain QEMU attached it to, by image
// path (query-block): what reprotect.Source mirrors to the peer's export
// of the same disk (ftxml.ReplayDisk.Format). sizes gives each image's
// virtual size in bytes, by path (ControlRequest.DiskSizes). Errors: a disk
// the running VM does not have.
func plainDisks(client *qmp.Client, dom *libvirtxml.Domain) (disks []reprotect.Disk, sizes map[string]int64, err error) {
	var blocks []struct {
		Inserted *struct {
			NodeName string `json:"node-name"`
			File     string `json:"file"`
			Image    struct {
				VirtualSize int64 `json:"virtual-size"`
			} `json:"image"`
		} `json:"inserted"`
	}
	if err := client.Execute("query-block", nil, &blocks); err != nil {
		return nil, nil, err
	}
	sizes = map[string]int64{}
	for _, rd := range ftxml.ReplayDisks(dom) {
		node := ""
		for _, b := range blocks {
			if in := b.Inserted; in != nil && in.File == rd.Path && in.NodeName != "" {
				node, sizes[rd.Path] = in.NodeName, in.Image.VirtualSize
			}
		}
		if node == "" {
			return nil, nil, fmt.Errorf("the running VM has no disk on %s (query-block)", rd.Path)
		}
		disks = append(disks, reprotect.Disk{Node: node, Export: rd.Format})
	}
	return disks, sizes, nil
}
