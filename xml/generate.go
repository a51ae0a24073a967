package ftxml

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// HostConfig holds what the generated domain takes from the host that
// generates it rather than from the user's element. The zero value keeps the
// element as it is.
type HostConfig struct {
	// PeerAddress, if not empty, replaces <ft:peer address>: the daemon on
	// the backup host passes the primary host's address, since a domain's
	// peer is the other host as seen from the host that runs it.
	PeerAddress string
	// PeerPort, if not zero, replaces <ft:peer port>.
	PeerPort int
}

var (
	// ErrNoUUID: generation needs the domain's UUID (it names the FIFOs and
	// the backup must have the same one).
	ErrNoUUID = errors.New("ftxml: domain has no <uuid>: libvirt assigns one at define, so generate from the XML of the defined domain (virsh dumpxml)")
	// ErrNotGeneratedPrimary: Backup was given something else than the
	// output of Primary.
	ErrNotGeneratedPrimary = errors.New("ftxml: not a generated primary")
)

// Names of what this package generates. Aliases must start with "ua-" to be
// user aliases that libvirt keeps (and uses as QEMU device ids).
const (
	userAliasPrefix = "ua-"
	ourAliasPrefix  = "ua-ft-"
	diskAliasPrefix = "ua-ft-disk" // + index among device='disk' disks
	netAliasPrefix  = "ua-ft-net"  // + index among interfaces
	rrNodePrefix    = "ft-rr"      // blkreplay node name + disk index
	filterIDPrefix  = "ft-fr"      // filter-replay object id + NIC index
	gateIDPrefix    = "ft-gate"    // filter-redirector object id + NIC index
	gateOutPrefix   = "ft-gout"    // chardev: guest frames out to the gate
	gateInPrefix    = "ft-gin"     // chardev: released frames back in
)

// Record/replay modes of -icount (the rr= option).
const (
	modeRecord = "record"
	modeReplay = "replay"
)

// LibvirtFormatNodeName is the name libvirt 9.0 gives the format node
// (qcow2 layer) of a disk when it starts the domain: "libvirt-<N>-format".
// diskPos is the 0-based position of the disk among all <disk> elements of
// the domain (any device, in document order, which is libvirt's order),
// diskCount the number of <disk> elements.
//
// The rule, checked against libvirt 9.0.0 and QEMU 7.2 (virsh start, then
// "info block"): libvirt numbers storage sources from 1 while it walks the
// disks from the last to the first, one number per disk, empty cdroms
// included; a backing chain that libvirt finds in the image at start does
// not shift these numbers. So the only disk of a domain is libvirt-1-format,
// and of two disks the first is libvirt-2-format. An explicit <backingStore>
// chain in the XML takes a number per layer and breaks the rule, which is why
// Validate refuses it. The numbering is libvirt's internal business: the
// daemon must check it on the live domain (query-named-block-nodes, or
// "info block": the disk's device must sit on ft-rr<i>), docs/replay.md §9.
func LibvirtFormatNodeName(diskPos, diskCount int) string {
	return fmt.Sprintf("libvirt-%d-format", diskCount-diskPos)
}

// RecordFIFOPath is the file the primary's QEMU records into:
// <StateDir>/<uuid>/record.fifo (FIFO A, docs/replay.md §4). The UUID is
// written in libvirt's form (lower-case, with dashes) if it parses.
func RecordFIFOPath(cfg Config, uuid string) string {
	return fifoPath(cfg, uuid, "record.fifo")
}

// ReplayFIFOPath is the file the backup's QEMU replays from:
// <StateDir>/<uuid>/replay.fifo (FIFO B, docs/replay.md §5).
func ReplayFIFOPath(cfg Config, uuid string) string {
	return fifoPath(cfg, uuid, "replay.fifo")
}

