package plugin

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/qmptest"
	"libvirt.org/go/libvirtxml"

	"github.com/libvirt-ft/libvirt-ft/plugin/gate"
	"github.com/libvirt-ft/libvirt-ft/qmp"
	ftxml "github.com/libvirt-ft/libvirt-ft/xml"
)

// gateQEMU is a QEMU's monitor as rewireGates uses it: chardev-add of a
// socket chardev connects to its path, as QEMU does within the command.
type gateQEMU struct {
	mu    sync.Mutex
	cmds  []string
	conns map[string]net.Conn // chardev id → its connection
	fail  string              // a command that fails
	// objects and chardevs: what qom-list /objects and query-chardev
	// list (the ids; nothing else is looked at).
	objects, chardevs []string
}

func (q *gateQEMU) client() *qmp.Client {
	return qmp.NewClient(qmptest.NewMonitor(func(cmd goqmp.Command) (any, error) {
		q.mu.Lock()
		defer q.mu.Unlock()
		args, _ := cmd.Args.(map[string]any)
		q.cmds = append(q.cmds, fmt.Sprintf("%s %v", cmd.Execute, args["id"]))
		if cmd.Execute == q.fail {
			return map[string]any{"error": map[string]string{"class": "GenericError", "desc": "refused"}}, nil
		}
		switch cmd.Execute {
		case "qom-list":
			var objs []map[string]string
			for _, id := range q.objects {
				objs = append(objs, map[string]string{"name": id, "type": "filter-redirector"})
			}
			return map[string]any{"return": objs}, nil
		case "query-chardev":
			var cs []map[string]any
			for _, id := range q.chardevs {
				cs = append(cs, map[string]any{"label": id, "filename": "disconnected", "frontend-open": true})
			}
			return map[string]any{"return": cs}, nil
		}
		if cmd.Execute == "chardev-add" {
			path := args["backend"].(map[string]any)["data"].(map[string]any)["addr"].(map[string]any)["data"].(map[string]any)["path"].(string)
			c, err := net.Dial("unix", path)
			if err != nil {
				return map[string]any{"error": map[string]string{"class": "GenericError", "desc": err.Error()}}, nil
			}
			q.conns[args["id"].(string)] = c
		}
		return map[string]any{"return": map[string]any{}}, nil
	}))
}

func (q *gateQEMU) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, c := range q.conns {
		c.Close()
	}
}

func gatedLiveDomain(t *testing.T, cfgDir string) *libvirtxml.Domain {
	t.Helper()
	_, cfg := testEnv(t)
	cfg.StateDir = cfgDir
	out, in := ftxml.GateSocketPaths(cfg, testUUID, 0)
	return &libvirtxml.Domain{
		Devices: &libvirtxml.DomainDeviceList{Interfaces: make([]libvirtxml.DomainInterface, 1)},
		QEMUCommandline: &libvirtxml.DomainQEMUCommandline{Args: []libvirtxml.DomainQEMUCommandlineArg{
			{Value: "-chardev"}, {Value: "socket,id=ft-gout0,path=" + out},
			{Value: "-chardev"}, {Value: "socket,id=ft-gin0,path=" + in},
			{Value: "-object"}, {Value: "filter-redirector,id=ft-gate0,netdev=hostua-ft-net0,queue=rx,outdev=ft-gout0,indev=ft-gin0"},
		}},
	}
}

