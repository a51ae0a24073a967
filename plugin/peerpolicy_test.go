package plugin

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/libvirt-ft/libvirt-ft/logchan"
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
	// A qcow2 header (version 3) whose backing file is /etc/shadow.
	backed := filepath.Join(images, "backed.qcow2")
	hdr := make([]byte, 512)
	copy(hdr, "QFI\xfb")
	binary.BigEndian.PutUint32(hdr[4:], 3)
	binary.BigEndian.PutUint64(hdr[8:], 256)
	binary.BigEndian.PutUint32(hdr[16:], uint32(len("/etc/shadow")))
	copy(hdr[256:], "/etc/shadow")
	if err := os.WriteFile(backed, hdr, 0o600); err != nil {
		t.Fatal(err)
	}
	// A link in seed-dirs to a file outside them, as a kernel.
	kernelLink := filepath.Join(images, "vmlinuz")
	if err := os.Symlink("/etc/passwd", kernelLink); err != nil {
		t.Fatal(err)
	}
	// A root-only file in seed-dirs, as a kernel (an initramfs with keys).
	secret := filepath.Join(images, "initrd-keys.img")
	if err := os.WriteFile(secret, []byte("key"), 0o600); err != nil {
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
	// What virt-install and virt-manager add to a plain VM passes (but
	// the guest agent's channel and the virtio-rng, which validation
	// refuses: a virtio channel of another name stands for the channel).
	common := strings.Replace(withDisk(disk), "</devices>", `<interface type='network'><source network='default'/><model type='virtio'/></interface>
    <channel type='unix'><target type='virtio' name='org.example.sensor.0'/></channel>
    <graphics type='vnc' port='-1' autoport='yes'><listen type='address' address='127.0.0.1'/></graphics>
    <console type='pty'><target type='serial' port='0'/></console>
    <input type='tablet' bus='usb'/>
    <audio id='1' type='spice'/>
  </devices>`, 1)
	if err := cfg.checkPeerDomain(primary(t, common)); err != nil {
		t.Fatalf("a domain with the usual devices: %v", err)
	}
	for name, c := range map[string]struct{ xml, want string }{
		"qemu arg": {strings.Replace(base, "</domain>", "<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><qemu:arg value='-chardev'/><qemu:arg value='file,id=x,path=/etc/shadow'/></qemu:commandline></domain>", 1),
			"/domain/qemu:commandline"},
		"seclabel":                           {strings.Replace(base, "</devices>", "</devices><seclabel type='none'/>", 1), "/domain/seclabel"},
		"hostdev":                            {strings.Replace(base, "</devices>", "<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='0' slot='1' function='0'/></source></hostdev></devices>", 1), "/domain/devices/hostdev"},
		"filesystem":                         {strings.Replace(base, "</devices>", "<filesystem type='mount'><source dir='/'/><target dir='root'/></filesystem></devices>", 1), "/domain/devices/filesystem"},
		"emulator":                           {strings.Replace(base, "/nonexistent/qemu-system-x86_64", "/bin/sh", 1), "allowed-emulators"},
		"disk outside seed-dirs":             {withDisk("/etc/shadow"), "outside the backup host's seed-dirs"},
		"disk through a symlink":             {withDisk(link), "not a regular file"},
		"disk after .. past a link":          {withDisk(images + "/etcdir/../web.qcow2"), "clean form"},
		"kernel after .. past a link":        {strings.Replace(base, "/var/lib/libvirt/boot/web-vmlinuz", "/var/lib/libvirt/boot/x/../web-vmlinuz", 1), "/domain/os/kernel"},
		"qcow2 backing file":                 {withDisk(backed), "names a backing file"},
		"kernel":                             {strings.Replace(base, "/var/lib/libvirt/boot/web-vmlinuz", "/etc/shadow", 1), "/domain/os/kernel"},
		"nvram":                              {strings.Replace(base, "</os>", "<nvram>/root/x.fd</nvram></os>", 1), "/domain/os/nvram"},
		"serial file":                        {strings.Replace(base, "/var/log/libvirt/qemu/web-serial.log", "/etc/cron.d/x", 1), "/domain/devices/serial[1]"},
		"channel tcp":                        {strings.Replace(base, "</devices>", "<channel type='tcp'><source mode='connect' host='10.0.0.9' service='22'/><target type='virtio' name='x'/></channel></devices>", 1), "/domain/devices/channel[1]"},
		"tpm":                                {strings.Replace(base, "</devices>", "<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm></devices>", 1), "/domain/devices/tpm"},
		"shmem":                              {strings.Replace(base, "</devices>", "<shmem name='x'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem></devices>", 1), "/domain/devices/shmem"},
		"ethernet":                           {strings.Replace(base, "</devices>", "<interface type='ethernet'><script path='/tmp/x'/><model type='virtio'/></interface></devices>", 1), "only bridge, network and user"},
		"interface script":                   {strings.Replace(base, "</devices>", "<interface type='bridge'><source bridge='br0'/><script path='/tmp/x'/></interface></devices>", 1), "/domain/devices/interface[1]/script"},
		"vnc on all addresses":               {strings.Replace(base, "</devices>", "<graphics type='vnc' port='-1' autoport='yes' listen='0.0.0.0'/></devices>", 1), "/domain/devices/graphics[1]"},
		"memory file":                        {strings.Replace(base, "<vcpu", "<memoryBacking><source type='file'/></memoryBacking><vcpu", 1), "/domain/memoryBacking/source"},
		"nvram template":                     {strings.Replace(base, "</os>", "<nvram template='/etc/shadow'>/var/lib/libvirt/qemu/nvram/web_VARS.fd</nvram></os>", 1), "/domain/os/nvram/@template"},
		"acpi table":                         {strings.Replace(base, "</os>", "<acpi><table type='slic'>/etc/shadow</table></acpi></os>", 1), "/domain/os/acpi/table"},
		"nvdimm":                             {strings.Replace(base, "</devices>", "<memory model='nvdimm'><source><path>/etc/shadow</path></source><target><size unit='KiB'>524288</size></target></memory></devices>", 1), "/domain/devices/memory"},
		"serial log":                         {strings.Replace(base, "<target type='isa-serial' port='0'/>", "<log file='/etc/cron.d/x'/><target type='isa-serial' port='0'/>", 1), "/domain/devices/serial[1]/log"},
		"interface rom":                      {strings.Replace(base, "</devices>", "<interface type='bridge'><source bridge='br0'/><rom file='/etc/shadow'/></interface></devices>", 1), "/domain/devices/interface[1]/rom"},
		"kernel through a link in seed-dirs": {strings.Replace(base, "/var/lib/libvirt/boot/web-vmlinuz", kernelLink, 1), "/domain/os/kernel"},
		"fw_cfg file":                        {strings.Replace(base, "</os>", "</os><sysinfo type='fwcfg'><entry name='opt/x' file='/etc/shadow'/></sysinfo>", 1), "/domain/sysinfo/entry/@file"},
		"vnc socket":                         {strings.Replace(base, "</devices>", "<graphics type='vnc' socket='/etc/x.sock'/></devices>", 1), "graphics[1]/@socket: socket path /etc/x.sock"},
		"vnc listen socket":                  {strings.Replace(base, "</devices>", "<graphics type='vnc'><listen type='socket' socket='/etc/x.sock'/></graphics></devices>", 1), "listen[1]/@socket"},
		"rendernode":                         {strings.Replace(base, "</devices>", "<graphics type='egl-headless'><gl rendernode='/dev/dri/renderD128'/></graphics></devices>", 1), "rendernode"},
		"disk reservations":                  {strings.Replace(withDisk(disk), "<source file='"+disk+"'/>", "<source file='"+disk+"'><reservations managed='no'><source type='unix' path='/etc/x.sock' mode='client'/></reservations></source>", 1), "reservations"},
		"channel to another domain's socket": {strings.Replace(base, "</devices>", "<channel type='unix'><source mode='connect' path='/var/lib/libvirt/qemu/domain-3-db/monitor.sock'/><target type='virtio' name='x.y'/></channel></devices>", 1), "socket path /var/lib/libvirt/qemu/domain-3-db/monitor.sock"},
		"channel connecting":                 {strings.Replace(base, "</devices>", "<channel type='unix'><source mode='connect'/><target type='virtio' name='x.y'/></channel></devices>", 1), "mode='bind'"},
		"another domain's nvram":             {strings.Replace(base, "</os>", "<nvram>/var/lib/libvirt/qemu/nvram/db_VARS.fd</nvram></os>", 1), "not this domain's NVRAM file"},
		"root-only initrd":                   {strings.Replace(base, "/var/lib/libvirt/boot/web-vmlinuz", secret, 1), "not readable by everyone"},
		"pulseaudio":                         {strings.Replace(base, "</devices>", "<audio id='1' type='pulseaudio' serverName='unix:/run/user/0/pulse/native'/></devices>", 1), "/domain/devices/audio[1]"},
		"dbus graphics with an address":      {strings.Replace(base, "</devices>", "<graphics type='dbus' address='unix:path=/run/libvirt/qemu/dbus/x.sock'/></devices>", 1), "/domain/devices/graphics[1]"},
		"sdl graphics":                       {strings.Replace(base, "</devices>", "<graphics type='sdl' display=':0'/></devices>", 1), "/domain/devices/graphics[1]"},
		"relative kernel":                    {strings.Replace(base, "/var/lib/libvirt/boot/web-vmlinuz", "boot/web-vmlinuz", 1), "not an absolute path"},
		"backend log file":                   {strings.Replace(base, "</devices>", "<interface type='user'><backend type='passt' logFile='/etc/cron.d/x'/></interface></devices>", 1), "/domain/devices/interface[1]/backend/@logFile"},
	} {
		err := cfg.checkPeerDomain(primary(t, c.xml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want a refusal naming %q", name, err, c.want)
		}
	}
	// The primary's own validation refuses these random number
	// generators; a hostile peer sends one anyway.
	for name, rng := range map[string]string{
		"rng egd":     "<rng model='virtio'><backend model='egd' type='tcp'><source mode='connect' host='10.0.0.9' service='1'/></backend></rng>",
		"rng device":  "<rng model='virtio'><backend model='random'>/dev/sda</backend></rng>",
		"rng urandom": "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>",
		"rng builtin": "<rng model='virtio'><backend model='builtin'/></rng>",
	} {
		doc := strings.Replace(primary(t, base), "</devices>", rng+"</devices>", 1)
		if err := cfg.checkPeerDomain(doc); err == nil || !strings.Contains(err.Error(), "/domain/devices/rng[1]") {
			t.Errorf("%s: %v, want a refusal naming /domain/devices/rng[1]", name, err)
		}
	}
	// The primary's own validation refuses a backing store; a hostile
	// peer sends one anyway.
	bs := strings.Replace(withDisk(disk), "<target dev='vda'", "<backingStore type='file'><format type='raw'/><source file='/etc/shadow'/></backingStore><target dev='vda'", 1)
	if err := cfg.checkPeerDomain(bs); err == nil || !strings.Contains(err.Error(), "backing stores") {
		t.Errorf("backingStore: %v, want a refusal", err)
	}
	if err := cfg.checkPeerDomain(strings.Replace(withDisk(disk), "type='qcow2'", "type='vmdk'", 1)); err == nil || !strings.Contains(err.Error(), "image format") {
		t.Errorf("vmdk: %v, want a refusal", err)
	}
	// The backup host's admin may allow QEMU arguments.
	cfg.AllowPeerQEMUArgs = true
	arg := strings.Replace(base, "</domain>", "<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><qemu:arg value='-fw_cfg'/><qemu:arg value='name=opt/x,string=y'/></qemu:commandline></domain>", 1)
	if err := cfg.checkPeerDomain(primary(t, arg)); err != nil {
		t.Fatalf("allow-peer-qemu-args: %v", err)
	}
}

// Seeding and hashing: only real files under seed-dirs that no other
// domain on the backup host uses, never under a running domain, never
// beyond the free space.
func TestSeedProblem(t *testing.T) {
	images := t.TempDir()
	if err := os.Symlink("/etc", filepath.Join(images, "etc")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/shadow", filepath.Join(images, "shadow.qcow2")); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(images, "victim.qcow2")
	hv := quietHV()
	other := otherDomainXML(t, "0e2b6d1c-1111-4222-8333-944455556666", "victim", victim)
	if err := hv.Define(other); err != nil {
		t.Fatal(err)
	}
	// Another domain's disk named through a link to the seed dir (as
	// when /var/lib/libvirt/images links to /data/images): one existing,
	// one not yet created.
	alias := filepath.Join(t.TempDir(), "alias")
	if err := os.Symlink(images, alias); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(images, "aliased.qcow2"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"aliased.qcow2", "aliased-new.qcow2"} {
		x := strings.Replace(strings.Replace(runDomainXML(t.TempDir()), runUUID, fmt.Sprintf("0e2b6d1c-2222-4222-8333-94445555666%d", i), 1), "<name>web</name>", fmt.Sprintf("<name>alias%d</name>", i), 1)
		x = strings.Replace(x, "<controller type='pci'", "<disk type='file' device='disk'><source file='"+filepath.Join(alias, name)+"'/><target dev='vda' bus='virtio'/></disk><controller type='pci'", 1)
		if err := hv.Define(x); err != nil {
			t.Fatal(err)
		}
	}
	cfg := Config{SeedDirs: []string{images}}
	d := newDaemon(cfg, logrus.New(), hv, nil)
	// A peer naming the victim's own UUID gains nothing.
	if got := d.seedProblem("0e2b6d1c-1111-4222-8333-944455556666", "10.0.0.1", victim, 1<<20); !strings.Contains(got, `domain "victim"`) {
		t.Errorf("seeding the victim's image under its own UUID: %q, want a refusal", got)
	}
	for _, c := range []struct {
		path string
		size int64
		want string
	}{
		{filepath.Join(images, "web.qcow2"), 1 << 20, ""},
		{filepath.Join(images, "web.qcow2"), 0, ""},
		{"/etc/shadow", 0, "outside seed-dirs"},
		{filepath.Join(images, "etc", "shadow"), 0, "symbolic link"},
		{filepath.Join(images, "shadow.qcow2"), 0, "not a regular file"},
		// ".." after a link to a directory: the kernel resolves it
		// beyond the link (images/etc/../passwd is /passwd).
		{images + "/etc/../web.qcow2", 0, "clean form"},
		{images + "/./web.qcow2", 1 << 20, "clean form"},
		{images + "//web.qcow2", 0, "clean form"},
		{"web.qcow2", 0, "absolute"},
		{victim, 1 << 20, `domain "victim"`},
		{victim, 0, `domain "victim"`},
		{filepath.Join(images, "aliased.qcow2"), 1 << 20, `domain "alias0"`},
		{filepath.Join(images, "aliased-new.qcow2"), 1 << 20, `domain "alias1"`},
		{filepath.Join(images, "huge.qcow2"), 1 << 62, "does not fit"},
	} {
		c := c
		got := d.seedProblem(runUUID, "10.0.0.1", c.path, c.size)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("seedProblem(%s, %d) = %q, want %q", c.path, c.size, got, c.want)
		}
	}
}

// under judges a path as written and as resolved on this host: a link
// inside an allowed directory to a file or directory outside it does not
// pass; a path not there yet is judged by its nearest existing ancestor.
func TestUnderResolvesLinks(t *testing.T) {
	dir := t.TempDir()
	if err := os.Symlink("/etc", filepath.Join(dir, "etc")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "passwd")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ok.log"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/nonexistent-libvirt-ft/x", filepath.Join(dir, "dangling")); err != nil {
		t.Fatal(err)
	}
	// A directory not there yet is judged through its existing ancestor.
	if !under(dir+"/notyet/x.log", dir+"/notyet") {
		t.Error("a path in an allowed directory not created yet")
	}
	for path, want := range map[string]bool{
		dir + "/ok.log":               true,
		dir + "/new.sock":             true,
		dir + "/missing/sub/x":        true,
		dir + "/etc/passwd":           false,
		dir + "/etc/new.sock":         false,
		dir + "/passwd":               false,
		dir + "/../x":                 false,
		dir:                           false,
		"relative/x":                  false,
		filepath.Dir(dir) + "/x.sock": false,
	} {
		if got := under(path, dir); got != want {
			t.Errorf("under(%s) = %v, want %v", path, got, want)
		}
	}
}

