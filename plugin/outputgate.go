package plugin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"libvirt.org/go/libvirtxml"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	"github.com/libvirt-ft/libvirt-ft/plugin/gate"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// stdioSlackBytes is how much log a QEMU that does not flush its log before
// a gated frame may still hold in its stdio buffer (docs/replay.md: up to 4 KiB;
// glibc gives a FIFO a buffer of st_blksize = 4096 bytes). The output gate
// adds it to each frame's position unless the QEMU flushes (see
// qemuFlushesLog).
const stdioSlackBytes = 4096

// flushMarker is in `qemu-system-x86_64 --version` of the QEMU that
// packaging/qemu builds (configure --with-pkgversion=libvirt-ft). Its
// filter-redirector flushes the record log before a frame leaves
// (0002-replay-flush-the-log-before-a-redirected-frame.patch), so the
// position FIFO A shows is exact.
const flushMarker = "(libvirt-ft"

// patchedQEMUPath is where the libvirt-ft-qemu package installs the patched
// QEMU (packaging/nfpm-qemu.yaml).
const patchedQEMUPath = "/usr/lib/libvirt-ft/qemu/bin/qemu-system-x86_64"

var (
	flushCacheMu sync.Mutex
	buildCache   = map[flushKey]string{}
	// buildBusy: a binary being hashed; closed when done, so that a
	// second caller (a start while the daemon warms the cache) waits
	// rather than reads 60 MB again.
	buildBusy = map[flushKey]*buildCall{}
)

// buildCall is one emulatorBuild computation in progress; v and err are
// set before done is closed.
type buildCall struct {
	done chan struct{}
	v    string
	err  error
}

// flushKey identifies one QEMU binary: its path and the file's identity, so
// that a binary replaced in place (a package upgrade installing a stock QEMU
// over the patched one) is asked again rather than trusted to flush.
type flushKey struct {
	path        string
	dev, ino    uint64
	size, mtime int64
}

// fileKey is the flushKey of path as fi describes it.
func fileKey(path string, fi os.FileInfo) flushKey {
	key := flushKey{path: path, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		key.dev, key.ino = uint64(st.Dev), st.Ino
	}
	return key
}

// domainEmulator is dom's <emulator> path, "" when it names none.
func domainEmulator(dom *libvirtxml.Domain) string {
	if dom == nil || dom.Devices == nil {
		return ""
	}
	return dom.Devices.Emulator
}

// emulatorBuild is Hypervisor.EmulatorBuild for this host's files: the
// first line of `path --version` and the first 16 hex digits of the
// file's SHA-256, cached per file identity (a package upgrade that
// replaces the binary is read again). The first call for a binary reads
// it whole (about 0.2 s for the patched QEMU's 60 MB here), so the daemon
// warms the cache when it starts and as it sees each domain (Daemon.Run,
// handleDefined) rather than in the first protected start's prepare
// hook.
func emulatorBuild(path string) (string, error) {
	if path == "" {
		return "", errors.New("the domain names no <emulator>")
	}
	// Keyed by the opened file's identity: a binary replaced between a
	// stat and the open would otherwise be cached under the old one's.
	// O_NONBLOCK: a named pipe opens at once (and is refused below)
	// instead of blocking until a writer comes; O_NOCTTY: a terminal
	// named there does not become the daemon's.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return "", fmt.Errorf("emulator %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("emulator %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		// A device would be read for ever (the daemon reads it when a
		// domain is defined).
		return "", fmt.Errorf("emulator %s: not a regular file", path)
	}
	key := fileKey(path, fi)
	flushCacheMu.Lock()
	if v, ok := buildCache[key]; ok {
		flushCacheMu.Unlock()
		return v, nil
	}
	if call := buildBusy[key]; call != nil {
		// Another caller reads it: its answer, error included (a
		// failure is not cached: the next call tries again).
		flushCacheMu.Unlock()
		<-call.done
		return call.v, call.err
	}
	call := &buildCall{done: make(chan struct{})}
	buildBusy[key] = call
	flushCacheMu.Unlock()
	defer func() {
		flushCacheMu.Lock()
		delete(buildBusy, key)
		flushCacheMu.Unlock()
		close(call.done)
	}()
	call.v, call.err = hashBuild(path, f)
	if call.err != nil {
		return "", call.err
	}
	flushCacheMu.Lock()
	buildCache[key] = call.v
	flushCacheMu.Unlock()
	return call.v, nil
}

