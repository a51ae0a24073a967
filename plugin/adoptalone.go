package plugin

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"libvirt.org/go/libvirtxml"

	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
	"github.com/libvirt-ft/libvirt-ft/qmp"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// A VM that runs alone when libvirt-ftd starts (it went live here, or this
// daemon's restart resolved it to run alone: restart.go) is adopted as a
// run of this daemon, so that it can be re-protected (protect.go,
// automatically with <ft:reprotect auto="yes">) without a reboot. Its
// output gates' connections ended with the old daemon: QEMU's socket
// chardevs do not reconnect, and a filter-redirector cannot be given
// another chardev (chardev-change refuses a frontend without a hotswap
// handler). So they are made again with QMP: the filter-redirector
// deleted (its status is off: frames go straight to the network
// meanwhile, as they did), its two chardevs removed and added again on
// new listening sockets of this daemon at the same paths, and a new
// filter-redirector added, status off, on the same netdev and queue: the
// last of the interface's filters, where generate put it. The VM does not
// record, so when this happens changes nothing a backup replays.
// A re-protection later turns these gates into a primary's (reprotected).

// errGateWiring is wrapped when a VM's output gates cannot be connected to
// this daemon again.
var errGateWiring = errors.New("output gates not connected again")

// rewireGates connects the output gates of the running QEMU of domain uuid
// (dom, as libvirt reports it: a generated definition with the output
// gate on) to new gates of this daemon, pass-through (filters off); see
// the comment above. Errors wrap errGateWiring and name the QMP command
// that failed; the VM keeps running with its filters off or deleted
// (frames go straight to the network either way) and nothing is left
// open here.
func rewireGates(e env, client *qmp.Client, uuid string, cfg ftxml.Config, dom *libvirtxml.Domain) (*outputGates, error) {
	n := len(dom.Devices.Interfaces)
	wires, err := ftxml.GateWiring(dom, n)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errGateWiring, err)
	}
	for j, w := range wires {
		// Only sockets of this daemon's own state directory, whatever
		// the definition says.
		if out, in := ftxml.GateSocketPaths(cfg, uuid, j); w.OutPath != out || w.InPath != in {
			return nil, fmt.Errorf("%w: interface %d's gate sockets are %s and %s, not %s and %s", errGateWiring, j, w.OutPath, w.InPath, out, in)
		}
	}
	og, err := openBackupGates(e, uuid, cfg, dom)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errGateWiring, err)
	}
	fail := func(err error) (*outputGates, error) {
		og.close()
		return nil, fmt.Errorf("%w: %v", errGateWiring, err)
	}
	// What exists now: a daemon that died part way through an earlier
	// rewiring left some of it deleted (each step is skipped when its
	// object is gone already).
	var objs []struct {
		Name string `json:"name"`
	}
	var chardevs []struct {
		Label string `json:"label"`
	}
	if err := client.Execute("qom-list", map[string]any{"path": "/objects"}, &objs); err != nil {
		return fail(fmt.Errorf("qom-list /objects: %v", err))
	}
	if err := client.Execute("query-chardev", nil, &chardevs); err != nil {
		return fail(fmt.Errorf("query-chardev: %v", err))
	}
	have := map[string]bool{}
	for _, o := range objs {
		have["object "+o.Name] = true
	}
	for _, c := range chardevs {
		have["chardev "+c.Label] = true
	}
	for j, w := range wires {
		addFilter := map[string]any{"qom-type": "filter-redirector", "id": w.FilterID, "netdev": w.Netdev,
			"outdev": w.OutID, "indev": w.InID, "status": "off"}
		if w.Queue != "" {
			addFilter["queue"] = w.Queue
		}
		steps := []struct {
			cmd  string
			args any
			skip bool
		}{
			{"object-del", map[string]any{"id": w.FilterID}, !have["object "+w.FilterID]},
			{"chardev-remove", map[string]any{"id": w.OutID}, !have["chardev "+w.OutID]},
			{"chardev-remove", map[string]any{"id": w.InID}, !have["chardev "+w.InID]},
			{"chardev-add", socketChardev(w.OutID, w.OutPath), false},
			{"chardev-add", socketChardev(w.InID, w.InPath), false},
			{"object-add", addFilter, false},
		}
		for _, s := range steps {
			if s.skip {
				continue
			}
			if err := client.Execute(s.cmd, s.args, nil); err != nil {
				return fail(fmt.Errorf("interface %d: %s: %v", j, s.cmd, err))
			}
		}
	}
	// QEMU connected within chardev-add; the gates accept in the
	// background.
	if !pollUntil(5*time.Second, func() bool { return og.connected() }) {
		return fail(errors.New("QEMU did not connect to the new gate sockets within 5 s"))
	}
	og.unprotect()
	return og, nil
}

// socketChardev is chardev-add's arguments for a unix socket client
// chardev id connected to path (qapi/char.json ChardevBackend).
func socketChardev(id, path string) map[string]any {
	return map[string]any{"id": id, "backend": map[string]any{"type": "socket", "data": map[string]any{
		"addr":   map[string]any{"type": "unix", "data": map[string]any{"path": path}},
		"server": false}}}
}

// connected reports whether QEMU is connected to both sockets of every
// gate.
func (og *outputGates) connected() bool {
	og.mu.Lock()
	defer og.mu.Unlock()
	for j := range og.gates {
		if og.outs[j] == nil || og.ins[j] == nil {
			return false
		}
	}
	return true
}

