package plugin

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sirupsen/logrus"
)

// runEtcd starts a one-member etcd whose client URL has scheme (http, or
// https with the TLS flags in extra), ended by its pid when the test ends;
// it returns the client URL at once.
func runEtcd(t *testing.T, scheme string, extra ...string) string {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Fatalf("etcd is not installed: apt-get install etcd-server (make setup): %v", err)
	}
	client := fmt.Sprintf("%s://127.0.0.1:%d", scheme, freePort(t))
	peer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	cmd := exec.Command(bin, append([]string{"--name", "witness", "--data-dir", t.TempDir(),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "witness=" + peer}, extra...)...)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	})
	return client
}

// freePort returns a TCP port on 127.0.0.1 nobody listens on.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startEtcd runs a one-member etcd (Debian's etcd-server, installed by make
// setup) in a temporary directory and returns its client URL. It is ended
// by its pid when the test ends.
func startEtcd(t *testing.T) string {
	t.Helper()
	client := runEtcd(t, "http")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get(client + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return client
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd at %s not healthy after 20 s: %v", client, err)
		}
	}
}

func testEtcdArbiter(t *testing.T, endpoint, me string) *etcdArbiter {
	t.Helper()
	log := logrus.New()
	log.SetOutput(io.Discard)
	a, err := newEtcdArbiter(EtcdConfig{Endpoints: []string{endpoint}, Prefix: "/libvirt-ft"}, me, 2*time.Second, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// Against a real etcd: exactly one of two daemons wins a pairing's claim;
// the holder asking again wins again; a new epoch is a new claim; Forget
// drops the old ones; a daemon that closes (stops) releases its claims.
func TestEtcdArbiter(t *testing.T) {
	ep := startEtcd(t)
	a, b := testEtcdArbiter(t, ep, "host-a"), testEtcdArbiter(t, ep, "host-b")
	const uuid = "5c0e7d1a-2b3c-4d5e-8f60-718293a4b5c6"
	wonB, err := b.Acquire(uuid, "e1")
	if err != nil || !wonB {
		t.Fatalf("first claim: %v %v", wonB, err)
	}
	if wonA, err := a.Acquire(uuid, "e1"); err != nil || wonA {
		t.Fatalf("second claim must lose: %v %v", wonA, err)
	}
	if again, err := b.Acquire(uuid, "e1"); err != nil || !again {
		t.Fatalf("the holder asking again: %v %v", again, err)
	}
	if won, err := a.Acquire(uuid, "e2"); err != nil || !won {
		t.Fatalf("a new epoch: %v %v", won, err)
	}
	if err := a.Forget(uuid, "e2"); err != nil {
		t.Fatal(err)
	}
	// A forgotten epoch loses for everyone, its former holder included: a
	// daemon that comes back late never wins it.
	if won, err := a.Acquire(uuid, "e1"); err != nil || won {
		t.Fatalf("a forgotten epoch: %v %v, want lost", won, err)
	}
	if won, err := b.Acquire(uuid, "e1"); err != nil || won {
		t.Fatalf("a forgotten epoch, its former holder: %v %v, want lost", won, err)
	}
	if won, err := a.Acquire(uuid, "e2"); err != nil || !won {
		t.Fatalf("the current epoch's holder: %v %v", won, err)
	}
	// A late Forget of an older epoch never goes back.
	if err := a.Forget(uuid, "e1"); err == nil {
		t.Fatal("an older epoch replaced the current one")
	}
	// b wins e3 and stops (a crash, a restart): its claim stays, so a's
	// retry still loses and the VM never runs twice.
	if err := b.Forget(uuid, "e3"); err != nil {
		t.Fatal(err)
	}
	if won, err := b.Acquire(uuid, "e3"); err != nil || !won {
		t.Fatal(won, err)
	}
	b.Close()
	if won, err := a.Acquire(uuid, "e3"); err != nil || won {
		t.Fatalf("a claim won by a daemon that stopped must still stand: %v %v", won, err)
	}
}

// An unreachable etcd is an error within the timeout, never a wait, and
// neither a win nor a loss.
func TestEtcdArbiterUnreachable(t *testing.T) {
	a := testEtcdArbiter(t, fmt.Sprintf("http://127.0.0.1:%d", freePort(t)), "host-a")
	t0 := time.Now()
	won, err := a.Acquire("5c0e7d1a-2b3c-4d5e-8f60-718293a4b5c6", "e1")
	if err == nil || won {
		t.Fatalf("unreachable etcd: won %v err %v", won, err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Fatalf("the claim took %v with a 2 s timeout", d)
	}
}

type hangingArbiter struct {
	calls  atomic.Int32
	unhang chan struct{}
}

func (h *hangingArbiter) Acquire(string, string) (bool, error) {
	h.calls.Add(1)
	<-h.unhang // a hung NFS mount
	return true, nil
}
func (h *hangingArbiter) Forget(string, string) error { return nil }

// A claim that hangs (a hung mount) is an error after the bound, and later
// claims fail at once rather than pile up behind it.
func TestBoundedArbiter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &hangingArbiter{unhang: make(chan struct{})}
		defer func() { close(h.unhang); synctest.Wait() }()
		b := newBoundedArbiter(h, 2*time.Second)
		t0 := time.Now()
		if won, err := b.Acquire("u", "e"); won || err == nil || !strings.Contains(err.Error(), "no answer within 2s") {
			t.Fatalf("hung claim: %v %v", won, err)
		}
		if d := time.Since(t0); d != 2*time.Second {
			t.Fatalf("returned after %v, want 2s", d)
		}
		if won, err := b.Acquire("u", "e"); won || err == nil || !strings.Contains(err.Error(), "has not returned") {
			t.Fatalf("claim behind a hung one: %v %v", won, err)
		}
		if h.calls.Load() != 1 {
			t.Fatalf("%d claims reached the hung arbiter, want 1", h.calls.Load())
		}
	})
}

