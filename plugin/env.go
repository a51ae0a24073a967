package plugin

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/qmp"
)

// env is what a run (primaryRun, backupRun) needs of its host: the local
// libvirtd (Hypervisor), the split-brain arbiter and the daemon's
// configuration. It is a value the daemon hands each run; runs never hold
// the Daemon (docs/architecture.md, "Arrows").
type env struct {
	hv      Hypervisor
	arbiter Arbiter
	cfg     Config
	// qemuUID and qemuGID own the FIFOs and sockets QEMU opens (-1: leave
	// the owner as is, in tests).
	qemuUID, qemuGID int
	log              logrus.FieldLogger
	// pipes creates FIFO A and FIFO B; dial reaches the peer daemon.
	pipes logPipes
	dial  func(addr string, timeout time.Duration) (net.Conn, error)
	// pairings keeps the pairing epoch of each VM running here
	// (restart.go).
	pairings pairingStore
	// metrics counts go-lives (nil: no metrics address, tests).
	metrics *metrics
	// inStep records disks that ended a pairing in step (instep.go;
	// nil: nothing is recorded, and every start hashes).
	inStep *inStepMatcher
	// blocks caches the block lists of disk copies (blockseed.go; zero:
	// nothing is cached).
	blocks blockCache
	// pollQMP opens a QMP monitor on a running domain for a frequent
	// poller (the backup's icount sample) without cgo: libvirt's remote
	// protocol in Go (qmp.RPCMonitor), whose waits leave the daemon's
	// one Go P to the hot path. It fails with qmp.ErrNoLocalSocket for a
	// libvirt URI that is not a local socket; nil in tests. Either way
	// hv.Monitor serves instead.
	pollQMP func(uuid string) (qmp.Monitor, error)
}

// inStepStore is where this host's in-step records are (zero: none).
func (e env) inStepStore() inStepStore {
	if e.inStep == nil {
		return inStepStore{}
	}
	return e.inStep.store
}

// qmp opens a QMP client on this host's running domain uuid; release ends
// it.
func (e env) qmp(uuid string) (client *qmp.Client, release func(), err error) {
	mon, err := e.hv.Monitor(uuid)
	if err != nil {
		return nil, nil, err
	}
	return qmp.NewClient(mon), func() { _ = mon.Disconnect() }, nil
}

// pollingQMP is qmp for a frequent poller: over pollQMP when there is
// one, else over hv.Monitor (libvirt's C library: each command is a cgo
// call that holds the daemon's Go P while it waits). Only a libvirt URI
// with no local socket (qmp.ErrNoLocalSocket: remote, session) falls back
// to the C library, logged once per run (*warned then true): a connection
// that fails or does not answer is an error, so that a hung or restarting
// libvirtd never gets the unbounded C call.
func (e env) pollingQMP(uuid string, warned *bool) (client *qmp.Client, release func(), err error) {
	if e.pollQMP == nil {
		return e.qmp(uuid)
	}
	mon, err := e.pollQMP(uuid)
	if errors.Is(err, qmp.ErrNoLocalSocket) {
		if !*warned {
			*warned = true
			e.log.WithError(err).Warnf("domain %s: sampling the replay through libvirt's C library, whose calls stall the daemon's other work while they wait (latency, not safety)", uuid)
		}
		return e.qmp(uuid)
	}
	if err != nil {
		return nil, nil, err
	}
	return qmp.NewClient(mon), func() { _ = mon.Disconnect() }, nil
}

// pauseVM stops uuid's vCPUs (QMP stop) while a split-brain claim is
// undecided: a copy that may lose must not run on (fail closed). It
// reports whether the VM was paused.
func (e env) pauseVM(uuid, why string) bool {
	client, release, err := e.qmp(uuid)
	if err != nil {
		e.log.WithError(err).Errorf("cannot pause domain %s (%s)", uuid, why)
		return false
	}
	defer release()
	if err := client.Stop(); err != nil {
		// A stop whose answer was lost (libvirt's connection dropped)
		// may have paused the VM; it then stays paused until an
		// operator resumes it: closed, not open. Reading the state
		// back cannot tell our stop from another job's (helper-105).
		e.log.WithError(err).Errorf("cannot pause domain %s (%s)", uuid, why)
		return false
	}
	e.log.Warnf("paused domain %s: %s", uuid, why)
	return true
}

// resumeVM undoes pauseVM: QMP cont, again every second until QEMU says
// it runs, the domain is gone, or stop is closed (libvirtd may be
// restarting: a winner must not stay paused). It reports whether QEMU
// said it runs.
func (e env) resumeVM(uuid string, stop <-chan struct{}) (running bool) {
	for {
		if client, release, err := e.qmp(uuid); err == nil {
			st, serr := client.QueryStatus()
			if serr == nil && st.Running {
				release()
				return true
			}
			if err := client.Cont(); err != nil {
				e.log.WithError(err).Errorf("cannot resume domain %s yet", uuid)
			} else if st, serr := client.QueryStatus(); serr == nil && st.Running {
				release()
				return true
			}
			release()
		} else if active, aerr := e.hv.IsActive(uuid); aerr == nil && !active {
			return false
		}
		select {
		case <-stop:
			return false
		case <-time.After(time.Second):
		}
	}
}

