package plugin

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/sirupsen/logrus"
	"libvirt.org/go/libvirtxml"

	"github.com/libvirt-ft/libvirt-ft/failover"
	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	"github.com/libvirt-ft/libvirt-ft/qmp"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// Daemon is one libvirt-ftd: one per host. It owns the registry of
// protected domains, the control socket (hook, virt-ft), the peer listener
// and the libvirt connection, and creates the runs (primaryRun, backupRun)
// that do the work; runs reach the host through env only.
type Daemon struct {
	// metrics is set by Run when Config.MetricsAddress is (before any
	// run exists); nil otherwise.
	metrics *metrics
	// inStep pairs runs that ended in step with libvirt's shutdown
	// events and records their disks (instep.go); nil in tests that do
	// not set it.
	inStep *inStepMatcher
	// blocks caches disk copies' block lists (blockseed.go; zero in
	// tests: nothing cached).
	blocks blockCache
	// armMu serializes arming a backup (prepareBackup's checks and arming)
	// with moving a seed's copy into place: a copy never replaces a disk
	// after the checks of a backup that will use it.
	armMu sync.Mutex
	// seedingPaths holds the places (dirKey: any spelling of a path) a
	// control connection is receiving a seed of: one seed per file at a
	// time.
	seedingPaths sync.Map
	// streams holds the re-protection stream targets of backups armed
	// to receive a running VM, by domain UUID (*streamTarget; streams.go).
	streams sync.Map
	cfg     Config
	// checking is held while virt-ft check runs (one at a time).
	checking sync.Mutex
	// peerViews holds a slot per peer view being fetched (virt-ft
	// status): at most peerViewFetches at once.
	peerViews chan struct{}
	log       *logrus.Logger
	lv        *libvirtConn // nil when a Hypervisor was given (tests)
	hv        Hypervisor
	arb       Arbiter

	qemuUID, qemuGID int
	pipes            logPipes
	dial             func(addr string, timeout time.Duration) (net.Conn, error)
	// pollQMP: env.pollQMP (set by New; it finds the local libvirt
	// socket at each connection).
	pollQMP func(uuid string) (qmp.Monitor, error)
	tls     *peerTLS // nil with plain-tcp

	// pairings keeps each running protected domain's pairing epoch for
	// a restarted daemon (restart.go).
	pairings pairingStore
	// handovers and inherited: the run state and the descriptors a daemon
	// stopping for a planned restart handed to this one (handover.go),
	// until adoptHandovers takes them.
	handovers handoverStore
	inherited map[string]*os.File
	adoptOnce sync.Once
	// adoptMu is held while adoptHandovers runs; handOverAll begins the
	// stop and then takes it, so a daemon stopping again for a planned
	// restart waits for an adoption under way and adopts none afterwards
	// (the records and descriptors stay for the next daemon).
	adoptMu sync.Mutex
	// stopping is closed when the daemon begins to stop (beginStop): an
	// adoption under way gives up at its next retry or check (fail
	// closed: the crash path), and nothing is resolved any more.
	stopping     chan struct{}
	stoppingOnce sync.Once
	// quit is closed when the daemon stops.
	quit     chan struct{}
	quitOnce sync.Once

	// procs sets GOMAXPROCS (procs.go): nil in tests and when GOMAXPROCS
	// is set in the environment. procsWake asks it to count again now;
	// ctlConns counts the peers' open control connections.
	procs     *procsTuner
	procsWake chan struct{}
	ctlConns  atomic.Int64

	mu        sync.Mutex
	doms      map[string]*domain // by domain UUID
	resolving map[string]bool    // UUIDs resolve is deciding (restart.go)
}

// run is one role of a domain on this host (primaryRun, backupRun).
type run interface {
	role() ctl.Role
	status() ctl.DomainStatus
	// active: the run still holds something on this host (a QEMU, a
	// channel, an armed FIFO).
	active() bool
	// heartbeatTimeout: the run's <ft:heartbeat timeout-ms> (0: unknown).
	heartbeatTimeout() time.Duration
	// started: the started hook for its QEMU.
	started()
	// qemuStopped: the stopped/release hook or libvirt's STOPPED event.
	qemuStopped(why string)
	close(why string)
	done() <-chan struct{}
	driver() *failover.Driver
}

// domain is the daemon's record of one protected domain on this host.
type domain struct {
	uuid string
	// changed is told (without blocking) when the run is set, so that
	// GOMAXPROCS follows at once (procs.go); nil: nobody listens.
	changed chan<- struct{}

	mu     sync.Mutex
	name   string
	state  ctl.State // defined or refused, shown while no run is
	detail string
	run    run
}

func (dm *domain) current() run {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	return dm.run
}

// setRun makes r the domain's run.
func (dm *domain) setRun(r run) {
	dm.mu.Lock()
	dm.run = r
	dm.mu.Unlock()
	notify(dm.changed)
}

// claimIdle makes r the domain's run if it has no active one, and reports
// whether it did.
func (dm *domain) claimIdle(r run) bool {
	dm.mu.Lock()
	if dm.run != nil && dm.run.active() {
		dm.mu.Unlock()
		return false
	}
	dm.run = r
	dm.mu.Unlock()
	notify(dm.changed)
	return true
}

// note sets the state shown while no run is active (defined, refused); an
// active run keeps its own.
func (dm *domain) note(state ctl.State, detail string) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	if dm.run != nil && dm.run.active() {
		return
	}
	dm.run = nil
	dm.state, dm.detail = state, detail
}

func (dm *domain) status() ctl.DomainStatus {
	dm.mu.Lock()
	r, name, state, detail := dm.run, dm.name, dm.state, dm.detail
	dm.mu.Unlock()
	if r != nil {
		return r.status()
	}
	return ctl.DomainStatus{Name: name, UUID: dm.uuid, Role: ctl.RolePrimary, State: state, Detail: detail, HeartbeatAgeMS: -1}
}

