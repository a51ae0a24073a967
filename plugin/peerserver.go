package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
)

// handshakeTimeout bounds a peer's handshake.
const handshakeTimeout = 10 * time.Second

// controlIdle bounds the wait for a control connection's next frame: a
// peer that stops mid-request is dropped.
const controlIdle = 60 * time.Second

// hashIdle replaces controlIdle after a hash or blocks answer: the
// primary's daemon asks while it reads its own copy, which may take far
// longer than this host's answer (served from the block cache).
const hashIdle = 30 * time.Minute

// maxPeerConns bounds the peer connections served at once; more are
// closed at once (each costs a goroutine and up to a frame's buffer).
const maxPeerConns = 64

// servePeers accepts connections from peer daemons.
func (d *Daemon) servePeers(l net.Listener) {
	slots := make(chan struct{}, maxPeerConns)
	for {
		nc, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		select {
		case slots <- struct{}{}:
		default:
			d.log.WithField("peer", nc.RemoteAddr().String()).Warnf("connection refused: %d peer connections already served", maxPeerConns)
			nc.Close()
			continue
		}
		tunePeerTCP(nc)
		go func() {
			defer func() { <-slots }()
			if d.tls != nil {
				tc, err := d.tls.accept(nc, handshakeTimeout)
				if err != nil {
					d.log.WithField("peer", nc.RemoteAddr().String()).WithError(err).Warn("connection refused at the TLS handshake")
					nc.Close()
					return
				}
				nc = tc
			}
			d.servePeer(nc)
		}()
	}
}

// servePeer runs the handshake and then serves the connection by its
// role: a log channel goes to the domain's armed backupRun, a control
// connection to serveControlConn.
func (d *Daemon) servePeer(nc net.Conn) {
	pc := newPeerConn(nc)
	log := d.log.WithField("peer", nc.RemoteAddr().String())
	if !d.cfg.peerAllowed(nc.RemoteAddr().String()) {
		log.Warn("connection refused: address not in allowed-peers")
		nc.Close()
		return
	}
	_ = nc.SetDeadline(time.Now().Add(handshakeTimeout))
	qemuVer, err := d.hv.QEMUVersion()
	if err != nil {
		log.WithError(err).Warn("peer connection refused")
		nc.Close()
		return
	}
	logVer, _ := logchan.LogVersionForQEMU(qemuVer)
	local := logchan.Hello{Protocol: logchan.ProtocolVersion, QEMUVersion: qemuVer, LogVersion: logVer, Role: logchan.RoleBackup,
		Features: []string{logchan.FeatureFrameDigests, logchan.FeatureDisksInStep, logchan.FeatureStatus, logchan.FeatureBlockSeed,
			logchan.FeatureReprotect, logchan.FeatureConvert}}
	hello, err := logchan.ServerHandshake(pc.c, local, func(h logchan.Hello) error {
		if h.Role != logchan.RoleControl && h.Role != logchan.RolePrimary && h.Role != logchan.RoleStream {
			return fmt.Errorf("unknown role %q", h.Role)
		}
		if !logchan.ValidUUID(h.DomainUUID) {
			return fmt.Errorf("domain_uuid %q is not a UUID in canonical form (8-4-4-4-12 lower-case hex)", h.DomainUUID)
		}
		if h.Role == logchan.RoleStream {
			host, _, _ := net.SplitHostPort(nc.RemoteAddr().String())
			return d.streamRefusal(host, h)
		}
		return nil
	})
	_ = nc.SetDeadline(time.Time{})
	if err != nil {
		log.WithError(err).Warn("peer handshake refused")
		nc.Close()
		return
	}
	switch hello.Role {
	case logchan.RolePrimary:
		var b *backupRun
		if dm := d.lookup(hello.DomainUUID); dm != nil {
			b, _ = dm.current().(*backupRun)
		}
		if b == nil {
			log.Warnf("log channel for %s, which has no armed backup here", hello.DomainUUID)
			pc.bye(logchan.Bye{Reason: "no backup armed for " + hello.DomainUUID})
			nc.Close()
			return
		}
		b.serveLog(pc, hello)
	case logchan.RoleControl:
		// A control connection may hash or seed whole disks: it gets
		// a P of its own while open (procs.go).
		d.ctlConns.Add(1)
		d.wakeProcs()
		defer func() { d.ctlConns.Add(-1); d.wakeProcs() }()
		d.serveControlConn(pc, hello.DomainUUID)
	case logchan.RoleStream:
		d.serveStream(pc, hello)
	}
}

