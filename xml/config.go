package ftxml

import (
	"fmt"
	"net/netip"
	"path"
	"strconv"
	"strings"
	"time"

	"libvirt.org/go/libvirtxml"
)

// NamespaceURI is the namespace of libvirt-ft's metadata element. The element
// is matched by this URI only; Prefix is the prefix this package writes.
const NamespaceURI = "https://libvirt-ft.org/xmlns/ft/1.0"

// Prefix is the conventional prefix bound to NamespaceURI. Any other prefix
// bound to NamespaceURI is read the same way.
const Prefix = "ft"

// Roles of a protected domain (the role attribute of <ft:ft>).
const (
	RolePrimary = "primary" // runs QEMU with rr=record and sends the log
	RoleBackup  = "backup"  // runs QEMU with rr=replay, fed from the log
)

// Defaults for the fields of Config that the element leaves out.
const (
	DefaultPeerPort          = 7480
	DefaultHeartbeatInterval = 100 * time.Millisecond
	DefaultHeartbeatTimeout  = 1000 * time.Millisecond
	DefaultStateDir          = "/var/lib/libvirt-ft"
	// maxSocketPath is the longest unix socket path (sun_path, unix(7)).
	maxSocketPath = 107
	// MinHeartbeatInterval is the smallest heartbeat interval accepted.
	MinHeartbeatInterval = 10 * time.Millisecond
)

// Config is the content of the <ft:ft> element: how a protected domain is
// paired and supervised.
type Config struct {
	// Role is RolePrimary or RoleBackup (attribute role, default primary).
	// The user's element normally leaves it out; Primary and Backup set it.
	Role string
	// PeerAddress is the other host's libvirt-ftd: an IP address (v4 or v6,
	// without brackets) or a DNS host name (<ft:peer address>, required).
	// For a primary it is the backup host, for a backup the primary host.
	PeerAddress string
	// PeerPort is the TCP port of the peer's log channel, 1..65535
	// (<ft:peer port>, default 7480).
	PeerPort int
	// HeartbeatInterval is the time between heartbeats on the log channel,
	// a whole number of milliseconds, at least 10 ms
	// (<ft:heartbeat interval-ms>, default 100 ms).
	HeartbeatInterval time.Duration
	// HeartbeatTimeout is how long without a heartbeat makes a host declare
	// its peer lost (the backup then goes live), a whole number of
	// milliseconds, more than HeartbeatInterval
	// (<ft:heartbeat timeout-ms>, default 1000 ms).
	HeartbeatTimeout time.Duration
	// StallTimeout is how long the backup's executed icount may stand
	// still while log it has not executed is queued for it before the
	// backup is declared stalled (the primary then runs on unprotected),
	// and how long feeding END or draining may make no progress before a
	// go-live fails (Stall). On the primary it is also how long the record
	// log may be silent before the hang watchdog asks QEMU's monitor
	// whether it is alive (plugin, watchHang; HangProbe). A whole number
	// of milliseconds, more than HeartbeatInterval (<ft:heartbeat
	// stall-timeout-ms>); 0, the default, means DefaultReplayStall or
	// twice HeartbeatTimeout, whichever is longer, for the replay, and
	// twice HeartbeatTimeout for the hang watchdog.
	StallTimeout time.Duration
	// StateDir is the absolute directory on both hosts under which each
	// protected domain has a directory named by its UUID holding the replay
	// FIFOs (<ft:state dir>, default /var/lib/libvirt-ft).
	StateDir string
	// OutputGate holds the guest's transmitted frames until the backup has
	// acknowledged the log that covers them (docs/replay.md §10;
	// <ft:output-gate enabled="yes|no">, default yes). Turning it off loses
	// TCP connections at go-live.
	OutputGate bool
	// AutoReprotect: a VM that went live after a failover is re-protected
	// onto the host it failed over from as soon as that host's
	// libvirt-ftd answers again, retrying with a backoff (issue 13;
	// <ft:reprotect auto="yes|no">, default yes). With no, only virt-ft
	// protect does it.
	AutoReprotect bool
}