// buildHashSep parts an emulator build identity's version line from its
// hash.
const buildHashSep = ", sha256 "

// hashBuild is emulatorBuild's computation for the opened binary f at path.
func hashBuild(path string, f *os.File) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("emulator %s: %w", path, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "--version")
	cmd.WaitDelay = time.Second // a child holding stdout open does not hold every waiter
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("emulator %s --version: %w", path, err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return fmt.Sprintf("%s%s%x", line, buildHashSep, h.Sum(nil)[:8]), nil
}

// qemuFlushesLog reports whether the QEMU binary at path is the patched one
// that flushes its record log before each redirected frame; false when
// that cannot be told (qemuBuildFlushes's error).
func qemuFlushesLog(path string) bool {
	v, err := qemuBuildFlushes(path)
	return err == nil && v
}

// qemuBuildFlushes is qemuFlushesLog with the reason it cannot tell
// (emulatorBuild's error: no path, not a regular file, or `path --version`
// failed, which is not cached: a failed run, say out of processes a
// moment, must not make a patched QEMU look stock for good). The answer
// is read from the build identity's version line, so the binary is run
// once for both.
func qemuBuildFlushes(path string) (bool, error) {
	build, err := emulatorBuild(path)
	if err != nil {
		return false, err
	}
	line, _, _ := strings.Cut(build, buildHashSep)
	return strings.Contains(line, flushMarker), nil
}

// outputGates are the output gates of one primary domain, one per network
// interface (ftxml.GateSocketPaths): they hold every frame the guest
// transmits until the backup has acknowledged receiving the log up to the
// point where the frame was produced (the output rule, Scales et al. 2010,
// section 2.2).
type outputGates struct {
	gates  []*gate.Gate
	exact  bool // the QEMU flushes its log before each frame: no slack
	backup bool // the backup's gates (openBackupGates)

	mu     sync.Mutex
	lns    []net.Listener
	conns  []net.Conn
	ins    map[int]net.Conn // gate j's IN connection, once QEMU connected
	outs   map[int]net.Conn // gate j's OUT connection, once QEMU connected
	paths  []string
	closed bool
	// onMismatch (the backup's gates) is told the first divergence of
	// gate j's replayed frames from the primary's (setOnMismatch).
	onMismatch func(j int, m gate.Mismatch)
	// noDigests: adopted from a daemon that kept no frame digests
	// (gateHandover.Digest nil): this side's digests cannot match the
	// peer's, so none are sent or compared.
	noDigests bool
}

// openGates listens on the gate sockets of every interface of dom (before
// QEMU starts: QEMU connects to them and fails to start if they are
// missing) and serves each gate once QEMU connected to both of its
// sockets. Frames are tagged with rr.Produced() (+ stdioSlackBytes unless
// the QEMU flushes its log). On error nothing is left behind.
func openGates(e env, uuid string, cfg ftxml.Config, dom *libvirtxml.Domain, rr interface{ Produced() (uint64, error) }) (*outputGates, error) {
	og := &outputGates{}
	if !cfg.OutputGate || dom.Devices == nil || len(dom.Devices.Interfaces) == 0 {
		return og, nil
	}
	og.exact = qemuFlushesLog(dom.Devices.Emulator)
	position := recordPosition(e, rr, og.exact)
	if err := listenGates(e, uuid, og, cfg, dom, func(int) func() uint64 { return position }); err != nil {
		return nil, err
	}
	return og, nil
}

// recordPosition tags a primary's frames: the bytes of log QEMU has
// written into FIFO A (rr.Produced), plus stdioSlackBytes unless the QEMU
// flushes its log before each frame (exact).
func recordPosition(e env, rr interface{ Produced() (uint64, error) }, exact bool) func() uint64 {
	slack := uint64(stdioSlackBytes)
	if exact {
		slack = 0
	}
	return func() uint64 {
		p, err := rr.Produced()
		if errors.Is(err, os.ErrClosed) {
			// FIFO A's reader was closed on purpose (the run ends, or
			// endLog ended the log): the gates pass frames or hold
			// them for good; no position to report.
			return math.MaxUint64
		}
		if err != nil {
			// Produced then undercounts (the pipe's unread bytes are
			// missing): hold the frame until Unprotect or Drop rather
			// than release it on an acknowledgement that may not cover it.
			e.log.WithError(err).Warn("output gate: reading the log position; holding the frame")
			return math.MaxUint64
		}
		return p + slack
	}
}

