package plugin

// The backup host's side of a re-protection (issue 13, docs/protocol.md
// §11, docs/replay.md §15): prepare-incoming arms a backup like
// prepare-backup does, then starts its QEMU at once, paused and waiting
// for the running VM's migrated state (ftxml.Incoming), exports its disks
// over NBD and listens for the migration on unix sockets in the domain's
// state directory (reprotect.Destination), and takes the pairing's
// re-protection streams from the host that armed it (streams.go). When
// the state has arrived and the primary's log channel is up, the replay
// starts (cont). Until that log channel comes, the waiting QEMU is this
// arming's own: a cancel-backup, a failure or a timeout stops it. Once
// the log channel is up, the run is an ordinary backup.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	"github.com/libvirt-ft/libvirt-ft/plugin/reprotect"
	"github.com/libvirt-ft/libvirt-ft/qmp"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// incomingLogWait bounds how long a backup that received the running VM's
// state waits for the primary's log channel before it gives up (the
// primary's daemon dials it right after the switchover).
const incomingLogWait = time.Minute

// incomingTimeout bounds the wait for the running VM's state (disks and
// memory): reprotect.DefaultTimeout per phase on the primary's side.
const incomingTimeout = reprotect.DefaultTimeout

// incomingIdle: an arming with no stream open for this long before the
// state arrived is given up (its primary's daemon died, or gave up
// without a cancel reaching this host): the waiting QEMU stops. The
// primary opens its first stream (a disk's NBD connection, or the
// migration) within a second or two of the arming, and keeps one open
// until the switchover.
const incomingIdle = 30 * time.Second

// incomingFirstStream bounds the wait for the first stream instead: before
// it, the primary may end its lost backup's log (endLogWait), undo an
// earlier attempt's leftovers (reprotect.Recover) and ask the arbiter.
const incomingFirstStream = 3 * time.Minute

// incomingSockets are the unix sockets the waiting QEMU listens on for the
// migration and the NBD copy, beside FIFO B (the directory is QEMU's user's:
// logchan.CreateFIFO).
func incomingSockets(replayFIFO string) (migration, nbd string) {
	dir := filepath.Dir(replayFIFO)
	return filepath.Join(dir, "in-mig.sock"), filepath.Join(dir, "in-nbd.sock")
}

// incomingArming is what a prepare-incoming backup holds until its log
// channel is up.
type incomingArming struct {
	// logUp is closed when the first log channel was accepted
	// (serveLog).
	logUp     chan struct{}
	logUpOnce sync.Once
	// replaying is set once the QEMU continued (finishIncoming): from
	// then on its failover core owns it (convert: the live run does).
	replaying atomic.Bool
	// convert: armed for a VM started without the ft element
	// (ControlRequest.Convert): once its state has loaded, it waits for
	// OpGoLiveIncoming on goLive instead of a log channel.
	convert bool
	// loaded is closed when the VM's state has loaded (convert only).
	loaded chan struct{}
	// goLive takes the go-live order (goLiveIncoming); its answer goes
	// back on the order's reply.
	goLive chan goLiveOrder
	// diskSizes: ControlRequest.DiskSizes; created: the disks
	// createDisks made (before the QEMU started).
	diskSizes map[string]int64
	created   []string
}

// goLiveOrder is one OpGoLiveIncoming: the answer (nil: this host runs
// the VM now) goes to reply, which has room for it.
type goLiveOrder struct {
	reply chan error
}

// goLiveIncomingWait bounds how long a go-live order waits for a definite
// answer from the arbiter before it is answered with an error (the claim
// goes on; the asker then claims too).
const goLiveIncomingWait = 20 * time.Second

func (ia *incomingArming) channelUp() { ia.logUpOnce.Do(func() { close(ia.logUp) }) }

// prepareIncoming answers OpPrepareIncoming from primaryHost (an IP
// address): prepare-backup's checks and arming, then the waiting QEMU.
func (d *Daemon) prepareIncoming(req logchan.ControlRequest, primaryHost string) error {
	return d.arm(req, primaryHost, true)
}

