package plugin

import (
	"sync"
	"time"

	"github.com/sirupsen/logrus"

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
