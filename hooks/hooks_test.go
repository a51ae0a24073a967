package hooks

import (
	"bufio"
	"bytes"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libvirt-ft/libvirt-ft/plugin/ctl"
)

const plainXML = `<domain type='qemu'><name>plain</name><uuid>4f1e3d2c-1b2a-4c3d-9e8f-0a1b2c3d4e5f</uuid></domain>`

const ftXML = `<domain type='qemu'><name>web</name><uuid>4f1e3d2c-1b2a-4c3d-9e8f-0a1b2c3d4e5f</uuid>
<metadata><ft:ft xmlns:ft="https://libvirt-ft.org/xmlns/ft/1.0"><ft:peer address="10.250.0.2" port="7480"/></ft:ft></metadata></domain>`

const wrongNS = `<domain type='qemu'><name>web</name><uuid>4f1e3d2c-1b2a-4c3d-9e8f-0a1b2c3d4e5f</uuid>
<metadata><ft:ft xmlns:ft="https://example.org/other"><ft:peer address="10.250.0.2"/></ft:ft></metadata></domain>`

// fakeDaemon answers every control request with resp and records requests.
func fakeDaemon(t *testing.T, resp ctl.Response) (string, *[]ctl.Request) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var got []ctl.Request
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			req, err := ctl.ReadRequest(bufio.NewReader(c))
			if err == nil {
				got = append(got, req)
			}
			_ = ctl.WriteResponse(c, resp)
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return sock, &got
}

func run(args []string, xml, sock string) (int, string) {
	var stderr bytes.Buffer
	code := Run(args, strings.NewReader(xml), &stderr, sock)
	return code, stderr.String()
}

func TestNonFTDomainsAreSilent(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock") // no daemon at all
	for _, op := range []string{"prepare", "start", "started", "stopped", "release", "migrate", "restore", "reconnect", "attach"} {
		code, out := run([]string{"plain", op, "begin", "-"}, plainXML, sock)
		if code != 0 || out != "" {
			t.Errorf("%s: exit %d output %q, want 0 and nothing", op, code, out)
		}
	}
}

func TestReconnectAlwaysExitsZero(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock")
	if code, _ := run([]string{"web", "reconnect", "begin", "-"}, ftXML, sock); code != 0 {
		t.Fatalf("reconnect exit %d, want 0 (libvirt would kill the VM)", code)
	}
	sock2, _ := fakeDaemon(t, ctl.Response{Error: "boom"})
	if code, _ := run([]string{"web", "reconnect", "begin", "-"}, ftXML, sock2); code != 0 {
		t.Fatalf("reconnect exit %d with a failing daemon, want 0", code)
	}
}

func TestPrepareWithoutDaemonRefuses(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock")
	code, out := run([]string{"web", "prepare", "begin", "-"}, ftXML, sock)
	if code == 0 || !strings.Contains(out, "libvirt-ftd is not reachable") {
		t.Fatalf("exit %d output %q", code, out)
	}
}

func TestPrepareRefusalIsPrinted(t *testing.T) {
	sock, got := fakeDaemon(t, ctl.Response{Error: "libvirt-ft: domain \"web\": /domain/vcpu is 2: set <vcpu>1</vcpu>"})
	code, out := run([]string{"web", "prepare", "begin", "-"}, ftXML, sock)
	if code != 1 || !strings.Contains(out, "/domain/vcpu") {
		t.Fatalf("exit %d output %q", code, out)
	}
	if len(*got) != 1 || (*got)[0].Hook == nil || (*got)[0].Hook.Operation != "prepare" || !strings.Contains((*got)[0].Hook.XML, "<name>web</name>") {
		t.Fatalf("daemon got %+v", *got)
	}
}

func TestPrepareAccepted(t *testing.T) {
	sock, _ := fakeDaemon(t, ctl.Response{OK: true})
	if code, out := run([]string{"web", "prepare", "begin", "-"}, ftXML, sock); code != 0 || out != "" {
		t.Fatalf("exit %d output %q", code, out)
	}
}

func TestNotificationsNeverFail(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock")
	for _, op := range []string{"started", "stopped", "release"} {
		if code, out := run([]string{"web", op, "end", "-"}, ftXML, sock); code != 0 || out != "" {
			t.Errorf("%s: exit %d output %q", op, code, out)
		}
	}
}

func TestWrongNamespaceRefusedAtPrepare(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock")
	code, out := run([]string{"web", "prepare", "begin", "-"}, wrongNS, sock)
	if code == 0 || !strings.Contains(out, "https://libvirt-ft.org/xmlns/ft/1.0") {
		t.Fatalf("exit %d output %q", code, out)
	}
}

func TestMigrateRefused(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock")
	code, out := run([]string{"web", "migrate", "begin", "-"}, ftXML, sock)
	if code != 1 || !strings.Contains(out, "virt-ft failover") {
		t.Fatalf("exit %d output %q", code, out)
	}
}

// A domain whose ft element is gone but whose generated record/replay
// wiring is not (the daemon has not stripped it, or is down) is refused
// at prepare by the hook itself: QEMU would record into a FIFO no daemon
// reads.
func TestPrepareRefusesLeftoverWiring(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock") // no daemon at all
	wired := strings.Replace(plainXML, "</domain>", `<qemu:commandline xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">`+
		`<qemu:arg value="-icount"/><qemu:arg value="shift=auto,rr=record,rrfile=/var/lib/libvirt-ft/4f1e3d2c-1b2a-4c3d-9e8f-0a1b2c3d4e5f/record.fifo"/>`+
		`</qemu:commandline></domain>`, 1)
	if code, out := run([]string{"plain", "prepare", "begin", "-"}, wired, sock); code != 1 || !strings.Contains(out, "record/replay wiring") {
		t.Errorf("prepare with leftover wiring: exit %d output %q, want 1 and a refusal", code, out)
	}
	if code, out := run([]string{"plain", "started", "begin", "-"}, wired, sock); code != 0 || out != "" {
		t.Errorf("started with leftover wiring: exit %d output %q, want 0 and nothing", code, out)
	}
}
