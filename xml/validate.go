package ftxml

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"libvirt.org/go/libvirtxml"
)

// Problem is one reason why a domain cannot be protected.
type Problem struct {
	// Field names the offending part of the domain XML, XPath-like:
	// "/domain/vcpu", "/domain/@type", "/domain/devices/disk[1]/driver/@type"
	// (indexes count from 1 among elements of that name),
	// "/domain/metadata/ft:ft/ft:peer/@address" (ft: stands for our
	// namespace whatever prefix the document binds to it).
	Field string
	// Message says what is wrong and why, starting with a verb:
	// "is 2: QEMU record/replay runs one vCPU only".
	Message string
	// Fix says what to change: "set <vcpu>1</vcpu>".
	Fix string
}

// String is "<Field> <Message>; <Fix>".
func (p Problem) String() string {
	return p.Field + " " + p.Message + "; " + p.Fix
}

// ValidationError lists every problem found in a domain, not just the first.
type ValidationError struct {
	Domain   string // the domain's <name>; may be empty
	Problems []Problem
}

// Error is, for one problem:
//
//	libvirt-ft: domain "web": /domain/vcpu is 2: QEMU record/replay runs one vCPU only; set <vcpu>1</vcpu>
//
// and for several, one problem a line after a "N problems:" header.
func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString("libvirt-ft: ")
	if e.Domain != "" {
		fmt.Fprintf(&b, "domain %q: ", e.Domain)
	}
	if len(e.Problems) == 1 {
		b.WriteString(e.Problems[0].String())
		return b.String()
	}
	fmt.Fprintf(&b, "%d problems:", len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	return b.String()
}

// Validate checks that dom can run under QEMU record/replay as a protected
// domain (QEMU docs/devel/replay.rst, docs/replay.md §1) and that its
// libvirt-ft element is well-formed. err is a *ValidationError holding every
// problem; warnings name what will work but that the user should know.
// A generated primary or backup validates like the user's domain.
func Validate(dom *libvirtxml.Domain) (warnings []string, err error) {
	_, ps, ws := check(dom, HostConfig{}, "")
	if len(ps) > 0 {
		return ws, &ValidationError{Domain: dom.Name, Problems: ps}
	}
	return ws, nil
}

// guestAgentChannel is the virtio-serial port name of the QEMU guest agent
// (libvirt's formatdomain "Channel": org.qemu.guest_agent.0).
const guestAgentChannel = "org.qemu.guest_agent.0"

