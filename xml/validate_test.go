package ftxml

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"libvirt.org/go/libvirtxml"
)

func TestValidateTestdata(t *testing.T) {
	for _, name := range []string{"ftdemo.xml", "two-disks-two-nics.xml", "libvirt90-primary-dump.xml", "libvirt90-backup-dump.xml"} {
		if _, err := Validate(parse(t, readTestdata(t, name))); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

const (
	demoDisk = `<disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/ftdemo.qcow2'/>
      <target dev='vda' bus='virtio'/>`
	demoDiskEnd = `<address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </disk>`
	demoTarget = `<target dev='vda' bus='virtio'/>`
	demoFT     = `<ft:ft xmlns:ft="https://libvirt-ft.org/xmlns/ft/1.0" role="primary">
      <ft:peer address="10.250.0.2" port="7480"/>
      <ft:heartbeat interval-ms="100" timeout-ms="1000"/>
      <ft:state dir="/var/lib/libvirt-ft"/>
      <ft:output-gate enabled="yes"/>
    </ft:ft>`
	demoInterface = `<interface type='bridge'>
      <mac address='52:54:00:fa:00:01'/>
      <source bridge='ftbr0'/>
      <model type='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
    </interface>`
	demoDevices = `<devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>`
)

// TestValidateRefusals mutates the testdata domain once per refusal and
// checks the field named and that the error gives the fix.
func TestValidateRefusals(t *testing.T) {
	tests := []struct {
		name     string
		old, new string
		field    string
		fix      string // part of Problem.Fix
	}{
		{"two vCPUs", `<vcpu placement='static'>1</vcpu>`, `<vcpu placement='static'>2</vcpu>`, "/domain/vcpu", "set <vcpu>1</vcpu>"},
		{"vCPU list", `<vcpu placement='static'>1</vcpu>`, `<vcpu placement='static'>1</vcpu><vcpus><vcpu id='0' enabled='yes'/><vcpu id='1' enabled='no'/></vcpus>`,
			"/domain/vcpus", "<vcpu>1</vcpu>"},
		{"topology", `<model fallback='forbid'>qemu64</model>`, `<model fallback='forbid'>qemu64</model><topology sockets='1' dies='1' cores='2' threads='1'/>`,
			"/domain/cpu/topology", "cores"},
		{"kvm", `<domain type='qemu'>`, `<domain type='kvm'>`, "/domain/@type", "<domain type='qemu'>"},
		{"hvf", `<domain type='qemu'>`, `<domain type='hvf'>`, "/domain/@type", "<domain type='qemu'>"},
		{"localtime", `<clock offset='utc'/>`, `<clock offset='localtime'/>`, "/domain/clock/@offset", "offset='utc'"},
		{"timezone", `<clock offset='utc'/>`, `<clock offset='timezone' timezone='Europe/Paris'/>`, "/domain/clock/@offset", "offset='utc'"},
		{"raw disk", `type='qcow2'`, `type='raw'`, "/domain/devices/disk[1]/driver/@type", "type='qcow2'"},
		{"no driver type", `<driver name='qemu' type='qcow2'/>`, `<driver name='qemu'/>`, "/domain/devices/disk[1]/driver/@type", "qcow2"},
		{"block disk", `<disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/ftdemo.qcow2'/>`, `<disk type='block' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source dev='/dev/vg0/ftdemo'/>`, "/domain/devices/disk[1]/@type", "type='file'"},
		{"network disk", `<disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/ftdemo.qcow2'/>`, `<disk type='network' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source protocol='nbd' name='ftdemo'><host name='storage' port='10809'/></source>`, "/domain/devices/disk[1]/@type", "type='file'"},
		{"no source", `<source file='/var/lib/libvirt/images/ftdemo.qcow2'/>`, ``, "/domain/devices/disk[1]/source/@file", "<source file="},
		{"zero-width mark in a disk path", `<source file='/var/lib/libvirt/images/ftdemo.qcow2'/>`, `<source file='/var/lib/libvirt/images/ft&#x200B;demo.qcow2'/>`,
			"/domain/devices/disk[1]/source/@file", "rename the image file"},
		{"disk path longer than PATH_MAX", `<source file='/var/lib/libvirt/images/ftdemo.qcow2'/>`, `<source file='/` + strings.Repeat("d/", MaxPeerPathBytes/2) + `ftdemo.qcow2'/>`,
			"/domain/devices/disk[1]/source/@file", "shorter path"},
		{"controller iothread", demoDiskEnd, demoDiskEnd + `<controller type='scsi' index='0' model='virtio-scsi'><driver iothread='1'/></controller>`,
			"/domain/devices/controller[1]/driver/@iothread", "remove iothread="},
		{"controller iothreads", demoDiskEnd, demoDiskEnd + `<controller type='scsi' index='0' model='virtio-scsi'><driver><iothreads><iothread id='1'/></iothreads></driver></controller>`,
			"/domain/devices/controller[1]/driver/iothreads", "remove iothread="},
		{"disk iothreads", `<driver name='qemu' type='qcow2'/>`, `<driver name='qemu' type='qcow2'><iothreads><iothread id='1'/></iothreads></driver>`, "/domain/devices/disk[1]/driver/iothreads", "remove iothread="},
		{"iothread", `<driver name='qemu' type='qcow2'/>`, `<driver name='qemu' type='qcow2' iothread='1'/>`, "/domain/devices/disk[1]/driver/@iothread", "remove iothread="},
		{"rng urandom", demoDiskEnd, demoDiskEnd + `<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>`,
			"/domain/devices/rng[1]", "remove this <rng>"},
		{"rng egd", demoDiskEnd, demoDiskEnd + `<rng model='virtio'><backend model='egd' type='unix'><source mode='connect' path='/run/egd.sock'/></backend></rng>`,
			"/domain/devices/rng[1]", "remove this <rng>"},
		{"rng builtin", demoDiskEnd, demoDiskEnd + `<rng model='virtio'><backend model='builtin'/></rng>`,
			"/domain/devices/rng[1]", "remove this <rng>"},
		{"iotune", demoTarget, demoTarget + `<iotune><total_iops_sec>100</total_iops_sec></iotune>`, "/domain/devices/disk[1]/iotune", "remove <iotune>"},
		{"transient", demoTarget, demoTarget + `<transient/>`, "/domain/devices/disk[1]/transient", "remove <transient/>"},
		{"backing chain", demoTarget, `<backingStore type='file'><format type='qcow2'/><source file='/var/lib/libvirt/images/base.qcow2'/><backingStore/></backingStore>` + demoTarget,
			"/domain/devices/disk[1]/backingStore", "<backingStore/>"},
		{"cdrom with media", demoDiskEnd, demoDiskEnd + `<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/var/lib/libvirt/images/install.iso'/><target dev='hdc' bus='ide'/><readonly/></disk>`,
			"/domain/devices/disk[2]/source", "eject"},
		{"floppy with media", demoDiskEnd, demoDiskEnd + `<disk type='file' device='floppy'><driver name='qemu' type='raw'/><source file='/var/lib/libvirt/images/boot.img'/><target dev='fda' bus='fdc'/></disk>`,
			"/domain/devices/disk[2]/source", "eject"},
		{"lun", demoDiskEnd, demoDiskEnd + `<disk type='block' device='lun'><driver name='qemu' type='raw'/><source dev='/dev/sdb'/><target dev='sda' bus='scsi'/></disk>`,
			"/domain/devices/disk[2]/@device", "device='disk'"},
		{"hostdev interface", `<interface type='bridge'>
      <mac address='52:54:00:fa:00:01'/>
      <source bridge='ftbr0'/>`, `<interface type='hostdev' managed='yes'>
      <mac address='52:54:00:fa:00:01'/>
      <source><address type='pci' domain='0x0000' bus='0x06' slot='0x02' function='0x0'/></source>`, "/domain/devices/interface[1]/@type", "type='bridge'"},
		{"peer missing", `<ft:peer address="10.250.0.2" port="7480"/>`, ``, "/domain/metadata/ft:ft/ft:peer", "<ft:peer address="},
		{"peer address empty", `address="10.250.0.2"`, `address=""`, "/domain/metadata/ft:ft/ft:peer/@address", "IP address or host name"},
		{"peer address malformed", `address="10.250.0.2"`, `address="10.250.0.2:7480"`, "/domain/metadata/ft:ft/ft:peer/@address", "IP address or host name"},
		{"wrong namespace", `xmlns:ft="https://libvirt-ft.org/xmlns/ft/1.0"`, `xmlns:ft="http://libvirt-ft.org/xmlns/ft/1.0"`, "/domain/metadata/ft:ft", NamespaceURI},
		{"second element", `</ft:ft>`, `</ft:ft>
    <ft:ft xmlns:ft="https://libvirt-ft.org/xmlns/ft/1.0"><ft:peer address="10.250.0.3"/></ft:ft>`, "/domain/metadata/ft:ft[2]", "one <ft:ft>"},
		{"no element", demoFT, ``, "/domain/metadata/ft:ft", `<ft:ft xmlns:ft="https://libvirt-ft.org/xmlns/ft/1.0">`},
		{"user -icount", `</domain>`, `<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><qemu:arg value='-icount'/><qemu:arg value='shift=7'/></qemu:commandline></domain>`,
			"/domain/qemu:commandline/qemu:arg[1]", "remove the -icount"},
		{"user -snapshot", `</domain>`, `<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><qemu:arg value='-snapshot'/></qemu:commandline></domain>`,
			"/domain/qemu:commandline/qemu:arg[1]", "remove it"},
	}
	base := readTestdata(t, "ftdemo.xml")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := mutate(t, base, tt.old, tt.new)
			dom := parse(t, doc)
			_, err := Validate(dom)
			ps := problemsOf(t, err)
			p, ok := findProblem(ps, tt.field)
			if !ok {
				t.Fatalf("no problem at %s; got %v", tt.field, err)
			}
			if len(ps) != 1 {
				t.Errorf("want one problem, got %v", err)
			}
			if !strings.Contains(p.Fix, tt.fix) {
				t.Errorf("fix %q does not contain %q", p.Fix, tt.fix)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, `libvirt-ft: domain "ftdemo": `) || !strings.Contains(msg, p.Field+" "+p.Message+"; "+p.Fix) {
				t.Errorf("error text %q does not name field, problem and fix", msg)
			}
			// Generation refuses the same domain with the same error.
			if _, perr := Primary(doc, HostConfig{}); perr == nil || perr.Error() != msg {
				t.Errorf("Primary: %v; want %v", perr, msg)
			}
		})
	}
}

