package plugin

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"libvirt.org/go/libvirtxml"

	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// checkPeerDomain is the backup host's trust boundary (issue 11; FT
// practice: the peer may only ask for what its paired domain needs). The
// primary's daemon sends the domain it records; the backup host generates
// the backup's XML from it (ftxml.Backup) only if, with libvirt-ft's own
// generated parts removed, it asks for nothing that would give the peer
// more than a replaying VM: no QEMU arguments or overrides of its own
// (unless allow-peer-qemu-args), no security label, no host devices or
// shared file systems, an emulator from allowed-emulators, and disk images
// that are regular files under seed-dirs (libvirt gives them to QEMU's
// user). Each refusal names the element and the fix.
func (c Config) checkPeerDomain(primaryXML string) error {
	user, err := ftxml.StripGenerated(primaryXML)
	if err != nil {
		return err
	}
	dom, err := ftxml.ParseDomain(user)
	if err != nil {
		return err
	}
	var ps []string
	add := func(field, why string) { ps = append(ps, field+": "+why) }
	if cl := dom.QEMUCommandline; cl != nil && (len(cl.Args) > 0 || len(cl.Envs) > 0) && !c.AllowPeerQEMUArgs {
		add("/domain/qemu:commandline", "QEMU arguments libvirt-ft did not generate; remove them, or set allow-peer-qemu-args: true on the backup host")
	}
	if ov := dom.QEMUOverride; ov != nil && len(ov.Devices) > 0 && !c.AllowPeerQEMUArgs {
		add("/domain/qemu:override", "device overrides libvirt-ft did not generate; remove them, or set allow-peer-qemu-args: true on the backup host")
	}
	if dom.QEMUCapabilities != nil {
		add("/domain/qemu:capabilities", "is not accepted from the peer; remove it")
	}
	if len(dom.SecLabel) > 0 {
		add("/domain/seclabel", "the backup host keeps its own security driver's labels; remove <seclabel>")
	}
	if dom.Devices != nil {
		if len(dom.Devices.Hostdevs) > 0 {
			add("/domain/devices/hostdev", "host devices cannot be replayed and are not given to the peer; remove them")
		}
		if len(dom.Devices.Filesystems) > 0 {
			add("/domain/devices/filesystem", "shared file systems are not replayed and are not given to the peer; remove them")
		}
		if e := dom.Devices.Emulator; e != "" && !slices.Contains(c.AllowedEmulators, e) {
			add("/domain/devices/emulator", fmt.Sprintf("%q is not in the backup host's allowed-emulators %v; install the same QEMU on both hosts and list it there", e, c.AllowedEmulators))
		}
		for i, d := range dom.Devices.Disks {
			if p := diskProblem(c, d); p != "" {
				add(fmt.Sprintf("/domain/devices/disk[%d]", i+1), p)
			}
		}
	}
	if len(ps) > 0 {
		return fmt.Errorf("the backup host refuses domain %q from the peer: %s", dom.Name, strings.Join(ps, "; "))
	}
	return nil
}

// diskProblem says why the backup host will not give disk d to a replaying
// QEMU, or "".
func diskProblem(c Config, d libvirtxml.DomainDisk) string {
	if d.Source == nil {
		return ""
	}
	switch {
	case d.Source.File != nil:
		p := d.Source.File.File
		if p == "" {
			return ""
		}
		if !c.seedAllowed(p) {
			return fmt.Sprintf("image %s is outside the backup host's seed-dirs %v; move it there or add its directory", p, c.SeedDirs)
		}
		if fi, err := os.Lstat(p); err == nil && !fi.Mode().IsRegular() {
			return fmt.Sprintf("image %s is not a regular file here (a link or device): refused", p)
		}
		if real, err := filepath.EvalSymlinks(filepath.Dir(p)); err == nil && real != filepath.Clean(filepath.Dir(p)) {
			return fmt.Sprintf("image %s lies under a symbolic link here: refused", p)
		}
		return ""
	case d.Source.Block != nil, d.Source.Dir != nil, d.Source.Network != nil, d.Source.Volume != nil, d.Source.NVME != nil, d.Source.VHostUser != nil:
		return "only file-backed disk images are accepted from the peer"
	}
	return ""
}