// serveControlConn answers control requests about the domain uuid (the
// handshake's) until the peer closes or idles for controlIdle (hashIdle
// after a hash or blocks answer). A malformed
// or unknown request, or one about another domain, ends the connection.
func (d *Daemon) serveControlConn(pc *peerConn, uuid string) {
	defer pc.Close()
	var seed diskSeed
	var seeding string  // the place seed writes (dirKey), held in d.seedingPaths
	var seedPath string // the path seed writes
	endSeed := func() {
		if seeding != "" {
			d.seedingPaths.Delete(seeding)
			seeding = ""
		}
	}
	defer func() {
		if seed != nil {
			seed.abort()
		}
		endSeed()
	}()
	idle := controlIdle
	reply := func(data any, err error) error {
		pc.deadline()
		return pc.c.Reply(data, err)
	}
	for {
		_ = pc.nc.SetReadDeadline(time.Now().Add(idle))
		idle = controlIdle
		req, data, err := pc.c.RecvControl()
		if err != nil {
			if errors.Is(err, logchan.ErrBadFrame) {
				_ = reply(nil, fmt.Errorf("malformed control request: %w", err))
			}
			return
		}
		if data != nil {
			if seed == nil {
				return
			}
			if _, err := seed.Write(data); err != nil {
				_ = reply(nil, err)
				return
			}
			continue
		}
		if (req.Op == logchan.OpPrepareBackup || req.Op == logchan.OpPrepareIncoming || req.Op == logchan.OpGoLiveIncoming || req.Op == logchan.OpCancelBackup || req.Op == logchan.OpCheckBackup || req.Op == logchan.OpInStep || req.Op == logchan.OpStatus) && req.UUID != uuid {
			_ = reply(nil, fmt.Errorf("%s for domain %q on a connection for %q", req.Op, req.UUID, uuid))
			return
		}
		// readable: a hash (or an in-step answer) only about a disk this
		// host would accept a copy of, and only a regular file: never
		// /dev/zero, /etc/shadow or a link. Refused, it replies and the
		// connection ends.
		readable := func(what string) bool {
			from, _, _ := net.SplitHostPort(pc.remote())
			if why := d.seedProblem(uuid, from, req.Path, 0); why != "" {
				d.log.Warnf("peer %s: %s refused: %s", pc.remote(), req.Op, why)
				_ = reply(nil, fmt.Errorf("the backup host does not %s %s: %s", what, req.Path, why))
				return false
			}
			return true
		}
		// During a seed only its own requests: anything else would keep
		// the seed's temporary copy and its path held (hashIdle).
		if seed != nil && req.Op != logchan.OpSeedBlock && req.Op != logchan.OpSeedZero && req.Op != logchan.OpSeedEnd && req.Op != logchan.OpSeed {
			_ = reply(nil, fmt.Errorf("%s while a seed is under way on this connection: end the seed first", req.Op))
			return
		}
		switch req.Op {
		case logchan.OpHash:
			if !readable("hash") {
				return
			}
			h, err := hashFile(req.Path)
			if reply(h, err) != nil || err != nil {
				return
			}
			idle = hashIdle
		case logchan.OpBlocks:
			if !readable("hash") {
				return
			}
			if req.Blocks == nil {
				_ = reply(nil, errors.New("blocks: no block_size"))
				return
			}
			if err := (logchan.BlockList{BlockSize: req.Blocks.BlockSize}).Check(); err != nil {
				_ = reply(nil, err)
				return
			}
			l, _, err := d.env().blocks.blockList(req.Path, req.Blocks.BlockSize, max(req.Blocks.Size, 0))
			if err == nil {
				err = l.Check()
			}
			if reply(l, err) != nil || err != nil {
				return
			}
			idle = hashIdle
		case logchan.OpInStep:
			if !readable("check") {
				return
			}
			epoch, ok := d.env().inStepStore().inStep(uuid, "backup", req.Path)
			if reply(logchan.InStepReply{InStep: ok && req.Epoch != "" && epoch == req.Epoch}, nil) != nil {
				return
			}
		case logchan.OpSeed:
			size := req.Seed.Size
			if req.Blocks != nil {
				size = req.Blocks.Size
			}
			from, _, _ := net.SplitHostPort(pc.remote())
			if why := d.seedProblem(uuid, from, req.Path, max(size, 1)); why != "" {
				d.log.Warnf("peer %s: seed refused: %s", pc.remote(), why)
				_ = reply(nil, fmt.Errorf("the backup host does not accept a disk copy at %s: %s", req.Path, why))
				return
			}
			if seed != nil {
				seed.abort()
				seed = nil
			}
			endSeed()
			// One seed of a path at a time: two would each take a copy's
			// space, and the second rename would undo the first.
			key := dirKey(req.Path)
			if key == "" {
				_ = reply(nil, fmt.Errorf("the backup host cannot look at the directory of %s", req.Path))
				return
			}
			if _, busy := d.seedingPaths.LoadOrStore(key, true); busy {
				_ = reply(nil, fmt.Errorf("a seed of %s is under way on another connection: try again when it ends", req.Path))
				return
			}
			seeding, seedPath = key, req.Path
			// Assigned only when made: a nil writer in the interface
			// would not compare equal to nil.
			if req.Blocks == nil {
				w, werr := newSeedWriter(req.Path, req.Seed)
				if werr == nil {
					seed = w
				}
				err = werr
			} else {
				w, werr := newBlockSeedWriter(req.Path, *req.Blocks, d.env().blocks)
				if werr == nil {
					seed = w
				}
				err = werr
			}
			if err != nil {
				_ = reply(nil, err)
				return
			}
			if req.Blocks == nil {
				d.log.Infof("receiving a seed copy of %s (%d bytes)", req.Path, req.Seed.Size)
			} else {
				d.log.Infof("receiving a delta seed of %s (%d bytes in %d blocks)", req.Path, req.Blocks.Size, req.Blocks.Count())
				if reply(nil, nil) != nil { // ready for the blocks
					return
				}
			}
		case logchan.OpSeedBlock, logchan.OpSeedZero:
			bw, ok := seed.(*blockSeedWriter)
			if !ok {
				_ = reply(nil, fmt.Errorf("%s without a delta seed", req.Op))
				return
			}
			if err := bw.block(req.Offset, req.Op == logchan.OpSeedZero); err != nil {
				_ = reply(nil, err)
				return
			}
		case logchan.OpSeedEnd:
			if seed == nil {
				_ = reply(nil, errors.New("seed-end without seed"))
				return
			}
			// The copy is verified outside the lock; its move into place
			// is checked again under armMu: a backup armed since the
			// seed began (on any connection) must not get a disk after
			// its own checks. (Size 1: the copy's own space is taken.)
			from, _, _ := net.SplitHostPort(pc.remote())
			err := seed.commit(func(rename func() error) error {
				d.armMu.Lock()
				defer d.armMu.Unlock()
				if why := d.seedProblem(uuid, from, seedPath, 1); why != "" {
					return fmt.Errorf("the backup host does not accept the copy at %s now: %s", seedPath, why)
				}
				return rename()
			})
			if bw, ok := seed.(*blockSeedWriter); ok && err == nil {
				d.log.Infof("delta seed of %s: %d bytes received, every block verified, the copy in place (root %s)", bw.path, bw.sent, bw.want.Root()[:12])
			}
			seed = nil
			endSeed()
			if reply(nil, err) != nil {
				return
			}
		case logchan.OpStatus:
			host, _, _ := net.SplitHostPort(pc.remote())
			st, err := d.peerStatus(uuid, host)
			if err != nil {
				d.log.Infof("peer %s: status of %s refused: %v", pc.remote(), uuid, err)
			}
			if reply(st, err) != nil || err != nil {
				return
			}
		case logchan.OpPrepareBackup:
			host, _, _ := net.SplitHostPort(pc.remote())
			if reply(nil, d.prepareBackup(req, host)) != nil {
				return
			}
		case logchan.OpPrepareIncoming:
			host, _, _ := net.SplitHostPort(pc.remote())
			// Its QEMU start and NBD exports take longer than a reply's
			// usual deadline.
			if reply(nil, d.prepareIncoming(req, host)) != nil {
				return
			}
		case logchan.OpGoLiveIncoming:
			host, _, _ := net.SplitHostPort(pc.remote())
			if reply(nil, d.goLiveIncoming(req, host)) != nil {
				return
			}
		case logchan.OpCheckBackup:
			host, _, _ := net.SplitHostPort(pc.remote())
			if reply(nil, d.checkBackup(req, host)) != nil {
				return
			}
		case logchan.OpCancelBackup:
			host, _, _ := net.SplitHostPort(pc.remote())
			d.cancelBackup(req.UUID, host)
			if reply(nil, nil) != nil {
				return
			}
		default:
			_ = reply(nil, fmt.Errorf("unknown control op %q", req.Op))
			return
		}
	}
}

