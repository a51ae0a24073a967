package plugin

// Re-protection streams (docs/protocol.md §11, issue 13): a running VM
// gets a new backup by a live migration and a disk mirror over NBD
// (plugin/reprotect). QEMU's streams never cross the network themselves:
// the primary host's daemon takes QEMU's connections on unix sockets
// (reprotect.Listener) and carries each over its own connection to the
// backup host's daemon, mutual TLS like every peer connection, with the
// handshake role logchan.RoleStream; the backup host's daemon pipes it to
// the unix socket of the new backup's QEMU. Only the host that armed that
// backup may open them, only for that domain and its pairing epoch, one
// migration stream and at most maxNBDStreams NBD streams per arming.

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/reprotect"
)

// maxNBDStreams bounds the NBD connections of one re-protection (one per
// disk mirror; QEMU's NBD client reconnects only after a failure).
const maxNBDStreams = 16

// streamTarget is where one armed incoming backup takes its streams.
type streamTarget struct {
	uuid string
	// armedBy is the IP address of the primary host that armed it.
	armedBy string
	// epoch is the pairing epoch it was armed for.
	epoch string
	// sockets maps a stream kind (logchan.StreamMigration,
	// logchan.StreamNBD) to the unix socket of the new backup's QEMU.
	sockets map[string]string
	// dial connects to a socket (net.Dial "unix" when nil; tests).
	dial func(path string) (net.Conn, error)

	mu        sync.Mutex
	migration bool // the migration stream was opened
	nbd       int  // NBD streams opened
	closed    bool
	open      map[net.Conn]struct{}
	// lastActive: when the last stream ended (or the target was
	// registered): idleFor.
	lastActive time.Time
	// drained is closed when the last open stream ends after finish began
	// waiting for it (nil otherwise).
	drained chan struct{}
	// completed: finish began (the new backup's QEMU has the VM).
	completed bool
}

// streamFinishGrace bounds how long finish waits for the open streams to
// end by themselves after the new backup's QEMU loaded the VM (10 s).
const streamFinishGrace = 10 * time.Second

// finish ends t once its open streams have ended by themselves, or after
// grace, and takes no new ones meanwhile. Used after the new backup's QEMU
// reported its incoming migration completed: the QEMU writes its last
// return-path message (MIG_RP_MSG_SHUT) in the bottom half that sets the
// state completed (migration/migration.c process_incoming_migration_bh,
// migration_incoming_state_destroy), so before QMP can report it; but
// those bytes may still be unread in the socket or on their way through
// the relay, and ending the streams at once dropped them; the source QEMU
// then failed its migration after its switchover (CI, session 39: "8 out"
// instead of 16, the VM ran on unprotected).
func (t *streamTarget) finish(grace time.Duration) {
	t.mu.Lock()
	t.closed, t.completed = true, true
	if len(t.open) == 0 {
		t.mu.Unlock()
		return
	}
	if t.drained == nil {
		t.drained = make(chan struct{})
	}
	drained := t.drained
	t.mu.Unlock()
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-drained:
	case <-timer.C:
	}
	t.end()
}

// idleFor is how long no stream of t has been open (0 while one is), and
// whether any was opened yet.
func (t *streamTarget) idleFor() (idle time.Duration, opened bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	opened = t.migration || t.nbd > 0
	if len(t.open) > 0 {
		return 0, opened
	}
	return time.Since(t.lastActive), opened
}

// registerStreams makes t's streams available until the returned func is
// called, which also ends the streams still open. An earlier target of the
// same domain is replaced (and its streams ended).
func (d *Daemon) registerStreams(t *streamTarget) (unregister func()) {
	t.open = map[net.Conn]struct{}{}
	t.lastActive = time.Now()
	if prev, ok := d.streams.Swap(t.uuid, t); ok {
		prev.(*streamTarget).end()
	}
	return func() {
		d.streams.CompareAndDelete(t.uuid, t)
		t.end()
	}
}

func (t *streamTarget) end() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	for c := range t.open {
		c.Close()
	}
}

// streamRefusal says why a RoleStream handshake from host (an IP
// address) is refused, or nil; the handshake's accept check.
func (d *Daemon) streamRefusal(host string, hello logchan.Hello) error {
	_, err := d.admitStream(host, hello, false)
	return err
}