// New returns a daemon for cfg on the local libvirtd (cfg.LibvirtURI). It
// does not touch the system until Run. Errors: an arbiter that cannot be
// set up (arbiter-etcd).
func New(cfg Config, log *logrus.Logger) (*Daemon, error) {
	arb, err := newArbiter(cfg, log)
	if err != nil {
		return nil, err
	}
	d := newDaemon(cfg, log, nil, arb)
	d.procs = newProcsTuner()
	d.pairings = pairingStore{dir: filepath.Join(cfg.runDir(), "pairings")}
	d.handovers = handoverStore{dir: filepath.Join(cfg.runDir(), "handover")}
	d.inStep = newInStepMatcher(inStepStore{dir: DefaultInStepDir}, log.WithField("part", "in-step"))
	d.blocks = blockCache{dir: DefaultBlockCacheDir}
	d.lv = newLibvirtConn(cfg.LibvirtURI, log.WithField("part", "libvirt"), d.onLifecycle, d.rescan)
	d.hv = libvirtHV{lv: d.lv}
	// The socket is looked for at each connection: libvirtd may start
	// after the daemon.
	d.pollQMP = func(uuid string) (qmp.Monitor, error) {
		sock, uri, ok := qmp.LocalSocket(cfg.LibvirtURI)
		if !ok {
			return nil, fmt.Errorf("libvirt-uri %q: %w", cfg.LibvirtURI, qmp.ErrNoLocalSocket)
		}
		return qmp.DialRPCMonitor(sock, uri, uuid, rpcOpenTimeout, rpcRunTimeout)
	}
	if cfg.PlainTCP {
		log.Warn("plain-tcp: true: the peer port has no TLS; anyone who reaches it can arm backups, seed disks and feed logs here")
	} else {
		t, err := loadPeerTLS(cfg.TLS)
		if err != nil {
			return nil, err
		}
		d.tls, d.dial = t, t.dial
	}
	return d, nil
}

// rpcOpenTimeout bounds the opening of a QMP monitor over libvirt's
// remote protocol (qmp.RPCMonitor): the project's rule for a libvirt call
// that does not answer (5 s). rpcRunTimeout bounds each of its commands:
// beyond the slowest replay the failover core waits out (four stall
// bounds, at most 15 s more than one), since libvirtd keeps waiting for a
// busy monitor after the connection closes.
const (
	rpcOpenTimeout = 5 * time.Second
	rpcRunTimeout  = time.Minute
)

// newArbiter sets up the arbiter cfg names (Config.Arbiter); nil when none
// is configured (protection is then refused).
func newArbiter(cfg Config, log *logrus.Logger) (Arbiter, error) {
	me := hostIdentity(cfg.Listen, cfg.runDir())
	timeout := time.Duration(cfg.ArbiterTimeoutMS) * time.Millisecond
	switch cfg.Arbiter {
	case ArbiterEtcd:
		a, err := newEtcdArbiter(cfg.ArbiterEtcd, me, timeout, log.WithField("part", "arbiter"))
		if err != nil {
			return nil, err
		}
		return newBoundedArbiter(a, timeout+time.Second), nil
	case ArbiterDir:
		return newBoundedArbiter(dirArbiter{dir: cfg.ArbiterDir, me: me}, timeout), nil
	case ArbiterNone:
		log.Warn(arbiterWarning)
		return dirArbiter{}, nil // every claim wins
	}
	log.Warn(cfg.arbiterMissing())
	return nil, nil
}

// newDaemon returns a daemon on hv and arb (tests give fakes).
func newDaemon(cfg Config, log *logrus.Logger, hv Hypervisor, arb Arbiter) *Daemon {
	return &Daemon{cfg: cfg, log: log, hv: hv, arb: arb, doms: map[string]*domain{}, qemuUID: -1, qemuGID: -1,
		pipes: fifoPipes{log: log, replayPipe: cfg.replayPipeBytes()}, dial: tcpDial, quit: make(chan struct{}), stopping: make(chan struct{}), resolving: map[string]bool{},
		peerViews: make(chan struct{}, peerViewFetches), procsWake: make(chan struct{}, 1)}
}

// peerViewFetches bounds the peer views fetched at once (addPeerViews).
const peerViewFetches = 4

// env is what the daemon hands its runs.
func (d *Daemon) env() env {
	return env{hv: d.hv, arbiter: d.arb, cfg: d.cfg, qemuUID: d.qemuUID, qemuGID: d.qemuGID, log: d.log,
		pipes: d.pipes, dial: d.dial, pairings: d.pairings, metrics: d.metrics, inStep: d.inStep, blocks: d.blocks, pollQMP: d.pollQMP}
}

// Run serves until ctx is cancelled: the libvirt connection, the control
// socket and the peer listener.
func (d *Daemon) Run(ctx context.Context) error {
	// Before anything else may open a descriptor: fds 3.. are the ones
	// a stopping daemon handed over (LISTEN_FDS).
	d.inherited = inheritedFiles()
	uid, gid, err := d.cfg.qemuOwner()
	if err != nil {
		return err
	}
	d.qemuUID, d.qemuGID = uid, gid

	if err := os.MkdirAll(filepath.Dir(d.cfg.ControlSocket), 0o755); err != nil {
		return fmt.Errorf("plugin: control socket dir: %w", err)
	}
	_ = os.Remove(d.cfg.ControlSocket)
	cl, err := net.Listen("unix", d.cfg.ControlSocket)
	if err != nil {
		return fmt.Errorf("plugin: control socket %s: %w", d.cfg.ControlSocket, err)
	}
	d.socketAccess()
	pl, err := net.Listen("tcp", d.cfg.Listen)
	if err != nil {
		cl.Close()
		return fmt.Errorf("plugin: listen %s: %w; set listen in %s", d.cfg.Listen, err, DefaultConfigPath)
	}
	d.log.Infof("libvirt-ftd listening on %s (peers) and %s (control)", pl.Addr(), d.cfg.ControlSocket)
	if len(d.inherited) > 0 {
		d.log.Infof("planned restart: %d descriptors handed over by the previous libvirt-ftd", len(d.inherited))
	}
	if d.cfg.MetricsAddress != "" {
		m := newMetrics(func() []ctl.DomainStatus { return d.status("") })
		if err := m.serve(ctx, d.cfg.MetricsAddress, d.log); err != nil {
			d.log.WithError(err).Errorf("metrics: cannot listen on %s (metrics-address in %s); running without metrics", d.cfg.MetricsAddress, DefaultConfigPath)
		} else {
			d.metrics = m
			d.log.Infof("metrics: serving Prometheus metrics on http://%s/metrics", d.cfg.MetricsAddress)
		}
	}
	_ = sdNotify("READY=1")

	// A backup host's first arming asks for the build of one of
	// allowed-emulators (peerpolicy refuses any other): hash them now,
	// one after the other, rather than on the primary's critical path (a
	// 60 MB QEMU took about 0.1 s of each first arming). The primary
	// host's domains are warmed as they are seen. A missing file is
	// skipped (it is read again when asked).
	go func() {
		// The packaged QEMU first: the one protected VMs run.
		for _, e := range append([]string{patchedQEMUPath}, d.cfg.AllowedEmulators...) {
			_, _ = d.hv.EmulatorBuild(e) // a second call is the cache's
		}
	}()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(4)
	go func() { defer wg.Done(); d.tuneProcs(stop) }()
	go func() { defer wg.Done(); d.lv.run(stop) }()
	go func() { defer wg.Done(); d.serveControl(cl) }()
	go func() { defer wg.Done(); d.servePeers(pl) }()
	<-ctx.Done()
	d.beginStop()
	// No new hook, switchover or peer connection from here on.
	cl.Close()
	pl.Close()
	// A planned restart (systemd keeps descriptors): replicating domains
	// go on under the next daemon (handover.go).
	if handed := d.handOverAll(); len(handed) > 0 {
		d.log.Infof("planned restart: %d domains handed over", len(handed))
	}
	close(stop)
	d.shutdown()
	wg.Wait()
	_ = os.Remove(d.cfg.ControlSocket)
	return nil
}