// startIncoming starts b's QEMU waiting for the running VM (b is the
// domain's run already: libvirt's prepare hook looks for it) and readies
// it for the streams. On error the caller closes b, which stops the QEMU.
func (d *Daemon) startIncoming(b *backupRun) error {
	xml, err := ftxml.Incoming(b.backupXML)
	if err != nil {
		return err
	}
	bdom, err := ftxml.ParseDomain(b.backupXML)
	if err != nil {
		return err
	}
	ia := &incomingArming{logUp: make(chan struct{}), convert: b.convert, diskSizes: b.diskSizes,
		loaded: make(chan struct{}), goLive: make(chan goLiveOrder)}
	b.mu.Lock()
	b.qemuStarted, b.incoming = true, ia // feedLoop must not start another QEMU
	b.mu.Unlock()
	// Before the QEMU's undo below: removed after it stopped.
	if err := d.createDisks(b, bdom); err != nil {
		return err
	}
	// Pushed before the start: a QEMU whose start failed half-way is
	// stopped too. Only until it replays: from then on the run is an
	// ordinary backup, whose QEMU its failover core stops (HaltVM) or
	// hands to go-live.
	b.undo.push(func() {
		if ia.replaying.Load() {
			return
		}
		if !b.env.destroy(b.uuid, "the re-protection ended before its log channel came") {
			go b.env.destroyUntilGone(b.uuid, "the re-protection ended before its log channel came", nil)
		}
	})
	if b.convert {
		// The VM's log is only END (convertLive): written now, before
		// QEMU starts, so that it is in FIFO B whatever happens to this
		// daemon. QEMU reads it only when the VM first runs (cont),
		// which nothing does before the claim is won here.
		if err := b.feeder.WriteEnd(); err != nil {
			return fmt.Errorf("writing END into FIFO B: %w", err)
		}
	}
	migSock, nbdSock := incomingSockets(b.replayFIFO)
	for _, p := range []string{migSock, nbdSock} {
		_ = os.Remove(p) // a former arming's, if its daemon died
	}
	b.undo.push(func() {
		_ = os.Remove(migSock)
		_ = os.Remove(nbdSock)
	})
	b.setState(ctl.StateArmed, "starting the backup's QEMU to receive the running VM")
	if err := b.env.hv.CreatePaused(xml); err != nil {
		return fmt.Errorf("starting the backup's QEMU to receive the running VM: %w", err)
	}
	client, release, err := b.env.qmp(b.uuid)
	if err != nil {
		return fmt.Errorf("the backup's QEMU to receive the running VM: %w", err)
	}
	var exports []string
	for _, rd := range ftxml.ReplayDisks(bdom) {
		exports = append(exports, rd.Format)
	}
	dest := reprotect.Destination{QMP: client, MigrateURI: "unix:" + migSock, NBDSocket: nbdSock, Exports: exports,
		Timeout: incomingTimeout}
	if len(exports) == 0 {
		dest.NBDSocket = ""
	}
	if err := dest.Prepare(); err != nil {
		release()
		return err
	}
	target := &streamTarget{uuid: b.uuid, armedBy: b.primaryHost, epoch: b.epoch,
		sockets: map[string]string{logchan.StreamMigration: migSock, logchan.StreamNBD: nbdSock}}
	unregister := d.registerStreams(target)
	b.undo.push(unregister)
	b.setState(ctl.StateArmed, "waiting for the running VM's disks and memory")
	b.log.Infof("armed to receive the running VM (re-protection): migration %s, NBD %s, disks %v", migSock, nbdSock, exports)
	go b.finishIncoming(&dest, release, unregister, ia, target)
	return nil
}