// GateSocketPaths are the unix sockets of the output gate of interface j
// (document order; on the primary, and on the backup with the gate on),
// both listened on by libvirt-ftd and
// connected to by QEMU: out carries every frame the guest transmits to the
// daemon (<StateDir>/<uuid>/gate<j>-out.sock), in the frames the daemon
// releases back to QEMU, which sends them to the network
// (<StateDir>/<uuid>/gate<j>-in.sock). Framing: QEMU's filter-redirector
// (net/filter-mirror.c): a 4-byte big-endian length, then the frame.
func GateSocketPaths(cfg Config, uuid string, j int) (out, in string) {
	return fifoPath(cfg, uuid, fmt.Sprintf("gate%d-out.sock", j)), fifoPath(cfg, uuid, fmt.Sprintf("gate%d-in.sock", j))
}

// GateFilterID is the QOM id of interface j's filter-redirector: the
// output gate on the primary, and on the backup with the gate on (its
// daemon holds the replayed frames until go-live); with the gate off, the
// backup's filter that discards the frames the replayed guest transmits
// (go-live turns it off with qom-set <id> status off).
func GateFilterID(j int) string { return fmt.Sprintf("%s%d", gateIDPrefix, j) }

func fifoPath(cfg Config, uuid, name string) string {
	if u, ok := canonicalUUID(uuid); ok {
		uuid = u
	}
	return path.Join(cfg.StateDir, uuid, name)
}

// canonicalUUID returns s in libvirt's form, 8-4-4-4-12 lower-case hex.
func canonicalUUID(s string) (string, bool) {
	h := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), "-", ""))
	if len(h) != 32 {
		return "", false
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", false
		}
	}
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], true
}

// qemuOptEscape escapes a value for QEMU's key=value,... option syntax.
func qemuOptEscape(s string) string {
	return strings.ReplaceAll(s, ",", ",,")
}

// splitQemuOpts splits QEMU's key=value,... syntax; ",," is a comma.
func splitQemuOpts(s string) []string {
	var out []string
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				b.WriteByte(',')
				i++
				continue
			}
			out = append(out, b.String())
			b.Reset()
			continue
		}
		b.WriteByte(s[i])
	}
	return append(out, b.String())
}

func icountValue(mode, fifo string) string {
	return "shift=auto,rr=" + mode + ",rrfile=" + qemuOptEscape(fifo)
}

// rrMode returns the rr= option of an -icount value, "" if there is none.
func rrMode(v string) string {
	for _, o := range splitQemuOpts(v) {
		if m, ok := strings.CutPrefix(o, "rr="); ok {
			return m
		}
	}
	return ""
}

type blockdevJSON struct {
	Driver   string `json:"driver"`
	NodeName string `json:"node-name"`
	Image    string `json:"image"`
}

// isOurs reports whether the QEMU option opt with value val was generated
// here: -icount with rr=, -blockdev of a blkreplay node named ft-rr*,
// -object filter-replay with an id ft-fr*.
func isOurs(opt, val string) bool {
	switch opt {
	case "-icount":
		return rrMode(val) != ""
	case "-blockdev":
		var b blockdevJSON
		if json.Unmarshal([]byte(val), &b) != nil {
			return false
		}
		return b.Driver == "blkreplay" && strings.HasPrefix(b.NodeName, rrNodePrefix)
	case "-chardev":
		opts := splitQemuOpts(val)
		for _, o := range opts[1:] {
			if id, ok := strings.CutPrefix(o, "id="); ok {
				return strings.HasPrefix(id, gateOutPrefix) || strings.HasPrefix(id, gateInPrefix)
			}
		}
		return false
	case "-object":
		if opts := splitQemuOpts(val); opts[0] == "filter-redirector" {
			for _, o := range opts[1:] {
				if id, ok := strings.CutPrefix(o, "id="); ok {
					return strings.HasPrefix(id, gateIDPrefix)
				}
			}
			return false
		}
		if strings.HasPrefix(strings.TrimSpace(val), "{") {
			var o struct {
				Type string `json:"qom-type"`
				ID   string `json:"id"`
			}
			if json.Unmarshal([]byte(val), &o) != nil {
				return false
			}
			return o.Type == "filter-replay" && strings.HasPrefix(o.ID, filterIDPrefix)
		}
		opts := splitQemuOpts(val)
		if opts[0] != "filter-replay" && opts[0] != "qom-type=filter-replay" {
			return false
		}
		for _, o := range opts[1:] {
			if id, ok := strings.CutPrefix(o, "id="); ok {
				return strings.HasPrefix(id, filterIDPrefix)
			}
		}
	}
	return false
}