// peerStatus answers OpStatus for uuid to the peer daemon at host (an IP
// address): this host's run of the domain, if it is paired with host (a
// backup armed by host; a primary whose backup address names host, or a
// name that resolves to it within a second). Errors: the same one for no
// run and for a run paired with another host (the asker learns nothing
// about domains that are not its pairing's).
func (d *Daemon) peerStatus(uuid, host string) (logchan.PeerStatus, error) {
	var r run
	if dm := d.lookup(uuid); dm != nil {
		r = dm.current()
	}
	paired := false
	var s ctl.DomainStatus
	if r != nil {
		s = r.status()
		if b, ok := r.(*backupRun); ok {
			paired = b.armedBy(host)
		} else {
			paired = pairedWith(s.Peer, host)
		}
	}
	if !paired {
		return logchan.PeerStatus{}, fmt.Errorf("its libvirt-ftd runs no protection of domain %s paired with %s", uuid, host)
	}
	return logchan.PeerStatus{Role: string(s.Role), State: string(s.State), Failover: s.Failover, Detail: s.Detail,
		HeartbeatAgeMS: s.HeartbeatAgeMS, LagMS: s.LagMS, LagBytes: s.LagBytes, BackupIcount: s.BackupIcount}, nil
}

// pairedWith reports whether peer (a run's peer address, host:port or
// host) names the IP address ip: the same address, or a name that
// resolves to it within a second.
func pairedWith(peer, ip string) bool {
	h := peer
	if host, _, err := net.SplitHostPort(peer); err == nil {
		h = host
	}
	if h == "" || ip == "" {
		return false
	}
	want := net.ParseIP(ip)
	if a := net.ParseIP(h); a != nil {
		return want != nil && a.Equal(want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, h)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if ip := net.ParseIP(a); ip != nil && want != nil && ip.Equal(want) {
			return true
		}
	}
	return false
}