// A name the backup host would refuse from its peer
// (logchan.ControlRequest.Check) is refused at define time.
func TestValidateRefusesNameWithControlCharacter(t *testing.T) {
	base := readTestdata(t, "ftdemo.xml")
	for _, name := range []string{"ft&#9;demo", "ft&#x202E;demo", "ft&#x2028;demo"} {
		dom := parse(t, mutate(t, base, "<name>ftdemo</name>", "<name>"+name+"</name>"))
		_, err := Validate(dom)
		p, ok := findProblem(problemsOf(t, err), "/domain/name")
		if !ok || !strings.Contains(p.Fix, "virsh domrename") {
			t.Errorf("name %s: got %v", name, err)
		}
	}
}

// A name longer than the backup host accepts from its peer is refused
// at define time; one at the bound passes.
func TestValidateRefusesLongName(t *testing.T) {
	base := readTestdata(t, "ftdemo.xml")
	for _, n := range []int{MaxPeerNameBytes, MaxPeerNameBytes + 1} {
		dom := parse(t, mutate(t, base, "<name>ftdemo</name>", "<name>"+strings.Repeat("n", n)+"</name>"))
		_, err := Validate(dom)
		p, found := findProblem(problemsOf(t, err), "/domain/name")
		if want := n > MaxPeerNameBytes; found != want || (found && !strings.Contains(p.Fix, "at most 1024 bytes")) {
			t.Errorf("name of %d bytes: refused %v (want %v): %v", n, found, want, err)
		}
	}
}