// adoptAlone makes the VM of def, running alone here after this daemon's
// restart (its pairing record rec, role "live"), a run of this daemon in
// state with detail, so that it can be re-protected onto peer (host:port
// of the other host's libvirt-ftd: adoptPeer); with its ft
// element's <ft:reprotect auto="yes"> the automatic re-protection starts
// watching its peer. A VM whose gates cannot be connected again is left
// as it was, running alone, with a warning: it can be protected again
// only by a restart of the domain.
func (d *Daemon) adoptAlone(dm *domain, def DomainDef, cfg ftxml.Config, rec pairingRecord, peer string, client *qmp.Client, state ctl.State, detail string, log logrus.FieldLogger) {
	e := d.env()
	if cfg.Role != ftxml.RolePrimary && cfg.Role != ftxml.RoleBackup {
		return
	}
	dom, err := ftxml.ParseDomain(def.XML)
	if err != nil {
		log.WithError(err).Warn("not adopted for re-protection: its definition cannot be read")
		return
	}
	p := newPrimaryRun(e, def.UUID, def.Name, cfg)
	p.peer, p.epoch, p.running, p.adoptedAlone = peer, rec.Epoch, true, true
	// What a re-protection arms the new backup from: the persistent
	// definition here (the user's, or the one go-live defined), never
	// libvirt's live XML (it holds this host's <seclabel>, which the
	// peer refuses, and, for a backup armed by a re-protection,
	// -incoming defer).
	if p.primaryXML, err = d.reprotectBase(def); err != nil {
		log.WithError(err).Warn("not adopted for re-protection: it runs on alone; restart the domain to protect it again")
		return
	}
	// A former backup: its QEMU runs with the backup's definition.
	p.liveXML = cfg.Role == ftxml.RoleBackup
	gates := &outputGates{}
	if cfg.OutputGate && dom.Devices != nil && len(dom.Devices.Interfaces) > 0 {
		if gates, err = rewireGates(e, client, def.UUID, cfg, dom); err != nil {
			log.WithError(err).Warn("not adopted for re-protection: it runs on alone; restart the domain to protect it again")
			return
		}
	}
	p.gates = gates
	p.undo.push(p.releaseGates)
	p.state, p.detail = state, detail
	// A re-protection the old daemon left armed on the peer (it died
	// before the new backup's log channel was up) would refuse the next
	// arming until its own timeout (up to 3 min): cancel-backup ends it
	// (cancelIncoming). An arming whose log channel is up is not
	// touched. Before the run is installed: no re-protection of this
	// daemon can have armed anything yet.
	p.cancelPeerBackup()
	dm.setRun(p)
	// Installed first, checked after: a stopped hook that came before
	// setRun found no run to end (qemuStopped).
	if !d.sameQEMU(def) {
		p.close("its QEMU is gone")
		return
	}
	log.Info("adopted: it can be re-protected (virt-ft protect; automatically with <ft:reprotect auto=\"yes\">)")
	go d.autoReprotect(dm, p)
}

// adoptPeer is the libvirt-ftd a VM adopted by adoptAlone is re-protected
// onto: the backup's daemon a "primary" pairing record names (role, the
// record's role before the restart), else the host its ft element names
// as its peer, at its port, as autoReprotect asks for a VM that went live
// (a "live" or "backup" record names the address the primary connected
// from, not one to dial).
func adoptPeer(cfg ftxml.Config, role, recPeer string) string {
	if role == "primary" && recPeer != "" {
		return recPeer
	}
	return peerAddr(cfg)
}

// reprotectBase is the definition a re-protection of def's running VM arms
// its new backup from (newReprotectRun): the persistent definition of
// def's name on this host, when it has def's UUID and an ft element with
// role primary. Errors say which of these fails.
func (d *Daemon) reprotectBase(def DomainDef) (string, error) {
	pdef, ok, err := d.hv.Definition(def.Name)
	switch {
	case err != nil:
		return "", fmt.Errorf("its persistent definition: %w", err)
	case !ok:
		return "", fmt.Errorf("domain %q has no persistent definition here", def.Name)
	case pdef.UUID != def.UUID:
		return "", fmt.Errorf("the persistent definition of %q has UUID %s, the running VM %s", def.Name, pdef.UUID, def.UUID)
	}
	if cfg, present, err := ftxml.ParseConfig(pdef.XML); err != nil || !present || cfg.Role != ftxml.RolePrimary {
		return "", fmt.Errorf("the persistent definition of %q has no ft element with role primary (%v)", def.Name, err)
	}
	// The new backup is built from the definition and must take the
	// running VM's state: a definition edited since the VM started
	// (sameAsRunning's comparison) is refused.
	a, aerr := ftxml.ParseDomain(pdef.XML)
	b, berr := ftxml.ParseDomain(def.XML)
	if aerr == nil && berr == nil {
		if x, y := domainShape(a), domainShape(b); !slices.Equal(x, y) {
			return "", fmt.Errorf("the persistent definition of %q differs from the running VM (%s against %s): a backup built from it could not take the VM's state; restart the domain to protect it again, or undo the change", def.Name, strings.Join(x, " "), strings.Join(y, " "))
		}
	}
	return pdef.XML, nil
}