// finishIncoming waits for the running VM's state, then for the primary's
// log channel, and starts the replay (cont). Any failure closes b, which
// stops its QEMU.
func (b *backupRun) finishIncoming(dest *reprotect.Destination, release, unregister func(), ia *incomingArming, target *streamTarget) {
	defer release()
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-b.stop:
				cancel(errors.New("the backup run ended"))
				return
			case <-ctx.Done():
				return
			case <-tick.C:
				if idle, opened := target.idleFor(); idle > incomingIdle && (opened || idle > incomingFirstStream) {
					cancel(fmt.Errorf("no re-protection stream from the primary's host for %v", idle.Round(time.Second)))
					return
				}
			}
		}
	}()
	err := dest.Finish(ctx)
	if err != nil && context.Cause(ctx) != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w: %v", err, context.Cause(ctx))
	}
	if err == nil {
		// Completed here: the QEMU's last return-path message, which
		// the source completes on, may still be in the relay.
		target.finish(streamFinishGrace)
	}
	unregister() // the streams are done either way
	if err == nil && !b.active() {
		// Closed while its streams ended: close's undo stops its QEMU.
		return
	}
	if err != nil {
		if b.active() {
			b.setState(ctl.StateUnprotected, "the running VM's state did not arrive: "+err.Error())
			b.close("the running VM's state did not arrive")
		}
		return
	}
	if ia.convert {
		b.convertLive(dest, ia)
		return
	}
	b.noteStateReceived()
	t := time.NewTimer(incomingLogWait)
	defer t.Stop()
	select {
	case <-b.stop:
		return
	case <-t.C:
		b.setState(ctl.StateUnprotected, fmt.Sprintf("the primary's log channel did not come within %v of the switchover", incomingLogWait))
		b.close("no log channel after the switchover")
		return
	case <-ia.logUp:
	}
	// The replay starts at the icount the state brought, while the log
	// counts from 0 (docs/replay.md §15): without that base the drain of
	// go-live would end at its first sample and the primary would take
	// the backup for caught up (its lag 0) for the whole run. Paused, the
	// QEMU's icount is the one replay starts from (packaging/qemu 0019,
	// replay_incoming_vm_state_change).
	base, err := replayStartIcount(dest.QMP)
	if err != nil {
		if b.active() {
			b.log.WithError(err).Error("re-protection: cannot read the backup's icount before its replay starts; not continued")
			b.setState(ctl.StateUnprotected, "the backup's icount could not be read before its replay: "+err.Error())
			b.close("the backup's icount could not be read before its replay")
		}
		return
	}
	// Not continued while the run closes: close's undo stops the QEMU
	// unless it replays.
	b.mu.Lock()
	if !b.active() {
		b.mu.Unlock()
		return
	}
	b.icountBase = base
	ia.replaying.Store(true)
	b.mu.Unlock()
	if err := dest.QMP.Execute("cont", nil, nil); err != nil {
		b.log.WithError(err).Error("re-protection: the backup's QEMU did not continue; it is lost")
		b.close("the backup's QEMU did not continue after the switchover")
		b.env.destroyUntilGone(b.uuid, "the backup's QEMU did not continue after the switchover", nil)
		return
	}
	if !b.active() {
		// Closed while it continued: close's undo left it to the core,
		// which is gone.
		b.env.destroyUntilGone(b.uuid, "the backup run ended as its replay started", nil)
		return
	}
	b.log.Infof("replaying the running VM's new log from its migrated state (icount %d)", base)
	go b.sampleIcount()
}

// replayStartIcount reads, from the monitor q of a re-protected backup's
// QEMU paused after its incoming migration (before cont), the icount its
// replay starts from: query-replay's, the migrated VM's icount (guest
// instructions; packaging/qemu 0019 sets the replay's current icount to it
// at cont, replay_incoming_vm_state_change). Errors: q's, or a QEMU not in
// play mode.
func replayStartIcount(q reprotect.Executor) (uint64, error) {
	ri, err := qmp.QueryReplayOn(q)
	if err != nil {
		return 0, fmt.Errorf("query-replay: %w", err)
	}
	if ri.Mode != "play" {
		return 0, fmt.Errorf("query-replay: replay mode %q, not play", ri.Mode)
	}
	return ri.Icount, nil
}