func TestValidateErrorText(t *testing.T) {
	doc := mutate(t, readTestdata(t, "ftdemo.xml"), "<name>ftdemo</name>", "<name>web</name>")
	doc = mutate(t, doc, `<vcpu placement='static'>1</vcpu>`, `<vcpu placement='static'>2</vcpu>`)
	_, err := Validate(parse(t, doc))
	const want = `libvirt-ft: domain "web": /domain/vcpu is 2: QEMU record/replay runs one vCPU only; set <vcpu>1</vcpu>`
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}
}

// Every problem is reported, not just the first.
func TestValidateAllProblems(t *testing.T) {
	doc := readTestdata(t, "ftdemo.xml")
	doc = mutate(t, doc, `<domain type='qemu'>`, `<domain type='kvm'>`)
	doc = mutate(t, doc, `<vcpu placement='static'>1</vcpu>`, `<vcpu placement='static'>4</vcpu>`)
	doc = mutate(t, doc, `<clock offset='utc'/>`, `<clock offset='localtime'/>`)
	doc = mutate(t, doc, `type='qcow2'`, `type='raw'`)
	doc = mutate(t, doc, demoTarget, demoTarget+`<transient/>`)
	doc = mutate(t, doc, `port="7480"`, `port="99999"`)
	_, err := Validate(parse(t, doc))
	want := []string{
		"/domain/@type",
		"/domain/vcpu",
		"/domain/clock/@offset",
		"/domain/metadata/ft:ft/ft:peer/@port",
		"/domain/devices/disk[1]/driver/@type",
		"/domain/devices/disk[1]/transient",
	}
	if diff := cmp.Diff(want, fields(problemsOf(t, err))); diff != "" {
		t.Errorf("fields (-want +got):\n%s", diff)
	}
	if !strings.HasPrefix(err.Error(), `libvirt-ft: domain "ftdemo": 6 problems:`+"\n  /domain/@type is \"kvm\"") {
		t.Errorf("error text:\n%s", err)
	}
}

