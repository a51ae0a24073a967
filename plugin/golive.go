package plugin

import (
	"fmt"
	"io"
	"os"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/qmp"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// snapshotName is the internal snapshot that carries the backup's state
// across the go-live restart (DESIGN.md "Go-live on stock QEMU").
const snapshotName = "ft-golive"

// goLive turns the drained backup into a running, recording primary on this
// host (DESIGN.md, checked on QEMU 7.2): stop; savevm (the snapshot carries
// the "replay" vmstate section, registered only by a QEMU started with rr=);
// destroy the replaying QEMU; start the domain again with rr=record into a
// fresh FIFO (read and discarded locally until a new backup attaches) and
// -loadvm; define its persistent definition (without -loadvm) on this host.
func (c *controller) goLive() error {
	t0 := time.Now()
	conn, err := c.d.lv.get()
	if err != nil {
		return err
	}
	dom, err := conn.LookupDomainByUUIDString(c.uuid)
	if err != nil {
		return fmt.Errorf("go-live: the backup domain is gone: %w", err)
	}
	defer dom.Free()
	client := qmp.NewClient(qmp.NewLibvirtMonitor(nil, dom))
	// The drain ends when the backup's icount reached the log's; the
	// patched QEMU leaves replay mode when it reads the END after it,
	// which may come a moment later. Give it that moment before taking
	// the stock path.
	mode := ""
	for deadline := time.Now().Add(2 * time.Second); ; {
		if ri, err := client.QueryReplay(); err == nil {
			mode = ri.Mode
		}
		if mode != "play" || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if mode == "none" {
		// The backup's QEMU (with packaging/qemu's end-of-log patch) left
		// replay mode at END and runs on as a normal QEMU: it is live
		// already, with no restart. It does not record a new log.
		return c.continuedLive(conn, client, t0)
	}
	if err := client.Stop(); err != nil {
		return fmt.Errorf("go-live: stop: %w", err)
	}
	tStop := time.Now()
	// QEMU refuses a snapshot while replay has async events queued
	// (replay_can_snapshot, replay/replay-snapshot.c). Let the VM run a
	// moment and try again.
	var serr error
	for try := 0; try < 50; try++ {
		if serr = client.SaveVM(snapshotName); serr == nil {
			break
		}
		c.log.WithError(serr).Warnf("go-live: savevm refused (try %d)", try+1)
		_ = client.Cont()
		time.Sleep(20 * time.Millisecond)
		_ = client.Stop()
	}
	if serr != nil {
		return fmt.Errorf("go-live: %w", serr)
	}
	tSave := time.Now()

	c.mu.Lock()
	backupXML := c.backupXML
	c.mu.Unlock()
	persistent, err := ftxml.Primary(backupXML, ftxml.HostConfig{})
	if err != nil {
		return fmt.Errorf("go-live: generating the primary's XML: %w", err)
	}
	live, err := withLoadVM(persistent, snapshotName)
	if err != nil {
		return err
	}
	if err := dom.Destroy(); err != nil {
		return fmt.Errorf("go-live: stopping the replaying QEMU: %w", err)
	}
	c.mu.Lock()
	feeder, fifoB := c.feeder, c.replayFIFO
	c.feeder, c.replayFIFO = nil, ""
	c.mu.Unlock()
	if feeder != nil {
		feeder.Close()
	}
	if fifoB != "" {
		_ = os.Remove(fifoB)
	}
	// The new QEMU connects to the output gate sockets again (ftxml.Primary
	// with the gate on): it gets fresh gates that pass frames through, as
	// this host runs alone. The replayed frames the old gates held are
	// lost with the replaying QEMU on this path.
	c.releaseGates()
	c.mu.Lock()
	cfg := c.cfg
	c.mu.Unlock()
	var newGates *outputGates
	if ldom, err := ftxml.ParseDomain(live); err == nil {
		if newGates, err = c.openBackupGates(cfg, ldom); err != nil {
			return fmt.Errorf("go-live: output gates for the new primary: %w", err)
		}
		newGates.unprotect()
		c.mu.Lock()
		c.gates = newGates
		c.mu.Unlock()
	}
	tDestroy := time.Now()
	newDom, err := conn.DomainCreateXML(live, 0)
	if err != nil {
		return fmt.Errorf("go-live: starting the new primary: %w", err)
	}
	if newGates != nil && len(newGates.gates) > 0 {
		gateFiltersOff(c, qmp.NewClient(qmp.NewLibvirtMonitor(nil, newDom)), len(newGates.gates))
	}
	newDom.Free()
	tStart := time.Now()
	if _, err := conn.DomainDefineXML(persistent); err != nil {
		c.log.WithError(err).Warn("go-live: defining the persistent definition on this host")
	}
	c.mu.Lock()
	c.live, c.goingLive, c.role = true, false, ftxml.RolePrimary
	c.running = true
	c.goLiveInfo = fmt.Sprintf("stop %d ms, savevm %d ms, destroy %d ms, start with -loadvm %d ms",
		tStop.Sub(t0).Milliseconds(), tSave.Sub(tStop).Milliseconds(), tDestroy.Sub(tSave).Milliseconds(), tStart.Sub(tDestroy).Milliseconds())
	c.mu.Unlock()
	c.log.Infof("went live: %s", c.goLiveInfo)
	c.setState(StateLive, "running on this host since go-live; no backup")
	return nil
}

// continuedLive records a go-live in which the backup's QEMU simply went on
// running after the end of the log; the definition is made persistent on
// this host.
func (c *controller) continuedLive(conn interface {
	DomainDefineXML(string) (*libvirt.Domain, error)
}, client *qmp.Client, t0 time.Time) error {
	c.mu.Lock()
	backupXML := c.backupXML
	c.mu.Unlock()
	// From now on this host speaks for the VM; before announce-self, whose
	// RARP frames pass the same filters. With the output gate, the
	// backup's gates hold every frame the guest transmitted and the
	// primary had not reported sent: replayed ones whose release the
	// primary may not have made (its last heartbeat's count lags by up to
	// one interval; duplicates are harmless to TCP) and the ones this
	// guest produced since it left replay mode at END. They are sent now,
	// in order, before the filters are turned off. Without the gate the replayed
	// guest's frames went into a null chardev (ftxml.Backup): turn that
	// filter off (frames sent between END and here are lost).
	c.mu.Lock()
	gates := c.gates
	c.mu.Unlock()
	if gates != nil && len(gates.gates) > 0 {
		n := gates.unprotect()
		// Then let frames bypass the gates: the live VM's network must
		// not depend on this daemon, and QEMU's own frames (announce-
		// self's RARP, sent raw) lose their raw flag through a
		// filter-redirector and reach the tap mangled. With the filter
		// off QEMU stops reading IN, so first wait until it has read
		// what was sent; a frame the guest transmits in the moment
		// between that and qom-set may be lost (TCP resends it).
		sent := gates.waitSent(500 * time.Millisecond)
		c.log.Infof("go-live: sent the %d frames the output gates held (replayed ones the primary had not reported sent, and the live guest's since END); all read by QEMU: %v", n, sent)
		gateFiltersOff(c, client, len(gates.gates))
	} else if dom, err := ftxml.ParseDomain(backupXML); err == nil && dom.Devices != nil {
		gateFiltersOff(c, client, len(dom.Devices.Interfaces))
	}
	if persistent, err := ftxml.Primary(backupXML, ftxml.HostConfig{}); err == nil {
		if dom, err := conn.DomainDefineXML(persistent); err == nil {
			dom.Free()
		} else {
			c.log.WithError(err).Warn("go-live: defining the persistent definition on this host")
		}
	}
	c.mu.Lock()
	c.live, c.goingLive = true, false
	c.running = true
	c.goLiveInfo = fmt.Sprintf("the backup's QEMU left replay mode at the end of the log and ran on (%d ms)", time.Since(t0).Milliseconds())
	c.mu.Unlock()
	c.log.Infof("went live: %s", c.goLiveInfo)
	c.setState(StateLive, "running on this host since go-live; no backup; not recording")
	return nil
}

// gateFiltersOff turns the filter-redirector of interfaces 0..n-1 off
// (qom-set <id> status off): frames go straight to the network.
func gateFiltersOff(c *controller, client *qmp.Client, n int) {
	for j := 0; j < n; j++ {
		if err := client.Execute("qom-set", map[string]any{"path": "/objects/" + ftxml.GateFilterID(j),
			"property": "status", "value": "off"}, nil); err != nil {
			c.log.WithError(err).Errorf("go-live: cannot open interface %d to the network (qom-set %s status off); the VM runs without it", j, ftxml.GateFilterID(j))
		}
	}
}

// withLoadVM adds -loadvm NAME to a domain's qemu:commandline.
func withLoadVM(domainXML, name string) (string, error) {
	dom, err := ftxml.ParseDomain(domainXML)
	if err != nil {
		return "", err
	}
	if dom.QEMUCommandline == nil {
		dom.QEMUCommandline = &libvirtxml.DomainQEMUCommandline{}
	}
	dom.QEMUCommandline.Args = append(dom.QEMUCommandline.Args,
		libvirtxml.DomainQEMUCommandlineArg{Value: "-loadvm"}, libvirtxml.DomainQEMUCommandlineArg{Value: name})
	return dom.Marshal()
}

// prepareLive is the prepare hook of the domain restarting as a primary on
// this host during go-live: no peer to ask; create the record FIFO and drain
// it locally so the new primary never blocks (it runs unprotected until a
// new backup attaches).
func (c *controller) prepareLive(dom *libvirtxml.Domain) error {
	c.mu.Lock()
	cfg := c.cfg
	c.mu.Unlock()
	fifo := ftxml.RecordFIFOPath(cfg, c.uuid)
	if err := logchan.CreateFIFO(fifo, c.d.qemuUID, c.d.qemuGID, 0o600); err != nil {
		return err
	}
	rr, err := logchan.OpenRecordReader(fifo)
	if err != nil {
		_ = os.Remove(fifo)
		return err
	}
	c.mu.Lock()
	c.recordFIFO, c.rr = fifo, rr
	c.mu.Unlock()
	go func() {
		_, _ = io.Copy(io.Discard, rr)
		rr.Close()
		_ = os.Remove(fifo)
	}()
	return nil
}

// announce advertises the VM's MAC from its new host (QMP announce-self:
// RARP frames), so that switches learn where it went.
func (c *controller) announce() {
	client, done, err := c.d.domainQMP(c.uuid)
	if err != nil {
		return
	}
	defer done()
	if err := client.AnnounceSelf(); err != nil {
		c.log.WithError(err).Warn("announce-self")
		return
	}
	c.log.Info("announced the VM's MAC (announce-self)")
}

// cleanupAfterLive deletes the go-live snapshot: the new primary has loaded it.
func (c *controller) cleanupAfterLive() {
	c.mu.Lock()
	live := c.live
	c.mu.Unlock()
	if !live {
		return
	}
	client, done, err := c.d.domainQMP(c.uuid)
	if err != nil {
		return
	}
	defer done()
	if _, err := client.HumanMonitorCommand("delvm " + snapshotName); err != nil {
		c.log.WithError(err).Warn("deleting the go-live snapshot")
	}
}

// domainQMP returns a QMP client for this host's running domain uuid (over
// libvirt's monitor pass-through) and a function that releases it.
func (d *Daemon) domainQMP(uuid string) (*qmp.Client, func(), error) {
	conn, err := d.lv.get()
	if err != nil {
		return nil, nil, err
	}
	dom, err := conn.LookupDomainByUUIDString(uuid)
	if err != nil {
		return nil, nil, err
	}
	return qmp.NewClient(qmp.NewLibvirtMonitor(nil, dom)), func() { dom.Free() }, nil
}