// reprotected turns og, the gates of a VM that went live here (passing
// frames, their filters off), into the gates of a primary that records
// into rr again (re-protection, protect.go): the same QEMU connections,
// served by new gates in Gated mode whose frames are numbered from 1 and
// tagged by recordPosition, as openGates's are. og is left closed without
// its connections. Errors: a gate that is not serving, or holds frames
// (nothing changed then for the gates not yet detached; the caller runs
// the VM on alone with the returned error).
func (og *outputGates) reprotected(e env, rr interface{ Produced() (uint64, error) }, exact bool) (*outputGates, error) {
	conns, hs, err := og.detach(2 * time.Second)
	if err != nil {
		return nil, err
	}
	og.handOff()
	fresh := make([]gateHandover, len(hs))
	for j := range hs {
		// Detach ended the reads (and any write) by a deadline in the
		// past: the new gates read and write the same connections.
		_ = conns[j][0].SetDeadline(time.Time{})
		_ = conns[j][1].SetDeadline(time.Time{})
		var zero uint64
		fresh[j] = gateHandover{Digest: &zero, Leftover: hs[j].Leftover}
	}
	nog := &outputGates{exact: exact}
	position := recordPosition(e, rr, exact)
	if err := adoptGates(e, nog, conns, fresh, func(int) func() uint64 { return position }); err != nil {
		return nil, err
	}
	return nog, nil
}

// handOff closes og's listeners and forgets its connections, which a new
// outputGates serves now (reprotected): a later close leaves them open.
func (og *outputGates) handOff() {
	og.mu.Lock()
	defer og.mu.Unlock()
	for _, ln := range og.lns {
		ln.Close()
	}
	og.lns, og.conns, og.paths, og.closed = nil, nil, nil, true
}

// openBackupGates listens on the gate sockets of every interface of the
// backup's domain (before its QEMU starts). The replayed guest transmits
// the primary's frames again, in the same order; each gate tags them with
// their sequence number (1 for the first) and holds them, forgets those the
// primary reports sent (forget, from its heartbeats) and, at go-live,
// sends the rest and passes frames through (unprotect). So no frame is
// lost at the switch: neither a replayed one the primary had not released
// although the backup held its log, nor one the guest transmits between
// leaving replay mode at END and go-live's switch (a lost frame costs a TCP
// connection a retransmission timeout). Without the output gate the backup
// discards its guest's frames (a null chardev, ftxml.Backup) and this
// returns empty gates.
func openBackupGates(e env, uuid string, cfg ftxml.Config, dom *libvirtxml.Domain) (*outputGates, error) {
	og := &outputGates{exact: true, backup: true}
	if !cfg.OutputGate || dom.Devices == nil || len(dom.Devices.Interfaces) == 0 {
		return og, nil
	}
	err := listenGates(e, uuid, og, cfg, dom, func(int) func() uint64 {
		var seq atomic.Uint64
		return func() uint64 { return seq.Add(1) }
	})
	if err != nil {
		return nil, err
	}
	return og, nil
}

// listenGates creates a Gated gate per interface, tagging frames with
// position(j)(), listens on its sockets and serves it in the background.
// On error everything opened so far is closed.
func listenGates(e env, uuid string, og *outputGates, cfg ftxml.Config, dom *libvirtxml.Domain, position func(j int) func() uint64) error {
	for j := range dom.Devices.Interfaces {
		g, err := gate.New(gate.Config{Enabled: true, Position: position(j), EvictOldest: og.backup,
			Verify: og.backup, OnMismatch: og.mismatch(j), Log: e.log.WithField("gate", ftxml.GateFilterID(j))})
		if err != nil {
			og.close()
			return err
		}
		outPath, inPath := ftxml.GateSocketPaths(cfg, uuid, j)
		var lns [2]net.Listener
		for k, p := range []string{outPath, inPath} {
			ln, err := gate.Listen(p, e.qemuUID, e.qemuGID)
			if err != nil {
				og.close()
				return fmt.Errorf("output gate of interface %d: %w", j, err)
			}
			lns[k] = ln
			og.mu.Lock()
			og.lns = append(og.lns, ln)
			og.paths = append(og.paths, p)
			og.mu.Unlock()
		}
		og.gates = append(og.gates, g)
		go og.serve(e.log, j, g, lns[0], lns[1])
	}
	return nil
}