// admitStream checks a stream from host against the target armed for its
// domain; take also counts it (under the target's lock, so two streams
// cannot both take the one migration slot).
func (d *Daemon) admitStream(host string, hello logchan.Hello, take bool) (*streamTarget, error) {
	v, ok := d.streams.Load(hello.DomainUUID)
	if !ok {
		return nil, fmt.Errorf("no backup of %s waits for a running VM here", hello.DomainUUID)
	}
	t := v.(*streamTarget)
	switch {
	case t.armedBy != host:
		return nil, fmt.Errorf("the backup of %s was armed by another host", t.uuid)
	case hello.Epoch != t.epoch:
		return nil, fmt.Errorf("the backup of %s was armed for pairing epoch %q, not %q", t.uuid, t.epoch, hello.Epoch)
	case t.sockets[hello.Stream] == "":
		return nil, fmt.Errorf("no %q stream for the backup of %s (want %s or %s)", hello.Stream, t.uuid, logchan.StreamMigration, logchan.StreamNBD)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.closed:
		return nil, fmt.Errorf("no backup of %s waits for a running VM here", t.uuid)
	case hello.Stream == logchan.StreamMigration && t.migration:
		return nil, fmt.Errorf("the migration stream of %s is open already", t.uuid)
	case hello.Stream == logchan.StreamNBD && t.nbd >= maxNBDStreams:
		return nil, fmt.Errorf("%d NBD streams of %s are open already", t.nbd, t.uuid)
	}
	if take {
		if hello.Stream == logchan.StreamMigration {
			t.migration = true
		} else {
			t.nbd++
		}
	}
	return t, nil
}

// serveStream pipes an accepted stream connection (handshake done, its
// streamRefusal nil) to the new backup's QEMU until either side ends.
func (d *Daemon) serveStream(pc *peerConn, hello logchan.Hello) {
	log := d.log.WithField("peer", pc.remote()).WithField("domain", hello.DomainUUID)
	host, _, _ := net.SplitHostPort(pc.remote())
	// Checked again, taking the stream's slot: the handshake's check
	// and this one are not atomic.
	t, err := d.admitStream(host, hello, true)
	if err != nil {
		log.WithError(err).Warn("re-protection stream refused")
		pc.Close()
		return
	}
	dial := t.dial
	if dial == nil {
		dial = func(path string) (net.Conn, error) { return net.DialTimeout("unix", path, 5*time.Second) }
	}
	q, err := dial(t.sockets[hello.Stream])
	if err != nil {
		// The slot goes back: the peer may try again (QEMU may not
		// listen yet).
		t.mu.Lock()
		if hello.Stream == logchan.StreamMigration {
			t.migration = false
		} else {
			t.nbd--
		}
		t.mu.Unlock()
		log.WithError(err).Warnf("re-protection %s stream: the new backup's QEMU", hello.Stream)
		pc.Close()
		return
	}
	peer := pc.c.Detach()
	setUserTimeout(peer, streamUserTimeout)
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		q.Close()
		peer.Close()
		return
	}
	t.open[q], t.open[peer] = struct{}{}, struct{}{}
	t.mu.Unlock()
	in, out, err := reprotect.Pipe(peer, q)
	t.mu.Lock()
	delete(t.open, q)
	delete(t.open, peer)
	t.lastActive = time.Now()
	if len(t.open) == 0 && t.drained != nil {
		close(t.drained)
		t.drained = nil
	}
	completed := t.completed
	t.mu.Unlock()
	var oe *net.OpError
	if completed && hello.Stream == logchan.StreamNBD && errors.As(err, &oe) && oe.Net == "unix" &&
		(errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)) {
		// The source's NBD client says goodbye (NBD_CMD_DISC, at its
		// blockdev-del) to the server the new backup's QEMU stopped
		// once it had the VM: the end of every re-protection, not a
		// fault. (Not the migration stream: there an error can drop
		// the QEMU's last return-path message.)
		log.Infof("re-protection %s stream ended after the migration completed (%d bytes in, %d out; the new backup's QEMU had closed its end)", hello.Stream, in, out)
		return
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		log.WithError(err).Warnf("re-protection %s stream ended (%d bytes in, %d out)", hello.Stream, in, out)
		return
	}
	log.Infof("re-protection %s stream ended (%d bytes in, %d out)", hello.Stream, in, out)
}

// dialStream opens a re-protection stream of kind for the pairing epoch of
// uuid to the peer daemon at addr: a raw connection once the handshake is
// done (logchan.Conn.Detach).
func dialStream(e env, addr, uuid, qemuVer string, logVer uint32, epoch, kind string) (net.Conn, error) {
	pc, err := dialHello(e, addr, logchan.Hello{Protocol: logchan.ProtocolVersion, DomainUUID: uuid,
		QEMUVersion: qemuVer, LogVersion: logVer, Role: logchan.RoleStream, Epoch: epoch, Stream: kind})
	if err != nil {
		return nil, err
	}
	c := pc.c.Detach()
	setUserTimeout(c, streamUserTimeout)
	return c, nil
}