func isOurProperty(p libvirtxml.DomainQEMUOverrideProperty) bool {
	return p.Name == "drive" && strings.HasPrefix(p.Value, rrNodePrefix)
}

// generatedMode returns the rr= mode of the -icount this package generated
// in dom, "" if there is none.
func generatedMode(dom *libvirtxml.Domain) string {
	cl := dom.QEMUCommandline
	if cl == nil {
		return ""
	}
	for i := 0; i+1 < len(cl.Args); i++ {
		if cl.Args[i].Value == "-icount" && isOurs("-icount", cl.Args[i+1].Value) {
			return rrMode(cl.Args[i+1].Value)
		}
	}
	return ""
}

// IsGenerated reports whether dom carries the record/replay command line
// that Primary or Backup generate (an -icount with rr=).
func IsGenerated(dom *libvirtxml.Domain) bool {
	return generatedMode(dom) != ""
}

// DiskPaths returns the image files of the disks libvirt-ft protects
// (device='disk' with a file source), in document order: the files the
// backup host must hold identical copies of, at the same paths.
func DiskPaths(dom *libvirtxml.Domain) []string {
	if dom.Devices == nil {
		return nil
	}
	var paths []string
	for i := range dom.Devices.Disks {
		d := &dom.Devices.Disks[i]
		if protectedDisk(d) && d.Source != nil && d.Source.File != nil && d.Source.File.File != "" {
			paths = append(paths, d.Source.File.File)
		}
	}
	return paths
}

// stripGenerated removes what generate adds, recognised by our names only:
// our arguments in <qemu:commandline>, our drive properties in
// <qemu:override>, and aliases starting with "ua-ft-". The ft element stays.
// In a replaying domain "-incoming defer" is ours too (Incoming: the
// live XML of a backup armed by a re-protection, which must not reach a
// persistent definition: its next start would wait for a migration).
func stripGenerated(dom *libvirtxml.Domain) {
	replaying := generatedMode(dom) == modeReplay
	stripNotes(dom)
	if cl := dom.QEMUCommandline; cl != nil {
		var args []libvirtxml.DomainQEMUCommandlineArg
		for i := 0; i < len(cl.Args); i++ {
			if i+1 < len(cl.Args) && (isOurs(cl.Args[i].Value, cl.Args[i+1].Value) ||
				replaying && cl.Args[i].Value == "-incoming" && cl.Args[i+1].Value == "defer") {
				i++
				continue
			}
			args = append(args, cl.Args[i])
		}
		cl.Args = args
		if len(cl.Args) == 0 && len(cl.Envs) == 0 {
			dom.QEMUCommandline = nil
		}
	}
	if ov := dom.QEMUOverride; ov != nil {
		var devs []libvirtxml.DomainQEMUOverrideDevice
		for _, d := range ov.Devices {
			var props []libvirtxml.DomainQEMUOverrideProperty
			for _, p := range d.Frontend.Properties {
				if !isOurProperty(p) {
					props = append(props, p)
				}
			}
			if len(props) == 0 && len(d.Frontend.Properties) > 0 {
				continue // held only our property
			}
			d.Frontend.Properties = props
			devs = append(devs, d)
		}
		ov.Devices = devs
		if len(ov.Devices) == 0 {
			dom.QEMUOverride = nil
		}
	}
	if dom.Devices != nil {
		for i := range dom.Devices.Disks {
			if a := dom.Devices.Disks[i].Alias; a != nil && strings.HasPrefix(a.Name, ourAliasPrefix) {
				dom.Devices.Disks[i].Alias = nil
			}
		}
		for i := range dom.Devices.Interfaces {
			if a := dom.Devices.Interfaces[i].Alias; a != nil && strings.HasPrefix(a.Name, ourAliasPrefix) {
				dom.Devices.Interfaces[i].Alias = nil
			}
		}
	}
}