// DefaultReplayStall is the least replay stall bound when
// stall-timeout-ms is left out (Stall). A healthy backup's replay can
// stand still for seconds with log queued and then go on: in the lab
// (docs/replay.md §12, bug B) each e2e-admin run showed dozens of stands
// of 0.3–2 s (3.3 s with perf attached; once 3.9 s), all of which resumed, most during
// a boot or after a guest reset, when the backup's QEMU touches memory it
// has not touched before (up to 75 ms per 2 MiB page on those machines).
// The old default, twice the heartbeat timeout (2 s), declared such a
// backup stalled in two e2e-admin runs out of two. The bound is also how
// long a backup that really stopped (a divergence, a SIGSTOP) holds the
// primary: the window (protocol.md §7) stops it until the verdict, and the
// output gate holds its frames. A backup whose vCPU keeps running while its
// monitor is silent (a slow replay, session 20) gets up to four bounds
// (at most 15 s more) before that verdict (failover.Node.slowBound).
const DefaultReplayStall = 5 * time.Second

// Stall is the replay stall bound in force, for the backup's replay and
// for go-live's feeding of END and drain: StallTimeout, or the longer of
// DefaultReplayStall and twice HeartbeatTimeout when it is 0.
func (c Config) Stall() time.Duration {
	if c.StallTimeout > 0 {
		return c.StallTimeout
	}
	return max(DefaultReplayStall, 2*c.HeartbeatTimeout)
}

// HangProbe is how long the primary's record log may be silent before
// its hang watchdog asks QEMU's monitor whether it is alive:
// StallTimeout, or twice HeartbeatTimeout when it is 0. By default it is
// shorter than Stall (unless timeout-ms is 2500 or more): a hung primary
// stops the guest, so it is looked into soon after a lost host would be.
func (c Config) HangProbe() time.Duration {
	if c.StallTimeout > 0 {
		return c.StallTimeout
	}
	return 2 * c.HeartbeatTimeout
}

// DefaultConfig returns a Config with every default filled in and no peer.
func DefaultConfig() Config {
	return Config{
		Role:              RolePrimary,
		PeerPort:          DefaultPeerPort,
		HeartbeatInterval: DefaultHeartbeatInterval,
		HeartbeatTimeout:  DefaultHeartbeatTimeout,
		StateDir:          DefaultStateDir,
		OutputGate:        true,
		AutoReprotect:     true,
	}
}

// Field names (XPath-like) of the element, for Problem.Field.
const (
	fieldMetadata  = "/domain/metadata"
	fieldFT        = fieldMetadata + "/ft:ft"
	fieldRole      = fieldFT + "/@role"
	fieldPeer      = fieldFT + "/ft:peer"
	fieldAddress   = fieldPeer + "/@address"
	fieldPort      = fieldPeer + "/@port"
	fieldHeartbeat = fieldFT + "/ft:heartbeat"
	fieldInterval  = fieldHeartbeat + "/@interval-ms"
	fieldTimeout   = fieldHeartbeat + "/@timeout-ms"
	fieldStall     = fieldHeartbeat + "/@stall-timeout-ms"
	fieldState     = fieldFT + "/ft:state"
	fieldStateDir  = fieldState + "/@dir"
	fieldGate      = fieldFT + "/ft:output-gate"
	fieldEnabled   = fieldGate + "/@enabled"
	fieldReprotect = fieldFT + "/ft:reprotect"
	fieldAuto      = fieldReprotect + "/@auto"
)

const peerExample = `<ft:peer address="10.250.0.2" port="7480"/>`

// Validate checks the values of c as the element would carry them. The
// error is a *ValidationError.
func (c Config) Validate() error {
	if ps := c.problems(); len(ps) > 0 {
		return &ValidationError{Problems: ps}
	}
	return nil
}