// destroy stops this host's QEMU of uuid at once and reports whether none
// runs any more.
func (e env) destroy(uuid, why string) bool {
	if active, err := e.hv.IsActive(uuid); err == nil && !active {
		return true
	}
	e.log.Warnf("destroying domain %s: %s", uuid, why)
	gone, err := e.hv.Destroy(uuid)
	if err != nil && !gone {
		e.log.WithError(err).Errorf("destroying %s", uuid)
	}
	return gone
}

// destroyUntilGone destroys uuid, again every second while libvirt cannot
// (it may be restarting: a halt must not leave a QEMU behind), until it is
// gone or stop is closed.
func (e env) destroyUntilGone(uuid, why string, stop <-chan struct{}) {
	for !e.destroy(uuid, why) {
		select {
		case <-stop:
			return
		case <-time.After(time.Second):
		}
	}
}

// undoStack collects the steps that release what a run acquired, in the
// order they were acquired; run takes them back in reverse, each once.
type undoStack struct {
	mu    sync.Mutex
	steps []func()
}

// push adds a release step.
func (u *undoStack) push(step func()) {
	u.mu.Lock()
	u.steps = append(u.steps, step)
	u.mu.Unlock()
}

// run releases everything pushed so far, last first.
func (u *undoStack) run() {
	for {
		u.mu.Lock()
		n := len(u.steps)
		if n == 0 {
			u.mu.Unlock()
			return
		}
		step := u.steps[n-1]
		u.steps = u.steps[:n-1]
		u.mu.Unlock()
		step()
	}
}

// recordLog is the primary's reading end of FIFO A
// (*logchan.RecordReader): the log its recording QEMU writes.
type recordLog interface {
	io.Reader
	// Produced is the number of log bytes QEMU has written so far
	// (read here or still in the pipe).
	Produced() (uint64, error)
	// Connected reports whether QEMU has opened FIFO A.
	Connected() bool
	Close() error
}

// replayLog is the backup's writing end of FIFO B (*logchan.Feeder): the
// log its replaying QEMU reads.
type replayLog interface {
	// Write writes whole events (logchan.Feeder.Write); it blocks while
	// FIFO B is full.
	Write(events []byte) error
	// WriteEnd writes the END event.
	WriteEnd() error
	// Offset is the number of event bytes written (stream offset).
	Offset() uint64
	// Instructions is the INSTRUCTION sum written.
	Instructions() uint64
	// Unread is the number of bytes QEMU has not read yet.
	Unread() (int, error)
	// ExecutedAtLeast is a lower bound of the replay's executed icount
	// from how much QEMU has read (logchan.Feeder.ExecutedAtLeast), with
	// the unread bytes it saw.
	ExecutedAtLeast() (icount uint64, unread int, err error)
	Close() error
}

// logPipes creates and opens FIFO A and FIFO B (fifoPipes); the unit
// tests use in-memory pipes.
type logPipes interface {
	// Record creates FIFO A at path, owned by uid:gid, and opens it for
	// reading.
	Record(path string, uid, gid int) (recordLog, error)
	// Replay creates FIFO B at path, owned by uid:gid, opens it for
	// writing and writes the log version (logVer) QEMU reads first.
	Replay(path string, uid, gid int, logVer uint32) (replayLog, error)
}

// fifoPipes is logPipes on named pipes (logchan). replayPipe is FIFO B's
// pipe buffer (bytes, Config.replayPipeBytes).
type fifoPipes struct {
	log        logrus.FieldLogger
	replayPipe int
}

func (fp fifoPipes) Record(path string, uid, gid int) (recordLog, error) {
	if err := logchan.CreateFIFO(path, uid, gid, 0o600); err != nil {
		return nil, err
	}
	rr, err := logchan.OpenRecordReader(path)
	if err != nil {
		_ = os.Remove(path)
		return nil, err
	}
	return rr, nil
}

func (fp fifoPipes) Replay(path string, uid, gid int, logVer uint32) (replayLog, error) {
	if err := logchan.CreateFIFO(path, uid, gid, 0o600); err != nil {
		return nil, err
	}
	feeder, err := logchan.NewFeeder(path, logVer)
	if err != nil {
		_ = os.Remove(path)
		return nil, err
	}
	// FIFO B holds up to replayPipe bytes: a whole received packet's
	// event goes in one write (Config.replayPipeBytes). Refused (a bigger
	// pipe than fs.pipe-max-size without CAP_SYS_RESOURCE, or the user over
	// fs.pipe-user-pages-soft), FIFO B keeps the size it has: a tighter
	// bound of the backup's lag, only slower under network load.
	if fp.replayPipe > 0 {
		if _, err := feeder.SetPipeSize(fp.replayPipe); err != nil {
			now, gerr := feeder.PipeSize()
			if gerr != nil {
				now = -1
			}
			fp.log.WithError(err).Warnf("FIFO B stays %d bytes, not %d (only throughput under network load suffers): raise fs.pipe-max-size or give libvirt-ftd CAP_SYS_RESOURCE", now, fp.replayPipe)
		}
	}
	return feeder, nil
}