// check validates dom. role is the role being generated ("" for plain
// validation); a backup also needs every MAC address fixed.
func check(dom *libvirtxml.Domain, host HostConfig, role string) (ftInfo, []Problem, []string) {
	var ps []Problem
	var ws []string
	add := func(field, msg, fix string) { ps = append(ps, Problem{field, msg, fix}) }

	// replay.rst: record/replay needs icount, which is TCG only.
	if dom.Type != "qemu" {
		what := fmt.Sprintf("is %q", dom.Type)
		if dom.Type == "" {
			what = "is missing"
		}
		add("/domain/@type", what+": QEMU record/replay needs -icount, which runs under TCG only (QEMU refuses icount with KVM)",
			"set <domain type='qemu'>")
	}
	// replay.rst and docs/replay.md §1: more than one vCPU is a replay blocker.
	if dom.VCPU != nil && dom.VCPU.Value > 1 {
		add("/domain/vcpu", fmt.Sprintf("is %d: QEMU record/replay runs one vCPU only", dom.VCPU.Value), "set <vcpu>1</vcpu>")
	}
	if dom.VCPUs != nil && len(dom.VCPUs.VCPU) > 1 {
		add("/domain/vcpus", fmt.Sprintf("lists %d vCPUs: QEMU record/replay runs one vCPU only", len(dom.VCPUs.VCPU)),
			"remove <vcpus> and set <vcpu>1</vcpu>")
	}
	if dom.CPU != nil && dom.CPU.Topology != nil {
		t := dom.CPU.Topology
		n := 1
		for _, v := range []int{t.Sockets, t.Dies, t.Clusters, t.Cores, t.Threads} {
			if v > 1 {
				n *= v
			}
		}
		if n > 1 {
			add("/domain/cpu/topology", fmt.Sprintf("gives %d vCPUs (sockets×dies×clusters×cores×threads): QEMU record/replay runs one vCPU only", n),
				"set sockets, dies, clusters, cores and threads to 1, or remove <topology>")
		}
	}
	// docs/replay.md §1: -rtc base=localtime is a replay blocker; libvirt emits it
	// for offset='localtime' and offset='timezone'.
	if dom.Clock != nil && (dom.Clock.Offset == "localtime" || dom.Clock.Offset == "timezone") {
		add("/domain/clock/@offset", fmt.Sprintf("is %q: libvirt starts QEMU with -rtc base=localtime, which QEMU refuses under record/replay", dom.Clock.Offset),
			"set <clock offset='utc'> and let the guest apply its time zone")
	}

	// The backup host refuses such a name from its peer
	// (logchan.ControlRequest.Check): refused here, not at the first
	// start. libvirt itself refuses only a newline.
	if why := peerTextProblem(dom.Name, MaxPeerNameBytes); why != "" {
		add("/domain/name", why+": libvirt-ft's backup host refuses such a name from its peer, so that it never reaches a log or virt-ft's output",
			fmt.Sprintf("rename the domain (virsh domrename) to at most %d bytes without those characters", MaxPeerNameBytes))
	}

	info := readFT(dom, host)
	ps = append(ps, info.problems...)

	if d := dom.Devices; d != nil {
		ps = append(ps, diskProblems(d.Disks)...)
		for i, c := range d.Controllers {
			// packaging/qemu 0015, as for a disk's own iothread.
			if c.Driver != nil && (c.Driver.IOThread != 0 || c.Driver.IOThreads != nil) {
				field := "/driver/@iothread"
				if c.Driver.IOThread == 0 {
					field = "/driver/iothreads"
				}
				add(fmt.Sprintf("/domain/devices/controller[%d]%s", i+1, field),
					"is set: under record/replay libvirt-ft runs the requests of the disks behind this controller in QEMU's main loop (a reset completes the ones in flight there, packaging/qemu 0015), not in an iothread",
					"remove iothread= and <iothreads> from the controller's <driver>")
			}
		}
		ps = append(ps, interfaceProblems(d.Interfaces, role == RoleBackup)...)
		if len(d.Serials) > 0 || len(d.Consoles) > 0 {
			ws = append(ws, "/domain/devices/serial, /domain/devices/console: console/serial input is not replicated: "+
				"QEMU does not record chardevs made with -chardev (docs/replay.md §9), so typing into the console of a protected VM makes the backup diverge; "+
				"use the console to watch output only")
		}
		for i, ch := range d.Channels {
			// libvirt talks to a guest agent by itself (virsh reboot and
			// shutdown use it when it answers, virsh domfsfreeze, domtime):
			// its commands reach the primary's guest only, which then acts
			// on them alone, and its backup diverges.
			if ch.Target != nil && ch.Target.VirtIO != nil && ch.Target.VirtIO.Name == guestAgentChannel {
				add(fmt.Sprintf("/domain/devices/channel[%d]", i+1),
					"is the QEMU guest agent's channel ("+guestAgentChannel+"): libvirt sends it commands (virsh reboot and shutdown use it when it answers) that reach the primary's guest only, so its backup diverges",
					"remove this <channel> (virsh edit); virsh shutdown and reboot work through the ACPI power button without it")
				continue
			}
			ws = append(ws, fmt.Sprintf("/domain/devices/channel[%d]: input on this channel is not replicated: "+
				"QEMU does not record chardevs made with -chardev (docs/replay.md §9); commands sent into the guest (e.g. guest-agent) make the backup diverge", i+1))
		}
		for i := range d.RNGs {
			// QEMU does not replay virtio-rng exactly: its random and
			// egd backends read the host unrecorded
			// (backends/rng-random.c), and when the VM resumes,
			// virtio_rng_vm_state_change asks even the builtin backend
			// for bytes (a bottom half in the log at a point that is no
			// point of the guest's execution), which a backup that did
			// not pause never does (hw/virtio/virtio-rng.c).
			add(fmt.Sprintf("/domain/devices/rng[%d]", i+1),
				"is a random number generator device: QEMU does not replay it exactly (the random and egd backends read the host unrecorded, and every backend is asked for bytes when the VM resumes, which the backup does not do), so the backup would diverge",
				"remove this <rng> (virsh edit, or virt-manager's RNG device → Remove); the guest's kernel seeds its own generator")
		}
	}

	cp, cw := commandlineProblems(dom.QEMUCommandline)
	ps = append(ps, cp...)
	ws = append(ws, cw...)
	return info, ps, ws
}

// protectedDisk reports whether a disk is one libvirt-ft puts under
// blkreplay (a device='disk').
func protectedDisk(d *libvirtxml.DomainDisk) bool {
	return d.Device == "" || d.Device == "disk"
}

func diskType(d *libvirtxml.DomainDisk) string {
	return sourceType(d.Source)
}

