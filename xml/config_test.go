package ftxml

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"libvirt.org/go/libvirtxml"
)

func TestParseConfigTestdata(t *testing.T) {
	cfg, present, err := ParseConfig(readTestdata(t, "ftdemo.xml"))
	if err != nil || !present {
		t.Fatalf("ParseConfig = %v, %v, %v", cfg, present, err)
	}
	want := Config{
		Role:              RolePrimary,
		PeerAddress:       "10.250.0.2",
		PeerPort:          7480,
		HeartbeatInterval: 100 * time.Millisecond,
		HeartbeatTimeout:  time.Second,
		StateDir:          "/var/lib/libvirt-ft",
		OutputGate:        true,
		AutoReprotect:     true,
	}
	if diff := cmp.Diff(want, *cfg); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
}

func domainWithMetadata(meta string) string {
	return `<domain type='qemu'><name>web</name><metadata>` + meta + `</metadata></domain>`
}

func TestParseConfigDefaults(t *testing.T) {
	cfg, present, err := ParseConfig(domainWithMetadata(
		`<ft:ft xmlns:ft="https://libvirt-ft.org/xmlns/ft/1.0"><ft:peer address="backup.example.net"/></ft:ft>`))
	if err != nil || !present {
		t.Fatalf("ParseConfig: %v, %v", present, err)
	}
	want := DefaultConfig()
	want.PeerAddress = "backup.example.net"
	if *cfg != want {
		t.Errorf("got %+v, want %+v", *cfg, want)
	}
	if want.PeerPort != 7480 || want.HeartbeatInterval != 100*time.Millisecond || want.HeartbeatTimeout != time.Second ||
		want.StateDir != "/var/lib/libvirt-ft" || !want.OutputGate || want.Role != RolePrimary {
		t.Errorf("defaults are %+v", want)
	}
}

func TestParseConfigAbsent(t *testing.T) {
	for _, doc := range []string{
		`<domain type='qemu'><name>web</name></domain>`,
		domainWithMetadata(`<app:x xmlns:app="urn:example:app"/>`),
		domainWithMetadata(`<app:peer xmlns:app="urn:example:app"/>`),
	} {
		cfg, present, err := ParseConfig(doc)
		if cfg != nil || present || err != nil {
			t.Errorf("ParseConfig(%s) = %v, %v, %v; want nil, false, nil", doc, cfg, present, err)
		}
	}
}

// Our element is recognised by its namespace URI, whatever the prefix and
// wherever the prefix is declared.
func TestParseConfigNamespaceByURI(t *testing.T) {
	const uri = NamespaceURI
	docs := map[string]string{
		"other prefix":      domainWithMetadata(`<x:ft xmlns:x="` + uri + `" role="primary"><x:peer address="10.0.0.9" port="7000"/><x:output-gate enabled="no"/></x:ft>`),
		"default namespace": domainWithMetadata(`<ft xmlns="` + uri + `" role="primary"><peer address="10.0.0.9" port="7000"/><output-gate enabled="no"/></ft>`),
		// libvirt's dumpxml puts declarations made on <domain> on <metadata>.
		"declared on metadata": `<domain type='qemu'><name>web</name><metadata xmlns:lft="` + uri + `">` +
			`<lft:ft><lft:peer address="10.0.0.9" port="7000"/><lft:output-gate enabled="no"/></lft:ft></metadata></domain>`,
		"declared on domain": `<domain type='qemu' xmlns:ft="` + uri + `"><name>web</name><metadata>` +
			`<ft:ft><ft:peer address="10.0.0.9" port="7000"/><ft:output-gate enabled="no"/></ft:ft></metadata></domain>`,
	}
	want := DefaultConfig()
	want.PeerAddress, want.PeerPort, want.OutputGate = "10.0.0.9", 7000, false
	for name, doc := range docs {
		t.Run(name, func(t *testing.T) {
			cfg, present, err := ParseConfig(doc)
			if err != nil || !present {
				t.Fatalf("ParseConfig: %v, %v", present, err)
			}
			if *cfg != want {
				t.Errorf("got %+v, want %+v", *cfg, want)
			}
		})
	}
}

