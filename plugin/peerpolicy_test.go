package plugin

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// The backup host refuses a domain that asks for more than a replaying VM,
// naming each element; a plain protected domain passes.
func TestPeerDomainPolicy(t *testing.T) {
	images := t.TempDir()
	disk := filepath.Join(images, "web.qcow2")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(images, "shadow.qcow2")
	if err := os.Symlink("/etc/shadow", link); err != nil {
		t.Fatal(err)
	}
	cfg := Config{SeedDirs: []string{images}, AllowedEmulators: []string{"/nonexistent/qemu-system-x86_64"}}
	base := runDomainXML(t.TempDir())
	withDisk := func(path string) string {
		return strings.Replace(base, "<controller type='pci'", "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='"+path+"'/><target dev='vda' bus='virtio'/></disk>\n    <controller type='pci'", 1)
	}
	primary := func(t *testing.T, user string) string {
		t.Helper()
		out, err := ftxml.Primary(user, ftxml.HostConfig{})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if err := cfg.checkPeerDomain(primary(t, withDisk(disk))); err != nil {
		t.Fatalf("a plain domain: %v", err)
	}
	for name, c := range map[string]struct{ xml, want string }{
		"qemu arg": {strings.Replace(base, "</domain>", "<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><qemu:arg value='-chardev'/><qemu:arg value='file,id=x,path=/etc/shadow'/></qemu:commandline></domain>", 1),
			"/domain/qemu:commandline"},
		"seclabel":               {strings.Replace(base, "</devices>", "</devices><seclabel type='none'/>", 1), "/domain/seclabel"},
		"hostdev":                {strings.Replace(base, "</devices>", "<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='0' slot='1' function='0'/></source></hostdev></devices>", 1), "/domain/devices/hostdev"},
		"filesystem":             {strings.Replace(base, "</devices>", "<filesystem type='mount'><source dir='/'/><target dir='root'/></filesystem></devices>", 1), "/domain/devices/filesystem"},
		"emulator":               {strings.Replace(base, "/nonexistent/qemu-system-x86_64", "/bin/sh", 1), "allowed-emulators"},
		"disk outside seed-dirs": {withDisk("/etc/shadow"), "outside the backup host's seed-dirs"},
		"disk through a symlink": {withDisk(link), "not a regular file"},
	} {
		err := cfg.checkPeerDomain(primary(t, c.xml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want a refusal naming %q", name, err, c.want)
		}
	}
	// The backup host's admin may allow QEMU arguments.
	cfg.AllowPeerQEMUArgs = true
	arg := strings.Replace(base, "</domain>", "<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><qemu:arg value='-fw_cfg'/><qemu:arg value='name=opt/x,string=y'/></qemu:commandline></domain>", 1)
	if err := cfg.checkPeerDomain(primary(t, arg)); err != nil {
		t.Fatalf("allow-peer-qemu-args: %v", err)
	}
}