// alias returns the device's user alias, or gives it ours.
func alias(a **libvirtxml.DomainAlias, ours string) string {
	if *a != nil && strings.HasPrefix((*a).Name, userAliasPrefix) && !strings.HasPrefix((*a).Name, ourAliasPrefix) {
		return (*a).Name
	}
	*a = &libvirtxml.DomainAlias{Name: ours}
	return ours
}

// generate adds the record/replay wiring to a stripped domain
// (docs/replay.md §9): arguments go after the user's own.
//
// Network output (docs/replay.md §10): with the output gate on, a
// filter-redirector per interface sends every transmitted frame to
// libvirt-ftd (GateSocketPaths) and takes back the ones to send, on both
// hosts: the primary's daemon releases a frame once the backup holds the
// log that produced it; the backup's daemon holds the replayed copies and
// sends only, at go-live, those the primary had not sent. With the gate
// off, the backup's filter-redirector writes into a null chardev, which
// discards what the replayed guest transmits. Either way only one host
// ever speaks for the VM, and the filter consumes the frame at once, the
// same on both hosts.
func generate(dom *libvirtxml.Domain, mode, fifo string, cfg Config, uuid string) {
	args := []string{"-icount", icountValue(mode, fifo)}
	if d := dom.Devices; d != nil {
		i := 0
		for p := range d.Disks {
			disk := &d.Disks[p]
			if !protectedDisk(disk) {
				continue
			}
			a := alias(&disk.Alias, fmt.Sprintf("%s%d", diskAliasPrefix, i))
			node := fmt.Sprintf("%s%d", rrNodePrefix, i)
			js, err := json.Marshal(blockdevJSON{Driver: "blkreplay", NodeName: node, Image: LibvirtFormatNodeName(p, len(d.Disks))})
			if err != nil {
				panic(err) // three strings always marshal
			}
			args = append(args, "-blockdev", string(js))
			addOverride(dom, a, libvirtxml.DomainQEMUOverrideProperty{Name: "drive", Type: "string", Value: node})
			i++
		}
		for j := range d.Interfaces {
			a := alias(&d.Interfaces[j].Alias, fmt.Sprintf("%s%d", netAliasPrefix, j))
			// libvirt names the netdev of an interface "host" + its alias.
			netdev := qemuOptEscape("host" + a)
			args = append(args, "-object", fmt.Sprintf("filter-replay,id=%s%d,netdev=%s", filterIDPrefix, j, netdev))
			switch {
			case mode == modeReplay && !cfg.OutputGate:
				args = append(args, "-chardev", fmt.Sprintf("null,id=%s%d", gateOutPrefix, j),
					"-object", fmt.Sprintf("filter-redirector,id=%s,netdev=%s,queue=rx,outdev=%s%d", GateFilterID(j), netdev, gateOutPrefix, j))
			case cfg.OutputGate:
				out, in := GateSocketPaths(cfg, uuid, j)
				args = append(args,
					"-chardev", fmt.Sprintf("socket,id=%s%d,path=%s", gateOutPrefix, j, qemuOptEscape(out)),
					"-chardev", fmt.Sprintf("socket,id=%s%d,path=%s", gateInPrefix, j, qemuOptEscape(in)),
					"-object", fmt.Sprintf("filter-redirector,id=%s,netdev=%s,queue=rx,outdev=%s%d,indev=%s%d", GateFilterID(j), netdev, gateOutPrefix, j, gateInPrefix, j))
			}
		}
	}
	if dom.QEMUCommandline == nil {
		dom.QEMUCommandline = &libvirtxml.DomainQEMUCommandline{}
	}
	for _, a := range args {
		dom.QEMUCommandline.Args = append(dom.QEMUCommandline.Args, libvirtxml.DomainQEMUCommandlineArg{Value: a})
	}
}

func addOverride(dom *libvirtxml.Domain, alias string, p libvirtxml.DomainQEMUOverrideProperty) {
	if dom.QEMUOverride == nil {
		dom.QEMUOverride = &libvirtxml.DomainQEMUOverride{}
	}
	for i := range dom.QEMUOverride.Devices {
		d := &dom.QEMUOverride.Devices[i]
		if d.Alias == alias {
			d.Frontend.Properties = append(d.Frontend.Properties, p)
			return
		}
	}
	dom.QEMUOverride.Devices = append(dom.QEMUOverride.Devices, libvirtxml.DomainQEMUOverrideDevice{
		Alias:    alias,
		Frontend: libvirtxml.DomainQEMUOverrideFrontend{Properties: []libvirtxml.DomainQEMUOverrideProperty{p}},
	})
}