func (d *Daemon) shutdown() {
	d.quitOnce.Do(func() { close(d.quit) })
	// Every run closes at once: each close may wait for its failover
	// core (driverStopWait) and its peer, so one after the other the
	// daemon's stop would grow with the number of protected domains and
	// could outlast systemd's stop timeout (review, session 19).
	var wg sync.WaitGroup
	for _, dm := range d.domains() {
		if r := dm.current(); r != nil {
			wg.Go(func() { r.close("daemon stopping") })
		}
	}
	wg.Wait()
}

func (d *Daemon) domains() []*domain {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]*domain, 0, len(d.doms))
	for _, dm := range d.doms {
		out = append(out, dm)
	}
	return out
}

// entry returns the record of uuid, creating it.
func (d *Daemon) entry(uuid, name string) *domain {
	d.mu.Lock()
	defer d.mu.Unlock()
	dm := d.doms[uuid]
	if dm == nil {
		dm = &domain{uuid: uuid, name: name, state: ctl.StateDefined, changed: d.procsWake}
		d.doms[uuid] = dm
	}
	dm.mu.Lock()
	if name != "" {
		dm.name = name
	}
	dm.mu.Unlock()
	return dm
}

func (d *Daemon) lookup(uuid string) *domain {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.doms[uuid]
}

// forgetRun drops uuid's record if r is still its run.
func (d *Daemon) forgetRun(uuid string, r run) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if dm := d.doms[uuid]; dm != nil && dm.current() == r {
		delete(d.doms, uuid)
	}
}

// forgetIdle drops uuid's record unless a run is active.
func (d *Daemon) forgetIdle(uuid string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if dm := d.doms[uuid]; dm != nil {
		if r := dm.current(); r == nil || !r.active() {
			delete(d.doms, uuid)
		}
	}
}

// rescan looks at every domain after (re)connecting to libvirtd.
func (d *Daemon) rescan() {
	names, err := d.hv.DomainNames()
	if err != nil {
		d.log.WithError(err).Warn("listing domains")
		return
	}
	for _, name := range names {
		d.handleDefined(name)
	}
	d.resolveOrphans()
}

func (d *Daemon) onLifecycle(ev LifecycleEvent) {
	switch ev.Kind {
	case EventDefined:
		go d.handleDefined(ev.Name)
	case EventUndefined:
		if dm := d.lookup(ev.UUID); dm != nil {
			if r := dm.current(); r == nil || r.role() == ctl.RolePrimary {
				d.forgetIdle(ev.UUID)
			}
		}
	case EventGuestShutdown:
		// Evidence that a run ended in step (instep.go): the guest shut
		// down by itself, not a kill.
		d.inStep.guestShutdown(ev.UUID)
	case EventStopped:
		// The QEMU is gone: after the guest's own shutdown its disks are
		// final and a run that ended in step is recorded; any other end
		// (destroyed, crashed, a host signal) drops what waits.
		d.inStep.stopped(ev.UUID, ev.Shutdown)
		dm := d.lookup(ev.UUID)
		if dm == nil {
			return
		}
		go func() {
			// Events arrive late: during go-live a new QEMU of the same
			// domain may already run.
			if active, err := d.hv.IsActive(ev.UUID); err == nil && active {
				return
			}
			if r := dm.current(); r != nil {
				r.qemuStopped("libvirt reported the domain stopped")
			}
		}()
	}
}

// handleDefined validates a (re)defined domain carrying the ft element and,
// when valid, rewrites its persistent definition into the primary's
// record/replay XML. An invalid domain is left exactly as the user wrote it
// and marked refused: its start will be refused by the hook.
func (d *Daemon) handleDefined(name string) {
	log := d.log.WithField("domain", name)
	def, ok, err := d.hv.Definition(name)
	if err != nil {
		log.WithError(err).Warn("reading definition")
		return
	}
	if !ok {
		return
	}
	cfg, present, perr := ftxml.ParseConfig(def.XML)
	if !present && perr == nil {
		d.forgetIdle(def.UUID)
		// The ft element removed: the record/replay wiring generated for
		// it goes too, or the domain would not start as a plain VM (a
		// running protected copy runs on as it started; the next start is
		// plain).
		plain, changed, err := ftxml.Unprotected(def.XML)
		if err != nil {
			log.WithError(err).Warn("checking an unprotected definition for generated record/replay wiring")
			return
		}
		if changed {
			if err := d.hv.Define(plain); err != nil {
				log.WithError(err).Error("removing the generated record/replay wiring from a definition without the ft element; remove by hand (virsh edit) its -icount rr=, the ft-rr blkreplay blockdevs and their qemu:override drive properties, the ft-gout/ft-gin chardevs, the ft-gate filter-redirectors, the ft-fr filter-replay objects and the ua-ft- aliases")
				return
			}
			log.Info("the ft element is gone: removed the generated record/replay wiring from the definition (it starts as a plain VM)")
		}
		return
	}
	if perr == nil && cfg.Role == ftxml.RoleBackup {
		return
	}
	dm := d.entry(def.UUID, name)
	refuse := func(err error) {
		dm.note(ctl.StateRefused, err.Error())
		log.Error(err)
	}
	if perr != nil {
		refuse(perr)
		return
	}
	if err := d.cfg.arbiterMissing(); err != nil {
		refuse(err)
		return
	}
	var ld libvirtxml.Domain
	if err := ld.Unmarshal(def.XML); err != nil {
		refuse(err)
		return
	}
	warnings, verr := ftxml.Validate(&ld)
	if verr != nil {
		refuse(verr)
		return
	}
	if ld.Devices != nil && !qemuFlushesLog(ld.Devices.Emulator) {
		warnings = append(warnings, stockEmulatorWarning(ld.Devices.Emulator))
	}
	if emulator := domainEmulator(&ld); emulator != "" {
		// Its first start's prepare hook asks for it (emulatorBuild).
		go func() { _, _ = d.hv.EmulatorBuild(emulator) }()
	}
	for _, w := range warnings {
		log.Warn(w)
	}
	newXML, changed, err := ftxml.NeedsRewrite(def.XML)
	if err != nil {
		refuse(err)
		return
	}
	if changed {
		if err := d.hv.Define(newXML); err != nil {
			refuse(fmt.Errorf("libvirt-ft: domain %q: rewriting the definition for record/replay: %w", name, err))
			return
		}
		log.Info("rewrote the definition for record/replay (primary)")
	}
	detail := ""
	if len(warnings) > 0 {
		detail = fmt.Sprintf("%d warning(s): %s", len(warnings), warnings[0])
	}
	if active, err := d.hv.IsActive(def.UUID); err == nil && active {
		// Running (a VM resolved after a restart, or one that went live
		// here): its state stays what its run or resolve said.
		return
	}
	dm.note(ctl.StateDefined, detail)
}

