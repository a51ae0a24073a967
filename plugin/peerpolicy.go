package plugin

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
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
	for _, si := range dom.SysInfo {
		if si.FWCfg == nil {
			continue
		}
		for _, e := range si.FWCfg.Entry {
			if e.File != "" {
				add("/domain/sysinfo/entry/@file", fmt.Sprintf("%s: fw_cfg entries read from host files are not accepted from the peer (QEMU would hand the backup host's file to the guest); give the value inline", e.File))
				break
			}
		}
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
		devicePolicy(c, dom.Devices, add)
	}
	if o := dom.OS; o != nil {
		for field, p := range map[string]string{"kernel": o.Kernel, "initrd": o.Initrd, "dtb": o.DTB} {
			if p == "" {
				continue
			}
			switch {
			case !filepath.IsAbs(p):
				add("/domain/os/"+field, fmt.Sprintf("%s is not an absolute path: name the file from /", p))
			case filepath.Clean(p) != p:
				add("/domain/os/"+field, fmt.Sprintf("%s is not a path in clean form: write it as %s", p, filepath.Clean(p)))
			case !c.bootFileAllowed(p):
				add("/domain/os/"+field, fmt.Sprintf("%s is outside the directories a peer may boot from (seed-dirs %v, %v), as written or with its links followed on the backup host; move it there", p, c.SeedDirs, bootDirs))
			default:
				// libvirt hands boot files to QEMU's user: never one
				// that only root may read (an initramfs with keys).
				if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o004 == 0 {
					add("/domain/os/"+field, fmt.Sprintf("%s is not readable by everyone on the backup host (mode %v): libvirt would hand it to QEMU's user; copy a world-readable one for the guest", p, fi.Mode().Perm()))
				}
			}
		}
		if o.Loader != nil && o.Loader.Path != "" && !under(o.Loader.Path, "/usr/share") {
			add("/domain/os/loader", fmt.Sprintf("%s is not under /usr/share (firmware installed by packages)", o.Loader.Path))
		}
		if n := o.NVRam; n != nil {
			if n.NVRam != "" && !under(n.NVRam, nvramDir) {
				add("/domain/os/nvram", fmt.Sprintf("%s is not under %s", n.NVRam, nvramDir))
			} else if base := filepath.Join(nvramDir, dom.Name+"_VARS"); n.NVRam != "" && n.NVRam != base+".fd" && n.NVRam != base+".qcow2" {
				// Another domain's variables (its Secure Boot keys) are not
				// the peer's to read or write.
				add("/domain/os/nvram", fmt.Sprintf("%s is not this domain's NVRAM file: name it %s.fd (%s.qcow2 for a qcow2 one), libvirt's default", n.NVRam, base, base))
			}
			if n.Template != "" && !under(n.Template, "/usr/share") {
				add("/domain/os/nvram/@template", fmt.Sprintf("%s is not under /usr/share (firmware installed by packages)", n.Template))
			}
			if n.Source != nil {
				add("/domain/os/nvram/source", "NVRAM sources are not accepted from the peer; name the file in <nvram> under "+nvramDir)
			}
		}
		if o.ACPI != nil && len(o.ACPI.Tables) > 0 {
			add("/domain/os/acpi/table", "ACPI tables from host files are not accepted from the peer; remove them")
		}
	}
	if mb := dom.MemoryBacking; mb != nil && mb.MemorySource != nil && mb.MemorySource.Type == "file" {
		add("/domain/memoryBacking/source", "file-backed guest memory is not accepted from the peer; use memfd or anonymous memory")
	}
	if len(ps) > 0 {
		return fmt.Errorf("the backup host refuses domain %q from the peer: %s", dom.Name, strings.Join(ps, "; "))
	}
	return nil
}

// Paths a peer's domain may name outside seed-dirs: boot files installed
// by packages, libvirt's own directories for NVRAM, chardev logs and
// sockets.
var (
	bootDirs    = []string{"/usr/share", "/usr/lib", "/boot", "/var/lib/libvirt/boot"}
	nvramDir    = "/var/lib/libvirt/qemu/nvram"
	chardevLogs = "/var/log/libvirt"
)

// under reports whether path lies inside dir on this host: as written (an
// absolute path in clean form: the kernel resolves ".." after following a
// link, so "dir/link/../x" may be anywhere while it reads as "dir/x"), and
// as resolved (symbolic links followed: dir/link may point anywhere). A
// path not there yet is judged by its nearest existing ancestor.
func under(path, dir string) bool {
	return lexicallyUnder(path, dir) && resolvedUnder(path, dir)
}