// sourceType is the type attribute libvirtxml derives from a disk source.
func sourceType(s *libvirtxml.DomainDiskSource) string {
	switch {
	case s == nil:
		return ""
	case s.File != nil:
		return "file"
	case s.Block != nil:
		return "block"
	case s.Dir != nil:
		return "dir"
	case s.Network != nil:
		return "network"
	case s.Volume != nil:
		return "volume"
	case s.NVME != nil:
		return "nvme"
	case s.VHostUser != nil:
		return "vhostuser"
	case s.VHostVDPA != nil:
		return "vhostvdpa"
	case s.Ctl != nil:
		return "ctl"
	}
	return ""
}

// hasMedia reports whether a removable disk has something inserted.
func hasMedia(d *libvirtxml.DomainDisk) bool {
	s := d.Source
	if s == nil {
		return false
	}
	if s.File != nil {
		return s.File.File != ""
	}
	return diskType(d) != ""
}

func diskProblems(disks []libvirtxml.DomainDisk) []Problem {
	var ps []Problem
	for k := range disks {
		d := &disks[k]
		f := fmt.Sprintf("/domain/devices/disk[%d]", k+1)
		add := func(field, msg, fix string) { ps = append(ps, Problem{f + field, msg, fix}) }
		if !protectedDisk(d) {
			switch d.Device {
			case "cdrom", "floppy":
				if hasMedia(d) {
					add("/source", fmt.Sprintf("puts media into a %s: removable media are not supported yet (their reads are not under blkreplay)", d.Device),
						fmt.Sprintf("eject it (remove <source>) or attach the image as a qcow2 <disk device='disk'>"))
				}
			default:
				add("/@device", fmt.Sprintf("is %q: libvirt-ft protects device='disk' only", d.Device),
					"use <disk type='file' device='disk'> with a qcow2 image")
			}
			continue
		}
		// The backup host holds a copy of each image at the same path.
		switch t := diskType(d); {
		case t != "file":
			what := fmt.Sprintf("is %q", t)
			if t == "" {
				what = "is missing or unknown"
			}
			add("/@type", what+": libvirt-ft protects file-backed disks only (the backup host holds a copy of the image at the same path)",
				"use <disk type='file' device='disk'> with <source file='/path/image.qcow2'/>")
		case d.Source.File.File == "":
			add("/source/@file", "is missing: a protected disk needs an image file (an empty disk cannot be put under blkreplay)",
				"add <source file='/path/image.qcow2'/>")
		case peerTextProblem(d.Source.File.File, MaxPeerPathBytes) != "":
			add("/source/@file", peerTextProblem(d.Source.File.File, MaxPeerPathBytes)+": the backup host refuses such a path from its peer (logchan ControlRequest.Check)",
				fmt.Sprintf("rename the image file, or move it to a shorter path (at most %d bytes, without those characters), and update <source file>", MaxPeerPathBytes))
		}
		// The stock-QEMU go-live fallback takes an internal snapshot
		// (savevm, docs/replay.md §6), which needs qcow2.
		if d.Driver == nil || d.Driver.Type != "qcow2" {
			what := "is missing"
			if d.Driver != nil && d.Driver.Type != "" {
				what = fmt.Sprintf("is %q", d.Driver.Type)
			}
			add("/driver/@type", what+": go-live takes an internal snapshot (savevm), which needs a qcow2 image",
				"convert the image (qemu-img convert -O qcow2) and set <driver name='qemu' type='qcow2'/>")
		}
		// packaging/qemu 0015: a reset completes the disk requests in
		// flight from the main loop (blkreplay's count is main-loop only);
		// an iothread would complete them on its own thread.
		if d.Driver != nil && (d.Driver.IOThread != nil || d.Driver.IOThreads != nil) {
			field := "/driver/@iothread"
			if d.Driver.IOThread == nil {
				field = "/driver/iothreads"
			}
			add(field, "is set: under record/replay libvirt-ft runs a protected disk's requests in QEMU's main loop (a reset completes the ones in flight there, packaging/qemu 0015), not in an iothread",
				"remove iothread= and <iothreads> from the disk's <driver>")
		}
		// QEMU throttling holds requests above blkreplay and releases them
		// on a real-time timer, so their order (blkreplay ids) and the
		// requests in flight at a reset (packaging/qemu 0015) would
		// differ between record and replay.
		if d.IOTune != nil {
			add("/iotune", "is set: QEMU releases throttled requests on a real-time timer, so the primary and its backup would see them in a different order (and a reset could hang on one)",
				"remove <iotune> from the protected disk")
		}
		// replay.rst: -snapshot is a replay blocker; a transient disk
		// discards its writes the same way.
		if d.Transient != nil {
			add("/transient", "is set: a transient disk discards its writes through a temporary overlay, like QEMU's -snapshot, a record/replay blocker; the backup could not go live on the same disk",
				"remove <transient/>")
		}
		// An explicit chain gives every layer a libvirt node name and
		// breaks the numbering LibvirtFormatNodeName relies on.
		if bs := d.BackingStore; bs != nil && (sourceType(bs.Source) != "" || bs.Format != nil || bs.BackingStore != nil || bs.Index != 0) {
			add("/backingStore", "is not empty: libvirt-ft protects self-contained images (libvirt numbers a node per layer, which breaks the blkreplay wiring, and the backup needs the same chain)",
				"flatten the image (qemu-img convert -O qcow2) and write <backingStore/>")
		}
	}
	return ps
}