// serveControl answers the hook and virt-ft.
func (d *Daemon) serveControl(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		go func(c net.Conn) {
			defer c.Close()
			uid := peerUID(c)
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			req, err := ctl.ReadRequest(bufio.NewReaderSize(c, 1<<20))
			_ = c.SetReadDeadline(time.Time{})
			if err != nil {
				_ = ctl.WriteResponse(c, ctl.Response{Error: err.Error()})
				return
			}
			if err := d.authorize(req, uid); err != nil {
				_ = ctl.WriteResponse(c, ctl.Response{Error: err.Error()})
				return
			}
			_ = ctl.WriteResponse(c, d.handleControl(req))
		}(c)
	}
}

func (d *Daemon) handleControl(req ctl.Request) ctl.Response {
	switch req.Op {
	case ctl.OpStatus:
		st := d.status(req.Domain)
		if req.WithPeer {
			d.addPeerViews(st)
		}
		return ctl.Response{OK: true, Domains: st}
	case ctl.OpFailover:
		if err := d.switchover(req.Domain); err != nil {
			return ctl.Response{Error: err.Error()}
		}
		return ctl.Response{OK: true, Domains: d.status(req.Domain)}
	case ctl.OpCheck:
		// One at a time: each dials the backup host.
		if !d.checking.TryLock() {
			return ctl.Response{Error: "check: another check is running; retry"}
		}
		c, err := d.check(req.Domain)
		d.checking.Unlock()
		if err != nil {
			return ctl.Response{Error: err.Error()}
		}
		return ctl.Response{OK: true, Check: c}
	case ctl.OpEnable:
		msg, err := d.enable(req.Domain, req.Peer)
		if err != nil {
			return ctl.Response{Error: err.Error()}
		}
		return ctl.Response{OK: true, Message: msg}
	case ctl.OpDisable:
		msg, err := d.disable(req.Domain)
		if err != nil {
			return ctl.Response{Error: err.Error()}
		}
		return ctl.Response{OK: true, Message: msg}
	case ctl.OpProtect:
		s, err := d.protect(req.Domain, req.Peer)
		if err != nil {
			return ctl.Response{Error: err.Error()}
		}
		return ctl.Response{OK: true, Domains: []ctl.DomainStatus{s}}
	case ctl.OpUnprotect:
		s, err := d.unprotect(req.Domain)
		if err != nil {
			return ctl.Response{Error: err.Error()}
		}
		return ctl.Response{OK: true, Domains: []ctl.DomainStatus{s}}
	case ctl.OpHook:
		if req.Hook == nil {
			return ctl.Response{Error: "ctl: hook request without hook"}
		}
		if err := d.handleHook(*req.Hook); err != nil {
			return ctl.Response{Error: err.Error()}
		}
		return ctl.Response{OK: true}
	default:
		return ctl.Response{Error: fmt.Sprintf("ctl: unknown op %q", req.Op)}
	}
}

