package plugin

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/libvirt-ft/libvirt-ft/failover"
	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// Daemon is one libvirt-ftd: one per host.
type Daemon struct {
	cfg Config
	log *logrus.Logger
	lv  *libvirtConn

	qemuUID, qemuGID int
	arbiterID        string // this process in split-brain lock files

	mu   sync.Mutex
	doms map[string]*controller // by domain UUID
}

// New returns a daemon for cfg. It does not touch the system until Run.
func New(cfg Config, log *logrus.Logger) *Daemon {
	d := &Daemon{cfg: cfg, log: log, doms: map[string]*controller{}, arbiterID: arbiterIdentity(cfg.Listen)}
	d.lv = newLibvirtConn(cfg.LibvirtURI, log.WithField("part", "libvirt"), d.onLifecycle, d.rescan)
	return d
}

// Run serves until ctx is cancelled: the libvirt connection, the control
// socket and the peer listener.
func (d *Daemon) Run(ctx context.Context) error {
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
	_ = os.Chmod(d.cfg.ControlSocket, 0o600)
	pl, err := net.Listen("tcp", d.cfg.Listen)
	if err != nil {
		cl.Close()
		return fmt.Errorf("plugin: listen %s: %w; set listen in %s", d.cfg.Listen, err, DefaultConfigPath)
	}
	d.log.Infof("libvirt-ftd listening on %s (peers) and %s (control)", pl.Addr(), d.cfg.ControlSocket)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); d.lv.run(stop) }()
	go func() { defer wg.Done(); d.serveControl(cl) }()
	go func() { defer wg.Done(); d.servePeers(pl) }()
	<-ctx.Done()
	close(stop)
	cl.Close()
	pl.Close()
	d.shutdown()
	wg.Wait()
	_ = os.Remove(d.cfg.ControlSocket)
	return nil
}

func (d *Daemon) shutdown() {
	d.mu.Lock()
	cs := make([]*controller, 0, len(d.doms))
	for _, c := range d.doms {
		cs = append(cs, c)
	}
	d.mu.Unlock()
	for _, c := range cs {
		c.close("daemon stopping")
	}
}

// controllerFor returns the controller of uuid, creating it with role.
func (d *Daemon) controllerFor(uuid, name, role string) *controller {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.doms[uuid]
	if c == nil || (c.role != role && c.idle()) {
		c = newController(d, uuid, name, role)
		d.doms[uuid] = c
	}
	return c
}

func (d *Daemon) lookup(uuid string) *controller {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.doms[uuid]
}

func (d *Daemon) forget(uuid string, c *controller) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.doms[uuid] == c {
		delete(d.doms, uuid)
	}
}

// rescan looks at every domain after (re)connecting to libvirtd.
func (d *Daemon) rescan() {
	conn, err := d.lv.get()
	if err != nil {
		return
	}
	doms, err := conn.ListAllDomains(0)
	if err != nil {
		d.log.WithError(err).Warn("listing domains")
		return
	}
	for i := range doms {
		name, _ := doms[i].GetName()
		d.handleDefined(name)
		doms[i].Free()
	}
}

func (d *Daemon) onLifecycle(dom *libvirt.Domain, ev *libvirt.DomainEventLifecycle) {
	name, err := dom.GetName()
	if err != nil {
		return
	}
	switch ev.Event {
	case libvirt.DOMAIN_EVENT_DEFINED:
		go d.handleDefined(name)
	case libvirt.DOMAIN_EVENT_UNDEFINED:
		uuid, _ := dom.GetUUIDString()
		if c := d.lookup(uuid); c != nil && c.role == ftxml.RolePrimary && c.idle() {
			d.forget(uuid, c)
		}
	case libvirt.DOMAIN_EVENT_STOPPED:
		uuid, _ := dom.GetUUIDString()
		if c := d.lookup(uuid); c != nil {
			go func() {
				// Events arrive late: during go-live a new QEMU of the same
				// domain may already run.
				if conn, err := d.lv.get(); err == nil {
					if cur, err := conn.LookupDomainByUUIDString(uuid); err == nil {
						active, _ := cur.IsActive()
						cur.Free()
						if active {
							return
						}
					}
				}
				c.domainStopped("libvirt reported the domain stopped")
			}()
		}
	}
}