// noteStateReceived reports that the running VM's state arrived. The
// primary's log channel may be up already (serveLog set the state
// replicating): the migration's end reaches the primary first, and its
// first log can beat QEMU's MIGRATION completed event here. Then the state
// stays as it is; only an armed run becomes "waiting for its log channel".
func (b *backupRun) noteStateReceived() {
	if b.setStateIf(ctl.StateArmed, ctl.StateArmed, "received the running VM's state; waiting for its log channel") {
		b.log.Info("received the running VM's state (re-protection); waiting for the log channel")
		return
	}
	b.mu.Lock()
	state := b.state
	b.mu.Unlock()
	b.log.Infof("received the running VM's state (re-protection); the backup is %s already", state)
}

// cancelIncoming ends a prepare-incoming backup armed by from whose log
// channel has not come (cancel-backup); it reports whether b was one.
func (b *backupRun) cancelIncoming(from string) bool {
	b.mu.Lock()
	ia := b.incoming
	b.mu.Unlock()
	if ia == nil || !b.armedBy(from) || ia.replaying.Load() {
		// Not an arming, another host's, or its QEMU was taken over
		// (replaying, or a convert arming's go-live ordered).
		return false
	}
	if ia.convert {
		select {
		case <-ia.loaded:
			// Holding the VM's state: only convertLive ends it (no
			// order within incomingLogWait), so that a cancel never
			// races a go-live order.
			return false
		default:
		}
	}
	select {
	case <-ia.logUp:
		return false
	default:
	}
	b.close("the primary's re-protection was cancelled")
	return true
}