// check answers virt-ft check: what the domain's start would be refused
// for, and what to know, without starting or arming anything. It runs the
// checks of the define event and the prepare hook that need no start: the
// definition (ftxml.Validate: every problem, not the first), its rewrite,
// the arbiter, the emulator; then, for a valid rewritten definition, the
// backup host's own (check-backup: prepare-backup's checks, its first
// refusal).
func (d *Daemon) check(name string) (*ctl.Check, error) {
	if name == "" {
		return nil, fmt.Errorf("check: name the domain (virt-ft check DOMAIN)")
	}
	def, ok, err := d.hv.Definition(name)
	if err == nil && !ok {
		// A UUID: find its name.
		for _, dm := range d.domains() {
			if s := dm.status(); strings.EqualFold(s.UUID, name) {
				def, ok, err = d.hv.Definition(s.Name)
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	if !ok {
		return nil, fmt.Errorf("check: libvirt has no persistent domain %q here (virsh list --all)", name)
	}
	c := &ctl.Check{Domain: name, Problems: []string{}, Warnings: []string{}}
	cfg, present, perr := ftxml.ParseConfig(def.XML)
	switch {
	case perr != nil:
		c.Problems = append(c.Problems, perr.Error())
		return c, nil
	case !present:
		c.Problems = append(c.Problems, fmt.Sprintf("/domain/metadata: domain %q has no ft element: it is not protected; add <ft:ft xmlns:ft=%q> with <ft:peer address=\"...\"/> (README, \"Protecting a domain\")", name, ftxml.NamespaceURI))
		return c, nil
	case cfg.Role == ftxml.RoleBackup:
		c.Problems = append(c.Problems, "/domain/metadata/ft:ft/@role is \"backup\": a backup's definition is started by libvirt-ftd on its primary's host, never by virsh start; define the domain on the primary's host without role")
		return c, nil
	}
	var ld libvirtxml.Domain
	if err := ld.Unmarshal(def.XML); err != nil {
		c.Problems = append(c.Problems, err.Error())
		return c, nil
	}
	warnings, verr := ftxml.Validate(&ld)
	c.Warnings = append(c.Warnings, warnings...)
	var ve *ftxml.ValidationError
	switch {
	case errors.As(verr, &ve):
		for _, p := range ve.Problems {
			c.Problems = append(c.Problems, p.String())
		}
	case verr != nil:
		c.Problems = append(c.Problems, verr.Error())
	}
	valid := len(c.Problems) == 0
	if valid && !ftxml.IsGenerated(&ld) {
		why := "libvirt-ftd has not rewritten it for record/replay"
		if dm := d.lookup(ld.UUID); dm != nil {
			if s := dm.status(); s.State == ctl.StateRefused && s.Detail != "" {
				why += ": " + s.Detail
			}
		}
		c.Problems = append(c.Problems, "/domain/qemu:commandline: "+why+"; define it again (virsh define) and see journalctl -u libvirt-ftd")
	}
	if err := d.cfg.arbiterMissing(); err != nil {
		c.Problems = append(c.Problems, err.Error())
	} else if d.cfg.Arbiter == ArbiterNone {
		c.Warnings = append(c.Warnings, arbiterWarning)
	}
	emulator := domainEmulator(&ld)
	build, err := d.hv.EmulatorBuild(emulator)
	if err != nil {
		c.Problems = append(c.Problems, fmt.Sprintf("/domain/devices/emulator: %v; install libvirt-ft-qemu and set <emulator>%s</emulator>", err, patchedQEMUPath))
	} else if !qemuFlushesLog(emulator) {
		c.Warnings = append(c.Warnings, stockEmulatorWarning(emulator))
	}
	// The backup host: what its prepare-backup would answer (its first
	// refusal), armed with nothing; for a definition that is valid and
	// rewritten (the backup's XML is generated from it).
	peer := peerAddr(*cfg)
	if !valid || !ftxml.IsGenerated(&ld) {
		return c, nil
	}
	if qemuVer, err := d.hv.QEMUVersion(); err != nil {
		c.Problems = append(c.Problems, fmt.Sprintf("libvirt on this host: %v", err))
	} else if logVer, err := logchan.LogVersionForQEMU(qemuVer); err != nil {
		c.Problems = append(c.Problems, err.Error())
	} else if pc, err := dialControl(d.env(), peer, ld.UUID, qemuVer, logVer); err != nil {
		c.Problems = append(c.Problems, fmt.Sprintf("/domain/metadata/ft:ft/ft:peer: backup host %s: %v; is libvirt-ftd running there, the port open, and TLS set up on both hosts?", peer, err))
	} else {
		err := pc.request(logchan.ControlRequest{Op: logchan.OpCheckBackup, UUID: ld.UUID, Name: ld.Name, XML: def.XML,
			QEMUVersion: qemuVer, LogVersion: logVer, EmulatorBuild: build, Epoch: "check", Arbiter: d.cfg.arbiterName()}, nil)
		pc.Close()
		switch {
		case err != nil && strings.Contains(err.Error(), "unknown control op"):
			c.Warnings = append(c.Warnings, fmt.Sprintf("backup host %s answers, but its libvirt-ftd is older and cannot check the backup: a start may still be refused there", peer))
		case err != nil:
			c.Problems = append(c.Problems, fmt.Sprintf("backup host %s: %v", peer, err))
		}
	}
	return c, nil
}

// stockEmulatorWarning is the warning for a protected domain whose
// emulator is not libvirt-ft's patched QEMU (qemuFlushesLog false).
func stockEmulatorWarning(emulator string) string {
	return fmt.Sprintf("/domain/devices/emulator: %q is not libvirt-ft's patched QEMU: "+
		"replication works, but the backup cannot go live reliably (stock QEMU 7.2) and diverges under network traffic; "+
		"install libvirt-ft-qemu on both hosts and set <emulator>%s</emulator>", emulator, patchedQEMUPath)
}

// replicating finds the run of domain name (name or UUID) for the virt-ft
// command op, with its status and failover driver; it refuses a name not
// given, a domain not protected here, and one not replicating (why: what
// the command needs).
func (d *Daemon) replicating(op, name, why string) (run, ctl.DomainStatus, *failover.Driver, error) {
	if name == "" {
		return nil, ctl.DomainStatus{}, nil, fmt.Errorf("%s: name the domain (virt-ft %s DOMAIN)", op, op)
	}
	name = d.resolveName(name)
	var r run
	for _, dm := range d.domains() {
		if s := dm.status(); s.Name == name || s.UUID == name {
			r = dm.current()
		}
	}
	if r == nil {
		return nil, ctl.DomainStatus{}, nil, fmt.Errorf("%s: domain %q is not protected on this host (no ft element, or libvirt-ftd has not seen it)", op, name)
	}
	s := r.status()
	drv := r.driver()
	if drv == nil || s.State != ctl.StateReplicating {
		return nil, s, nil, fmt.Errorf("%s: domain %q is %s here (role %s), not replicating: %s; see virt-ft status", op, name, s.State, s.Role, why)
	}
	return r, s, drv, nil
}

// switchover starts a planned switchover (virt-ft failover) of a domain
// protected here, on either host: the backup goes live at the end of the
// log, then the primary is stopped (failover package, "Planned
// switchover"). It refuses a domain that is not replicating.
func (d *Daemon) switchover(name string) error {
	r, s, drv, err := d.replicating("failover", name, "a switchover needs a running primary and a backup that replays its log")
	if err != nil {
		return err
	}
	if st, _ := drv.View(); st.State != failover.StateReplicating || !st.ChannelOpen || st.PeerEnded {
		why := st.Reason
		if st.PeerEnded {
			why = "the primary's VM ended; the backup replays the rest of its log and stops"
		}
		return fmt.Errorf("failover: domain %q cannot switch over (failover state %s: %s); see virt-ft status", name, st.State, why)
	}
	if b, ok := r.(*backupRun); ok && !b.hasStarted() {
		// Going live needs the backup's QEMU, which starts with the
		// first log received; without it the switchover would hang.
		return fmt.Errorf("failover: domain %q: the backup has received no log yet (the primary's QEMU is starting); retry once virt-ft status shows log acknowledged", name)
	}
	d.log.WithField("domain", s.Name).Info("planned switchover requested (virt-ft failover)")
	drv.Post(failover.SwitchoverRequested{})
	return nil
}

// unprotect ends the protection of a domain replicating here (virt-ft
// unprotect), on either host: the failover core says ByeUnprotect to the
// peer; the backup stops its replaying VM, the primary claims the
// pairing's lock and runs on alone (failover.ByeUnprotect). It refuses a
// domain that is not replicating (a switchover or go-live under way, a
// peer restarting): unprotect would race it.
//
// It returns this host's status of the domain as it was asked (the backup's
// run may be gone by the time the caller looks).
func (d *Daemon) unprotect(name string) (ctl.DomainStatus, error) {
	if s, ok := d.stopAutoReprotect(name); ok {
		return s, nil
	}
	_, s, drv, err := d.replicating("unprotect", name, "nothing to end")
	if err != nil {
		return s, err
	}
	// Checked and stepped on the core's goroutine: nothing (a peer's
	// restart bye) comes between.
	if !drv.StepIf(func(st failover.Status) bool {
		return st.State == failover.StateReplicating && !st.PeerRestarting && !st.PeerEnded && st.Hung == ""
	}, failover.UnprotectRequested{}) {
		st, _ := drv.View()
		return s, fmt.Errorf("unprotect: domain %q cannot end its protection now (failover state %s: %s); retry, see virt-ft status", name, st.State, st.Reason)
	}
	d.log.WithField("domain", s.Name).Info("ending protection (virt-ft unprotect)")
	return s, nil
}

// stopAutoReprotect is virt-ft unprotect of a VM that runs alone here (it
// went live, or lost its backup): nothing to end but its automatic
// re-protection, which stops for this run (issue 13). ok reports that name
// was such a run.
func (d *Daemon) stopAutoReprotect(name string) (ctl.DomainStatus, bool) {
	name = d.resolveName(name)
	for _, dm := range d.domains() {
		s := dm.status()
		if s.Name != name && s.UUID != name {
			continue
		}
		p, ok := dm.current().(*primaryRun)
		if !ok || !p.active() || (s.State != ctl.StateLive && s.State != ctl.StateUnprotected) {
			return s, false
		}
		if drv := p.driver(); drv != nil {
			if st, _ := drv.View(); st.Unprotected != "" {
				return s, false // ended on purpose already
			}
		}
		p.mu.Lock()
		busy := p.reprotecting
		if !busy {
			p.noAuto = true
		}
		p.mu.Unlock()
		if busy {
			return s, false // refused below: not replicating
		}
		d.log.WithField("domain", s.Name).Info("virt-ft unprotect of a VM running alone: no automatic re-protection for it")
		return p.status(), true
	}
	return ctl.DomainStatus{}, false
}

func (d *Daemon) status(name string) []ctl.DomainStatus {
	name = d.resolveName(name)
	var out []ctl.DomainStatus
	for _, dm := range d.domains() {
		s := dm.status()
		if name != "" && s.Name != name && s.UUID != name {
			continue
		}
		if d.cfg.Arbiter == ArbiterNone {
			s.Warnings = append(s.Warnings, arbiterWarning)
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// addPeerViews fills each running domain's PeerView (virt-ft status
// showing both sides, issue 14): the peer daemon's answer to OpStatus,
// fetched in parallel, each bounded by ctl.PeerViewTimeout. The peer
// daemon is the primary's backup host (ft element), or for a backup the
// primary's host at this daemon's own listen port (both daemons of a
// pairing listen on the same port, docs/install.md), as for a VM that went
// live here (its former primary's host).
func (d *Daemon) addPeerViews(st []ctl.DomainStatus) {
	var wg sync.WaitGroup
	for i := range st {
		s := &st[i]
		switch s.State {
		case ctl.StateDefined, ctl.StateRefused, ctl.StateStopped:
			continue
		}
		addr := s.Peer
		if s.Role == ctl.RoleBackup || s.State == ctl.StateLive {
			// Peer is the primary's end of the log channel (its
			// ephemeral port): ask its daemon's port.
			host, _, err := net.SplitHostPort(s.Peer)
			_, port, perr := net.SplitHostPort(d.cfg.Listen)
			if err != nil || perr != nil {
				continue
			}
			addr = net.JoinHostPort(host, port)
		}
		if addr == "" {
			continue
		}
		s.PeerView = &ctl.PeerView{Host: addr, HeartbeatAgeMS: -1}
		wg.Add(1)
		go func() {
			defer wg.Done()
			timeout := time.After(ctl.PeerViewTimeout)
			// At most peerViewFetches at once, this daemon over: a loop
			// of virt-ft status (any control-group member may run it)
			// must not crowd the peer's connection slots, which log
			// channels and prepare-backup share.
			select {
			case d.peerViews <- struct{}{}:
			case <-timeout:
				s.PeerView.Error = "not asked: too many status requests at once; retry"
				return
			}
			done := make(chan ctl.PeerView, 1)
			go func() {
				defer func() { <-d.peerViews }()
				done <- d.fetchPeerView(addr, s.UUID)
			}()
			select {
			case v := <-done:
				*s.PeerView = v
			case <-timeout:
				s.PeerView.Error = fmt.Sprintf("no answer within %v", ctl.PeerViewTimeout)
			}
		}()
	}
	wg.Wait()
}

// fetchPeerView asks the peer daemon at addr for its view of uuid
// (logchan.OpStatus). Errors are in the result's Error.
func (d *Daemon) fetchPeerView(addr, uuid string) ctl.PeerView {
	v := ctl.PeerView{Host: addr, HeartbeatAgeMS: -1}
	qemuVer, err := d.hv.QEMUVersion()
	if err != nil {
		v.Error = err.Error()
		return v
	}
	logVer, _ := logchan.LogVersionForQEMU(qemuVer)
	pc, err := dialControl(d.env(), addr, uuid, qemuVer, logVer)
	if err != nil {
		v.Error = "not reachable: " + err.Error()
		return v
	}
	defer pc.Close()
	if !slices.Contains(pc.peer.Features, logchan.FeatureStatus) {
		v.Error = "its libvirt-ftd is older and does not give its status"
		return v
	}
	_ = pc.nc.SetDeadline(time.Now().Add(ctl.PeerViewTimeout))
	var ps logchan.PeerStatus
	if err := pc.request(logchan.ControlRequest{Op: logchan.OpStatus, UUID: uuid}, &ps); err != nil {
		v.Error = err.Error()
		return v
	}
	// The peer's words are shown on this host's terminal: known roles
	// only, printable text, bounded.
	if ps.Role != string(ctl.RolePrimary) && ps.Role != string(ctl.RoleBackup) {
		v.Error = fmt.Sprintf("its answer names an unknown role %q", clip(ps.Role, 32))
		return v
	}
	v.Role, v.State, v.Failover, v.Detail = ctl.Role(ps.Role), ctl.State(clip(ps.State, 32)), clip(ps.Failover, 32), clip(ps.Detail, 512)
	v.HeartbeatAgeMS, v.LagMS, v.BackupIcount = ps.HeartbeatAgeMS, ps.LagMS, ps.BackupIcount
	return v
}

// clip is s as logchan.CleanText makes it (control, format and
// line-separator characters as spaces) in at most n bytes: cut at a rune
// boundary, with "…" added within n when cut.
func clip(s string, n int) string {
	s = logchan.CleanText(s, len(s))
	if len(s) <= n {
		return s
	}
	cut := max(n-len("…"), 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// resolveName maps a domain named on the command line (virt-ft) to the
// name libvirt-ftd knows it by: a name or UUID of a protected domain is
// kept; otherwise a number is taken as the libvirt ID of a running domain
// (virsh list) and replaced by its name. Anything else is kept as given
// (the caller reports it unknown).
func (d *Daemon) resolveName(arg string) string {
	if arg == "" {
		return arg
	}
	for _, dm := range d.domains() {
		if s := dm.status(); s.Name == arg || strings.EqualFold(s.UUID, arg) {
			return s.Name
		}
	}
	id, err := strconv.ParseUint(arg, 10, 32)
	if err != nil || id == 0 {
		return arg
	}
	running, err := d.hv.Running()
	if err != nil {
		return arg
	}
	for _, def := range running {
		if def.ID == uint(id) {
			return def.Name
		}
	}
	return arg
}

// handleHook runs what a libvirt hook invocation asks. Only "prepare" can
// fail; the error text is what libvirt shows the user.
func (d *Daemon) handleHook(h ctl.Hook) error {
	cfg, present, err := ftxml.ParseConfig(h.XML)
	if err != nil {
		return err
	}
	if !present {
		// (A domain whose ft element is gone but whose generated wiring
		// is not is refused by the hook program itself, hooks.Run.)
		return nil
	}
	var ld libvirtxml.Domain
	if err := ld.Unmarshal(h.XML); err != nil {
		return fmt.Errorf("libvirt-ft: domain %q: %w", h.Domain, err)
	}
	uuid := ld.UUID
	log := d.log.WithFields(logrus.Fields{"domain": h.Domain, "hook": h.Operation})
	dm := d.lookup(uuid)
	var cur run
	if dm != nil {
		cur = dm.current()
	}
	switch h.Operation {
	case "prepare":
		if b, ok := cur.(*backupRun); ok && cfg.Role == ftxml.RolePrimary && b.restartingLive() {
			return b.prepareLive(&ld)
		}
		if cfg.Role == ftxml.RoleBackup {
			if _, ok := cur.(*backupRun); !ok {
				return fmt.Errorf("libvirt-ft: domain %q is a backup (ft role=\"backup\"); only libvirt-ftd starts backups, when the primary starts", h.Domain)
			}
			return nil
		}
		return d.startPrimary(h, *cfg, &ld, log)
	case "started":
		if cur != nil {
			cur.started()
		}
	case "stopped", "release":
		mine := cur != nil && string(cur.role()) == cfg.Role
		if p, ok := cur.(*primaryRun); ok {
			mine = p.acceptsHook(cfg.Role)
		}
		if mine {
			cur.qemuStopped("hook " + h.Operation)
		}
		if cur == nil || !cur.active() {
			// A VM a restarted daemon resolved (restart.go) has no run.
			d.pairings.remove(uuid)
		}
	}
	return nil
}

// startPrimary is the prepare hook of a protected domain's primary: a new
// primaryRun arms the backup and opens the log channel before QEMU starts.
func (d *Daemon) startPrimary(h ctl.Hook, cfg ftxml.Config, ld *libvirtxml.Domain, log logrus.FieldLogger) error {
	dm := d.entry(ld.UUID, h.Domain)
	if err := d.cfg.arbiterMissing(); err != nil {
		dm.note(ctl.StateRefused, err.Error())
		log.Error(err)
		return err
	}
	if d.cfg.Arbiter == ArbiterNone {
		log.Warn(arbiterWarning)
	}
	warnings, verr := ftxml.Validate(ld)
	if verr != nil {
		dm.note(ctl.StateRefused, verr.Error())
		log.Error(verr)
		return verr
	}
	for _, w := range warnings {
		log.Warn(w)
	}
	if !ftxml.IsGenerated(ld) {
		err := fmt.Errorf("libvirt-ft: domain %q: the definition has not been prepared for record/replay yet (libvirt-ftd rewrites it right after `virsh define`); check `virt-ft status %s` and start it again", h.Domain, h.Domain)
		log.Error(err)
		return err
	}
	d.mu.Lock()
	resolving := d.resolving[ld.UUID]
	d.mu.Unlock()
	if resolving {
		return fmt.Errorf("libvirt-ft: domain %q: libvirt-ftd is still deciding what its copy left running here is (it restarted); see virt-ft status %s", h.Domain, h.Domain)
	}
	if prev := dm.current(); prev != nil {
		if _, ok := prev.(*primaryRun); ok && prev.active() {
			return fmt.Errorf("libvirt-ft: domain %q: already replicating", h.Domain)
		}
		if _, ok := prev.(*backupRun); ok && prev.active() {
			return fmt.Errorf("libvirt-ft: domain %q runs here as a backup", h.Domain)
		}
		// A former run (a live former backup's gates listen on the
		// same paths): release it first.
		prev.close("a new primary run starts")
	}
	p := newPrimaryRun(d.env(), ld.UUID, h.Domain, cfg)
	dm.setRun(p)
	if err := p.prepare(h.XML, ld); err != nil {
		log.Error(err)
		return err
	}
	go d.autoReprotect(dm, p) // should its backup be lost
	return nil
}

// backupHostChecks are prepare-backup's checks of this host's own state,
// with no side effect: an arbiter, the same one as the primary's; the
// domain not running here (as a primary, a backup armed by another host,
// or any QEMU); its disks no other domain's. prev is the domain's current
// run here (nil: none).
func (d *Daemon) backupHostChecks(req logchan.ControlRequest, primaryHost string, prev run) error {
	if err := d.cfg.arbiterMissing(); err != nil {
		return fmt.Errorf("the backup host refuses: %w", err)
	}
	if mine := d.cfg.arbiterName(); req.Arbiter != mine {
		return fmt.Errorf("the backup host refuses: its split-brain arbiter is %q, the primary's is %q: both hosts must claim on the same arbiter, or a partition could run the VM on both; make arbiter and arbiter-etcd (or arbiter-dir) the same in %s on both hosts", mine, req.Arbiter, DefaultConfigPath)
	}
	if prev != nil {
		if _, ok := prev.(*primaryRun); ok && prev.active() {
			return fmt.Errorf("domain %q runs here as a primary", req.Name)
		}
		// Only the host that armed a backup may replace it.
		if b, ok := prev.(*backupRun); ok && prev.active() && !b.armedBy(primaryHost) {
			return fmt.Errorf("domain %q has a backup here armed by %s", req.Name, b.primaryHost)
		}
		// A QEMU of this domain still runs here (a backup replaying the
		// tail of its log, or going live): leave it alone.
		if active, err := d.hv.IsActive(req.UUID); err != nil || active {
			return fmt.Errorf("domain %q is already running on the backup host (%v)", req.Name, err)
		}
	}
	// The backup's disks and the boot files it takes from seed-dirs:
	// none may be another domain's disk here (a kernel or initrd is read
	// into the peer's guest), nor a disk a seed is writing now (it would
	// be moved into place after these checks).
	if pd, err := ftxml.ParseDomain(req.XML); err == nil {
		var files []string
		if pd.Devices != nil {
			for _, disk := range pd.Devices.Disks {
				if disk.Source != nil && disk.Source.File != nil && disk.Source.File.File != "" {
					files = append(files, disk.Source.File.File)
				}
			}
		}
		boot := map[string]string{}
		if o := pd.OS; o != nil {
			for field, f := range map[string]string{"kernel": o.Kernel, "initrd": o.Initrd, "dtb": o.DTB} {
				if f != "" {
					if fi, err := os.Lstat(f); err == nil && !fi.Mode().IsRegular() && d.cfg.seedAllowed(f) {
						return fmt.Errorf("the backup host refuses: /domain/os/%s %s is not a regular file here (a link or a device); put the file itself there", field, f)
					}
					files = append(files, f)
					boot[f] = "/domain/os/" + field + " "
				}
			}
		}
		for _, f := range files {
			// A disk may be no file of another domain (its disk, or a
			// kernel it boots: the backup's QEMU writes its disks); a
			// boot file may be no other domain's disk (a kernel several
			// domains boot is shared, not owned).
			_, isBoot := boot[f]
			other, what := d.diskOwner(req.UUID, f, primaryHost, false), "a disk"
			if other == "" && !isBoot {
				other, what = d.diskOwner(req.UUID, f, primaryHost, true), "a boot file"
			}
			if other != "" {
				return fmt.Errorf("the backup host refuses: %s%s is %s of domain %q here; a peer's domain may only use images and boot files of its own", boot[f], f, what, other)
			}
			// The same against runs here, whose domains libvirt may not
			// know yet (an armed backup): a disk may be none of their
			// files, a boot file none of their disks.
			if owner := d.runFileOwner(f, req.UUID, isBoot); owner != "" {
				return fmt.Errorf("the backup host refuses: %s%s is a file of %s here; a peer's domain may only use images and boot files of its own", boot[f], f, owner)
			}
			if k := dirKey(f); k != "" {
				if _, busy := d.seedingPaths.Load(k); busy {
					return fmt.Errorf("the backup host refuses for now: a seed of %s is under way; start again when it has ended", f)
				}
			}
		}
	}
	return nil
}

// checkBackup answers check-backup: prepare-backup's refusal, if any,
// without arming anything (a primary's virt-ft check).
func (d *Daemon) checkBackup(req logchan.ControlRequest, primaryHost string) error {
	var prev run
	if dm := d.lookup(req.UUID); dm != nil {
		prev = dm.current()
	}
	if err := d.backupHostChecks(req, primaryHost, prev); err != nil {
		return err
	}
	_, _, _, _, err := backupChecks(d.env(), req, primaryHost)
	return err
}

// prepareBackup answers the primary daemon's prepare-backup request: a new
// backupRun replaces a stale backup of an earlier run of the primary.
func (d *Daemon) prepareBackup(req logchan.ControlRequest, primaryHost string) error {
	return d.arm(req, primaryHost, false)
}

// arm is prepare-backup, and with incoming prepare-incoming (incoming.go):
// the backup's QEMU then starts at once, waiting for the running VM.
func (d *Daemon) arm(req logchan.ControlRequest, primaryHost string, incoming bool) error {
	if !validEpoch(req.Epoch) {
		return fmt.Errorf("the backup host refuses: epoch %q is not base-36 (1-12 characters of 0-9a-z)", req.Epoch)
	}
	if req.Convert && !incoming {
		return errors.New("the backup host refuses: convert is for prepare-incoming only")
	}
	if req.Convert && (d.cfg.Arbiter == ArbiterNone || d.arb == nil) {
		return fmt.Errorf("the backup host refuses to take over a VM started without the ft element with arbiter: none (only an arbiter can say which of the two paused copies runs): configure arbiter-etcd or arbiter-dir in %s", DefaultConfigPath)
	}
	d.armMu.Lock()
	defer d.armMu.Unlock()
	dm := d.entry(req.UUID, req.Name)
	if err := d.backupHostChecks(req, primaryHost, dm.current()); err != nil {
		d.forgetIdle(req.UUID)
		return err
	}
	if prev := dm.current(); prev != nil {
		// Out of the record first: its end must not forget the new run.
		dm.setRun(nil)
		prev.close("replaced by a new backup")
	}
	b, err := armBackup(d.env(), req, primaryHost, func(p *primaryRun) { dm.setRun(p); go d.autoReprotect(dm, p) })
	if err != nil {
		d.forgetIdle(req.UUID)
		return err
	}
	// A restarted daemon must know the epoch a backup that left replay
	// mode would claim (restart.go).
	role := "backup"
	if req.Convert {
		role = convertBackupRole
	}
	if err := d.pairings.save(pairingRecord{UUID: req.UUID, Name: req.Name, Role: role, Epoch: req.Epoch, Peer: primaryHost}); err != nil {
		b.close("cannot keep the pairing record")
		d.forgetIdle(req.UUID)
		return err
	}
	dm.setRun(b)
	go func() {
		<-b.done()
		b.mu.Lock()
		live := b.live
		b.mu.Unlock()
		select {
		case <-d.quit:
			// The daemon stops: the record is for the next one.
			return
		default:
		}
		if !live {
			if r, ok := d.pairings.load(req.UUID); ok && r.Role == role && r.Epoch == req.Epoch {
				d.pairings.remove(req.UUID)
			}
			d.forgetRun(req.UUID, b)
		}
	}()
	if incoming {
		if err := d.startIncoming(b); err != nil {
			b.setState(ctl.StateUnprotected, err.Error())
			b.close("the re-protection's backup could not start")
			return err
		}
	}
	return nil
}

// cancelBackup undoes prepareBackup when the primary's prepare failed, while
// the backup's QEMU has not started. Only the host that armed the backup
// (from) may cancel it.
func (d *Daemon) cancelBackup(uuid, from string) {
	dm := d.lookup(uuid)
	if dm == nil {
		return
	}
	b, ok := dm.current().(*backupRun)
	if !ok || b.cancelIncoming(from) {
		return
	}
	if !b.hasStarted() && b.armedBy(from) {
		b.close("primary's prepare failed")
	}
}

// socketAccess lets the control group (control-group) connect to the
// control socket, to read status; without that group the socket stays
// root's.
func (d *Daemon) socketAccess() {
	_ = os.Chmod(d.cfg.ControlSocket, 0o600)
	g, err := user.LookupGroup(d.cfg.ControlGroup)
	if err != nil {
		d.log.Warnf("control-group %q: %v; only root can use virt-ft", d.cfg.ControlGroup, err)
		return
	}
	gid, _ := strconv.Atoi(g.Gid)
	if err := os.Chown(d.cfg.ControlSocket, 0, gid); err != nil {
		d.log.WithError(err).Warn("control socket: giving it to control-group")
		return
	}
	_ = os.Chmod(d.cfg.ControlSocket, 0o660)
}

// peerUID is the uid of the process at the other end of a unix socket
// (SO_PEERCRED, unix(7)); -1 if unknown.
func peerUID(c net.Conn) int {
	cred, err := peerCred(c)
	if err != nil {
		return -1
	}
	return int(cred.Uid)
}

// authorize: anyone who may connect (root, control-group) reads status;
// a failover or a hook call needs root.
func (d *Daemon) authorize(req ctl.Request, uid int) error {
	if req.Op == ctl.OpStatus || uid == 0 {
		return nil
	}
	return fmt.Errorf("permission denied: %q on the control socket needs root (members of control-group %q may only read status)", req.Op, d.cfg.ControlGroup)
}