// handleDefined validates a (re)defined domain carrying the ft element and,
// when valid, rewrites its persistent definition into the primary's
// record/replay XML. An invalid domain is left exactly as the user wrote it
// and marked refused: its start will be refused by the hook.
func (d *Daemon) handleDefined(name string) {
	log := d.log.WithField("domain", name)
	conn, err := d.lv.get()
	if err != nil {
		return
	}
	dom, err := conn.LookupDomainByName(name)
	if err != nil {
		return
	}
	defer dom.Free()
	persistent, err := dom.IsPersistent()
	if err != nil || !persistent {
		return
	}
	xml, err := dom.GetXMLDesc(libvirt.DOMAIN_XML_INACTIVE)
	if err != nil {
		log.WithError(err).Warn("reading definition")
		return
	}
	uuid, _ := dom.GetUUIDString()
	cfg, present, perr := ftxml.ParseConfig(xml)
	if !present && perr == nil {
		if c := d.lookup(uuid); c != nil && c.idle() {
			d.forget(uuid, c)
		}
		return
	}
	if perr == nil && cfg.Role == ftxml.RoleBackup {
		return
	}
	c := d.controllerFor(uuid, name, ftxml.RolePrimary)
	if perr != nil {
		c.refuse(perr)
		log.Error(perr)
		return
	}
	c.setConfig(*cfg)
	var ld libvirtxml.Domain
	if err := ld.Unmarshal(xml); err != nil {
		c.refuse(err)
		return
	}
	warnings, verr := ftxml.Validate(&ld)
	if verr != nil {
		c.refuse(verr)
		log.Error(verr)
		return
	}
	if ld.Devices != nil && !qemuFlushesLog(ld.Devices.Emulator) {
		warnings = append(warnings, fmt.Sprintf("/domain/devices/emulator: %q is not libvirt-ft's patched QEMU: "+
			"replication works, but the backup cannot go live reliably (stock QEMU 7.2) and diverges under network traffic; "+
			"install libvirt-ft-qemu on both hosts and set <emulator>%s</emulator>", ld.Devices.Emulator, patchedQEMUPath))
	}
	for _, w := range warnings {
		log.Warn(w)
	}
	newXML, changed, err := ftxml.NeedsRewrite(xml)
	if err != nil {
		c.refuse(err)
		log.Error(err)
		return
	}
	if changed {
		if _, err := conn.DomainDefineXML(newXML); err != nil {
			err = fmt.Errorf("libvirt-ft: domain %q: rewriting the definition for record/replay: %w", name, err)
			c.refuse(err)
			log.Error(err)
			return
		}
		log.Info("rewrote the definition for record/replay (primary)")
	}
	c.defined(warnings)
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
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			req, err := ctl.ReadRequest(bufio.NewReaderSize(c, 1<<20))
			_ = c.SetReadDeadline(time.Time{})
			if err != nil {
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
		return ctl.Response{OK: true, Domains: d.status(req.Domain)}
	case ctl.OpFailover:
		if err := d.switchover(req.Domain); err != nil {
			return ctl.Response{Error: err.Error()}
		}
		return ctl.Response{OK: true, Domains: d.status(req.Domain)}
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

// switchover starts a planned switchover (virt-ft failover) of a domain
// protected here, on either host: the backup goes live at the end of the
// log, then the primary is stopped (failover package, "Planned
// switchover"). It refuses a domain that is not replicating.
func (d *Daemon) switchover(domain string) error {
	if domain == "" {
		return fmt.Errorf("failover: name the domain (virt-ft failover DOMAIN)")
	}
	d.mu.Lock()
	var c *controller
	for _, x := range d.doms {
		if x.name == domain || x.uuid == domain {
			c = x
		}
	}
	d.mu.Unlock()
	if c == nil {
		return fmt.Errorf("failover: domain %q is not protected on this host (no ft element, or libvirt-ftd has not seen it)", domain)
	}
	c.mu.Lock()
	drv, state, role, started := c.drv, c.state, c.role, c.started
	c.mu.Unlock()
	if drv == nil || state != StateReplicating {
		return fmt.Errorf("failover: domain %q is %s here (role %s), not replicating: a switchover needs a running primary and a backup that replays its log; see virt-ft status", domain, state, role)
	}
	if st, _ := drv.view(); st.State != failover.StateReplicating || !st.ChannelOpen || st.PeerEnded {
		why := st.Reason
		if st.PeerEnded {
			why = "the primary's VM ended; the backup replays the rest of its log and stops"
		}
		return fmt.Errorf("failover: domain %q cannot switch over (failover state %s: %s); see virt-ft status", domain, st.State, why)
	}
	if role == ftxml.RoleBackup && !started {
		// Going live needs the backup's QEMU, which starts with the
		// first log received; without it the switchover would hang.
		return fmt.Errorf("failover: domain %q: the backup has received no log yet (the primary's QEMU is starting); retry once virt-ft status shows log acknowledged", domain)
	}
	c.log.Info("planned switchover requested (virt-ft failover)")
	drv.post(failover.SwitchoverRequested{})
	return nil
}

func (d *Daemon) status(domain string) []ctl.DomainStatus {
	d.mu.Lock()
	cs := make([]*controller, 0, len(d.doms))
	for _, c := range d.doms {
		cs = append(cs, c)
	}
	d.mu.Unlock()
	var out []ctl.DomainStatus
	for _, c := range cs {
		s := c.status()
		if domain != "" && s.Name != domain && s.UUID != domain {
			continue
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// handleHook runs what a libvirt hook invocation asks. Only "prepare" can
// fail; the error text is what libvirt shows the user.
func (d *Daemon) handleHook(h ctl.Hook) error {
	cfg, present, err := ftxml.ParseConfig(h.XML)
	if err != nil {
		return err
	}
	if !present {
		return nil
	}
	var ld libvirtxml.Domain
	if err := ld.Unmarshal(h.XML); err != nil {
		return fmt.Errorf("libvirt-ft: domain %q: %w", h.Domain, err)
	}
	uuid := ld.UUID
	log := d.log.WithFields(logrus.Fields{"domain": h.Domain, "hook": h.Operation})
	switch h.Operation {
	case "prepare":
		if c := d.lookup(uuid); c != nil && cfg.Role == ftxml.RolePrimary && c.restartingLive() {
			return c.prepareLive(&ld)
		}
		if cfg.Role == ftxml.RoleBackup {
			c := d.lookup(uuid)
			if c == nil || c.role != ftxml.RoleBackup {
				return fmt.Errorf("libvirt-ft: domain %q is a backup (ft role=\"backup\"); only libvirt-ftd starts backups, when the primary starts", h.Domain)
			}
			return nil
		}
		c := d.controllerFor(uuid, h.Domain, ftxml.RolePrimary)
		c.setConfig(*cfg)
		warnings, verr := ftxml.Validate(&ld)
		if verr != nil {
			c.refuse(verr)
			log.Error(verr)
			return verr
		}
		for _, w := range warnings {
			log.Warn(w)
		}
		if !ftxml.IsGenerated(&ld) {
			err := fmt.Errorf("libvirt-ft: domain %q: the definition has not been prepared for record/replay yet (libvirt-ftd rewrites it right after `virsh define`); check `virt-ft status %s` and start it again", h.Domain, h.Domain)
			log.Error(err)
			return err
		}
		if err := c.preparePrimary(h.XML, &ld); err != nil {
			log.Error(err)
			return err
		}
		return nil
	case "started":
		if c := d.lookup(uuid); c != nil {
			c.domainStarted()
		}
	case "stopped", "release":
		if c := d.lookup(uuid); c != nil && c.currentRole() == cfg.Role {
			c.domainStopped("hook " + h.Operation)
		}
	}
	return nil
}

func (d *Daemon) arbiter() arbiter {
	return arbiter{dir: d.cfg.ArbiterDir, me: d.arbiterID}
}

// destroyDomain stops this host's QEMU of uuid at once (virDomainDestroy).
func (d *Daemon) destroyDomain(uuid, why string) (gone bool) {
	conn, err := d.lv.get()
	if err != nil {
		d.log.WithError(err).Errorf("cannot destroy %s (%s)", uuid, why)
		return false
	}
	dom, err := conn.LookupDomainByUUIDString(uuid)
	if err != nil {
		return isNoDomain(err)
	}
	defer dom.Free()
	if active, err := dom.IsActive(); err == nil && !active {
		return true
	}
	d.log.Warnf("destroying domain %s: %s", uuid, why)
	if err := dom.Destroy(); err != nil {
		d.log.WithError(err).Errorf("destroying %s", uuid)
		return isNoDomain(err)
	}
	return true
}

// isNoDomain reports whether err is libvirt's "no such domain": the domain
// is gone.
func isNoDomain(err error) bool {
	var lerr libvirt.Error
	return errors.As(err, &lerr) && lerr.Code == libvirt.ERR_NO_DOMAIN
}