func (c Config) problems() []Problem {
	var ps []Problem
	if c.Role != RolePrimary && c.Role != RoleBackup {
		ps = append(ps, Problem{fieldRole, fmt.Sprintf("is %q: the role of a protected domain is primary or backup", c.Role),
			`set role="primary" or leave it out`})
	}
	if p, bad := checkPeerAddress(c.PeerAddress); bad {
		ps = append(ps, p)
	}
	if c.PeerPort < 1 || c.PeerPort > 65535 {
		ps = append(ps, Problem{fieldPort, fmt.Sprintf("is %d: a TCP port is 1..65535", c.PeerPort),
			fmt.Sprintf(`set port="%d" (the default) or the port the peer's libvirt-ftd listens on`, DefaultPeerPort)})
	}
	intervalOK := true
	switch {
	case c.HeartbeatInterval%time.Millisecond != 0:
		intervalOK = false
		ps = append(ps, Problem{fieldInterval, fmt.Sprintf("is %v: the element holds whole milliseconds", c.HeartbeatInterval),
			"round the interval to whole milliseconds"})
	case c.HeartbeatInterval < MinHeartbeatInterval:
		intervalOK = false
		ps = append(ps, Problem{fieldInterval, fmt.Sprintf("is %d: heartbeats more often than every %d ms load the log channel for nothing",
			c.HeartbeatInterval.Milliseconds(), MinHeartbeatInterval.Milliseconds()),
			fmt.Sprintf(`set interval-ms="%d" (the default) or at least %d`, DefaultHeartbeatInterval.Milliseconds(), MinHeartbeatInterval.Milliseconds())})
	}
	switch {
	case c.HeartbeatTimeout%time.Millisecond != 0:
		ps = append(ps, Problem{fieldTimeout, fmt.Sprintf("is %v: the element holds whole milliseconds", c.HeartbeatTimeout),
			"round the timeout to whole milliseconds"})
	case intervalOK && c.HeartbeatTimeout <= c.HeartbeatInterval:
		ps = append(ps, Problem{fieldTimeout, fmt.Sprintf("is %d, not more than interval-ms %d: every gap between two heartbeats would declare the peer lost (and make the backup go live)",
			c.HeartbeatTimeout.Milliseconds(), c.HeartbeatInterval.Milliseconds()),
			"set timeout-ms to several intervals, e.g. 10 × interval-ms"})
	}
	switch {
	case c.StallTimeout%time.Millisecond != 0:
		ps = append(ps, Problem{fieldStall, fmt.Sprintf("is %v: the element holds whole milliseconds", c.StallTimeout),
			"round the stall timeout to whole milliseconds"})
	case c.StallTimeout < 0 || (c.StallTimeout > 0 && intervalOK && c.StallTimeout <= c.HeartbeatInterval):
		ps = append(ps, Problem{fieldStall, fmt.Sprintf("is %d: a backup's replay is sampled more slowly than that, so every pause would declare it stalled",
			c.StallTimeout.Milliseconds()),
			"leave stall-timeout-ms out (5 s, or twice timeout-ms if longer) or set it to several heartbeat intervals"})
	}
	if !path.IsAbs(c.StateDir) {
		ps = append(ps, Problem{fieldStateDir, fmt.Sprintf("is %q: the replay FIFOs need an absolute directory, the same on both hosts", c.StateDir),
			fmt.Sprintf(`set dir="%s" (the default) or another absolute path`, DefaultStateDir)})
	} else if n := len(c.StateDir) + len("/00000000-0000-0000-0000-000000000000/gate00-out.sock"); c.OutputGate && n > maxSocketPath {
		// struct sockaddr_un.sun_path holds 108 bytes with the NUL (unix(7)).
		// Only the output gate puts sockets there: the FIFOs have no such
		// limit.
		ps = append(ps, Problem{fieldStateDir, fmt.Sprintf("is %d bytes long: the output gate's unix sockets under it would be %d bytes, over the %d that unix(7) allows", len(c.StateDir), n, maxSocketPath),
			fmt.Sprintf(`set a shorter dir (at most %d bytes), such as "%s" (the default)`, maxSocketPath-(n-len(c.StateDir)), DefaultStateDir)})
	}
	return ps
}