// build strips dom, validates it (problems give a *ValidationError when
// validate is set; LivePrimary clears it) and generates the domain for role.
func build(dom *libvirtxml.Domain, host HostConfig, role string, validate bool) (string, error) {
	stripGenerated(dom)
	info, ps, _ := check(dom, host, role)
	if validate && len(ps) > 0 {
		return "", &ValidationError{Domain: dom.Name, Problems: ps}
	}
	if strings.TrimSpace(dom.UUID) == "" {
		return "", fmt.Errorf("%w (domain %q)", ErrNoUUID, dom.Name)
	}
	uuid, ok := canonicalUUID(dom.UUID)
	if !ok {
		return "", fmt.Errorf("ftxml: domain %q: <uuid> %q is not a UUID", dom.Name, dom.UUID)
	}
	cfg := info.cfg
	cfg.Role = role
	if role == RoleBackup {
		generate(dom, modeReplay, ReplayFIFOPath(cfg, uuid), cfg, uuid)
		// What virsh list --title and virt-manager show of the transient
		// backup domain on its host (libvirt metadata: never guest-visible).
		// The user's own title and description follow ours, and
		// stripGenerated takes ours off again (Primary of a backup).
		dom.Title = joinNote(BackupTitle(dom.Name, cfg.PeerAddress), ": ", dom.Title)
		dom.Description = joinNote(BackupDescription(dom.Name, cfg.PeerAddress), "\n\n", dom.Description)
	} else {
		generate(dom, modeRecord, RecordFIFOPath(cfg, uuid), cfg, uuid)
	}
	if err := SetConfig(dom, cfg); err != nil {
		return "", err
	}
	out, err := dom.Marshal()
	if err != nil {
		return "", fmt.Errorf("ftxml: domain %q: marshal: %w", dom.Name, err)
	}
	return out, nil
}

// BackupTitle is the <title> of the backup domain of name, whose primary
// runs on primaryHost.
func BackupTitle(name, primaryHost string) string {
	return backupNotePrefix + " of " + name + " (primary on " + primaryHost + ")"
}

// backupNotePrefix starts the title and the description of every backup
// domain (BackupTitle, BackupDescription).
const backupNotePrefix = "libvirt-ft backup"

// joinNote is note, then sep and the user's text if there is one.
func joinNote(note, sep, user string) string {
	if user == "" {
		return note
	}
	return note + sep + user
}

// stripNote removes note, exactly, from the start of s, with the
// separator sep that joinNote put after it; anything else (a user's own
// title that merely looks alike) is left as it is.
func stripNote(s, note, sep string) string {
	switch {
	case s == note:
		return ""
	case strings.HasPrefix(s, note+sep):
		return s[len(note)+len(sep):]
	}
	return s
}

// stripNotes takes the backup notes (BackupTitle, BackupDescription) off
// dom's title and description; the primary host is the peer its ft element
// names on a backup.
func stripNotes(dom *libvirtxml.Domain) {
	host := readFT(dom, HostConfig{}).cfg.PeerAddress
	dom.Title = stripNote(dom.Title, BackupTitle(dom.Name, host), ": ")
	dom.Description = stripNote(dom.Description, BackupDescription(dom.Name, host), "\n\n")
}

// backupDescriptionEnd closes the description's note.
const backupDescriptionEnd = "would diverge and be stopped."

// LiveNote is the title and description for a backup domain that went
// live (the live domain keeps the backup's, which no longer fit): the
// user's own, with a note that the VM runs here since a failover from
// primaryHost. backupXML is the backup's domain XML.
func LiveNote(backupXML, primaryHost string) (title, description string, err error) {
	dom, err := ParseDomain(backupXML)
	if err != nil {
		return "", "", err
	}
	stripNotes(dom)
	note := "libvirt-ft: " + dom.Name + " runs here since it went live (failover or switchover from " + primaryHost + "); unprotected"
	return joinNote(note, ": ", dom.Title), dom.Description, nil
}

