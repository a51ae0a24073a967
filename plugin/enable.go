package plugin

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// virt-ft enable and disable (issue 14): turn protection on or off by
// editing a domain's persistent definition for the operator, as `virsh
// edit` of the ft element would. libvirt's DEFINED event then runs the same
// path as a hand edit (handleDefined): the definition is rewritten for
// record/replay, or its generated wiring is removed.

// definitionOf finds the persistent definition of the domain an operator
// named: its name, UUID or (running) libvirt ID.
func (d *Daemon) definitionOf(op, arg string) (DomainDef, error) {
	if arg == "" {
		return DomainDef{}, fmt.Errorf("%s: name the domain (virt-ft %s DOMAIN)", op, op)
	}
	name := d.resolveName(arg)
	def, ok, err := d.hv.Definition(name)
	if err == nil && !ok {
		if names, lerr := d.hv.DomainNames(); lerr == nil {
			for _, n := range names {
				if cand, found, cerr := d.hv.Definition(n); cerr == nil && found && strings.EqualFold(cand.UUID, arg) {
					def, ok = cand, true
					break
				}
			}
		}
	}
	if err != nil {
		return DomainDef{}, fmt.Errorf("%s: %w", op, err)
	}
	if !ok {
		return DomainDef{}, fmt.Errorf("%s: libvirt has no persistent domain %q here (virsh list --all; a transient domain cannot be protected)", op, arg)
	}
	return def, nil
}

// enable adds the ft element, peer peer ("host" or "host:port") and every
// other value the default, to a domain's definition. It refuses, changing
// nothing, a domain that has one already or that its start would refuse
// (ftxml.Validate). The message says what happens next.
func (d *Daemon) enable(arg, peer string) (string, error) {
	def, err := d.definitionOf("enable", arg)
	if err != nil {
		return "", err
	}
	if _, present, _ := ftxml.ParseConfig(def.XML); present {
		return "", fmt.Errorf("enable: domain %q already has the ft element (virt-ft status, virt-ft check); to change it use virsh edit, or virt-ft disable first", def.Name)
	}
	if peer == "" {
		return "", errors.New("enable: name the backup host: virt-ft enable DOMAIN --peer HOST[:PORT]")
	}
	cfg := ftxml.DefaultConfig()
	if err := setPeer(&cfg, peer); err != nil {
		return "", fmt.Errorf("enable: --peer %q: %w", peer, err)
	}
	dom, err := ftxml.ParseDomain(def.XML)
	if err != nil {
		return "", fmt.Errorf("enable: domain %q: %w", def.Name, err)
	}
	if err := ftxml.SetConfig(dom, cfg); err != nil {
		return "", fmt.Errorf("enable: %w", err)
	}
	if _, err := ftxml.Validate(dom); err != nil {
		return "", fmt.Errorf("enable: nothing changed: %w", err)
	}
	out, err := dom.Marshal()
	if err != nil {
		return "", fmt.Errorf("enable: domain %q: %w", def.Name, err)
	}
	if err := d.hv.Define(out); err != nil {
		return "", fmt.Errorf("enable: redefining domain %q: %w", def.Name, err)
	}
	d.log.WithField("domain", def.Name).Infof("protection enabled (virt-ft enable), backup host %s", net.JoinHostPort(cfg.PeerAddress, strconv.Itoa(cfg.PeerPort)))
	msg := fmt.Sprintf("%s: protection enabled, backup host %s; every other setting is the default (virsh edit to change the ft element)", def.Name, net.JoinHostPort(cfg.PeerAddress, strconv.Itoa(cfg.PeerPort)))
	if active, err := d.hv.IsActive(def.UUID); err == nil && active {
		msg += "; it runs unprotected now and is protected from its next start"
	}
	return msg + "; virt-ft check " + def.Name + " asks the backup host too", nil
}

// disable removes the ft element from a domain's definition (the DEFINED
// event then removes the generated wiring).
func (d *Daemon) disable(arg string) (string, error) {
	def, err := d.definitionOf("disable", arg)
	if err != nil {
		return "", err
	}
	dom, err := ftxml.ParseDomain(def.XML)
	if err != nil {
		return "", fmt.Errorf("disable: domain %q: %w", def.Name, err)
	}
	found, err := ftxml.RemoveConfig(dom)
	if err != nil {
		return "", fmt.Errorf("disable: %w", err)
	}
	if !found {
		return "", fmt.Errorf("disable: domain %q has no ft element: it is not protected", def.Name)
	}
	out, err := dom.Marshal()
	if err != nil {
		return "", fmt.Errorf("disable: domain %q: %w", def.Name, err)
	}
	if err := d.hv.Define(out); err != nil {
		return "", fmt.Errorf("disable: redefining domain %q: %w", def.Name, err)
	}
	d.log.WithField("domain", def.Name).Info("protection disabled (virt-ft disable)")
	msg := def.Name + ": protection disabled: its next start is a plain VM's"
	if active, err := d.hv.IsActive(def.UUID); err == nil && active {
		msg += "; the running VM keeps its protection until it stops (virt-ft unprotect ends it now)"
	}
	return msg, nil
}
