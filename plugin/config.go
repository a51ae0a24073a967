// Package plugin is the core of libvirt-ftd, the per-host libvirt-ft daemon:
// it keeps a connection to the local libvirtd, runs one run per protected
// domain and role (primaryRun on the recording host, backupRun on the
// replaying host), serves the control socket used by the libvirt hook and
// virt-ft, and serves the log channel and control requests of the peer
// daemon over TCP.
//
// Each daemon talks only to its own libvirtd (docs/architecture.md);
// anything that must happen on the other host is asked of the peer daemon.
package plugin

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	yaml "go.yaml.in/yaml/v3"
)

// DefaultConfigPath is where libvirt-ftd reads its configuration.
const DefaultConfigPath = "/etc/libvirt-ft/libvirt-ftd.yaml"

// DefaultInStepDir keeps the records of disks that ended a pairing in step
// with the peer's copies (instep.go): they survive a reboot, as the disks
// do.
const DefaultInStepDir = "/var/lib/libvirt-ft/in-step"

// DefaultControlSocket is the unix socket of the hook and virt-ft.
const DefaultControlSocket = "/run/libvirt-ft/ctl.sock"

// Config is libvirt-ftd's configuration file (YAML, unknown keys refused).
type Config struct {
	// Listen is the TCP address (host:port) the peer daemon connects to for
	// the log channel and control requests. Default ":7480".
	Listen string `yaml:"listen"`
	// LibvirtURI is the local libvirtd's URI. Default "qemu:///system".
	LibvirtURI string `yaml:"libvirt-uri"`
	// ControlSocket is the unix socket path for the hook and virt-ft.
	ControlSocket string `yaml:"control-socket"`
	// ControlGroup may read status on the control socket (virt-ft status);
	// failover and the hook need root. Default "libvirt" (libvirt's own
	// group for its socket); a group that does not exist leaves the
	// socket to root.
	ControlGroup string `yaml:"control-group"`
	// QEMUUser and QEMUGroup own the FIFOs QEMU opens; they must match
	// libvirt's qemu.conf user/group (Debian: libvirt-qemu / libvirt-qemu).
	QEMUUser  string `yaml:"qemu-user"`
	QEMUGroup string `yaml:"qemu-group"`
	// WindowBytes bounds the log bytes sent to the backup and not yet
	// acknowledged (bytes). When the window is full the primary's FIFO is not
	// read, so QEMU's vCPU stalls: this bounds the backup's lag
	// (docs/protocol.md §7), and with it the drain at go-live and how
	// long output waits in the gate when the backup replays slower than
	// the primary records. Default 262144, at least 16384. Beyond
	// standWindowBytes (65536) it applies only while the lag bound
	// (max-lag-ms) is in force: the backup's icount known and still
	// advancing (primaryRun.windowNow).
	WindowBytes int `yaml:"window-bytes"`
	// MaxLagMS bounds the backup's lag in time (ms, the LAG (ms) of
	// virt-ft status): while the backup's executed icount is more than
	// this much behind the latest log sent, measured between the
	// primary's sends of the two, the primary's log is not read, so its
	// vCPU waits for the backup (as
	// VMware FT slows a primary whose backup lags, Scales et al. 2010,
	// section 3.2). It bounds the drain at go-live and how long output
	// waits in the gate when the backup replays slower than the primary
	// records. Default 100; -1 turns the bound off.
	MaxLagMS int `yaml:"max-lag-ms"`
	// StatusIntervalMS is how often a backup samples its QEMU's icount and
	// FIFO B, for lag figures and the replay stall rule (ms); the stall
	// bound is at least ten of these. Default 50.
	StatusIntervalMS int `yaml:"status-interval-ms"`
	// DialTimeoutMS bounds connecting to the peer daemon (ms). Default 3000.
	DialTimeoutMS int `yaml:"dial-timeout-ms"`
	// RestartGraceMS is how long a daemon waits for its peer's daemon,
	// stopping for a planned restart (systemctl restart; ByeRestarting),
	// to bring the log channel back before it takes the peer for lost
	// (ms). The primary's VM is paused meanwhile. Default 0: the larger
	// of the domain's heartbeat timeout and 5000 (it covers the restarting
	// side's quiesce and its next process's start).
	RestartGraceMS int `yaml:"restart-grace-ms"`
	// SeedDirs are the directories a peer may write disk copies into when it
	// seeds a backup (absolute paths). Default [/var/lib/libvirt/images].
	SeedDirs []string `yaml:"seed-dirs"`
	// Arbiter names the split-brain arbiter (docs/architecture.md §1):
	// "etcd" (a witness etcd cluster, ArbiterEtcd), "dir" (a directory on
	// storage both hosts mount, ArbiterDir) or "none" (a network
	// partition can run the VM on both hosts; every start and virt-ft
	// status warn). Empty: "etcd" if arbiter-etcd lists endpoints, "dir"
	// if arbiter-dir is set; with neither, protection is refused.
	Arbiter string `yaml:"arbiter"`
	// ArbiterDir is a directory on storage shared by both hosts (NFS, a
	// cluster file system) holding the split-brain lock files.
	ArbiterDir string `yaml:"arbiter-dir"`
	// ArbiterEtcd is the etcd witness.
	ArbiterEtcd EtcdConfig `yaml:"arbiter-etcd"`
	// ArbiterTimeoutMS bounds one claim (ms): an unreachable etcd or a
	// hung mount is an error after this long, never a wait. Default 2000.
	ArbiterTimeoutMS int `yaml:"arbiter-timeout-ms"`
	// TLS names the PKI files of the peer port (mutual TLS, tls.go);
	// libvirt's layout by default.
	TLS TLSConfig `yaml:"tls"`
	// PlainTCP turns TLS off on the peer port: anyone who reaches it is
	// believed. Only for a network nobody else can reach; warned at start.
	PlainTCP bool `yaml:"plain-tcp"`
	// AllowedEmulators are the QEMU binaries a peer's domain may name
	// (<emulator>). Default: /usr/bin/qemu-system-x86_64 and libvirt-ft's
	// patched QEMU.
	AllowedEmulators []string `yaml:"allowed-emulators"`
	// AllowPeerQEMUArgs lets a peer's domain carry QEMU arguments and
	// overrides of its own (<qemu:commandline>, <qemu:override>), passed to
	// the backup's QEMU as they are. Off by default: they give the peer
	// the backup host's QEMU command line.
	AllowPeerQEMUArgs bool `yaml:"allow-peer-qemu-args"`
	// AllowedPeers, when not empty, lists the IP addresses whose daemons may
	// connect (log channel and control requests). Empty allows any address.
	AllowedPeers []string `yaml:"allowed-peers"`
	// KeepStallLog (a debug switch): when a backup's replay stalls
	// (<ft:heartbeat stall-timeout-ms>), write the last MiB of log around
	// the point where it stopped to <state dir>/<uuid>/stall-<role>-<unix
	// time>.rrstream, for test/tools/rrdump. Default false.
	KeepStallLog bool `yaml:"keep-stall-log"`
	// MetricsAddress, when set, is the TCP address (host:port) where
	// libvirt-ftd serves Prometheus metrics at /metrics (plugin/metrics.go,
	// docs/architecture.md): "127.0.0.1:9477" for a local agent,
	// ":9477" for a Prometheus server elsewhere (firewall it). Default
	// "": no metrics. They show domain names, states and lag to whoever
	// reaches the address.
	MetricsAddress string `yaml:"metrics-address"`
}