func TestValidateAccepts(t *testing.T) {
	base := readTestdata(t, "ftdemo.xml")
	for name, doc := range map[string]string{
		"empty backingStore": mutate(t, base, demoTarget, `<backingStore/>`+demoTarget),
		"empty cdrom": mutate(t, base, demoDiskEnd, demoDiskEnd+
			`<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdc' bus='ide'/><readonly/></disk>`),
		"vcpu 1 of topology 1": mutate(t, base, `<model fallback='forbid'>qemu64</model>`,
			`<model fallback='forbid'>qemu64</model><topology sockets='1' dies='1' cores='1' threads='1'/>`),
		"host name peer":   mutate(t, base, `address="10.250.0.2"`, `address="backup.example.net"`),
		"IPv6 peer":        mutate(t, base, `address="10.250.0.2"`, `address="fd00:fa::2"`),
		"clock variable":   mutate(t, base, `<clock offset='utc'/>`, `<clock offset='variable' adjustment='0' basis='utc'/>`),
		"no vcpu element":  mutate(t, base, `<vcpu placement='static'>1</vcpu>`, ``),
		"network iface":    mutate(t, base, `<interface type='bridge'>`+"\n      <mac address='52:54:00:fa:00:01'/>\n      <source bridge='ftbr0'/>", `<interface type='network'><mac address='52:54:00:fa:00:01'/><source network='default'/>`),
		"user alias":       mutate(t, base, demoTarget, demoTarget+`<alias name='ua-root'/>`),
		"foreign metadata": mutate(t, base, `<metadata>`, `<metadata><app:ft xmlns:app="urn:example:app"/>`),
	} {
		t.Run(name, func(t *testing.T) {
			if name == "foreign metadata" {
				// An element named ft in another namespace is refused even
				// next to ours: it is most likely a mistyped URI.
				_, err := Validate(parse(t, doc))
				if _, ok := findProblem(problemsOf(t, err), "/domain/metadata/app:ft"); !ok {
					t.Errorf("got %v", err)
				}
				return
			}
			if _, err := Validate(parse(t, doc)); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestValidateWarnings(t *testing.T) {
	base := readTestdata(t, "ftdemo.xml")
	ws, err := Validate(parse(t, base))
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 1 || !strings.Contains(ws[0], "console/serial input is not replicated") || !strings.Contains(ws[0], "-chardev") {
		t.Errorf("warnings %q", ws)
	}

	// No serial or console: no warning.
	dom := parse(t, base)
	dom.Devices.Serials, dom.Devices.Consoles = nil, nil
	if ws, err := Validate(dom); err != nil || len(ws) != 0 {
		t.Errorf("without serial: %q, %v", ws, err)
	}

	// A console alone warns too.
	dom.Devices.Consoles = []libvirtxml.DomainConsole{{}}
	if ws, _ := Validate(dom); len(ws) != 1 {
		t.Errorf("console only: %q", ws)
	}

	// User command line arguments warn; ours (in a generated primary) don't.
	dom = parse(t, readTestdata(t, "two-disks-two-nics.xml"))
	ws, err = Validate(dom)
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 1 || !strings.Contains(ws[0], "-fw_cfg") || !strings.Contains(ws[0], "FT_EXAMPLE=1") || strings.Contains(ws[0], "blkreplay") {
		t.Errorf("warnings %q", ws)
	}
	ws2, err := Validate(parse(t, mustPrimary(t, readTestdata(t, "two-disks-two-nics.xml"), HostConfig{})))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ws, ws2); diff != "" {
		t.Errorf("generated primary warns differently (-user +primary):\n%s", diff)
	}
}

func TestValidateChannelWarning(t *testing.T) {
	doc := mutate(t, readTestdata(t, "ftdemo.xml"), `<input type='mouse' bus='ps2'/>`,
		`<channel type='unix'><target type='virtio' name='org.example.sensor'/></channel><input type='mouse' bus='ps2'/>`)
	ws, err := Validate(parse(t, doc))
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 2 || !strings.HasPrefix(ws[1], "/domain/devices/channel[1]: ") {
		t.Errorf("warnings %q", ws)
	}
}

// The guest agent's channel is refused: libvirt's own commands on it
// (virsh reboot uses it when it answers) reach the primary's guest only.
func TestValidateGuestAgentRefused(t *testing.T) {
	doc := mutate(t, readTestdata(t, "ftdemo.xml"), `<input type='mouse' bus='ps2'/>`,
		`<channel type='unix'><target type='virtio' name='org.example.sensor'/></channel>`+
			`<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel><input type='mouse' bus='ps2'/>`)
	_, err := Validate(parse(t, doc))
	var verr *ValidationError
	if !errors.As(err, &verr) || len(verr.Problems) != 1 {
		t.Fatalf("Validate = %v, want one problem", err)
	}
	p := verr.Problems[0]
	if p.Field != "/domain/devices/channel[2]" || !strings.Contains(p.Message, "guest agent") || !strings.Contains(p.Fix, "remove this <channel>") {
		t.Errorf("problem %+v", p)
	}
}