// serve accepts QEMU's connection on both sockets of gate j and runs it
// until QEMU closes OUT (it exited).
func (og *outputGates) serve(log logrus.FieldLogger, j int, g *gate.Gate, lnOut, lnIn net.Listener) {
	accept := func(ln net.Listener) net.Conn {
		conn, err := ln.Accept()
		if err != nil {
			return nil
		}
		og.mu.Lock()
		defer og.mu.Unlock()
		if og.closed {
			conn.Close()
			return nil
		}
		og.conns = append(og.conns, conn)
		return conn
	}
	out := accept(lnOut)
	if out == nil {
		return
	}
	in := accept(lnIn)
	if in == nil {
		// Never leave OUT open and unread: QEMU would block the guest
		// once its socket buffer is full. Closed, QEMU drops the frames.
		out.Close()
		return
	}
	og.mu.Lock()
	if og.ins == nil {
		og.ins, og.outs = map[int]net.Conn{}, map[int]net.Conn{}
	}
	og.ins[j], og.outs[j] = in, out
	og.mu.Unlock()
	switch {
	case og.backup:
		log.Infof("output gate %s: the backup's QEMU connected; holding the replayed frames the primary has not sent yet, for go-live", ftxml.GateFilterID(j))
	case og.exact:
		log.Infof("output gate %s: QEMU connected; holding frames until the backup acknowledges their log (exact positions: QEMU flushes its log before each frame)", ftxml.GateFilterID(j))
	default:
		log.Infof("output gate %s: QEMU connected; holding frames until the backup acknowledges their log (positions + %d bytes for QEMU's stdio buffer)", ftxml.GateFilterID(j), stdioSlackBytes)
	}
	og.run(log, j, g, out, out, in)
}

// run serves gate j on QEMU's connections until QEMU closes OUT, or until
// Detach (a planned restart hands the connections to the next process:
// they stay open). r reads OUT (out, or what an earlier process read
// beyond its last whole frame, then out).
func (og *outputGates) run(log logrus.FieldLogger, j int, g *gate.Gate, r io.Reader, out, in net.Conn) {
	err := g.Serve(r, in)
	if errors.Is(err, gate.ErrDetached) {
		return
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		log.WithError(err).Warnf("output gate %s: connection to QEMU dropped; the guest's frames are discarded from now on", ftxml.GateFilterID(j))
	}
	out.Close()
	in.Close()
}

// readerWithDeadline reads prefix, then conn; SetReadDeadline reaches conn
// (gate.Detach needs it).
type readerWithDeadline struct {
	io.Reader
	conn net.Conn
}

func (r readerWithDeadline) SetReadDeadline(t time.Time) error { return r.conn.SetReadDeadline(t) }

// adoptGates serves the gates of a domain whose QEMU connections were
// handed over by a daemon stopping for a planned restart: conns[j] is
// gate j's OUT and IN, hs[j] what that daemon's gate had counted and read.
// Frames are tagged by position(j) as openGates and openBackupGates do.
func adoptGates(e env, og *outputGates, conns [][2]net.Conn, hs []gateHandover, position func(j int) func() uint64) error {
	for j := range hs {
		if hs[j].Digest == nil {
			og.noDigests = true
		}
	}
	if og.noDigests && len(hs) > 0 {
		// Said once per domain: nothing else shows that this run
		// compares no digests (status shows a count that stays 0).
		e.log.Warn("output gates adopted without a frame digest this daemon can continue (handed over by a daemon of session 48 or before, whose digest was CRC-64, or one without digests): this run sends and compares no frame digests, so a diverged replay is caught only as a stalled one, until the domain is restarted or re-protected")
	}
	for j := range conns {
		var before uint64
		if hs[j].Digest != nil {
			before = *hs[j].Digest
		}
		g, err := gate.New(gate.Config{Enabled: true, Position: position(j), EvictOldest: og.backup,
			FramesBefore: hs[j].Frames, DigestBefore: before, Verify: og.backup && !og.noDigests, OnMismatch: og.mismatch(j),
			Log: e.log.WithField("gate", ftxml.GateFilterID(j))})
		if err != nil {
			og.close()
			return err
		}
		out, in := conns[j][0], conns[j][1]
		og.mu.Lock()
		og.conns = append(og.conns, out, in)
		if og.ins == nil {
			og.ins, og.outs = map[int]net.Conn{}, map[int]net.Conn{}
		}
		og.ins[j], og.outs[j] = in, out
		og.mu.Unlock()
		if hs[j].Forgotten > 0 {
			// The backup's: frames the primary reported sent stay
			// forgotten when their replayed copies arrive.
			g.Forget(hs[j].Forgotten)
		}
		og.gates = append(og.gates, g)
		var r io.Reader = out
		if len(hs[j].Leftover) > 0 {
			r = readerWithDeadline{Reader: io.MultiReader(bytes.NewReader(hs[j].Leftover), out), conn: out}
		}
		go og.run(e.log, j, g, r, out, in)
	}
	return nil
}