// LoadConfig reads path; a missing file gives the defaults.
func LoadConfig(path string) (Config, error) {
	var c Config
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return c, fmt.Errorf("plugin: config %s: %w", path, err)
	}
	if len(bytes.TrimSpace(data)) > 0 {
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&c); err != nil {
			return c, fmt.Errorf("plugin: config %s: %w (see packaging/libvirt-ftd.yaml for the keys)", path, err)
		}
	}
	c.applyDefaults()
	return c, c.validate(path)
}

func (c *Config) applyDefaults() {
	if c.Listen == "" {
		c.Listen = ":7480"
	}
	if c.LibvirtURI == "" {
		c.LibvirtURI = "qemu:///system"
	}
	if c.ControlSocket == "" {
		c.ControlSocket = DefaultControlSocket
	}
	if c.ControlGroup == "" {
		c.ControlGroup = "libvirt"
	}
	if c.QEMUUser == "" {
		c.QEMUUser = "libvirt-qemu"
	}
	if c.QEMUGroup == "" {
		c.QEMUGroup = "libvirt-qemu"
	}
	if c.WindowBytes == 0 {
		c.WindowBytes = DefaultWindowBytes
	}
	switch {
	case c.MaxLagMS == 0:
		c.MaxLagMS = DefaultMaxLagMS
	case c.MaxLagMS < 0:
		c.MaxLagMS = 0 // off
	}
	if c.StatusIntervalMS == 0 {
		c.StatusIntervalMS = 50
	}
	if len(c.SeedDirs) == 0 {
		c.SeedDirs = []string{"/var/lib/libvirt/images"}
	}
	if c.DialTimeoutMS == 0 {
		c.DialTimeoutMS = 3000
	}
	if c.RestartGraceMS < 0 {
		c.RestartGraceMS = 0
	}
	if c.Arbiter == "" {
		switch {
		case len(c.ArbiterEtcd.Endpoints) > 0:
			c.Arbiter = ArbiterEtcd
		case c.ArbiterDir != "":
			c.Arbiter = ArbiterDir
		}
	}
	if c.ArbiterEtcd.Prefix == "" {
		c.ArbiterEtcd.Prefix = "/libvirt-ft"
	}
	c.TLS.applyDefaults()
	if len(c.AllowedEmulators) == 0 {
		c.AllowedEmulators = []string{"/usr/bin/qemu-system-x86_64", patchedQEMUPath}
	}
	if c.ArbiterTimeoutMS == 0 {
		c.ArbiterTimeoutMS = 2000
	}
}