func lexicallyUnder(path, dir string) bool {
	return filepath.IsAbs(path) && path == filepath.Clean(path) && strings.HasPrefix(path, filepath.Clean(dir)+"/")
}

// resolvedUnder: path, its links followed, is dir or inside it (dir's own
// links followed too). A path not there yet is resolved through its
// nearest existing ancestor (the rest appended), and so is a dir not there
// yet; a dangling link is refused (libvirt or QEMU would create its
// target, wherever that is).
func resolvedUnder(path, dir string) bool {
	real, ok := resolveLoose(path)
	realDir, dok := resolveLoose(filepath.Clean(dir))
	return ok && dok && (real == realDir || lexicallyUnder(real, realDir))
}

// resolveLoose returns path with the links of its nearest existing
// ancestor followed and the missing rest appended; false for a dangling
// link or a path that cannot be looked at.
func resolveLoose(path string) (string, bool) {
	rest := ""
	for p := path; ; p = filepath.Dir(p) {
		real, err := filepath.EvalSymlinks(p)
		if err == nil {
			return filepath.Join(real, rest), true
		}
		if !errors.Is(err, fs.ErrNotExist) || p == "/" {
			return "", false
		}
		if _, lerr := os.Lstat(p); lerr == nil {
			return "", false // there, but a link to nothing
		}
		rest = filepath.Join(filepath.Base(p), rest)
	}
}

// bootFileAllowed: a kernel, initrd or DTB a peer's domain may boot from,
// as written and as resolved on this host.
func (c Config) bootFileAllowed(path string) bool {
	if c.seedAllowed(path) {
		for _, d := range c.SeedDirs {
			if lexicallyUnder(path, d) && resolvedUnder(path, d) {
				return true
			}
		}
	}
	for _, d := range bootDirs {
		if under(path, d) {
			return true
		}
	}
	return false
}