// checkPeerAddress returns a problem if a is not an IP address or a host
// name.
func checkPeerAddress(a string) (Problem, bool) {
	const fix = "set address to the IP address or host name of the other host's libvirt-ftd, e.g. " + peerExample
	if a == "" {
		return Problem{fieldAddress, "is missing or empty: libvirt-ft sends the replay log and heartbeats to this address", fix}, true
	}
	if _, err := netip.ParseAddr(a); err == nil {
		return Problem{}, false
	}
	if isHostname(a) {
		return Problem{}, false
	}
	return Problem{fieldAddress, fmt.Sprintf("is %q: not an IP address or host name", a), fix}, true
}

// isHostname reports whether s is a DNS host name (RFC 1123 labels). A name
// whose last label is all digits is refused: it is a mistyped IPv4 address.
func isHostname(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	last := labels[len(labels)-1]
	return strings.Trim(last, "0123456789") != ""
}

// ftInfo is what the metadata of a domain says about libvirt-ft.
type ftInfo struct {
	present  bool // ours, or an element named ft in another namespace
	ours     int  // number of <ft:ft> elements in our namespace
	cfg      Config
	explicit bool // cfg comes from an element (else defaults)
	problems []Problem
}

// readFT reads the libvirt-ft element of dom's metadata. host overrides
// apply before the values are checked.
func readFT(dom *libvirtxml.Domain, host HostConfig) ftInfo {
	info := ftInfo{cfg: DefaultConfig()}
	inner := ""
	if dom.Metadata != nil {
		inner = dom.Metadata.XML
	}
	elems, err := scanMetadata(inner, nil)
	if err != nil {
		info.problems = append(info.problems, Problem{fieldMetadata, "is not well-formed XML: " + err.Error(),
			"fix the XML inside <metadata>"})
		info.present = strings.Contains(inner, NamespaceURI)
		return info
	}
	peerMissing := false
	for _, e := range elems {
		n := e.node
		switch {
		case n.name.Space == NamespaceURI && n.name.Local == "ft":
			info.present = true
			info.ours++
			if info.ours > 1 {
				info.problems = append(info.problems, Problem{fmt.Sprintf("%s[%d]", fieldFT, info.ours),
					"is a second libvirt-ft element: a domain has one, and libvirt keeps only the first element of a namespace",
					"merge the settings into one <ft:ft> element and remove the others"})
				continue
			}
			info.explicit = true
			ps, missing := parseFT(n, &info.cfg)
			info.problems = append(info.problems, ps...)
			peerMissing = missing
		case n.name.Space == NamespaceURI:
			info.present = true
			info.problems = append(info.problems, Problem{fieldMetadata + "/" + n.qname(),
				"is an unknown libvirt-ft element: libvirt-ft has one top-level element, <ft:ft>",
				"put its settings inside <ft:ft>"})
		case n.name.Local == "ft":
			info.present = true
			info.problems = append(info.problems, wrongNamespace(n))
		}
	}
	if !info.present {
		info.problems = append(info.problems, Problem{fieldFT, "is missing: the domain does not ask for libvirt-ft protection",
			fmt.Sprintf(`add <ft:ft xmlns:ft="%s">%s</ft:ft> to <metadata>`, NamespaceURI, peerExample)})
		return info
	}
	if host.PeerAddress != "" {
		info.cfg.PeerAddress = host.PeerAddress
	}
	if host.PeerPort != 0 {
		info.cfg.PeerPort = host.PeerPort
	}
	if !info.explicit {
		return info
	}
	if peerMissing && host.PeerAddress == "" {
		info.problems = append(info.problems, Problem{fieldPeer, "is missing: libvirt-ft needs the other host's address to send the replay log and heartbeats to",
			"add " + peerExample + " inside <ft:ft>"})
	}
	for _, p := range info.cfg.problems() {
		if p.Field == fieldAddress && peerMissing && host.PeerAddress == "" {
			continue // reported as a missing <ft:peer>
		}
		info.problems = append(info.problems, p)
	}
	return info
}