// PrimaryTitle is the running primary's title (libvirt metadata, set live
// only: never in the persistent definition, never guest-visible; what
// virt-manager's list and virsh list --title show): a note of its
// protection state, then ": " and the user's own title if there is one.
// name is the domain, backupHost its ft element's peer, state libvirt-ftd's
// state of the run (plugin/ctl State names). "" for a state that needs no
// note (stopped, refused, resolving, live: LiveNote's).
func PrimaryTitle(name, backupHost, state, userTitle string) string {
	note := primaryNote(name, backupHost, state)
	if note == "" {
		return ""
	}
	return joinNote(note, ": ", userTitle)
}

// primaryNotes are the states PrimaryTitle words.
var primaryNotes = []string{"preparing", "replicating", "unprotected", "switching-over"}

func primaryNote(name, host, state string) string {
	switch state {
	case "preparing", "seeding", "waiting":
		return "libvirt-ft: " + name + " starting protection (backup on " + host + ")"
	case "replicating":
		return "libvirt-ft: " + name + " protected (backup on " + host + ")"
	case "unprotected":
		return "libvirt-ft: " + name + " UNPROTECTED (no backup; virt-ft status)"
	case "switching-over":
		return "libvirt-ft: " + name + " switching over to " + host
	}
	return ""
}

// UserTitle is the user's own title in a running primary's title
// (PrimaryTitle's note taken off, exactly; anything else is kept).
func UserTitle(title, name, backupHost string) string {
	for _, st := range primaryNotes {
		if t := stripNote(title, primaryNote(name, backupHost, st), ": "); t != title {
			return t
		}
	}
	return title
}

// PausedNote is the title and description for a VM that a restarted
// libvirt-ftd left paused for the operator (arbiter none: nothing tells
// whether the peer runs it now): the user's own title, any libvirt-ft
// note taken off, after a note saying to check the peer before resuming.
// domXML is the VM's live XML (a primary's or a backup's).
func PausedNote(domXML string) (title, description string, err error) {
	dom, err := ParseDomain(domXML)
	if err != nil {
		return "", "", err
	}
	stripNotes(dom)
	user := UserTitle(dom.Title, dom.Name, readFT(dom, HostConfig{}).cfg.PeerAddress)
	note := "libvirt-ft: " + dom.Name + " PAUSED after a libvirt-ftd restart: check where it runs (virt-ft status on the peer host) before resuming it"
	return joinNote(note, ": ", user), dom.Description, nil
}

// BackupDescription is the <description> of the backup domain of name,
// whose primary runs on primaryHost: what it is, and not to type into its
// console.
func BackupDescription(name, primaryHost string) string {
	return backupNotePrefix + ": this VM replays the log of the protected VM " + name + " running on " + primaryHost +
		", and runs here only if that host fails (virt-ft status). Do not type into its console: console input is not" +
		" replicated, and the backup " + backupDescriptionEnd
}

// Primary returns the primary's domain XML for a domain that carries our
// element: the user's domain with QEMU record/replay wired in (user aliases
// ua-ft-disk<i> and ua-ft-net<j> where the device has no "ua-" alias, a
// blkreplay -blockdev and a <qemu:override> per disk, a filter-replay
// -object per interface, -icount rr=record into RecordFIFOPath) and the
// element with role="primary" and every default explicit. Applied to its own
// output it returns the same bytes. It refuses (a *ValidationError) what
// Validate refuses, and a domain without a UUID (ErrNoUUID).
func Primary(userXML string, hostCfg HostConfig) (string, error) {
	dom, err := ParseDomain(userXML)
	if err != nil {
		return "", err
	}
	return build(dom, hostCfg, RolePrimary, true)
}

// ErrNotGeneratedBackup is LivePrimary's error for input that is not a
// backup's domain XML (the output of Backup, or libvirt's XML of it).
var ErrNotGeneratedBackup = errors.New("ftxml: not a generated backup")

