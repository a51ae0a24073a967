package ftxml

import (
	"os"
	"strings"
	"testing"
)

// goldenBackup is the generated backup of the demo domain.
func goldenBackup(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("testdata/ftdemo.backup.golden.xml")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestGateWiring(t *testing.T) {
	b := goldenBackup(t)
	dom, err := ParseDomain(b)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := GateWiring(dom, 1)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := ParseConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	out, in := GateSocketPaths(*cfg, "3a2f5b9e-7c41-4d8a-9e06-5b1f2c7d8e90", 0)
	want := GateWire{FilterID: "ft-gate0", Netdev: "hostua-ft-net0", Queue: "rx", OutID: "ft-gout0", OutPath: out, InID: "ft-gin0", InPath: in}
	if len(ws) != 1 || ws[0] != want {
		t.Fatalf("GateWiring = %+v, want %+v", ws, want)
	}
	if _, err := GateWiring(dom, 2); err == nil || !strings.Contains(err.Error(), "interface 1") {
		t.Fatalf("a second interface without wiring: %v", err)
	}
	stripped, err := StripGenerated(b)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := ParseDomain(stripped)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := GateWiring(plain, 1); err == nil {
		t.Fatal("a definition without the wiring gave none")
	}
}

// The live XML of a backup armed by a re-protection (Incoming) that went
// live gives a persistent primary definition without its -incoming defer
// (or its next start would wait for a migration), without rrincoming and
// without the security labels libvirt gave it here (the peer refuses
// them at the next re-protection).
func TestLivePrimaryOfIncoming(t *testing.T) {
	b := goldenBackup(t)
	in, err := Incoming(b)
	if err != nil {
		t.Fatal(err)
	}
	// libvirt's live XML: the labels this host's libvirt gave it.
	in = strings.Replace(in, "</devices>", "</devices>\n  <seclabel type=\"dynamic\" model=\"apparmor\" relabel=\"yes\"><label>libvirt-3a2f5b9e</label></seclabel>", 1)
	lp, err := LivePrimary(in)
	if err != nil {
		t.Fatal(err)
	}
	want, err := LivePrimary(b)
	if err != nil {
		t.Fatal(err)
	}
	if lp != want {
		t.Fatalf("LivePrimary(Incoming(backup)) differs from LivePrimary(backup):\n%s\nwant\n%s", lp, want)
	}
}