func wrongNamespace(n *node) Problem {
	fix := fmt.Sprintf(`bind the prefix to our URI: <%s xmlns:%s="%s">`, n.qname(), n.prefix, NamespaceURI)
	if n.prefix == "" {
		fix = fmt.Sprintf(`set our URI: <ft xmlns="%s">, or write <ft:ft xmlns:ft="%s">`, NamespaceURI, NamespaceURI)
	}
	field := fieldMetadata + "/" + n.qname()
	switch {
	case n.unbound:
		return Problem{field, fmt.Sprintf("uses the prefix %q, which is not declared: libvirt-ft matches its element by namespace URI %q", n.prefix, NamespaceURI), fix}
	case n.name.Space == "":
		return Problem{field, fmt.Sprintf("has no namespace: libvirt-ft's element is in namespace %q (and libvirt drops metadata without a namespace)", NamespaceURI),
			fmt.Sprintf(`write <ft:ft xmlns:ft="%s" ...>`, NamespaceURI)}
	default:
		return Problem{field, fmt.Sprintf("is in namespace %q, not libvirt-ft's %q", n.name.Space, NamespaceURI), fix}
	}
}

// parseFT reads the element into cfg (which holds the defaults) and returns
// the problems of its structure: unknown elements and attributes, values
// that are not numbers or yes/no. It reports whether <ft:peer> is missing
// (a problem unless the host supplies the peer).
func parseFT(n *node, cfg *Config) (ps []Problem, peerMissing bool) {
	ps = append(ps, checkNode(n, fieldFT, []string{"role"})...)
	if v, ok := attr(n, "role"); ok {
		cfg.Role = v
	}
	seen := map[string]bool{}
	peer := false
	for _, c := range n.children {
		field := fieldFT + "/" + c.qname()
		if c.name.Space != NamespaceURI || !knownChild(c.name.Local) {
			msg := "is not a libvirt-ft element: <ft:ft> holds ft:peer, ft:heartbeat, ft:state, ft:output-gate and ft:reprotect"
			if c.unbound {
				msg = fmt.Sprintf("uses the undeclared prefix %q: %s", c.prefix, msg)
			} else if c.name.Space != NamespaceURI {
				msg = fmt.Sprintf("is in namespace %q: %s", c.name.Space, msg)
			}
			ps = append(ps, Problem{field, msg, "remove it"})
			continue
		}
		field = fieldFT + "/ft:" + c.name.Local
		if seen[c.name.Local] {
			ps = append(ps, Problem{field, "appears twice", "keep one"})
			continue
		}
		seen[c.name.Local] = true
		switch c.name.Local {
		case "peer":
			peer = true
			ps = append(ps, checkNode(c, field, []string{"address", "port"})...)
			if v, ok := attr(c, "address"); ok {
				cfg.PeerAddress = v
			}
			if v, ok := attr(c, "port"); ok {
				p, err := strconv.Atoi(v)
				if err != nil {
					ps = append(ps, Problem{fieldPort, fmt.Sprintf("is %q: not a whole number", v),
						fmt.Sprintf(`set port="%d" (the default) or the port the peer's libvirt-ftd listens on`, DefaultPeerPort)})
				} else {
					cfg.PeerPort = p
				}
			}
		case "heartbeat":
			ps = append(ps, checkNode(c, field, []string{"interval-ms", "timeout-ms", "stall-timeout-ms"})...)
			ps = append(ps, millis(c, "interval-ms", fieldInterval, &cfg.HeartbeatInterval)...)
			ps = append(ps, millis(c, "timeout-ms", fieldTimeout, &cfg.HeartbeatTimeout)...)
			ps = append(ps, millis(c, "stall-timeout-ms", fieldStall, &cfg.StallTimeout)...)
		case "state":
			ps = append(ps, checkNode(c, field, []string{"dir"})...)
			if v, ok := attr(c, "dir"); ok {
				cfg.StateDir = v
			}
		case "output-gate":
			ps = append(ps, checkNode(c, field, []string{"enabled"})...)
			if v, ok := attr(c, "enabled"); ok {
				switch v {
				case "yes":
					cfg.OutputGate = true
				case "no":
					cfg.OutputGate = false
				default:
					ps = append(ps, Problem{fieldEnabled, fmt.Sprintf("is %q: it is yes or no", v),
						`set enabled="yes" (the default: without the output rule TCP connections break at go-live)`})
				}
			}
		case "reprotect":
			ps = append(ps, checkNode(c, field, []string{"auto"})...)
			if v, ok := attr(c, "auto"); ok {
				switch v {
				case "yes":
					cfg.AutoReprotect = true
				case "no":
					cfg.AutoReprotect = false
				default:
					ps = append(ps, Problem{fieldAuto, fmt.Sprintf("is %q: it is yes or no", v),
						`set auto="yes" (the default: a VM that failed over gets a new backup as soon as its old host is back) or auto="no" (only virt-ft protect)`})
				}
			}
		}
	}
	return ps, !peer
}