// detach ends every gate's Serve at a frame boundary for a handover and
// returns, per gate, its OUT and IN connections and what the next
// process's gate needs. Every gate must have nothing held or unwritten
// (the caller quiesced the pair); otherwise an error, and the gates
// already detached stay so (the caller abandons the handover).
func (og *outputGates) detach(timeout time.Duration) ([][2]net.Conn, []gateHandover, error) {
	var conns [][2]net.Conn
	var hs []gateHandover
	for j, g := range og.gates {
		og.mu.Lock()
		out, in := og.outs[j], og.ins[j]
		og.mu.Unlock()
		if out == nil || in == nil {
			return nil, nil, fmt.Errorf("output gate %s: QEMU is not connected", ftxml.GateFilterID(j))
		}
		left, unwritten, err := g.Detach(timeout)
		if err != nil {
			return nil, nil, fmt.Errorf("output gate %s: %w", ftxml.GateFilterID(j), err)
		}
		if unwritten > 0 {
			return nil, nil, fmt.Errorf("output gate %s: %d frames held or unwritten", ftxml.GateFilterID(j), unwritten)
		}
		conns = append(conns, [2]net.Conn{out, in})
		st := g.Stats()
		digest := st.Digest
		if og.noDigests {
			hs = append(hs, gateHandover{Frames: st.ReadFrames, Forgotten: st.Forgotten, Leftover: left})
			continue
		}
		hs = append(hs, gateHandover{Frames: st.ReadFrames, Digest: &digest, Forgotten: st.Forgotten, Leftover: left})
	}
	return conns, hs, nil
}

// ack releases the frames covered by the backup's acknowledgement of pos
// (bytes of log received).
func (og *outputGates) ack(pos uint64) {
	for _, g := range og.gates {
		g.Ack(pos)
	}
}

// released gives, per gate, the frames done on this primary (frames 1..n
// all written to the network or dropped over the cap: gate.Stats.DoneFrames)
// for the heartbeat's Released (logchan.Heartbeat). nil without gates.
func (og *outputGates) released() []uint64 {
	if len(og.gates) == 0 {
		return nil
	}
	out := make([]uint64, len(og.gates))
	for j, g := range og.gates {
		st := g.Stats()
		out[j] = st.DoneFrames
	}
	return out
}

// digests gives, per gate, the running digest of the frames read (the
// primary's Digests frame after each heartbeat, logchan.FrameDigests). nil
// without gates.
func (og *outputGates) digests() []logchan.FrameDigest {
	if len(og.gates) == 0 || og.noDigests {
		return nil
	}
	out := make([]logchan.FrameDigest, len(og.gates))
	for j, g := range og.gates {
		c := g.Checkpoint()
		out[j] = logchan.FrameDigest{Frames: c.Frames, Digest: c.Digest}
	}
	return out
}

// verify, on the backup: compare the primary's frame digests with the
// replayed frames' (gate.Gate.Verify); a mismatch goes to onMismatch.
func (og *outputGates) verify(d []logchan.FrameDigest) {
	for j, g := range og.gates {
		if j < len(d) {
			g.Verify(gate.Checkpoint{Frames: d[j].Frames, Digest: d[j].Digest})
		}
	}
}

// settled: every backup gate compared the primary's every digest, equal
// (gate.Gate.Settled).
func (og *outputGates) settled() bool {
	for _, g := range og.gates {
		if !g.Settled() {
			return false
		}
	}
	return true
}

// stopVerify ends the backup's comparisons (gate.Gate.StopVerify): the
// replay reaches END, and later frames are the live guest's.
func (og *outputGates) stopVerify() {
	for _, g := range og.gates {
		g.StopVerify()
	}
}