func TestParseConfigWrongNamespace(t *testing.T) {
	tests := []struct {
		name, meta, field string
		wantInMsg         []string
	}{
		{"other URI", `<ft:ft xmlns:ft="https://libvirt-ft.org/xmlns/ft/2.0"><ft:peer address="10.0.0.9"/></ft:ft>`,
			"/domain/metadata/ft:ft", []string{`"https://libvirt-ft.org/xmlns/ft/2.0"`, `"` + NamespaceURI + `"`}},
		{"our prefix, another namespace", `<ft:ft xmlns:ft="urn:example:fault-tracker"/>`,
			"/domain/metadata/ft:ft", []string{`"urn:example:fault-tracker"`, `"` + NamespaceURI + `"`}},
		{"no namespace", `<ft><peer address="10.0.0.9"/></ft>`,
			"/domain/metadata/ft", []string{"no namespace", `"` + NamespaceURI + `"`}},
		{"undeclared prefix", `<ft:ft><ft:peer address="10.0.0.9"/></ft:ft>`,
			"/domain/metadata/ft:ft", []string{`prefix "ft"`, "not declared", `"` + NamespaceURI + `"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, present, err := ParseConfig(domainWithMetadata(tt.meta))
			if cfg != nil || !present || err == nil {
				t.Fatalf("ParseConfig = %v, %v, %v; want nil, true, error", cfg, present, err)
			}
			p, ok := findProblem(problemsOf(t, err), tt.field)
			if !ok {
				t.Fatalf("no problem at %s in %v", tt.field, err)
			}
			for _, s := range tt.wantInMsg {
				if !strings.Contains(p.Message+p.Fix, s) {
					t.Errorf("problem %q does not mention %s", p, s)
				}
			}
			if !strings.Contains(p.Fix, NamespaceURI) {
				t.Errorf("fix %q does not give the URI", p.Fix)
			}
		})
	}
}

func TestParseConfigProblems(t *testing.T) {
	const open = `<ft:ft xmlns:ft="https://libvirt-ft.org/xmlns/ft/1.0">`
	tests := []struct {
		name, inner, field, fix string
	}{
		{"peer missing", ``, "/domain/metadata/ft:ft/ft:peer", "<ft:peer address="},
		{"address missing", `<ft:peer/>`, "/domain/metadata/ft:ft/ft:peer/@address", "address"},
		{"address empty", `<ft:peer address=""/>`, "/domain/metadata/ft:ft/ft:peer/@address", "IP address or host name"},
		{"address not a host", `<ft:peer address="not a host!"/>`, "/domain/metadata/ft:ft/ft:peer/@address", "IP address or host name"},
		{"address bad IPv4", `<ft:peer address="10.250.0.300"/>`, "/domain/metadata/ft:ft/ft:peer/@address", "IP address or host name"},
		{"address bracketed IPv6", `<ft:peer address="[fd00::2]"/>`, "/domain/metadata/ft:ft/ft:peer/@address", "IP address or host name"},
		{"port 0", `<ft:peer address="10.0.0.2" port="0"/>`, "/domain/metadata/ft:ft/ft:peer/@port", `port="7480"`},
		{"port too big", `<ft:peer address="10.0.0.2" port="65536"/>`, "/domain/metadata/ft:ft/ft:peer/@port", `port="7480"`},
		{"port not a number", `<ft:peer address="10.0.0.2" port="http"/>`, "/domain/metadata/ft:ft/ft:peer/@port", `port="7480"`},
		{"timeout equal to interval", `<ft:peer address="10.0.0.2"/><ft:heartbeat interval-ms="100" timeout-ms="100"/>`,
			"/domain/metadata/ft:ft/ft:heartbeat/@timeout-ms", "timeout-ms"},
		{"timeout below interval", `<ft:peer address="10.0.0.2"/><ft:heartbeat interval-ms="2000"/>`,
			"/domain/metadata/ft:ft/ft:heartbeat/@timeout-ms", "timeout-ms"},
		{"interval too short", `<ft:peer address="10.0.0.2"/><ft:heartbeat interval-ms="5"/>`,
			"/domain/metadata/ft:ft/ft:heartbeat/@interval-ms", `interval-ms="100"`},
		{"interval not a number", `<ft:peer address="10.0.0.2"/><ft:heartbeat interval-ms="0.1s"/>`,
			"/domain/metadata/ft:ft/ft:heartbeat/@interval-ms", "milliseconds"},
		{"stall timeout not above the interval", `<ft:peer address="10.0.0.2"/><ft:heartbeat interval-ms="100" stall-timeout-ms="50"/>`,
			"/domain/metadata/ft:ft/ft:heartbeat/@stall-timeout-ms", "stall-timeout-ms"},
		{"stall timeout negative", `<ft:peer address="10.0.0.2"/><ft:heartbeat stall-timeout-ms="-1"/>`,
			"/domain/metadata/ft:ft/ft:heartbeat/@stall-timeout-ms", "stall-timeout-ms"},
		{"state dir relative", `<ft:peer address="10.0.0.2"/><ft:state dir="var/lib/libvirt-ft"/>`,
			"/domain/metadata/ft:ft/ft:state/@dir", `dir="/var/lib/libvirt-ft"`},
		{"role", `<ft:peer address="10.0.0.2"/>`, "/domain/metadata/ft:ft/@role", `role="primary"`},
		{"output gate", `<ft:peer address="10.0.0.2"/><ft:output-gate enabled="true"/>`, "/domain/metadata/ft:ft/ft:output-gate/@enabled", `enabled="yes"`},
		{"unknown element", `<ft:peer address="10.0.0.2"/><ft:witness address="10.0.0.3"/>`, "/domain/metadata/ft:ft/ft:witness", "remove"},
		{"unknown attribute", `<ft:peer address="10.0.0.2" host="x"/>`, "/domain/metadata/ft:ft/ft:peer/@host", "address, port"},
		{"namespaced attribute", `<ft:peer address="10.0.0.2" ft:port="7480"/>`, "/domain/metadata/ft:ft/ft:peer/@port", "address, port"},
		{"foreign child", `<ft:peer address="10.0.0.2"/><app:x xmlns:app="urn:example:app"/>`, "/domain/metadata/ft:ft/app:x", "remove"},
		{"duplicate child", `<ft:peer address="10.0.0.2"/><ft:peer address="10.0.0.3"/>`, "/domain/metadata/ft:ft/ft:peer", "keep one"},
		{"text", `<ft:peer address="10.0.0.2"/>yes`, "/domain/metadata/ft:ft", "remove the text"},
		{"grandchild", `<ft:peer address="10.0.0.2"><ft:port>7480</ft:port></ft:peer>`, "/domain/metadata/ft:ft/ft:peer/ft:port", "remove"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := open
			if tt.name == "role" {
				o = strings.Replace(open, ">", ` role="secondary">`, 1)
			}
			cfg, present, err := ParseConfig(domainWithMetadata(o + tt.inner + `</ft:ft>`))
			if cfg != nil || !present || err == nil {
				t.Fatalf("ParseConfig = %v, %v, %v; want nil, true, error", cfg, present, err)
			}
			p, ok := findProblem(problemsOf(t, err), tt.field)
			if !ok {
				t.Fatalf("no problem at %s; got %v", tt.field, err)
			}
			if !strings.Contains(p.Fix, tt.fix) {
				t.Errorf("fix %q does not contain %q", p.Fix, tt.fix)
			}
			if !strings.Contains(err.Error(), p.String()) || !strings.HasPrefix(err.Error(), `libvirt-ft: domain "web": `) {
				t.Errorf("error text %q lacks %q", err, p)
			}
		})
	}
}

func TestParseConfigAcceptsAddresses(t *testing.T) {
	for _, a := range []string{"10.250.0.2", "fd00::2", "fe80::1%eth0", "backup", "backup-1.example.net", "backup.example.net."} {
		doc := domainWithMetadata(`<ft:ft xmlns:ft="` + NamespaceURI + `"><ft:peer address="` + a + `"/></ft:ft>`)
		if _, _, err := ParseConfig(doc); err != nil {
			t.Errorf("address %q: %v", a, err)
		}
	}
}

func TestParseConfigSecondElement(t *testing.T) {
	el := `<ft:ft xmlns:ft="` + NamespaceURI + `"><ft:peer address="10.0.0.2"/></ft:ft>`
	_, _, err := ParseConfig(domainWithMetadata(el + el))
	if _, ok := findProblem(problemsOf(t, err), "/domain/metadata/ft:ft[2]"); !ok {
		t.Fatalf("second element not refused: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	c := DefaultConfig()
	c.PeerAddress = "10.0.0.2"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.HeartbeatInterval = 100*time.Millisecond + time.Microsecond
	c.StateDir = "relative"
	ps := problemsOf(t, c.Validate())
	if diff := cmp.Diff([]string{fieldInterval, fieldStateDir}, fields(ps)); diff != "" {
		t.Errorf("fields (-want +got):\n%s", diff)
	}
}

func TestSetConfig(t *testing.T) {
	const foreign = `<app:owner xmlns:app="urn:example:app" team="infra"><app:note>a &amp; b</app:note></app:owner>`
	dom := &libvirtxml.Domain{Name: "web", Metadata: &libvirtxml.DomainMetadata{XML: "\n    " + foreign + "\n    " +
		`<x:ft xmlns:x="` + NamespaceURI + `"><x:peer address="10.0.0.1"/></x:ft>` + "\n    <!-- note -->\n  "}}
	cfg := DefaultConfig()
	cfg.PeerAddress = "10.0.0.2"
	cfg.OutputGate = false
	if err := SetConfig(dom, cfg); err != nil {
		t.Fatal(err)
	}
	want := "\n    " + foreign + "\n    " + `<ft:ft xmlns:ft="https://libvirt-ft.org/xmlns/ft/1.0" role="primary">
      <ft:peer address="10.0.0.2" port="7480"/>
      <ft:heartbeat interval-ms="100" timeout-ms="1000"/>
      <ft:state dir="/var/lib/libvirt-ft"/>
      <ft:output-gate enabled="no"/>
      <ft:reprotect auto="yes"/>
    </ft:ft>` + "\n    <!-- note -->\n  "
	if dom.Metadata.XML != want {
		t.Errorf("metadata:\n%s\nwant:\n%s", dom.Metadata.XML, want)
	}
	// Again: same bytes.
	if err := SetConfig(dom, cfg); err != nil {
		t.Fatal(err)
	}
	if dom.Metadata.XML != want {
		t.Errorf("second SetConfig changed the metadata:\n%s", dom.Metadata.XML)
	}
	out, err := dom.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := ParseConfig(out)
	if err != nil || *got != cfg {
		t.Errorf("round trip: %+v, %v; want %+v", got, err, cfg)
	}

	// Invalid values leave the domain alone.
	bad := cfg
	bad.PeerPort = 0
	if err := SetConfig(dom, bad); err == nil || dom.Metadata.XML != want {
		t.Errorf("SetConfig(invalid) = %v, metadata %q", err, dom.Metadata.XML)
	}

	// A domain without metadata gets it in libvirt's layout.
	empty := &libvirtxml.Domain{Name: "web"}
	if err := SetConfig(empty, cfg); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(empty.Metadata.XML, "\n    <ft:ft ") || !strings.HasSuffix(empty.Metadata.XML, "</ft:ft>\n  ") {
		t.Errorf("metadata %q", empty.Metadata.XML)
	}
}

func TestSetConfigEscapes(t *testing.T) {
	dom := &libvirtxml.Domain{Name: "web"}
	cfg := DefaultConfig()
	cfg.PeerAddress = "10.0.0.2"
	cfg.StateDir = `/srv/ft "state" & <logs>`
	if err := SetConfig(dom, cfg); err != nil {
		t.Fatal(err)
	}
	out, err := dom.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := ParseConfig(out)
	if err != nil || got.StateDir != cfg.StateDir {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
}

func TestParseDomainMalformed(t *testing.T) {
	if _, err := ParseDomain("<domain><name>x</domain>"); err == nil {
		t.Fatal("no error")
	}
	_, _, err := ParseConfig("<domain")
	if err == nil || errors.As(err, new(*ValidationError)) {
		t.Fatalf("err = %v", err)
	}
}

// The output gate's unix sockets live under the state dir: a dir too long
// for sun_path is refused naming the field and the longest that fits; with
// the gate off (no sockets) the same dir is fine.
func TestConfigStateDirSocketLength(t *testing.T) {
	c := DefaultConfig()
	c.PeerAddress = "10.0.0.2"
	suffix := len("/00000000-0000-0000-0000-000000000000/gate00-out.sock")
	c.StateDir = "/" + strings.Repeat("d", maxSocketPath-suffix-1)
	if err := c.Validate(); err != nil {
		t.Fatalf("dir of %d bytes (sockets of %d): %v", len(c.StateDir), len(c.StateDir)+suffix, err)
	}
	c.StateDir += "d"
	ps := problemsOf(t, c.Validate())
	p, ok := findProblem(ps, fieldStateDir)
	if !ok || len(ps) != 1 {
		t.Fatalf("problems %v: want one on %s", ps, fieldStateDir)
	}
	if want := fmt.Sprintf("at most %d bytes", maxSocketPath-suffix); !strings.Contains(p.Fix, want) || !strings.Contains(p.Message, "unix(7)") {
		t.Errorf("problem %+v: want the sun_path limit explained and %q in the fix", p, want)
	}
	c.OutputGate = false
	if err := c.Validate(); err != nil {
		t.Errorf("output gate off: no sockets, no limit: %v", err)
	}
}

func TestParseConfigStallTimeout(t *testing.T) {
	const open = `<ft:ft xmlns:ft="https://libvirt-ft.org/xmlns/ft/1.0"><ft:peer address="10.0.0.2"/>`
	cfg, _, err := ParseConfig(domainWithMetadata(open + `<ft:heartbeat timeout-ms="1500"/></ft:ft>`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.StallTimeout != 0 || cfg.Stall() != DefaultReplayStall || cfg.HangProbe() != 3*time.Second {
		t.Fatalf("default: StallTimeout %v, Stall() %v, HangProbe() %v; want 0, DefaultReplayStall (%v) and twice the heartbeat timeout (3s)",
			cfg.StallTimeout, cfg.Stall(), cfg.HangProbe(), DefaultReplayStall)
	}
	// A heartbeat timeout over half the default replay bound: twice it.
	cfg, _, err = ParseConfig(domainWithMetadata(open + `<ft:heartbeat interval-ms="1000" timeout-ms="3500"/></ft:ft>`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Stall() != 7*time.Second || cfg.HangProbe() != 7*time.Second {
		t.Fatalf("timeout-ms 3500: Stall() %v, HangProbe() %v; want 7s and 7s", cfg.Stall(), cfg.HangProbe())
	}
	cfg, _, err = ParseConfig(domainWithMetadata(open + `<ft:heartbeat stall-timeout-ms="3000"/></ft:ft>`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Stall() != 3*time.Second || cfg.HangProbe() != 3*time.Second {
		t.Fatalf("Stall() = %v, HangProbe() = %v, want 3s and 3s", cfg.Stall(), cfg.HangProbe())
	}
	// The element written back keeps it.
	if !strings.Contains(renderFT(*cfg), `stall-timeout-ms="3000"`) {
		t.Fatalf("renderFT lost stall-timeout-ms: %s", renderFT(*cfg))
	}
}

// RemoveConfig takes the ft element out and keeps the rest byte for
// byte; metadata with nothing else goes.
func TestRemoveConfig(t *testing.T) {
	const foreign = `<app:owner xmlns:app="urn:example:app" team="infra"/>`
	dom := &libvirtxml.Domain{Name: "web", Metadata: &libvirtxml.DomainMetadata{XML: "\n    " + foreign + "\n    " +
		`<x:ft xmlns:x="` + NamespaceURI + `"><x:peer address="10.0.0.1"/></x:ft>` + "\n  "}}
	if found, err := RemoveConfig(dom); err != nil || !found {
		t.Fatalf("RemoveConfig: %v %v", found, err)
	}
	if want := "\n    " + foreign + "\n  "; dom.Metadata == nil || dom.Metadata.XML != want {
		t.Fatalf("metadata %+v, want %q", dom.Metadata, want)
	}
	if found, err := RemoveConfig(dom); err != nil || found {
		t.Fatalf("second RemoveConfig: %v %v", found, err)
	}
	cfg := DefaultConfig()
	cfg.PeerAddress = "10.0.0.2"
	only := &libvirtxml.Domain{Name: "web"}
	if err := SetConfig(only, cfg); err != nil {
		t.Fatal(err)
	}
	if found, err := RemoveConfig(only); err != nil || !found || only.Metadata != nil {
		t.Fatalf("only the ft element: %v %v, metadata %+v", found, err, only.Metadata)
	}
	out, err := only.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, present, err := ParseConfig(out); present || err != nil {
		t.Fatalf("still protected after RemoveConfig: %v %v", present, err)
	}
}

func TestParseConfigReprotect(t *testing.T) {
	const open = `<ft:ft xmlns:ft="https://libvirt-ft.org/xmlns/ft/1.0"><ft:peer address="10.0.0.2"/>`
	cfg, _, err := ParseConfig(domainWithMetadata(open + `<ft:reprotect auto="no"/></ft:ft>`))
	if err != nil || cfg.AutoReprotect {
		t.Fatalf("auto=no: %+v, %v", cfg, err)
	}
	_, _, err = ParseConfig(domainWithMetadata(open + `<ft:reprotect auto="maybe"/></ft:ft>`))
	if err == nil || !strings.Contains(err.Error(), "ft:reprotect/@auto") || !strings.Contains(err.Error(), "yes or no") {
		t.Fatalf("auto=maybe: %v", err)
	}
}