func knownChild(local string) bool {
	switch local {
	case "peer", "heartbeat", "state", "output-gate", "reprotect":
		return true
	}
	return false
}

// checkNode refuses unknown or namespaced attributes, text and child
// elements (our elements below <ft:ft> are empty).
func checkNode(n *node, field string, allowed []string) []Problem {
	var ps []Problem
	for _, a := range n.attrs {
		ok := a.Name.Space == ""
		if ok {
			ok = false
			for _, name := range allowed {
				ok = ok || a.Name.Local == name
			}
		}
		if !ok {
			msg := "is an unknown attribute"
			if a.Name.Space != "" {
				msg = fmt.Sprintf("is an attribute in namespace %q: libvirt-ft's attributes have no namespace", a.Name.Space)
			}
			ps = append(ps, Problem{field + "/@" + a.Name.Local, msg, allowedFix(allowed)})
		}
	}
	for _, a := range n.unboundAttrs {
		ps = append(ps, Problem{field + "/@" + a, "uses an undeclared prefix", allowedFix(allowed)})
	}
	if n.text != "" {
		ps = append(ps, Problem{field, fmt.Sprintf("has text %q: libvirt-ft's settings are attributes", strings.TrimSpace(n.text)), "remove the text"})
	}
	if field != fieldFT {
		for _, c := range n.children {
			ps = append(ps, Problem{field + "/" + c.qname(), "is an unknown element", "remove it"})
		}
	}
	return ps
}

func allowedFix(allowed []string) string {
	if len(allowed) == 0 {
		return "remove it"
	}
	return "remove it; the attributes here are " + strings.Join(allowed, ", ")
}

func attr(n *node, local string) (string, bool) {
	for _, a := range n.attrs {
		if a.Name.Space == "" && a.Name.Local == local {
			return a.Value, true
		}
	}
	return "", false
}

func millis(n *node, local, field string, d *time.Duration) []Problem {
	v, ok := attr(n, local)
	if !ok {
		return nil
	}
	ms, err := strconv.ParseInt(v, 10, 32)
	if err != nil {
		return []Problem{{field, fmt.Sprintf("is %q: not a whole number of milliseconds", v), "write the number of milliseconds, e.g. " + local + `="100"`}}
	}
	*d = time.Duration(ms) * time.Millisecond
	return nil
}

// ParseConfig reads the libvirt-ft element of a domain's XML and fills in
// defaults. present reports whether the domain asks for libvirt-ft: it has
// an element in our namespace, or an element named ft in another namespace
// (an error). A domain without either gives (nil, false, nil). Problems are
// returned as a *ValidationError.
func ParseConfig(domainXML string) (*Config, bool, error) {
	dom, err := ParseDomain(domainXML)
	if err != nil {
		return nil, false, err
	}
	info := readFT(dom, HostConfig{})
	if !info.present {
		return nil, false, nil
	}
	if len(info.problems) > 0 {
		return nil, true, &ValidationError{Domain: dom.Name, Problems: info.problems}
	}
	cfg := info.cfg
	return &cfg, true, nil
}