// An etcd that requires client certificates: the arbiter with arbiter-etcd's
// ca-cert, client-cert and client-key claims; one without a client
// certificate cannot (an error, never a win).
func TestEtcdArbiterTLS(t *testing.T) {
	ca := newTestCA(t)
	dir := ca.dir
	if err := os.Rename(filepath.Join(dir, "cacert.pem"), filepath.Join(dir, "ca.pem")); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"server", "client"} {
		cert, key := ca.host(t, n, "127.0.0.1")
		_ = os.Rename(cert, filepath.Join(dir, n+".pem"))
		_ = os.Rename(key, filepath.Join(dir, n+"-key.pem"))
	}
	client := runEtcd(t, "https", "--cert-file", filepath.Join(dir, "server.pem"), "--key-file", filepath.Join(dir, "server-key.pem"),
		"--trusted-ca-file", filepath.Join(dir, "ca.pem"), "--client-cert-auth")
	log := logrus.New()
	log.SetOutput(io.Discard)
	good := EtcdConfig{Endpoints: []string{client}, Prefix: "/libvirt-ft", CACert: filepath.Join(dir, "ca.pem"),
		ClientCert: filepath.Join(dir, "client.pem"), ClientKey: filepath.Join(dir, "client-key.pem")}
	a, err := newEtcdArbiter(good, "host-a", 2*time.Second, log)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	const uuid = "5c0e7d1a-2b3c-4d5e-8f60-718293a4b5c6"
	var won bool
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if won, err = a.Acquire(uuid, "e1"); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || !won {
		t.Fatalf("with a client certificate: won %v err %v", won, err)
	}
	bad := good
	bad.ClientCert, bad.ClientKey = "", ""
	b, err := newEtcdArbiter(bad, "host-b", 2*time.Second, log)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if won, err := b.Acquire(uuid, "e1"); err == nil {
		t.Fatalf("without a client certificate: won %v, want an error", won)
	}
	if _, err := newEtcdArbiter(EtcdConfig{Endpoints: []string{client}, CACert: filepath.Join(dir, "nope.pem")}, "x", time.Second, log); err == nil || !strings.Contains(err.Error(), "ca-cert") {
		t.Fatalf("a missing ca-cert: %v, want an error naming ca-cert", err)
	}
}