// convertLive is finishIncoming's end for a VM started without the ft
// element (docs/protocol.md §12): its state has loaded, paused. It waits
// for the go-live order of the host that armed it, claims the pairing's
// epoch, and, won, lets the QEMU read its log, only END (written at the
// arming, startIncoming): it leaves replay mode and runs on live with icount (packaging/qemu 0001,
// 0022); go-live makes it this host's live primary, which re-protects it
// onto the other host (autoReprotect). No order within incomingLogWait, or
// the claim lost: the QEMU stops (the VM runs on where it came from). The
// claim is the only thing that decides which copy runs: once it is won
// here, this host never stops the VM, whatever fails after.
func (b *backupRun) convertLive(dest *reprotect.Destination, ia *incomingArming) {
	close(ia.loaded)
	b.setState(ctl.StateArmed, "received the running VM's state; waiting for its host's go-live order")
	b.log.Info("received the running VM's state (protecting a VM started without the ft element); waiting for the go-live order")
	t := time.NewTimer(incomingLogWait)
	defer t.Stop()
	var order goLiveOrder
	select {
	case <-b.stop:
		return
	case <-t.C:
		b.setState(ctl.StateUnprotected, fmt.Sprintf("no go-live order came within %v of the migration", incomingLogWait))
		b.close("no go-live order after the migration")
		return
	case order = <-ia.goLive:
	}
	tOrder := time.Now()
	// Ordered: from here this QEMU holds the VM until a definite loss of
	// the claim. A close (the daemon stopping) no longer stops it, and a
	// restarted daemon claims on (the convert-ordered record): an error
	// from the arbiter is no proof that the claim failed (it may have
	// committed), and the other host destroys its copy if it loses.
	// The record first: a daemon that restarts without it would destroy
	// a copy that may have won. Not kept, nothing is claimed here (the
	// other host then wins) and this copy goes.
	if err := b.env.pairings.save(pairingRecord{UUID: b.uuid, Name: b.name, Role: convertOrderedRole, Epoch: b.epoch, Peer: b.primaryHost}); err != nil {
		order.reply <- fmt.Errorf("the backup host cannot keep its pairing record (%v): it does not claim the VM", err)
		b.setState(ctl.StateUnprotected, "did not go live: cannot keep the pairing record: "+err.Error())
		b.close("cannot keep the pairing record")
		return
	}
	b.mu.Lock()
	if !b.active() {
		b.mu.Unlock()
		order.reply <- errors.New("the backup run here has ended")
		return
	}
	ia.replaying.Store(true)
	b.mu.Unlock()
	replied := false
	reply := func(err error) {
		if !replied {
			order.reply <- err
			replied = true
		}
	}
	var won bool
	for deadline := time.Now().Add(goLiveIncomingWait); ; {
		w, err := b.env.arbiter.Acquire(b.uuid, b.epoch)
		if err == nil {
			won = w
			break
		}
		b.log.WithError(err).Warn("go-live of the migrated VM: the split-brain arbiter did not answer; the VM stays paused here; asking again")
		b.setState(ctl.StateArmed, fmt.Sprintf("the VM's state is here, paused: claiming pairing epoch %s, the split-brain arbiter cannot be reached (%v)", b.epoch, err))
		if time.Now().After(deadline) {
			// The other host claims too: the arbiter gives it to one.
			reply(fmt.Errorf("the split-brain arbiter cannot be reached from the backup host (%v); it keeps claiming pairing epoch %s, with the VM paused there", err, b.epoch))
		}
		if !b.pause(time.Second) {
			// The daemon stops: the QEMU stays, paused, for the next
			// one (restart.go resolveConvertBackup).
			reply(errRunClosed)
			return
		}
	}
	if !won {
		err := fmt.Errorf("the split-brain arbiter gave pairing epoch %s to the other host: the VM runs there", b.epoch)
		reply(err)
		b.setState(ctl.StateUnprotected, "did not go live: "+err.Error())
		b.env.pairings.remove(b.uuid)
		b.close("the go-live claim was lost")
		b.env.destroyUntilGone(b.uuid, "the go-live claim was lost: the VM runs on the other host", nil)
		for _, path := range ia.created {
			_ = os.Remove(path) // made for this copy (createDisks)
		}
		return
	}
	// Won: the VM is this host's. Its log, END, is in FIFO B since the
	// arming.
	b.mu.Lock()
	b.goingLive = true
	b.peer = b.primaryHost
	b.mu.Unlock()
	if err := dest.QMP.Execute("cont", nil, nil); err != nil {
		b.log.WithError(err).Error("go-live of the migrated VM: cont failed; retrying")
		go b.env.resumeVM(b.uuid, b.stop)
	}
	reply(nil)
	b.log.Infof("go-live of the migrated VM: claimed epoch %s and continued in %d ms", b.epoch, time.Since(tOrder).Milliseconds())
	// The VM is this host's now: go-live (gates passing frames, its
	// definition, its run) until it is done; a daemon stopping meanwhile
	// leaves it to the next one (a convert-ordered record, restart.go).
	for {
		err := b.goLive()
		if err == nil {
			break
		}
		b.log.WithError(err).Error("go-live of the migrated VM; trying again")
		b.setState(ctl.StateLive, "the migrated VM runs here, but go-live has not finished: "+err.Error())
		if !b.pause(time.Second) {
			return
		}
	}
	b.announce()
}