// LivePrimary returns the persistent primary definition of a backup that
// goes live (or went live while libvirt-ftd restarted): Primary of the
// backup's domain XML (the output of Backup, or libvirt's live XML of that
// domain), except that the define-time refusals are not applied again.
// The domain passed them when it was protected; a refusal added by a later
// version of libvirt-ftd must not leave the VM, which already runs, without
// a definition on its new host (it is refused at its next start instead,
// with the field and the fix). Errors: ErrNotGeneratedBackup for other
// input; parse, UUID, element and marshal errors as Primary's.
func LivePrimary(backupXML string) (string, error) {
	dom, err := ParseDomain(backupXML)
	if err != nil {
		return "", err
	}
	info := readFT(dom, HostConfig{})
	// Not a recording primary: the stock go-live's restarted one runs with
	// -loadvm of its go-live snapshot, which must never reach a
	// persistent definition (its next start would roll the disks back).
	if generatedMode(dom) != modeReplay || info.ours != 1 || info.cfg.Role != RoleBackup {
		return "", fmt.Errorf("%w: domain %q is not a replaying domain with <ft:ft role=\"backup\">", ErrNotGeneratedBackup, dom.Name)
	}
	// A backup's domain has no security label of its own (the backup
	// host refuses one from the peer): any in libvirt's live XML are the
	// ones this host's libvirt gave it, which a definition must not keep
	// (a re-protection would send them to the peer, which refuses them).
	dom.SecLabel = nil
	return build(dom, HostConfig{}, RolePrimary, false)
}

// Backup returns the backup's domain XML for the primary's (the output of
// Primary, as libvirt reports it for the defined domain: pass the
// persistent or migratable XML, not the live one). It is the same machine in
// every guest-visible way (name, UUID, MACs, devices and their order, ...)
// but replays: -icount rr=replay from ReplayFIFOPath, and role="backup".
// hostCfg.PeerAddress should name the primary host. Input that is not a
// generated primary gives ErrNotGeneratedPrimary; every interface needs its
// MAC address.
func Backup(primaryXML string, hostCfg HostConfig) (string, error) {
	dom, err := ParseDomain(primaryXML)
	if err != nil {
		return "", err
	}
	if m := generatedMode(dom); m != modeRecord {
		why := "has no -icount rr=record in <qemu:commandline>"
		if m != "" {
			why = fmt.Sprintf("runs with -icount rr=%s", m)
		}
		return "", fmt.Errorf("%w: domain %q %s", ErrNotGeneratedPrimary, dom.Name, why)
	}
	info := readFT(dom, HostConfig{})
	if info.ours != 1 || info.cfg.Role != RolePrimary {
		return "", fmt.Errorf("%w: domain %q has no <ft:ft role=\"primary\"> element", ErrNotGeneratedPrimary, dom.Name)
	}
	return build(dom, hostCfg, RoleBackup, true)
}

// StripGenerated returns the user's domain from a generated one: it removes
// our arguments, overrides and "ua-ft-" aliases. The ft element stays as it
// is (with the defaults Primary made explicit and its role).
func StripGenerated(domainXML string) (string, error) {
	dom, err := ParseDomain(domainXML)
	if err != nil {
		return "", err
	}
	stripGenerated(dom)
	out, err := dom.Marshal()
	if err != nil {
		return "", fmt.Errorf("ftxml: domain %q: marshal: %w", dom.Name, err)
	}
	return out, nil
}

// Unprotected tells the daemon whether a domain defined without the ft
// element still carries the record/replay wiring this package generated
// (the user removed the element from a protected definition, or `virsh
// define`d an old dumpxml): newXML is then the domain with it removed
// (StripGenerated) and changed is true, because with a record FIFO no
// daemon opens, it would not start as a plain VM. It acts only on a
// domain with the -icount we generate for it, on its own FIFO
// (<state dir>/<uuid>/record.fifo): a domain without it, an -icount rr=...
// a user wrote on a file of their own, or a "ua-ft-" alias of the user's,
// is left as it is. A domain with the ft
// element gives (domainXML, false, nil): NeedsRewrite handles it.
func Unprotected(domainXML string) (newXML string, changed bool, err error) {
	dom, err := ParseDomain(domainXML)
	if err != nil {
		return "", false, err
	}
	if readFT(dom, HostConfig{}).present || !hasOurWiring(dom) {
		return domainXML, false, nil
	}
	stripGenerated(dom)
	out, err := dom.Marshal()
	if err != nil {
		return "", false, fmt.Errorf("ftxml: domain %q: marshal: %w", dom.Name, err)
	}
	changed, err = definitionChanged(domainXML, out)
	if err != nil || !changed {
		return domainXML, false, err
	}
	return out, true, nil
}

