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
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	"github.com/libvirt-ft/libvirt-ft/plugin/reprotect"
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
	// then on its failover core owns it.
	replaying atomic.Bool
}

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
	ia := &incomingArming{logUp: make(chan struct{})}
	b.mu.Lock()
	b.qemuStarted, b.incoming = true, ia // feedLoop must not start another QEMU
	b.mu.Unlock()
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
	unregister() // the streams are done either way
	if err != nil {
		if b.active() {
			b.setState(ctl.StateUnprotected, "the running VM's state did not arrive: "+err.Error())
			b.close("the running VM's state did not arrive")
		}
		return
	}
	b.setState(ctl.StateArmed, "received the running VM's state; waiting for its log channel")
	b.log.Info("received the running VM's state (re-protection); waiting for the log channel")
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
	// Not continued while the run closes: close's undo stops the QEMU
	// unless it replays.
	b.mu.Lock()
	if !b.active() {
		b.mu.Unlock()
		return
	}
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
	b.log.Info("replaying the running VM's new log from its migrated state")
	go b.sampleIcount()
}

// cancelIncoming ends a prepare-incoming backup armed by from whose log
// channel has not come (cancel-backup); it reports whether b was one.
func (b *backupRun) cancelIncoming(from string) bool {
	b.mu.Lock()
	ia := b.incoming
	b.mu.Unlock()
	if ia == nil || !b.armedBy(from) {
		return false
	}
	select {
	case <-ia.logUp:
		return false
	default:
	}
	b.close("the primary's re-protection was cancelled")
	return true
}