// goLiveIncoming answers OpGoLiveIncoming from host: the convert arming of
// req.UUID that host made for epoch req.Epoch, with its state loaded,
// takes the order; the answer is convertLive's.
func (d *Daemon) goLiveIncoming(req logchan.ControlRequest, host string) error {
	dm := d.lookup(req.UUID)
	var b *backupRun
	if dm != nil {
		b, _ = dm.current().(*backupRun)
	}
	if b == nil || !b.armedBy(host) {
		return fmt.Errorf("go-live: no backup of %s armed by %s here", req.UUID, host)
	}
	b.mu.Lock()
	ia, epoch := b.incoming, b.epoch
	b.mu.Unlock()
	switch {
	case ia == nil || !ia.convert:
		return fmt.Errorf("go-live: the backup of %s here was not armed to take over a running VM", req.UUID)
	case req.Epoch != epoch:
		return fmt.Errorf("go-live: the backup of %s here was armed for pairing epoch %q, not %q", req.UUID, epoch, req.Epoch)
	}
	// The migration's source completes once this QEMU has loaded the
	// state (return-path); finishIncoming notices it at its next poll,
	// and goes on once the streams ended (at most streamFinishGrace).
	t := time.NewTimer(goLiveIncomingWait + 5*time.Second)
	defer t.Stop()
	select {
	case <-ia.loaded:
	case <-b.stop:
		return fmt.Errorf("go-live: the backup of %s here has ended", req.UUID)
	case <-t.C:
		return fmt.Errorf("go-live: the VM's state has not loaded here")
	}
	order := goLiveOrder{reply: make(chan error, 1)}
	select {
	case ia.goLive <- order:
	case <-b.stop:
		return fmt.Errorf("go-live: the backup of %s here has ended", req.UUID)
	case <-t.C:
		return fmt.Errorf("go-live: the backup of %s here takes no order", req.UUID)
	}
	// Taken: the answer always comes (convertLive sends it before
	// anything that could block).
	return <-order.reply
}

// createDisks creates, empty, each disk of b's domain this host does not
// have, at the virtual size the primary's daemon gave (DiskSizes) and in
// the format of its driver (qcow2 or raw), for the disk copy to fill
// (qemu-img create; libvirt gives it to QEMU's user at the start). Only
// where a peer may write a disk (seedProblem: seed-dirs, no link, no other
// domain's). An arming that fails removes what it created. Errors: no
// size for a missing disk, a refused place, qemu-img's.
func (d *Daemon) createDisks(b *backupRun, dom *libvirtxml.Domain) error {
	if dom.Devices == nil {
		return nil
	}
	for _, disk := range dom.Devices.Disks {
		if disk.Source == nil || disk.Source.File == nil || disk.Source.File.File == "" || disk.Device == "cdrom" {
			continue
		}
		path := disk.Source.File.File
		if _, err := os.Lstat(path); err == nil || !errors.Is(err, fs.ErrNotExist) {
			continue // there (the copy overwrites it), or not ours to create
		}
		size := b.diskSizes[path]
		if size <= 0 {
			return fmt.Errorf("the backup host has no disk %s, and the primary gave no size to create it (an older libvirt-ftd): copy it there first", path)
		}
		// The place checks only (size 0): this arming is the disk's run.
		if why := d.seedProblem(b.uuid, b.primaryHost, path, 0); why != "" {
			return fmt.Errorf("the backup host does not create disk %s: %s", path, why)
		}
		format := "raw"
		if disk.Driver != nil && disk.Driver.Type != "" {
			format = disk.Driver.Type
		}
		if format != "raw" && format != "qcow2" {
			return fmt.Errorf("the backup host does not create disk %s: format %q (only qcow2 and raw)", path, format)
		}
		// Made here first, never through a link, and only if nothing is
		// there (O_EXCL): qemu-img then writes this file.
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
		if err != nil {
			return fmt.Errorf("creating disk %s for the running VM's copy: %w", path, err)
		}
		f.Close()
		out, err := exec.Command("qemu-img", "create", "-q", "-f", format, path, strconv.FormatInt(size, 10)).CombinedOutput()
		if err != nil {
			_ = os.Remove(path)
			return fmt.Errorf("creating disk %s (%d bytes, %s) for the running VM's copy: %v: %s", path, size, format, err, strings.TrimSpace(string(out)))
		}
		b.log.Infof("created disk %s (%d bytes, %s) for the running VM's copy", path, size, format)
		b.mu.Lock()
		if b.incoming != nil {
			b.incoming.created = append(b.incoming.created, path)
		}
		b.mu.Unlock()
		b.undo.push(func() {
			b.mu.Lock()
			keep := b.live || (b.incoming != nil && b.incoming.replaying.Load())
			b.mu.Unlock()
			if !keep {
				_ = os.Remove(path)
			}
		})
	}
	return nil
}
