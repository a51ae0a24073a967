package plugin

import (
	"context"
	"fmt"
	"os"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/libvirt-ft/libvirt-ft/logchan"
	"github.com/libvirt-ft/libvirt-ft/qmp"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// qemuVersion is the local QEMU version as libvirt reports it ("7.2.22").
func (d *Daemon) qemuVersion() (string, error) {
	conn, err := d.lv.get()
	if err != nil {
		return "", err
	}
	v, err := conn.GetVersion()
	if err != nil {
		return "", fmt.Errorf("asking libvirt for the QEMU version: %w", err)
	}
	return fmt.Sprintf("%d.%d.%d", v/1000000, v/1000%1000, v%1000), nil
}

// prepareBackup arms a backup of the primary described by req: it generates
// the backup's domain XML (same machine, rr=replay), creates FIFO B and opens
// it with the feeder (version dword written). The backup domain itself is
// started when the first log entries arrive, because QEMU in replay mode
// reads the first event during its start-up.
func (d *Daemon) prepareBackup(req controlRequest, primaryHost string) error {
	ours, err := d.qemuVersion()
	if err != nil {
		return err
	}
	if ours != req.QEMUVersion {
		return fmt.Errorf("QEMU differs: primary host runs %s, backup host runs %s; install the same QEMU on both hosts", req.QEMUVersion, ours)
	}
	logVer, err := logchan.LogVersionForQEMU(ours)
	if err != nil {
		return err
	}
	if logVer != req.LogVersion {
		return fmt.Errorf("replay log version differs: primary %#x, backup %#x", req.LogVersion, logVer)
	}
	if c := d.lookup(req.UUID); c != nil && !c.idle() {
		if c.role == ftxml.RolePrimary {
			return fmt.Errorf("domain %q runs here as a primary", req.Name)
		}
		// A stale backup from an earlier run of the primary: replace it.
		c.close("replaced by a new backup")
		d.forget(req.UUID, c)
	}
	if conn, err := d.lv.get(); err == nil {
		if dom, err := conn.LookupDomainByUUIDString(req.UUID); err == nil {
			active, _ := dom.IsActive()
			dom.Free()
			if active {
				return fmt.Errorf("domain %q is already running on the backup host", req.Name)
			}
		}
	}
	backupXML, err := ftxml.Backup(req.XML, ftxml.HostConfig{PeerAddress: primaryHost})
	if err != nil {
		return err
	}
	cfg, _, err := ftxml.ParseConfig(backupXML)
	if err != nil {
		return err
	}
	fifo := ftxml.ReplayFIFOPath(*cfg, req.UUID)
	if err := logchan.CreateFIFO(fifo, d.qemuUID, d.qemuGID, 0o600); err != nil {
		return err
	}
	feeder, err := logchan.NewFeeder(fifo, logVer)
	if err != nil {
		_ = os.Remove(fifo)
		return err
	}
	c := d.controllerFor(req.UUID, req.Name, ftxml.RoleBackup)
	c.mu.Lock()
	c.cfg = *cfg
	c.backupXML, c.replayFIFO, c.feeder = backupXML, fifo, feeder
	c.sentBytes, c.ackedBytes, c.logInstr, c.backupIcnt = 0, 0, 0, 0
	c.started = false
	c.mu.Unlock()
	c.setState(StateArmed, "waiting for the primary's log")
	return nil
}

// cancelBackup undoes prepareBackup when the primary's prepare failed.
func (d *Daemon) cancelBackup(uuid string) {
	if c := d.lookup(uuid); c != nil && c.role == ftxml.RoleBackup {
		c.mu.Lock()
		started := c.started
		c.mu.Unlock()
		if !started {
			c.close("primary's prepare failed")
			d.forget(uuid, c)
		}
	}
}

// runBackupLog serves one log channel from the primary: every Log frame is
// checked (contiguous offset, whole events only), written to FIFO B, and
// acknowledged with the offset now in FIFO B and the backup QEMU's icount.
// A malformed frame drops the connection, never the VM.
func (c *controller) runBackupLog(pc *peerConn) {
	c.mu.Lock()
	feeder := c.feeder
	c.link = pc
	c.peerAddr = pc.remote()
	c.mu.Unlock()
	if feeder == nil {
		pc.bye("no backup armed")
		pc.Close()
		return
	}
	c.setState(StateReplicating, "log channel up")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.backupHeartbeats(ctx, pc)
	var fed uint64
	for {
		m, err := pc.recv()
		if err != nil {
			c.setState(StateUnprotected, "log channel from the primary lost: "+err.Error())
			pc.Close()
			return
		}
		switch m.kind {
		case msgHeartbeat:
			c.heartbeat()
		case msgBye:
			c.setState(StateStopped, "primary said bye: "+m.text)
			pc.Close()
			return
		case msgLog:
			if m.offset != fed {
				c.setState(StateUnprotected, fmt.Sprintf("log frame at offset %d, expected %d: dropping the channel", m.offset, fed))
				pc.Close()
				return
			}
			// Feeder.Write refuses anything but whole events, writing nothing.
			if err := feeder.Write(m.data); err != nil {
				c.setState(StateUnprotected, fmt.Sprintf("log frame at offset %d: %v: dropping the channel", m.offset, err))
				pc.Close()
				return
			}
			fed += uint64(len(m.data))
			c.mu.Lock()
			c.sentBytes, c.ackedBytes = fed, fed
			c.logInstr = feeder.Instructions()
			instr, icount := c.logInstr, c.backupIcnt
			start := !c.started
			c.started = true
			c.mu.Unlock()
			if start {
				go c.startBackupDomain(ctx)
			}
			if err := pc.sendAck(fed, icount, instr); err != nil {
				c.setState(StateUnprotected, "log channel lost: "+err.Error())
				pc.Close()
				return
			}
		}
	}
}

func (c *controller) backupHeartbeats(ctx context.Context, pc *peerConn) {
	c.mu.Lock()
	iv := c.cfg.HeartbeatInterval
	c.mu.Unlock()
	if iv <= 0 {
		iv = 100 * time.Millisecond
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if pc.sendHeartbeat() != nil {
				return
			}
		}
	}
}

// startBackupDomain creates the transient backup domain (libvirt starts QEMU
// with rr=replay on FIFO B) and then samples its icount for lag figures.
func (c *controller) startBackupDomain(ctx context.Context) {
	conn, err := c.d.lv.get()
	if err == nil {
		var dom *libvirt.Domain
		dom, err = conn.DomainCreateXML(c.backupXML, 0)
		if err == nil {
			c.domainStarted()
			c.log.Info("backup domain started in replay mode")
			go c.sampleIcount(ctx, conn, dom)
			return
		}
	}
	c.setState(StateUnprotected, "starting the backup domain failed: "+err.Error())
	c.close("backup domain failed to start")
	c.d.forget(c.uuid, c)
}

func (c *controller) sampleIcount(ctx context.Context, conn *libvirt.Connect, dom *libvirt.Domain) {
	defer dom.Free()
	client := qmp.NewClient(qmp.NewLibvirtMonitor(nil, dom))
	t := time.NewTicker(time.Duration(c.d.cfg.StatusIntervalMS) * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.done:
			return
		case <-t.C:
			ri, err := client.QueryReplay()
			if err != nil {
				continue
			}
			c.mu.Lock()
			if ri.Icount > c.backupIcnt {
				c.backupIcnt = ri.Icount
			}
			c.mu.Unlock()
		}
	}
}