// setOnMismatch sets what the backup's gates tell of a divergence (the
// backup run posts failover.Diverged). A mismatch found before is told at
// once.
func (og *outputGates) setOnMismatch(f func(j int, m gate.Mismatch)) {
	og.mu.Lock()
	og.onMismatch = f
	og.mu.Unlock()
	for j, g := range og.gates {
		if m := g.Stats().Mismatch; m != nil && f != nil {
			f(j, *m)
		}
	}
}

// mismatch is gate j's Config.OnMismatch.
func (og *outputGates) mismatch(j int) func(gate.Mismatch) {
	return func(m gate.Mismatch) {
		og.mu.Lock()
		f := og.onMismatch
		og.mu.Unlock()
		if f != nil {
			f(j, m)
		}
	}
}

// forget, on the backup: the primary reports its frames 1..released[j] of
// interface j sent; their replayed copies are not needed at go-live.
func (og *outputGates) forget(released []uint64) {
	for j, g := range og.gates {
		if j < len(released) {
			g.Forget(released[j])
		}
	}
}

// waitSent waits, up to timeout, until every gate has written all it
// released to QEMU's IN socket and QEMU has read it (the socket's send
// queue, SIOCOUTQ, is empty), and reports whether that happened. Go-live
// calls it before turning the filters off: with its filter off, QEMU no
// longer reads IN.
func (og *outputGates) waitSent(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		done := true
		for j, g := range og.gates {
			st := g.Stats()
			if st.HeldFrames > 0 || st.OutFrames > 0 {
				done = false
				break
			}
			og.mu.Lock()
			in := og.ins[j]
			og.mu.Unlock()
			if in != nil && unsentBytes(in) > 0 {
				done = false
				break
			}
		}
		if done {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// unsentBytes is the number of bytes written to a unix socket that its
// peer has not read yet (SIOCOUTQ, unix(7)); 0 if unknown.
func unsentBytes(conn net.Conn) int {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return 0
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	_ = raw.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
			n = v
		}
	})
	return n
}

// unprotect: the backup is lost and this primary runs alone; release
// everything held, in order, and let frames through from now on.
// It returns the number of frames so released.
func (og *outputGates) unprotect() int {
	n := 0
	for _, g := range og.gates {
		n += g.Unprotect()
	}
	return n
}

// drop: the backup went live or holds the split-brain lock; nothing held
// may leave this host.
func (og *outputGates) drop() {
	for _, g := range og.gates {
		g.Drop()
	}
}

// close stops serving: listeners and connections are closed, the socket
// files removed.
func (og *outputGates) close() {
	og.mu.Lock()
	defer og.mu.Unlock()
	if og.closed {
		return
	}
	og.closed = true
	for _, ln := range og.lns {
		ln.Close()
	}
	for _, conn := range og.conns {
		conn.Close()
	}
	for _, p := range og.paths {
		_ = os.Remove(p)
	}
}

// stats describes the gates for virt-ft status (nil without any).
func (og *outputGates) stats() []ctl.Gate {
	if og == nil || len(og.gates) == 0 {
		return nil
	}
	out := make([]ctl.Gate, 0, len(og.gates))
	for j, g := range og.gates {
		st := g.Stats()
		avg := int64(0)
		if st.HoldCount > 0 {
			avg = st.HoldTotalMicros / int64(st.HoldCount)
		}
		out = append(out, ctl.Gate{Filter: ftxml.GateFilterID(j), Mode: st.Mode.String(), Backup: og.backup,
			HeldFrames: uint64(st.HeldFrames), HeldBytes: uint64(st.HeldBytes), Released: st.Released,
			DroppedOverCap: st.DroppedOverCap, DroppedByGoLive: st.DroppedByDrop, Forgot: st.ForgotFrames,
			HoldAvgMS: float64(avg) / 1000, HoldMaxMS: float64(st.HoldMaxMicros) / 1000, Verified: st.VerifyChecked,
			HoldCount: st.HoldCount, HoldSumMS: float64(st.HoldTotalMicros) / 1000, HoldBuckets: st.HoldBuckets,
			DigestsOff: og.noDigests})
		if st.Mismatch != nil {
			out[len(out)-1].Diverged = st.Mismatch.String()
		}
	}
	return out
}