// DefaultWindowBytes is the default log channel window (bytes). A log
// event of a received GSO super-frame is up to about 64 KiB, so the old 64
// KiB window held the primary after each such packet until its backup had
// written it into FIFO B: during bulk receive in the lab the window held
// the primary for 33-42% of the time while its backup's vCPU waited for log
// (session 41, BENCHMARKS.md). With FIFO B as large (replayPipeBytes) the
// receive ran 47.6 MB/s against 32.7 (medians of 4 alternating runs). The
// lag in time stays bounded by max-lag-ms (DefaultMaxLagMS); before that
// bound existed, 256 KiB had let the backup fall 2-4 s behind. Beyond
// standWindowBytes the window applies only while the lag bound is in force
// (primaryRun.windowNow).
const DefaultWindowBytes = 256 << 10

// maxWindowBytes is the largest window-bytes accepted (bytes): the window,
// FIFO B (replayPipeBytes) and QEMU's read buffer must fit in the log ring
// (logRingBytes) with room to spare, so that a stalled backup's icount can
// still be placed in the log (helper-121).
const maxWindowBytes = logRingBytes/2 - replayPipeBytes

// standWindowBytes is the most window in force while the lag bound holds
// nothing (bytes): the backup standing still, before its first icount
// sample, or max-lag-ms -1. It was the default window until session 41.
const standWindowBytes = 64 << 10

// DefaultMaxLagMS is the default bound of the backup's lag (ms).
const DefaultMaxLagMS = 100

// replayPipeBytes is the pipe buffer of FIFO B (F_SETPIPE_SZ, bytes): the
// log the backup's QEMU may have waiting beyond the window. It was 16 KiB,
// so that the window alone bounded that log; a 64 KiB packet's event then
// went in four writes, each waiting for QEMU to read the one before, and
// the window (counted to what is in FIFO B) held the primary meanwhile.
// The lag in time is bounded by max-lag-ms (DefaultMaxLagMS); with the
// bound off (max-lag-ms -1) FIFO B stays standReplayPipeBytes
// (Config.replayPipeBytes).
const replayPipeBytes = 256 << 10

// standReplayPipeBytes is FIFO B's pipe buffer on a backup host whose lag
// bound is off (bytes): its size until session 41.
const standReplayPipeBytes = 16 << 10

// replayPipeBytes is FIFO B's pipe buffer for this host's backups (bytes):
// replayPipeBytes while the lag bound (max-lag-ms) bounds the backup's lag
// in time, standReplayPipeBytes with it off.
func (c Config) replayPipeBytes() int {
	if c.MaxLagMS <= 0 {
		return standReplayPipeBytes
	}
	return replayPipeBytes
}

func (c *Config) validate(path string) error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("plugin: config %s: listen %q: %v; use host:port such as 10.0.0.2:7480", path, c.Listen, err)
	}
	if !filepath.IsAbs(c.ControlSocket) {
		return fmt.Errorf("plugin: config %s: control-socket %q must be an absolute path", path, c.ControlSocket)
	}
	if c.WindowBytes < 16<<10 {
		return fmt.Errorf("plugin: config %s: window-bytes %d is below 16384; raise it (default %d)", path, c.WindowBytes, DefaultWindowBytes)
	}
	if c.WindowBytes > maxWindowBytes {
		return fmt.Errorf("plugin: config %s: window-bytes %d is above %d; lower it (default %d)", path, c.WindowBytes, maxWindowBytes, DefaultWindowBytes)
	}
	switch c.Arbiter {
	case "", ArbiterNone:
	case ArbiterDir:
		if !filepath.IsAbs(c.ArbiterDir) {
			return fmt.Errorf("plugin: config %s: arbiter: dir needs arbiter-dir, an absolute path on storage both hosts mount", path)
		}
	case ArbiterEtcd:
		if len(c.ArbiterEtcd.Endpoints) == 0 {
			return fmt.Errorf("plugin: config %s: arbiter: etcd needs arbiter-etcd: endpoints: [http://WITNESS:2379]", path)
		}
	default:
		return fmt.Errorf("plugin: config %s: arbiter %q: use etcd, dir or none", path, c.Arbiter)
	}
	return nil
}