// SetConfig writes cfg as dom's libvirt-ft element, with every value
// explicit. It replaces the elements in our namespace named ft (at the place
// of the first) and keeps the rest of <metadata> byte for byte. Invalid
// values give a *ValidationError and leave dom unchanged.
func SetConfig(dom *libvirtxml.Domain, cfg Config) error {
	if ps := cfg.problems(); len(ps) > 0 {
		return &ValidationError{Domain: dom.Name, Problems: ps}
	}
	inner := ""
	if dom.Metadata != nil {
		inner = dom.Metadata.XML
	}
	const indent = "\n    " // <metadata> is at depth 1 in libvirt's layout
	elem := renderFT(cfg)
	out, done, err := spliceFT(inner, indent+elem)
	if err != nil {
		return fmt.Errorf("ftxml: domain %q: metadata is not well-formed XML: %w", dom.Name, err)
	}
	if !done {
		k := len(strings.TrimRight(out, " \t\r\n"))
		tail := out[k:]
		if tail == "" {
			tail = "\n  "
		}
		out = out[:k] + indent + elem + tail
	}
	dom.Metadata = &libvirtxml.DomainMetadata{XML: out}
	return nil
}

// RemoveConfig removes dom's libvirt-ft elements (in our namespace, named
// ft) from <metadata>, keeping the rest byte for byte; <metadata> goes when
// nothing else is left in it. It reports whether there was one. The
// generated record/replay wiring is not touched: Unprotected removes it.
func RemoveConfig(dom *libvirtxml.Domain) (bool, error) {
	if dom.Metadata == nil {
		return false, nil
	}
	out, found, err := spliceFT(dom.Metadata.XML, "")
	if err != nil {
		return false, fmt.Errorf("ftxml: domain %q: metadata is not well-formed XML: %w", dom.Name, err)
	}
	if !found {
		return false, nil
	}
	if strings.TrimSpace(out) == "" {
		dom.Metadata = nil
	} else {
		dom.Metadata = &libvirtxml.DomainMetadata{XML: out}
	}
	return true, nil
}

// spliceFT replaces the elements of inner (<metadata>'s content) in our
// namespace named ft, with the white space before each, by with (at the
// place of the first; "" removes them), keeping the rest byte for byte.
// found reports whether there was one. Errors: inner is not well-formed.
func spliceFT(inner, with string) (out string, found bool, err error) {
	elems, err := scanMetadata(inner, nil)
	if err != nil {
		return "", false, err
	}
	var b strings.Builder
	pos := 0
	for _, e := range elems {
		if e.node.name.Space != NamespaceURI || e.node.name.Local != "ft" {
			continue
		}
		s := e.start
		for s > pos && isSpace(inner[s-1]) {
			s--
		}
		b.WriteString(inner[pos:s])
		if !found {
			b.WriteString(with)
			found = true
		}
		pos = e.end
	}
	b.WriteString(inner[pos:])
	return b.String(), found, nil
}

// renderFT writes the element in libvirt's layout (children at depth 3).
func renderFT(cfg Config) string {
	gate := "no"
	if cfg.OutputGate {
		gate = "yes"
	}
	p := Prefix + ":"
	var b strings.Builder
	fmt.Fprintf(&b, `<%sft xmlns:%s="%s" role="%s">`, p, Prefix, escapeAttr(NamespaceURI), escapeAttr(cfg.Role))
	fmt.Fprintf(&b, "\n      <%speer address=\"%s\" port=\"%d\"/>", p, escapeAttr(cfg.PeerAddress), cfg.PeerPort)
	stall := ""
	if cfg.StallTimeout > 0 {
		stall = fmt.Sprintf(" stall-timeout-ms=\"%d\"", cfg.StallTimeout.Milliseconds())
	}
	fmt.Fprintf(&b, "\n      <%sheartbeat interval-ms=\"%d\" timeout-ms=\"%d\"%s/>", p, cfg.HeartbeatInterval.Milliseconds(), cfg.HeartbeatTimeout.Milliseconds(), stall)
	fmt.Fprintf(&b, "\n      <%sstate dir=\"%s\"/>", p, escapeAttr(cfg.StateDir))
	fmt.Fprintf(&b, "\n      <%soutput-gate enabled=\"%s\"/>", p, gate)
	auto := "no"
	if cfg.AutoReprotect {
		auto = "yes"
	}
	fmt.Fprintf(&b, "\n      <%sreprotect auto=\"%s\"/>", p, auto)
	fmt.Fprintf(&b, "\n    </%sft>", p)
	return b.String()
}