// definitionChanged reports whether defining out in place of orig changes
// what libvirt runs or the libvirt-ft settings (sameDefinition).
func definitionChanged(orig, out string) (bool, error) {
	before, err := ParseDomain(orig)
	if err != nil {
		return false, err
	}
	after, err := ParseDomain(out)
	if err != nil {
		return false, err
	}
	same, err := sameDefinition(before, after)
	return !same, err
}

// hasOurWiring reports whether dom has the -icount this package generates
// for it: rr= on its own FIFO, <state dir>/<uuid>/record.fifo (or
// replay.fifo). Every generated primary and backup has it; the rest of
// the wiring (blkreplay nodes, gates, filters, "ua-ft-" aliases) goes with
// it, but never counts alone: a user's alias may begin with "ua-ft-".
func hasOurWiring(dom *libvirtxml.Domain) bool {
	cl := dom.QEMUCommandline
	uuid, ok := canonicalUUID(dom.UUID)
	if cl == nil || !ok {
		return false
	}
	for i := 0; i+1 < len(cl.Args); i++ {
		if cl.Args[i].Value != "-icount" || rrMode(cl.Args[i+1].Value) == "" {
			continue
		}
		for _, o := range splitQemuOpts(cl.Args[i+1].Value) {
			if f, ok := strings.CutPrefix(o, "rrfile="); ok &&
				(strings.HasSuffix(f, "/"+uuid+"/record.fifo") || strings.HasSuffix(f, "/"+uuid+"/replay.fifo")) {
				return true
			}
		}
	}
	return false
}

// NeedsRewrite tells the daemon whether a defined domain must be redefined.
// A domain without our element (and without an element named ft in another
// namespace) gives (domainXML, false, nil). Otherwise newXML is the domain
// generated for the role its element names (Primary; or, for role="backup",
// the backup regenerated from itself) and changed reports whether defining
// it would change what libvirt runs or the libvirt-ft settings: formatting,
// attribute order and defaults left implicit do not count, so libvirt's
// dumpxml of newXML gives changed == false. A domain that cannot be
// protected gives the *ValidationError.
func NeedsRewrite(domainXML string) (newXML string, changed bool, err error) {
	dom, err := ParseDomain(domainXML)
	if err != nil {
		return "", false, err
	}
	info := readFT(dom, HostConfig{})
	if !info.present {
		return domainXML, false, nil
	}
	role := RolePrimary
	if info.ours == 1 && info.cfg.Role == RoleBackup {
		role = RoleBackup
	}
	out, err := build(dom, HostConfig{}, role, true)
	if err != nil {
		return "", false, err
	}
	changed, err = definitionChanged(domainXML, out)
	if err != nil {
		return "", false, err
	}
	return out, changed, nil
}

// sameDefinition compares two domains outside <metadata>, and their
// libvirt-ft settings.
func sameDefinition(a, b *libvirtxml.Domain) (bool, error) {
	ia, ib := readFT(a, HostConfig{}), readFT(b, HostConfig{})
	if ia.cfg != ib.cfg || len(ia.problems) > 0 || len(ib.problems) > 0 {
		return false, nil
	}
	a.Metadata, b.Metadata = nil, nil
	ma, err := a.Marshal()
	if err != nil {
		return false, fmt.Errorf("ftxml: domain %q: marshal: %w", a.Name, err)
	}
	mb, err := b.Marshal()
	if err != nil {
		return false, fmt.Errorf("ftxml: domain %q: marshal: %w", b.Name, err)
	}
	return ma == mb, nil
}
