package ftxml

import (
	"fmt"

	"libvirt.org/go/libvirtxml"
)

// Incoming returns the backup's domain XML (the output of Backup) made to
// wait for a running VM's migrated state instead of booting (issue 13,
// re-protection; docs/replay.md §15): its -icount gains rrincoming=on
// (packaging/qemu 0019: the replay starts at the incoming state, not at
// power-on) and -incoming defer is added (the migration's address is given
// later, by QMP migrate-incoming). Start it paused (virsh start --paused):
// QEMU stays in run state inmigrate until the state arrives. Only for the
// transient domain's start: the definition the backup keeps is backupXML.
// Errors: ErrNotGeneratedBackup when backupXML does not replay.
func Incoming(backupXML string) (string, error) {
	dom, err := ParseDomain(backupXML)
	if err != nil {
		return "", err
	}
	if generatedMode(dom) != modeReplay {
		return "", fmt.Errorf("%w: domain %q does not replay", ErrNotGeneratedBackup, dom.Name)
	}
	cl := dom.QEMUCommandline
	for i := 0; i+1 < len(cl.Args); i++ {
		if cl.Args[i].Value == "-icount" && isOurs("-icount", cl.Args[i+1].Value) {
			cl.Args[i+1].Value += ",rrincoming=on"
			break
		}
	}
	cl.Args = append(cl.Args, libvirtxml.DomainQEMUCommandlineArg{Value: "-incoming"}, libvirtxml.DomainQEMUCommandlineArg{Value: "defer"})
	return dom.Marshal()
}

// ReplayDisk is one protected disk as a generated domain's QEMU names its
// block nodes.
type ReplayDisk struct {
	// Path is the image file.
	Path string
	// Node is the blkreplay node the disk's device is attached to
	// (ft-rr<i>, generate).
	Node string
	// Format is libvirt's format node below it (LibvirtFormatNodeName):
	// what a re-protection exports over NBD on the new backup.
	Format string
}

// ReplayDisks lists dom's protected disks in the order generate numbers
// them (document order).
func ReplayDisks(dom *libvirtxml.Domain) []ReplayDisk {
	if dom.Devices == nil {
		return nil
	}
	var out []ReplayDisk
	i := 0
	for p := range dom.Devices.Disks {
		d := &dom.Devices.Disks[p]
		if !protectedDisk(d) {
			continue
		}
		rd := ReplayDisk{Node: fmt.Sprintf("%s%d", rrNodePrefix, i), Format: LibvirtFormatNodeName(p, len(dom.Devices.Disks))}
		if d.Source != nil && d.Source.File != nil {
			rd.Path = d.Source.File.File
		}
		out = append(out, rd)
		i++
	}
	return out
}