func interfaceProblems(ifaces []libvirtxml.DomainInterface, needMAC bool) []Problem {
	var ps []Problem
	for k := range ifaces {
		n := &ifaces[k]
		f := fmt.Sprintf("/domain/devices/interface[%d]", k+1)
		if s := n.Source; s != nil {
			t := ""
			switch {
			case s.Hostdev != nil:
				t = "hostdev"
			case s.VDPA != nil:
				t = "vdpa"
			case s.VHostUser != nil:
				t = "vhostuser"
			}
			if t != "" {
				ps = append(ps, Problem{f + "/@type", fmt.Sprintf("is %q: its packets bypass QEMU's net layer, so filter-replay cannot record them", t),
					"use <interface type='bridge'> or type='network'"})
			}
		}
		if needMAC && (n.MAC == nil || n.MAC.Address == "") {
			ps = append(ps, Problem{f + "/mac", "is missing: libvirt would give the backup a random MAC, and the backup must be the same machine as the primary (docs/replay.md §9)",
				"generate the backup from the XML of the defined primary, which holds the MAC libvirt assigned"})
		}
	}
	return ps
}

// commandlineProblems refuses user arguments that break record/replay and
// warns about the other user arguments.
func commandlineProblems(cl *libvirtxml.DomainQEMUCommandline) ([]Problem, []string) {
	if cl == nil {
		return nil, nil
	}
	var ps []Problem
	var user []string
	for i := 0; i < len(cl.Args); i++ {
		a := cl.Args[i].Value
		if i+1 < len(cl.Args) && isOurs(a, cl.Args[i+1].Value) {
			i++
			continue
		}
		f := fmt.Sprintf("/domain/qemu:commandline/qemu:arg[%d]", i+1)
		switch a {
		case "-icount":
			ps = append(ps, Problem{f, "is -icount: libvirt-ft generates -icount for record/replay, a second one conflicts",
				"remove the -icount argument and its value"})
			if i+1 < len(cl.Args) && !strings.HasPrefix(cl.Args[i+1].Value, "-") {
				i++
			}
		case "-snapshot":
			ps = append(ps, Problem{f, "is -snapshot: QEMU refuses -snapshot under record/replay", "remove it"})
		default:
			user = append(user, a)
		}
	}
	for _, e := range cl.Envs {
		user = append(user, e.Name+"="+e.Value)
	}
	if len(user) == 0 {
		return ps, nil
	}
	return ps, []string{fmt.Sprintf("/domain/qemu:commandline: %q are not libvirt-ft's: they are passed to QEMU on both hosts as they are; "+
		"anything that makes QEMU non-deterministic makes the backup diverge", user)}
}

// The longest domain name and disk path (bytes) the backup host accepts
// from its peer: logchan.MaxFieldBytes and logchan.MaxPathBytes, restated
// because this package may import none of libvirt-ft's (plugin's
// TestPeerBoundsMatchLogchan holds them equal). libvirt's own limit on a
// persistent domain's name (its file name) is usually lower.
const (
	MaxPeerNameBytes = 1024
	MaxPeerPathBytes = 4096
)

// peerTextProblem says why the backup host would refuse s from its peer
// (ControlRequest.Check: the characters PeerSafe refuses, or more than max
// bytes), starting with a verb; "" if it would accept it.
func peerTextProblem(s string, max int) string {
	switch {
	case !PeerSafe(s):
		return fmt.Sprintf("%q holds a control or format character (a tab, a bidi or zero-width mark)", s)
	case len(s) > max:
		return fmt.Sprintf("is %d bytes long, over the %d bytes", len(s), max)
	}
	return ""
}

// PeerSafe reports whether s is valid UTF-8 without a control character
// (Cc), a format character (Cf) or a line or paragraph separator: the
// characters logchan.CleanText replaces, which the backup host refuses in
// a domain name or a disk path its peer sends (ControlRequest.Check).
// This package may import none of libvirt-ft's, so the rule is written
// here a second time; plugin's TestPeerSafeMatchesCleanText holds the two
// to the same characters.
func PeerSafe(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp) {
			return false
		}
	}
	return true
}