// A peer's domain may not boot from another domain's disk (QEMU would
// read it into the peer's guest), nor arm a backup whose disk a seed on
// another connection is writing (the copy would land after the checks).
func TestBackupHostChecksBootFilesAndSeeds(t *testing.T) {
	images := t.TempDir()
	victim := filepath.Join(images, "db.qcow2")
	if err := os.WriteFile(victim, []byte("db"), 0o644); err != nil {
		t.Fatal(err)
	}
	hv := quietHV()
	other := otherDomainXML(t, "0e2b6d1c-1111-4222-8333-944455556666", "db", victim)
	if err := hv.Define(other); err != nil {
		t.Fatal(err)
	}
	d := newDaemon(Config{SeedDirs: []string{images}, Arbiter: "none"}, logrus.New(), hv, nil)
	base := runDomainXML(t.TempDir())
	req := logchan.ControlRequest{Op: logchan.OpPrepareBackup, UUID: runUUID, Name: "web", Arbiter: "none",
		XML: strings.Replace(base, "/var/lib/libvirt/boot/web-vmlinuz", victim, 1)}
	if err := d.backupHostChecks(req, "10.0.0.1", nil); err == nil || !strings.Contains(err.Error(), `/domain/os/kernel `+victim+` is a disk of domain "db"`) {
		t.Fatalf("another domain's disk as a kernel: %v", err)
	}
	// The other way: another domain's kernel as a disk (the backup's QEMU
	// would write into it), and an armed backup's disk (not in libvirt).
	kernel := filepath.Join(images, "mail-vmlinuz")
	mail := otherDomainXML(t, "0e2b6d1c-3333-4222-8333-944455556666", "mail", "")
	if err := hv.Define(strings.Replace(mail, "/var/lib/libvirt/boot/web-vmlinuz", kernel, 1)); err != nil {
		t.Fatal(err)
	}
	asDisk := func(p string) string {
		return strings.Replace(base, "<controller type='pci'", "<disk type='file' device='disk'><source file='"+p+"'/><target dev='vda' bus='virtio'/></disk><controller type='pci'", 1)
	}
	req.XML = asDisk(kernel)
	if err := d.backupHostChecks(req, "10.0.0.1", nil); err == nil || !strings.Contains(err.Error(), `is a boot file of domain "mail"`) {
		t.Fatalf("another domain's kernel as a disk: %v", err)
	}
	armed := filepath.Join(images, "armed.qcow2")
	d.entry("0e2b6d1c-4444-4222-8333-944455556666", "armed").setRun(&backupRun{files: []string{armed}, stop: make(chan struct{})})
	req.XML = asDisk(armed)
	if err := d.backupHostChecks(req, "10.0.0.1", nil); err == nil || !strings.Contains(err.Error(), `domain "armed"'s backup run`) {
		t.Fatalf("an armed backup's disk: %v", err)
	}
	// And an armed backup's disk as a kernel (read into the peer's guest).
	armedDisk := filepath.Join(images, "armed-disk.qcow2")
	d.entry("0e2b6d1c-5555-4222-8333-944455556666", "armed2").setRun(&backupRun{disks: []string{armedDisk}, files: []string{armedDisk}, stop: make(chan struct{})})
	req.XML = strings.Replace(base, "/var/lib/libvirt/boot/web-vmlinuz", armedDisk, 1)
	if err := d.backupHostChecks(req, "10.0.0.1", nil); err == nil || !strings.Contains(err.Error(), `/domain/os/kernel `+armedDisk+` is a file of domain "armed2"'s backup run`) {
		t.Fatalf("an armed backup's disk as a kernel: %v", err)
	}
	mine := filepath.Join(images, "web.qcow2")
	req.XML = strings.Replace(base, "<controller type='pci'", "<disk type='file' device='disk'><source file='"+mine+"'/><target dev='vda' bus='virtio'/></disk><controller type='pci'", 1)
	if err := d.backupHostChecks(req, "10.0.0.1", nil); err != nil {
		t.Fatalf("a plain domain: %v", err)
	}
	d.seedingPaths.Store(dirKey(mine), true)
	if err := d.backupHostChecks(req, "10.0.0.1", nil); err == nil || !strings.Contains(err.Error(), "a seed of "+mine+" is under way") {
		t.Fatalf("arming while the disk is being seeded: %v", err)
	}
}