// seedAllowed reports whether a peer may write a disk copy at path: an
// absolute path in clean form (no "." or ".." element: the kernel resolves
// ".." after a link) under one of seed-dirs.
func (c Config) seedAllowed(path string) bool {
	clean := filepath.Clean(path)
	if clean != path || !filepath.IsAbs(path) {
		return false
	}
	for _, d := range c.SeedDirs {
		d = filepath.Clean(d)
		if strings.HasPrefix(clean, d+string(filepath.Separator)) {
			return true
		}
	}
	return false
}

// peerAllowed reports whether a connection from addr (host:port) is accepted.
func (c Config) peerAllowed(addr string) bool {
	if len(c.AllowedPeers) == 0 {
		return true
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	for _, p := range c.AllowedPeers {
		if p == host {
			return true
		}
	}
	return false
}

// arbiterName names the configured arbiter as prepare-backup carries it
// (logchan.ControlRequest.Arbiter): both daemons of a pairing must claim
// on the same one.
func (c Config) arbiterName() string {
	switch c.Arbiter {
	case ArbiterEtcd:
		eps := slices.Clone(c.ArbiterEtcd.Endpoints)
		slices.Sort(eps)
		return fmt.Sprintf("etcd %s %s", strings.Join(eps, ","), c.ArbiterEtcd.Prefix)
	case ArbiterDir:
		return "dir " + filepath.Clean(c.ArbiterDir)
	}
	return c.Arbiter
}

// runDir is the daemon's run directory, the control socket's: the
// arbiter identity and the pairing records (restart.go) live there.
func (c Config) runDir() string { return filepath.Dir(c.ControlSocket) }

func (c Config) dialTimeout() time.Duration { return time.Duration(c.DialTimeoutMS) * time.Millisecond }

// qemuOwner resolves QEMUUser/QEMUGroup to numeric ids.
func (c Config) qemuOwner() (uid, gid int, err error) {
	u, err := user.Lookup(c.QEMUUser)
	if err != nil {
		return 0, 0, fmt.Errorf("plugin: qemu-user %q: %w; set qemu-user to libvirt's qemu.conf user", c.QEMUUser, err)
	}
	g, err := user.LookupGroup(c.QEMUGroup)
	if err != nil {
		return 0, 0, fmt.Errorf("plugin: qemu-group %q: %w; set qemu-group to libvirt's qemu.conf group", c.QEMUGroup, err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(g.Gid)
	return uid, gid, nil
}

// statusInterval is how often a backup samples its QEMU (status-interval-ms).
func (c Config) statusInterval() time.Duration {
	return time.Duration(c.StatusIntervalMS) * time.Millisecond
}

// Arbiter kinds (Config.Arbiter).
const (
	ArbiterEtcd = "etcd"
	ArbiterDir  = "dir"
	ArbiterNone = "none"
)

// EtcdConfig is the etcd witness of the split-brain arbiter.
type EtcdConfig struct {
	// Endpoints are the etcd client URLs (http://HOST:2379).
	Endpoints []string `yaml:"endpoints"`
	// Prefix is the key prefix of the claims. Default /libvirt-ft.
	Prefix string `yaml:"prefix"`
	// CACert, ClientCert and ClientKey (PEM files) turn on TLS to etcd:
	// the server's certificate is checked against CACert, and the client
	// certificate authenticates this daemon (etcd --client-cert-auth).
	// Without them the endpoints must be http:// on a network only the
	// hosts reach: anyone who can write the claims decides split brain.
	CACert     string `yaml:"ca-cert"`
	ClientCert string `yaml:"client-cert"`
	ClientKey  string `yaml:"client-key"`
	// Username and PasswordFile: etcd's own authentication (etcdctl user
	// add), the password read from the file.
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password-file"`
}

// ErrNoArbiter is wrapped when protection is refused for want of an
// arbiter.
var ErrNoArbiter = errors.New("no split-brain arbiter configured")

// arbiterMissing is the refusal of a protected domain when no arbiter is
// configured: it names the keys to set.
func (c Config) arbiterMissing() error {
	if c.Arbiter != "" {
		return nil
	}
	return fmt.Errorf("libvirt-ft: %w: set arbiter-etcd: endpoints: [http://WITNESS:2379] (an etcd witness) or arbiter-dir (storage both hosts mount) in %s, or arbiter: none to accept that a network partition can run the VM on both hosts", ErrNoArbiter, DefaultConfigPath)
}

// arbiterWarning is what every start and virt-ft status say with arbiter:
// none.
const arbiterWarning = "arbiter: none: a network partition can run this VM on both hosts (split brain); configure arbiter-etcd or arbiter-dir in " + DefaultConfigPath