// devicePolicy refuses the devices through which a peer's domain would
// reach the backup host beyond a replaying VM: character devices on host
// devices, pipes, the network or files outside libvirt's log directory;
// random number generators (host entropy); TPMs, shared
// memory, smartcards, USB redirection, host input devices, audio into
// files; network interfaces other than a bridge, a libvirt network or user
// networking, or with scripts or tap devices of their own; graphics that
// listen beyond the loopback.
func devicePolicy(c Config, d *libvirtxml.DomainDeviceList, add func(field, why string)) {
	chardev := func(field string, src *libvirtxml.DomainChardevSource) {
		if src == nil {
			return
		}
		switch {
		case src.Null != nil, src.VC != nil, src.Pty != nil, src.SpiceVMC != nil, src.SpicePort != nil, src.QEMUVDAgent != nil:
		case src.File != nil:
			if src.File.Path != "" && !under(src.File.Path, chardevLogs) {
				add(field, fmt.Sprintf("file %s is outside %s; log character devices there", src.File.Path, chardevLogs))
			}
		case src.UNIX != nil:
			// Only a socket libvirt places and QEMU listens on: a path
			// of the peer's choosing could reach (connect) or replace
			// (bind) another domain's sockets and files there.
			if src.UNIX.Path != "" {
				add(field, fmt.Sprintf("socket path %s is not accepted from the peer; leave the path out and libvirt chooses one", src.UNIX.Path))
			} else if src.UNIX.Mode == "connect" {
				add(field, "a socket QEMU connects to is not accepted from the peer; use mode='bind'")
			}
		default:
			add(field, "character devices on host devices, pipes, stdio or the network are not accepted from the peer; use pty, null, a file under "+chardevLogs+" or a unix socket libvirt places")
		}
	}
	// Every character device: its source and its log file.
	type cdev struct {
		src *libvirtxml.DomainChardevSource
		log *libvirtxml.DomainChardevLog
	}
	var cdevs []cdev
	var kinds []string
	for _, s := range d.Serials {
		cdevs, kinds = append(cdevs, cdev{s.Source, s.Log}), append(kinds, "serial")
	}
	for _, c := range d.Consoles {
		cdevs, kinds = append(cdevs, cdev{c.Source, c.Log}), append(kinds, "console")
	}
	for _, p := range d.Parallels {
		cdevs, kinds = append(cdevs, cdev{p.Source, p.Log}), append(kinds, "parallel")
	}
	for _, c := range d.Channels {
		cdevs, kinds = append(cdevs, cdev{c.Source, c.Log}), append(kinds, "channel")
	}
	nth := map[string]int{}
	for i, c := range cdevs {
		nth[kinds[i]]++
		f := fmt.Sprintf("/domain/devices/%s[%d]", kinds[i], nth[kinds[i]])
		chardev(f, c.src)
		if l := c.log; l != nil && l.File != "" && !under(l.File, chardevLogs) {
			add(f+"/log", fmt.Sprintf("log file %s is outside %s", l.File, chardevLogs))
		}
	}
	if len(d.Memorydevs) > 0 {
		add("/domain/devices/memory", "memory devices (NVDIMM, virtio-pmem) map host files and are not accepted from the peer; remove them")
	}
	for i := range d.RNGs {
		// Validation refuses them too (xml/validate.go): not replayed.
		add(fmt.Sprintf("/domain/devices/rng[%d]", i+1), "a random number generator device is not replayed and is not accepted from the peer (it would read host entropy devices or daemons); remove it")
	}
	if len(d.TPMs) > 0 {
		add("/domain/devices/tpm", "a TPM is not replayed and is not accepted from the peer; remove it")
	}
	if len(d.Shmems) > 0 {
		add("/domain/devices/shmem", "shared memory with the host is not accepted from the peer; remove it")
	}
	if len(d.Smartcards) > 0 {
		add("/domain/devices/smartcard", "smartcards are not accepted from the peer; remove them")
	}
	if len(d.RedirDevs) > 0 {
		add("/domain/devices/redirdev", "USB redirection is not accepted from the peer; remove it")
	}
	for i, in := range d.Inputs {
		if in.Source != nil && (in.Source.Passthrough != nil || in.Source.EVDev != nil) {
			add(fmt.Sprintf("/domain/devices/input[%d]", i+1), "host input devices are not accepted from the peer; remove it")
		}
	}
	for i, a := range d.Audios {
		if a.File != nil {
			add(fmt.Sprintf("/domain/devices/audio[%d]", i+1), "audio into a host file is not accepted from the peer; use type none")
		}
	}
	for i, n := range d.Interfaces {
		field := fmt.Sprintf("/domain/devices/interface[%d]", i+1)
		if src := n.Source; src == nil || (src.Bridge == nil && src.Network == nil && src.User == nil) {
			add(field, "only bridge, network and user interfaces are accepted from the peer")
		}
		if n.Script != nil || n.DownScript != nil {
			add(field+"/script", "interface scripts run on the host and are not accepted from the peer; remove them")
		}
		if n.Backend != nil && (n.Backend.Tap != "" || n.Backend.VHost != "") {
			add(field+"/backend", "tap and vhost device paths are not accepted from the peer; remove <backend>")
		}
		if n.Backend != nil && n.Backend.LogFile != "" {
			add(field+"/backend/@logFile", "a backend log file is not accepted from the peer; remove logFile")
		}
		if n.ROM != nil && n.ROM.File != nil && *n.ROM.File != "" && !under(*n.ROM.File, "/usr/share") && !under(*n.ROM.File, "/usr/lib") {
			add(field+"/rom", fmt.Sprintf("ROM file %s is not under /usr/share or /usr/lib", *n.ROM.File))
		}
	}
	for i, a := range d.Audios {
		// Audio backends that open host devices, sound servers or
		// files are not the peer's to name.
		if a.None == nil && a.SPICE == nil && (a.DBus == nil) {
			add(fmt.Sprintf("/domain/devices/audio[%d]", i+1), "only audio types none, spice and dbus are accepted from the peer (the others open host devices, sound servers or files); use <audio type='none'/>")
		}
	}
	for i, g := range d.Graphics {
		if (g.VNC == nil && g.Spice == nil && g.EGLHeadless == nil && g.DBus == nil) || (g.DBus != nil && g.DBus.Address != "") {
			add(fmt.Sprintf("/domain/devices/graphics[%d]", i+1), "only vnc, spice, egl-headless and dbus graphics without an address are accepted from the peer (the others reach the host's display or a bus of the peer's choosing); use vnc or spice on the loopback")
			continue
		}
		var listen []string
		addrs := func(first string, ls []libvirtxml.DomainGraphicListener) {
			listen = append(listen, first)
			for _, l := range ls {
				if l.Address != nil {
					listen = append(listen, l.Address.Address)
				}
				if l.Network != nil {
					listen = append(listen, "network "+l.Network.Network)
				}
			}
		}
		field := fmt.Sprintf("/domain/devices/graphics[%d]", i+1)
		socket := func(f, p string) {
			if p != "" {
				add(f, fmt.Sprintf("socket path %s is not accepted from the peer; leave the path out and libvirt chooses one", p))
			}
		}
		sockets := func(ls []libvirtxml.DomainGraphicListener) {
			for j, l := range ls {
				if l.Socket != nil {
					socket(fmt.Sprintf("%s/listen[%d]/@socket", field, j+1), l.Socket.Socket)
				}
			}
		}
		if g.VNC != nil {
			addrs(g.VNC.Listen, g.VNC.Listeners)
			socket(field+"/@socket", g.VNC.Socket)
			sockets(g.VNC.Listeners)
		}
		if g.Spice != nil {
			addrs(g.Spice.Listen, g.Spice.Listeners)
			sockets(g.Spice.Listeners)
			if g.Spice.GL != nil && g.Spice.GL.RenderNode != "" {
				add(field+"/gl/@rendernode", "render nodes are host devices and are not accepted from the peer; remove rendernode")
			}
		}
		if g.EGLHeadless != nil && g.EGLHeadless.GL != nil && g.EGLHeadless.GL.RenderNode != "" {
			add(field+"/gl/@rendernode", "render nodes are host devices and are not accepted from the peer; remove rendernode")
		}
		if g.DBus != nil && g.DBus.GL != nil && g.DBus.GL.RenderNode != "" {
			add(field+"/gl/@rendernode", "render nodes are host devices and are not accepted from the peer; remove rendernode")
		}
		for _, a := range listen {
			if a != "" && a != "127.0.0.1" && a != "::1" && a != "localhost" {
				add(fmt.Sprintf("/domain/devices/graphics[%d]", i+1), fmt.Sprintf("listens on %s: the backup host accepts only loopback or socket graphics from the peer", a))
				break
			}
		}
	}
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
		if filepath.Clean(p) != p {
			return fmt.Sprintf("image %s is not a path in clean form: write it as %s (\".\" and \"..\" elements are refused: the kernel resolves \"..\" after a link)", p, filepath.Clean(p))
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
		if d.Source.Reservations != nil && d.Source.Reservations.Source != nil {
			return "persistent reservations through a host socket are not accepted from the peer; remove <reservations>"
		}
		if d.BackingStore != nil && d.BackingStore.Source != nil {
			return "backing stores are not accepted from the peer; flatten the image (qemu-img convert)"
		}
		if d.Source.DataStore != nil {
			return "external data files are not accepted from the peer"
		}
		if d.Driver != nil && d.Driver.Type != "" && d.Driver.Type != "raw" && d.Driver.Type != "qcow2" {
			return fmt.Sprintf("image format %q is not accepted from the peer (formats that name other files); use qcow2 or raw", d.Driver.Type)
		}
		if d.Driver == nil || d.Driver.Type == "" || d.Driver.Type == "qcow2" {
			if why := qcow2Problem(p); why != "" {
				return why
			}
		}
		return ""
	case d.Source.Block != nil, d.Source.Dir != nil, d.Source.Network != nil, d.Source.Volume != nil, d.Source.NVME != nil, d.Source.VHostUser != nil:
		return "only file-backed disk images are accepted from the peer"
	}
	return ""
}

// qcow2Problem reads a qcow2 image's header (QEMU docs/interop/qcow2.txt)
// and refuses one that names another file: a backing file (offset 8) or an
// external data file (incompatible feature bit 2, offset 72, version 3).
// An image that is missing or unreadable is the seeding's business.
func qcow2Problem(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var h [80]byte
	n, _ := io.ReadFull(f, h[:])
	if n < 20 || string(h[:4]) != "QFI\xfb" {
		return ""
	}
	if binary.BigEndian.Uint64(h[8:16]) != 0 && binary.BigEndian.Uint32(h[16:20]) != 0 {
		return fmt.Sprintf("image %s names a backing file in its qcow2 header: refused; flatten it (qemu-img convert)", path)
	}
	if n >= 80 && binary.BigEndian.Uint32(h[4:8]) >= 3 && binary.BigEndian.Uint64(h[72:80])&(1<<2) != 0 {
		return fmt.Sprintf("image %s uses an external data file (qcow2 header): refused", path)
	}
	return ""
}
