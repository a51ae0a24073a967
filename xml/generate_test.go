package ftxml

import (
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"libvirt.org/go/libvirtxml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// inputs are the user domains the generation tests run on.
func inputs(t *testing.T) map[string]string {
	t.Helper()
	demo := readTestdata(t, "ftdemo.xml")
	return map[string]string{
		"ftdemo":             demo,
		"two-disks-two-nics": readTestdata(t, "two-disks-two-nics.xml"),
		"libvirt dump":       readTestdata(t, "libvirt90-primary-dump.xml"),
		"defaults implicit": mutate(t, demo, `<ft:peer address="10.250.0.2" port="7480"/>
      <ft:heartbeat interval-ms="100" timeout-ms="1000"/>
      <ft:state dir="/var/lib/libvirt-ft"/>
      <ft:output-gate enabled="yes"/>`, `<ft:peer address="10.250.0.2"/>`),
		"namespace on metadata": mutate(t, mutate(t, mutate(t, demo,
			`<metadata>`, `<metadata xmlns:lft="https://libvirt-ft.org/xmlns/ft/1.0">`),
			`<ft:ft xmlns:ft="https://libvirt-ft.org/xmlns/ft/1.0" role="primary">`, `<lft:ft>`),
			`<ft:peer address="10.250.0.2" port="7480"/>
      <ft:heartbeat interval-ms="100" timeout-ms="1000"/>
      <ft:state dir="/var/lib/libvirt-ft"/>
      <ft:output-gate enabled="yes"/>
    </ft:ft>`, `<lft:peer address="10.250.0.2"/></lft:ft>`),
		"no NIC, no disk": mutate(t, mutate(t, demo, demoDisk+"\n      "+demoDiskEnd, `<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>`),
			demoInterface, ``),
	}
}

func TestPrimaryGolden(t *testing.T) {
	user := readTestdata(t, "ftdemo.xml")
	primary := mustPrimary(t, user, HostConfig{})
	backup := mustBackup(t, primary, HostConfig{})
	for name, got := range map[string]string{"ftdemo.primary.golden.xml": primary, "ftdemo.backup.golden.xml": backup} {
		path := filepath.Join("testdata", name)
		if *update {
			if err := os.WriteFile(path, []byte(got+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want := readTestdata(t, name)
		if diff := cmp.Diff(want, got+"\n"); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
	}
}

func TestPrimaryWiring(t *testing.T) {
	dom := parse(t, mustPrimary(t, readTestdata(t, "ftdemo.xml"), HostConfig{}))
	want := []string{
		"-icount", "shift=auto,rr=record,rrfile=/var/lib/libvirt-ft/3a2f5b9e-7c41-4d8a-9e06-5b1f2c7d8e90/record.fifo",
		"-blockdev", `{"driver":"blkreplay","node-name":"ft-rr0","image":"libvirt-1-format"}`,
		"-object", "filter-replay,id=ft-fr0,netdev=hostua-ft-net0",
		"-chardev", "socket,id=ft-gout0,path=/var/lib/libvirt-ft/3a2f5b9e-7c41-4d8a-9e06-5b1f2c7d8e90/gate0-out.sock",
		"-chardev", "socket,id=ft-gin0,path=/var/lib/libvirt-ft/3a2f5b9e-7c41-4d8a-9e06-5b1f2c7d8e90/gate0-in.sock",
		"-object", "filter-redirector,id=ft-gate0,netdev=hostua-ft-net0,queue=rx,outdev=ft-gout0,indev=ft-gin0",
	}
	if diff := cmp.Diff(want, args(dom)); diff != "" {
		t.Errorf("args (-want +got):\n%s", diff)
	}
	wantOv := &libvirtxml.DomainQEMUOverride{Devices: []libvirtxml.DomainQEMUOverrideDevice{{
		Alias: "ua-ft-disk0",
		Frontend: libvirtxml.DomainQEMUOverrideFrontend{Properties: []libvirtxml.DomainQEMUOverrideProperty{
			{Name: "drive", Type: "string", Value: "ft-rr0"}}},
	}}}
	if diff := cmp.Diff(wantOv, dom.QEMUOverride, cmpIgnoreXMLName); diff != "" {
		t.Errorf("override (-want +got):\n%s", diff)
	}
	if a := dom.Devices.Disks[0].Alias; a == nil || a.Name != "ua-ft-disk0" {
		t.Errorf("disk alias %v", a)
	}
	if a := dom.Devices.Interfaces[0].Alias; a == nil || a.Name != "ua-ft-net0" {
		t.Errorf("interface alias %v", a)
	}
	if !IsGenerated(dom) {
		t.Error("IsGenerated = false")
	}
}

var cmpIgnoreXMLName = cmp.FilterPath(func(p cmp.Path) bool {
	return p.Last().String() == ".XMLName"
}, cmp.Ignore())

// Two disks (the second with a user alias), an empty cdrom after them, two
// NICs (the second with a user alias) and the user's own command line and
// override.
func TestPrimaryTwoDisksTwoNICs(t *testing.T) {
	dom := parse(t, mustPrimary(t, readTestdata(t, "two-disks-two-nics.xml"), HostConfig{}))
	want := []string{
		"-fw_cfg", "name=opt/org.example/greeting,string=hello",
		"-icount", "shift=auto,rr=record,rrfile=/var/lib/libvirt-ft/5c0e7d1a-2b3c-4d5e-8f60-718293a4b5c6/record.fifo",
		// libvirt 9.0 numbers the three <disk>s from the last: vda is 3.
		"-blockdev", `{"driver":"blkreplay","node-name":"ft-rr0","image":"libvirt-3-format"}`,
		"-blockdev", `{"driver":"blkreplay","node-name":"ft-rr1","image":"libvirt-2-format"}`,
		"-object", "filter-replay,id=ft-fr0,netdev=hostua-ft-net0",
		"-chardev", "socket,id=ft-gout0,path=/var/lib/libvirt-ft/5c0e7d1a-2b3c-4d5e-8f60-718293a4b5c6/gate0-out.sock",
		"-chardev", "socket,id=ft-gin0,path=/var/lib/libvirt-ft/5c0e7d1a-2b3c-4d5e-8f60-718293a4b5c6/gate0-in.sock",
		"-object", "filter-redirector,id=ft-gate0,netdev=hostua-ft-net0,queue=rx,outdev=ft-gout0,indev=ft-gin0",
		"-object", "filter-replay,id=ft-fr1,netdev=hostua-lan",
		"-chardev", "socket,id=ft-gout1,path=/var/lib/libvirt-ft/5c0e7d1a-2b3c-4d5e-8f60-718293a4b5c6/gate1-out.sock",
		"-chardev", "socket,id=ft-gin1,path=/var/lib/libvirt-ft/5c0e7d1a-2b3c-4d5e-8f60-718293a4b5c6/gate1-in.sock",
		"-object", "filter-redirector,id=ft-gate1,netdev=hostua-lan,queue=rx,outdev=ft-gout1,indev=ft-gin1",
	}
	if diff := cmp.Diff(want, args(dom)); diff != "" {
		t.Errorf("args (-want +got):\n%s", diff)
	}
	if envs := dom.QEMUCommandline.Envs; len(envs) != 1 || envs[0].Name != "FT_EXAMPLE" {
		t.Errorf("envs %v", envs)
	}
	wantOv := []libvirtxml.DomainQEMUOverrideDevice{
		{Alias: "ua-data", Frontend: libvirtxml.DomainQEMUOverrideFrontend{Properties: []libvirtxml.DomainQEMUOverrideProperty{
			{Name: "serial", Type: "string", Value: "data0"},
			{Name: "drive", Type: "string", Value: "ft-rr1"},
		}}},
		{Alias: "ua-ft-disk0", Frontend: libvirtxml.DomainQEMUOverrideFrontend{Properties: []libvirtxml.DomainQEMUOverrideProperty{
			{Name: "drive", Type: "string", Value: "ft-rr0"},
		}}},
	}
	if diff := cmp.Diff(wantOv, dom.QEMUOverride.Devices); diff != "" {
		t.Errorf("override (-want +got):\n%s", diff)
	}
	var aliases []string
	for _, d := range dom.Devices.Disks {
		name := ""
		if d.Alias != nil {
			name = d.Alias.Name
		}
		aliases = append(aliases, name)
	}
	for _, n := range dom.Devices.Interfaces {
		aliases = append(aliases, n.Alias.Name)
	}
	if diff := cmp.Diff([]string{"ua-ft-disk0", "ua-data", "", "ua-ft-net0", "ua-lan"}, aliases); diff != "" {
		t.Errorf("aliases (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"/var/lib/libvirt/images/ftpair-root.qcow2", "/var/lib/libvirt/images/ftpair-data.qcow2"}, DiskPaths(dom)); diff != "" {
		t.Errorf("DiskPaths (-want +got):\n%s", diff)
	}
}

// Aliases that are not user aliases (libvirt's own, in live XML) are
// replaced; user aliases are kept.
func TestPrimaryAliases(t *testing.T) {
	doc := mutate(t, readTestdata(t, "ftdemo.xml"), demoTarget, demoTarget+`<alias name='virtio-disk0'/>`)
	doc = mutate(t, doc, `<model type='virtio'/>`, `<model type='virtio'/><alias name='ua-uplink'/>`)
	dom := parse(t, mustPrimary(t, doc, HostConfig{}))
	if a := dom.Devices.Disks[0].Alias.Name; a != "ua-ft-disk0" {
		t.Errorf("disk alias %q", a)
	}
	if a := dom.Devices.Interfaces[0].Alias.Name; a != "ua-uplink" {
		t.Errorf("interface alias %q", a)
	}
	if got := args(dom)[5]; got != "filter-replay,id=ft-fr0,netdev=hostua-uplink" {
		t.Errorf("filter %q", got)
	}
}

func TestPrimaryIdempotent(t *testing.T) {
	for name, user := range inputs(t) {
		t.Run(name, func(t *testing.T) {
			p1 := mustPrimary(t, user, HostConfig{})
			if p2 := mustPrimary(t, p1, HostConfig{}); p2 != p1 {
				t.Errorf("Primary(Primary(x)) != Primary(x):\n%s", cmp.Diff(p1, p2))
			}
			stripped, err := StripGenerated(p1)
			if err != nil {
				t.Fatal(err)
			}
			if p3 := mustPrimary(t, stripped, HostConfig{}); p3 != p1 {
				t.Errorf("Primary(StripGenerated(Primary(x))) != Primary(x):\n%s", cmp.Diff(p1, p3))
			}
			b1 := mustBackup(t, p1, HostConfig{})
			if p4 := mustPrimary(t, b1, HostConfig{}); p4 != p1 {
				t.Errorf("Primary(Backup(p)) != p:\n%s", cmp.Diff(p1, p4))
			}
			if b2 := mustBackup(t, mustPrimary(t, b1, HostConfig{}), HostConfig{}); b2 != b1 {
				t.Errorf("backup not stable:\n%s", cmp.Diff(b1, b2))
			}
		})
	}
}

// The backup is the primary but for the rr mode, the rrfile and the role.
func TestBackupDiffersOnlyInMode(t *testing.T) {
	for name, user := range inputs(t) {
		t.Run(name, func(t *testing.T) {
			primary := mustPrimary(t, user, HostConfig{})
			backup := mustBackup(t, primary, HostConfig{})
			pd, bd := parse(t, primary), parse(t, backup)

			pc, _, err := ParseConfig(primary)
			if err != nil {
				t.Fatal(err)
			}
			bc, _, err := ParseConfig(backup)
			if err != nil {
				t.Fatal(err)
			}
			if pc.Role != RolePrimary || bc.Role != RoleBackup {
				t.Errorf("roles %q, %q", pc.Role, bc.Role)
			}
			bc.Role = RolePrimary
			if *pc != *bc {
				t.Errorf("configs differ beyond the role: %+v vs %+v", pc, bc)
			}
			if got := strings.Replace(bd.Metadata.XML, `role="backup"`, `role="primary"`, 1); got != pd.Metadata.XML {
				t.Errorf("metadata differs beyond the role:\n%s", cmp.Diff(pd.Metadata.XML, got))
			}

			uuid, _ := canonicalUUID(pd.UUID)
			for _, c := range []struct {
				dom  *libvirtxml.Domain
				want string
			}{
				{pd, "shift=auto,rr=record,rrfile=" + RecordFIFOPath(*pc, uuid)},
				{bd, "shift=auto,rr=replay,rrfile=" + ReplayFIFOPath(*pc, uuid)},
			} {
				n := 0
				for i, a := range c.dom.QEMUCommandline.Args {
					if a.Value == "-icount" {
						n++
						v := &c.dom.QEMUCommandline.Args[i+1].Value
						if *v != c.want {
							t.Errorf("-icount %q, want %q", *v, c.want)
						}
						*v = "normalised"
					}
				}
				if n != 1 {
					t.Errorf("%d -icount arguments", n)
				}
				// The network output differs: the primary's frames go
				// through the output gate, the backup's are discarded.
				var kept []libvirtxml.DomainQEMUCommandlineArg
				for i := 0; i < len(c.dom.QEMUCommandline.Args); i++ {
					a := c.dom.QEMUCommandline.Args[i]
					if i+1 < len(c.dom.QEMUCommandline.Args) && (a.Value == "-chardev" || a.Value == "-object") {
						v := c.dom.QEMUCommandline.Args[i+1].Value
						if strings.Contains(v, "id=ft-g") {
							i++
							continue
						}
					}
					kept = append(kept, a)
				}
				c.dom.QEMUCommandline.Args = kept
				c.dom.Metadata = nil
			}
			// The backup's title and description say what it is (libvirt
			// metadata, not guest-visible).
			if !strings.HasPrefix(bd.Title, "libvirt-ft backup of ") || !strings.HasPrefix(bd.Description, "libvirt-ft backup: ") {
				t.Errorf("backup title %q, description %q", bd.Title, bd.Description)
			}
			bd.Title, bd.Description = pd.Title, pd.Description
			if diff := cmp.Diff(pd, bd); diff != "" {
				t.Errorf("primary and backup differ (-primary +backup):\n%s", diff)
			}
		})
	}
}

func TestBackupPeer(t *testing.T) {
	primary := mustPrimary(t, readTestdata(t, "ftdemo.xml"), HostConfig{})
	backup := mustBackup(t, primary, HostConfig{PeerAddress: "10.250.0.1", PeerPort: 7481})
	cfg, _, err := ParseConfig(backup)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PeerAddress != "10.250.0.1" || cfg.PeerPort != 7481 || cfg.Role != RoleBackup {
		t.Errorf("config %+v", cfg)
	}
	if _, err := Backup(primary, HostConfig{PeerAddress: "no such host!"}); err == nil {
		t.Error("invalid peer accepted")
	}
}

func TestBackupRefuses(t *testing.T) {
	user := readTestdata(t, "ftdemo.xml")
	primary := mustPrimary(t, user, HostConfig{})
	backup := mustBackup(t, primary, HostConfig{})
	for name, doc := range map[string]string{
		"user domain":  user,
		"backup":       backup,
		"no element":   mutate(t, primary, `role="primary"`, `role="backup"`),
		"other domain": `<domain type='qemu'><name>x</name><uuid>3a2f5b9e-7c41-4d8a-9e06-5b1f2c7d8e90</uuid></domain>`,
	} {
		if _, err := Backup(doc, HostConfig{}); !errors.Is(err, ErrNotGeneratedPrimary) {
			t.Errorf("%s: err = %v, want ErrNotGeneratedPrimary", name, err)
		}
	}

	// The backup must not get a random MAC.
	noMAC := mutate(t, primary, `<mac address="52:54:00:fa:00:01"></mac>`, ``)
	_, err := Backup(noMAC, HostConfig{})
	if _, ok := findProblem(problemsOf(t, err), "/domain/devices/interface[1]/mac"); !ok {
		t.Errorf("missing MAC: %v", err)
	}
	// The primary may leave it to libvirt.
	if _, err := Primary(noMAC, HostConfig{}); err != nil {
		t.Errorf("Primary without MAC: %v", err)
	}
}

func TestNoUUID(t *testing.T) {
	doc := mutate(t, readTestdata(t, "ftdemo.xml"), `<uuid>3a2f5b9e-7c41-4d8a-9e06-5b1f2c7d8e90</uuid>`, ``)
	_, err := Primary(doc, HostConfig{})
	if !errors.Is(err, ErrNoUUID) || !strings.Contains(err.Error(), "libvirt assigns one at define") {
		t.Errorf("err = %v", err)
	}
	doc = mutate(t, readTestdata(t, "ftdemo.xml"), `3a2f5b9e-7c41`, `3a2f5b9e-7c4x`)
	if _, err := Primary(doc, HostConfig{}); err == nil || !strings.Contains(err.Error(), "not a UUID") {
		t.Errorf("err = %v", err)
	}
}

func TestForeignMetadataPreserved(t *testing.T) {
	const foreign = `<app:owner xmlns:app="urn:example:app" team="infra"><app:note kind='x'>keep &amp; <![CDATA[<raw>]]></app:note></app:owner>`
	doc := mutate(t, readTestdata(t, "ftdemo.xml"), `<metadata>`, "<metadata>\n    "+foreign+"\n    <!-- a comment -->")
	p := mustPrimary(t, doc, HostConfig{})
	b := mustBackup(t, p, HostConfig{})
	for _, out := range []string{p, b} {
		if !strings.Contains(out, "\n    "+foreign+"\n    <!-- a comment -->\n    <ft:ft ") {
			t.Errorf("foreign metadata not kept:\n%s", out)
		}
	}

	// Declarations inherited from <domain> are copied onto the element
	// that needs them, and nothing else changes.
	in := readTestdata(t, "two-disks-two-nics.xml")
	out := mustPrimary(t, in, HostConfig{})
	want := `<app:owner xmlns:app="urn:example:app" team="infra"><app:note>keep &amp; preserve</app:note></app:owner>`
	if !strings.Contains(out, want) {
		t.Errorf("foreign metadata:\n%s", parse(t, out).Metadata.XML)
	}
}

func TestStripGenerated(t *testing.T) {
	user := readTestdata(t, "two-disks-two-nics.xml")
	stripped, err := StripGenerated(mustPrimary(t, user, HostConfig{}))
	if err != nil {
		t.Fatal(err)
	}
	got, want := parse(t, stripped), parse(t, user)
	if IsGenerated(got) {
		t.Error("still generated")
	}
	gc, _, err := ParseConfig(stripped)
	if err != nil {
		t.Fatal(err)
	}
	wc, _, _ := ParseConfig(user)
	if *gc != *wc {
		t.Errorf("config %+v, want %+v", gc, wc)
	}
	got.Metadata, want.Metadata = nil, nil
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("StripGenerated(Primary(x)) differs from x (-want +got):\n%s", diff)
	}
}

func TestNeedsRewrite(t *testing.T) {
	user := readTestdata(t, "ftdemo.xml")
	out, changed, err := NeedsRewrite(user)
	if err != nil || !changed || out != mustPrimary(t, user, HostConfig{}) {
		t.Errorf("user domain: changed %v, err %v", changed, err)
	}
	// libvirt's dumpxml of what we defined needs nothing.
	for _, name := range []string{"libvirt90-primary-dump.xml", "libvirt90-backup-dump.xml"} {
		out, changed, err := NeedsRewrite(readTestdata(t, name))
		if err != nil || changed {
			t.Errorf("%s: changed %v, err %v", name, changed, err)
		}
		cfg, _, _ := ParseConfig(out)
		if wantBackup := strings.Contains(name, "backup"); (cfg.Role == RoleBackup) != wantBackup {
			t.Errorf("%s: role %q", name, cfg.Role)
		}
	}
	// A generated primary whose user added a disk needs a rewrite.
	dump := readTestdata(t, "libvirt90-primary-dump.xml")
	edited := mutate(t, dump, `<controller type='usb'`, `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/tmp/ftx/c.qcow2'/><target dev='vdc' bus='virtio'/></disk><controller type='usb'`)
	if _, changed, err := NeedsRewrite(edited); err != nil || !changed {
		t.Errorf("added disk: changed %v, err %v", changed, err)
	}
	// So does a setting that the command line depends on; the others are
	// read from the element by the daemon and need no rewrite.
	if _, changed, _ := NeedsRewrite(mutate(t, dump, `dir="/tmp/ftx/state"`, `dir="/srv/ft"`)); !changed {
		t.Error("changed state dir: not changed")
	}
	if _, changed, _ := NeedsRewrite(mutate(t, dump, `interval-ms="100"`, `interval-ms="50"`)); changed {
		t.Error("changed heartbeat: changed")
	}
	// Not ours: untouched.
	plain := `<domain type='kvm'><name>other</name></domain>`
	if out, changed, err := NeedsRewrite(plain); out != plain || changed || err != nil {
		t.Errorf("unprotected domain: %q, %v, %v", out, changed, err)
	}
	// Cannot be protected: the validation error.
	bad := mutate(t, user, `<domain type='qemu'>`, `<domain type='kvm'>`)
	if _, _, err := NeedsRewrite(bad); len(problemsOf(t, err)) != 1 {
		t.Errorf("kvm: %v", err)
	}
}

func TestHelpers(t *testing.T) {
	cfg := DefaultConfig()
	cfg.StateDir = "/srv/ft"
	if got := RecordFIFOPath(cfg, "3A2F5B9E7C414D8A9E065B1F2C7D8E90"); got != "/srv/ft/3a2f5b9e-7c41-4d8a-9e06-5b1f2c7d8e90/record.fifo" {
		t.Errorf("RecordFIFOPath = %q", got)
	}
	if got := ReplayFIFOPath(cfg, "3a2f5b9e-7c41-4d8a-9e06-5b1f2c7d8e90"); got != "/srv/ft/3a2f5b9e-7c41-4d8a-9e06-5b1f2c7d8e90/replay.fifo" {
		t.Errorf("ReplayFIFOPath = %q", got)
	}
	for _, c := range []struct {
		pos, count int
		want       string
	}{{0, 1, "libvirt-1-format"}, {0, 2, "libvirt-2-format"}, {1, 2, "libvirt-1-format"}, {0, 3, "libvirt-3-format"}} {
		if got := LibvirtFormatNodeName(c.pos, c.count); got != c.want {
			t.Errorf("LibvirtFormatNodeName(%d, %d) = %q, want %q", c.pos, c.count, got, c.want)
		}
	}
	if IsGenerated(parse(t, readTestdata(t, "ftdemo.xml"))) {
		t.Error("user domain IsGenerated")
	}
	if diff := cmp.Diff([]string{"/var/lib/libvirt/images/ftdemo.qcow2"}, DiskPaths(parse(t, readTestdata(t, "ftdemo.xml")))); diff != "" {
		t.Error(diff)
	}
}

// A state directory with a comma is escaped for QEMU's option syntax and
// still recognised as ours.
func TestStateDirComma(t *testing.T) {
	doc := mutate(t, readTestdata(t, "ftdemo.xml"), `dir="/var/lib/libvirt-ft"`, `dir="/srv/ft,a"`)
	p := mustPrimary(t, doc, HostConfig{})
	if got := args(parse(t, p))[1]; got != "shift=auto,rr=record,rrfile=/srv/ft,,a/3a2f5b9e-7c41-4d8a-9e06-5b1f2c7d8e90/record.fifo" {
		t.Errorf("-icount %q", got)
	}
	if p2 := mustPrimary(t, p, HostConfig{}); p2 != p {
		t.Error("not idempotent")
	}
}

// The generated XML is valid against libvirt's schema (virt-xml-validate
// from libvirt-clients; it needs xmllint from libxml2-utils).
func TestVirtXMLValidate(t *testing.T) {
	for _, tool := range []string{"virt-xml-validate", "xmllint"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	dir := t.TempDir()
	for name, user := range inputs(t) {
		p := mustPrimary(t, user, HostConfig{})
		b := mustBackup(t, p, HostConfig{})
		for kind, doc := range map[string]string{"primary": p, "backup": b} {
			f := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+"."+kind+".xml")
			if err := os.WriteFile(f, []byte(doc), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("virt-xml-validate", f, "domain").CombinedOutput()
			if err != nil {
				t.Errorf("%s %s: %v\n%s", name, kind, err, out)
			}
		}
	}
}

// With <ft:output-gate enabled="no"> the primary's frames go straight to its
// tap; the backup still discards what its replayed guest transmits.
func TestOutputGateOff(t *testing.T) {
	user := strings.Replace(readTestdata(t, "ftdemo.xml"), `<ft:output-gate enabled="yes"/>`, `<ft:output-gate enabled="no"/>`, 1)
	primary := mustPrimary(t, user, HostConfig{})
	for _, a := range args(parse(t, primary)) {
		if strings.Contains(a, "ft-g") {
			t.Errorf("primary with the gate off has %q", a)
		}
	}
	backup, err := Backup(primary, HostConfig{})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(args(parse(t, backup)), " ")
	if !strings.Contains(got, "-chardev null,id=ft-gout0 -object filter-redirector,id=ft-gate0,netdev=hostua-ft-net0,queue=rx,outdev=ft-gout0") {
		t.Errorf("backup args %s", got)
	}
	stripped, err := StripGenerated(primary)
	if err != nil || strings.Contains(stripped, "ft-g") {
		t.Errorf("StripGenerated left gate arguments: %v", err)
	}
}

// TestUnprotected: the ft element removed from a generated definition
// leaves the user's domain (its other metadata kept); a plain domain, a
// protected one, and a hand-written -icount alone are left as they are.
func TestUnprotected(t *testing.T) {
	user := readTestdata(t, "two-disks-two-nics.xml")
	dropFT := func(s string) string {
		t.Helper()
		i, j := strings.Index(s, "<ft:ft"), strings.Index(s, "</ft:ft>")
		if i < 0 || j < 0 {
			t.Fatalf("no ft element in:\n%s", s)
		}
		return s[:i] + s[j+len("</ft:ft>"):]
	}
	generated := mustPrimary(t, user, HostConfig{})
	out, changed, err := Unprotected(dropFT(generated))
	if err != nil || !changed {
		t.Fatalf("Unprotected(generated without ft) = changed %v, %v; want the wiring removed", changed, err)
	}
	got, want := parse(t, out), parse(t, dropFT(user))
	if IsGenerated(got) {
		t.Error("still generated")
	}
	if !strings.Contains(got.Metadata.XML, "keep &amp; preserve") {
		t.Errorf("the user's other metadata is gone:\n%s", got.Metadata.XML)
	}
	got.Metadata, want.Metadata = nil, nil
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Unprotected(Primary(x) without ft) differs from x (-want +got):\n%s", diff)
	}
	if _, changed, err := Unprotected(out); err != nil || changed {
		t.Errorf("Unprotected twice: changed %v, %v; want nothing to do", changed, err)
	}
	for name, x := range map[string]string{
		"plain":     dropFT(user),
		"protected": generated,
		"hand-written -icount only": strings.Replace(dropFT(user), "</domain>",
			`<qemu:commandline><qemu:arg value="-icount"/><qemu:arg value="shift=auto,rr=record,rrfile=/srv/my.rr"/></qemu:commandline></domain>`, 1),
	} {
		if got, changed, err := Unprotected(x); err != nil || changed || got != x {
			t.Errorf("%s: changed %v, %v; want the domain left as it is", name, changed, err)
		}
	}
}

// TestUnprotectedLeavesUserAliases: a never-protected domain whose alias
// happens to begin with "ua-ft-" is not ours to strip.
func TestUnprotectedLeavesUserAliases(t *testing.T) {
	user := readTestdata(t, "two-disks-two-nics.xml")
	i, j := strings.Index(user, "<ft:ft"), strings.Index(user, "</ft:ft>")
	plain := user[:i] + user[j+len("</ft:ft>"):]
	x := strings.Replace(plain, "</disk>", "<alias name='ua-ft-data'/></disk>", 1)
	if !strings.Contains(x, "ua-ft-data") {
		t.Fatal("the test domain has no disk")
	}
	if got, changed, err := Unprotected(x); err != nil || changed || got != x {
		t.Errorf("changed %v, %v; want the domain left as it is", changed, err)
	}
}

// The backup's notes come off exactly: a user's title that merely looks
// like one stays, and names with brackets work.
func TestBackupNotes(t *testing.T) {
	for _, c := range []struct{ name, title string }{
		{"web", ""}, {"web", "prod"}, {"web(1)", "a (b)"}, {"web", "libvirt-ft backup server (prod)"},
	} {
		dom := &libvirtxml.Domain{Name: c.name, Title: joinNote(BackupTitle(c.name, "10.0.0.1"), ": ", c.title),
			Description: joinNote(BackupDescription(c.name, "10.0.0.1"), "\n\n", "mine")}
		cfg := DefaultConfig()
		cfg.PeerAddress, cfg.Role = "10.0.0.1", RoleBackup
		if err := SetConfig(dom, cfg); err != nil {
			t.Fatal(err)
		}
		stripNotes(dom)
		if dom.Title != c.title || dom.Description != "mine" {
			t.Errorf("%q/%q: stripped to %q, %q", c.name, c.title, dom.Title, dom.Description)
		}
		user := &libvirtxml.Domain{Name: c.name, Title: c.title}
		stripNotes(user)
		if user.Title != c.title {
			t.Errorf("a user's title %q became %q", c.title, user.Title)
		}
	}
}

// The primary's title note comes off exactly, leaving the user's title.
func TestPrimaryTitle(t *testing.T) {
	for _, user := range []string{"", "web server", "libvirt-ft: web protected (backup on b)"} {
		for _, st := range []string{"preparing", "seeding", "waiting", "replicating", "unprotected", "switching-over"} {
			title := PrimaryTitle("web", "b", st, user)
			if title == "" || !strings.HasPrefix(title, "libvirt-ft: web ") {
				t.Fatalf("%s: title %q", st, title)
			}
			if got := UserTitle(title, "web", "b"); got != user {
				t.Errorf("%s, user %q: UserTitle(%q) = %q", st, user, title, got)
			}
		}
	}
	for _, st := range []string{"stopped", "refused", "live", "resolving"} {
		if title := PrimaryTitle("web", "b", st, "x"); title != "" {
			t.Errorf("%s: title %q, want none", st, title)
		}
	}
	if got := UserTitle("my own: title", "web", "b"); got != "my own: title" {
		t.Errorf("a user's title was changed: %q", got)
	}
}

// A VM paused after a daemon restart says so, with the user's own title,
// whether it was the primary or the backup.
func TestPausedNote(t *testing.T) {
	primary := `<domain type="qemu"><name>web</name><title>` + PrimaryTitle("web", "b", "replicating", "mine") + `</title>` +
		`<metadata><ft:ft xmlns:ft="https://libvirt-ft.org/xmlns/ft/1.0"><ft:peer address="b" port="7480"/></ft:ft></metadata></domain>`
	title, _, err := PausedNote(primary)
	if err != nil || title != "libvirt-ft: web PAUSED after a libvirt-ftd restart: check where it runs (virt-ft status on the peer host) before resuming it: mine" {
		t.Fatalf("%q %v", title, err)
	}
}

// A backup whose domain a later libvirt-ftd refuses (here a guest agent
// channel, refused since session 13) still gets its persistent definition
// when it goes live; Primary refuses the same input.
func TestLivePrimaryDoesNotRefuseAgain(t *testing.T) {
	primary := mustPrimary(t, readTestdata(t, "ftdemo.xml"), HostConfig{})
	backup := mustBackup(t, primary, HostConfig{PeerAddress: "192.0.2.1"})
	agent := `<channel type="unix"><target type="virtio" name="org.qemu.guest_agent.0"></target></channel>`
	old := mutate(t, backup, `</devices>`, agent+`</devices>`)

	if _, err := Primary(old, HostConfig{}); problemsOf(t, err) == nil {
		t.Fatalf("Primary of the backup with an agent channel: %v, want a refusal", err)
	}
	live, err := LivePrimary(old)
	if err != nil {
		t.Fatalf("LivePrimary: %v", err)
	}
	if !strings.Contains(live, "org.qemu.guest_agent.0") || !strings.Contains(live, "rr=record") || strings.Contains(live, "rr=replay") {
		t.Errorf("LivePrimary kept the channel and records? %s", live)
	}
	// Without the new refusal it is exactly Primary of the backup.
	want := mustPrimary(t, backup, HostConfig{})
	if got, err := LivePrimary(backup); err != nil || got != want {
		t.Errorf("LivePrimary(backup) differs from Primary(backup): %v\n%s", err, cmp.Diff(want, got))
	}
	// Not a primary: the stock go-live's restarted one runs with -loadvm.
	for name, doc := range map[string]string{
		"primary":              primary,
		"user domain":          readTestdata(t, "ftdemo.xml"),
		"primary role, replay": mutate(t, backup, `role="backup"`, `role="primary"`),
	} {
		if _, err := LivePrimary(doc); !errors.Is(err, ErrNotGeneratedBackup) {
			t.Errorf("%s: err = %v, want ErrNotGeneratedBackup", name, err)
		}
	}
}