// A restarted daemon connects a live VM's output gates to itself again:
// the filter-redirector and its chardevs are made again (in that order,
// the filter off), QEMU's new connections are served by pass-through
// gates, and those become a primary's at a re-protection (reprotected).
func TestRewireGates(t *testing.T) {
	e, cfg := testEnv(t)
	outPath, _ := ftxml.GateSocketPaths(cfg, testUUID, 0)
	if err := os.MkdirAll(filepath.Dir(outPath), 0o700); err != nil {
		t.Fatal(err)
	}
	dom := gatedLiveDomain(t, cfg.StateDir)
	q := &gateQEMU{conns: map[string]net.Conn{}, objects: []string{"ft-fr0", "ft-gate0"}, chardevs: []string{"serial0", "ft-gout0", "ft-gin0"}}
	defer q.close()
	og, err := rewireGates(e, q.client(), testUUID, cfg, dom)
	if err != nil {
		t.Fatal(err)
	}
	defer og.close()
	want := []string{"qom-list <nil>", "query-chardev <nil>", "object-del ft-gate0", "chardev-remove ft-gout0", "chardev-remove ft-gin0",
		"chardev-add ft-gout0", "chardev-add ft-gin0", "object-add ft-gate0"}
	if strings.Join(q.cmds, "; ") != strings.Join(want, "; ") {
		t.Fatalf("QMP commands:\n %v\nwant\n %v", q.cmds, want)
	}
	// Pass-through, as a live VM's gates are.
	out, in := q.conns["ft-gout0"], q.conns["ft-gin0"]
	_ = in.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := gate.WriteFrame(out, []byte("alone-1")); err != nil {
		t.Fatal(err)
	}
	if got, err := gate.ReadFrame(in); err != nil || string(got) != "alone-1" {
		t.Fatalf("a live VM's frame: %q, %v", got, err)
	}
	waitFor(t, "the live frame written", func() bool { return og.waitSent(0) })
	nog, err := og.reprotected(e, &fakePosition{}, true)
	if err != nil {
		t.Fatalf("re-protecting the rewired gates: %v", err)
	}
	nog.close()
}

// Refusals: gate sockets outside this daemon's state directory are not
// connected to, and a failing QMP step leaves nothing open here.
func TestRewireGatesRefusals(t *testing.T) {
	e, cfg := testEnv(t)
	outPath, _ := ftxml.GateSocketPaths(cfg, testUUID, 0)
	if err := os.MkdirAll(filepath.Dir(outPath), 0o700); err != nil {
		t.Fatal(err)
	}
	elsewhere := gatedLiveDomain(t, t.TempDir())
	q := &gateQEMU{conns: map[string]net.Conn{}}
	if _, err := rewireGates(e, q.client(), testUUID, cfg, elsewhere); !errors.Is(err, errGateWiring) || !strings.Contains(err.Error(), "not") || len(q.cmds) != 0 {
		t.Fatalf("sockets elsewhere: %v (commands %v)", err, q.cmds)
	}
	q = &gateQEMU{conns: map[string]net.Conn{}, fail: "object-add"}
	defer q.close()
	_, err := rewireGates(e, q.client(), testUUID, cfg, gatedLiveDomain(t, cfg.StateDir))
	if !errors.Is(err, errGateWiring) || !strings.Contains(err.Error(), "object-add") {
		t.Fatalf("a failing object-add: %v", err)
	}
	if _, err := net.Dial("unix", outPath); err == nil {
		t.Fatal("the gate socket still listens after the failure")
	}
}

// A daemon that died part way through an earlier rewiring: what is gone
// already is not deleted again.
func TestRewireGatesAfterAPartialOne(t *testing.T) {
	e, cfg := testEnv(t)
	outPath, _ := ftxml.GateSocketPaths(cfg, testUUID, 0)
	if err := os.MkdirAll(filepath.Dir(outPath), 0o700); err != nil {
		t.Fatal(err)
	}
	q := &gateQEMU{conns: map[string]net.Conn{}, objects: []string{"ft-fr0"}, chardevs: []string{"serial0", "ft-gin0"}}
	defer q.close()
	og, err := rewireGates(e, q.client(), testUUID, cfg, gatedLiveDomain(t, cfg.StateDir))
	if err != nil {
		t.Fatal(err)
	}
	defer og.close()
	want := []string{"qom-list <nil>", "query-chardev <nil>", "chardev-remove ft-gin0",
		"chardev-add ft-gout0", "chardev-add ft-gin0", "object-add ft-gate0"}
	if strings.Join(q.cmds, "; ") != strings.Join(want, "; ") {
		t.Fatalf("QMP commands:\n %v\nwant\n %v", q.cmds, want)
	}
}
