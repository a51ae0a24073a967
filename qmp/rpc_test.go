package qmp

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"
)

func TestLocalSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "libvirt-sock")
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		uri, socket string
		ok          bool
	}{
		{"qemu:///system?socket=" + sock, sock, true},
		{"qemu+unix:///system?socket=/x/y", "/x/y", true},
		{"qemu:///session", "", false},
		{"qemu+ssh://host/system", "", false},
		{"qemu+tcp://10.0.0.1/system", "", false},
		{"xen:///system", "", false},
		{"::", "", false},
	} {
		s, open, ok := LocalSocket(c.uri)
		if ok != c.ok || s != c.socket || (ok && open != "qemu:///system") {
			t.Errorf("LocalSocket(%q) = %q, %q, %v; want %q, qemu:///system, %v", c.uri, s, open, ok, c.socket, c.ok)
		}
	}
}

func TestParseUUID(t *testing.T) {
	id, err := parseUUID("a9abe4ee-6d34-41ab-bce3-d3210c1629d5")
	if err != nil || id[0] != 0xa9 || id[15] != 0xd5 {
		t.Fatalf("parseUUID = %x, %v", id, err)
	}
	for _, bad := range []string{"", "a9abe4ee6d3441abbce3d3210c1629d5", "a9abe4ee-6d34-41ab-bce3-d3210c1629dz", "a9abe4ee-6d34-41ab-bce3-d3210c1629"} {
		if _, err := parseUUID(bad); err == nil {
			t.Errorf("parseUUID(%q): no error", bad)
		}
	}
}

// A libvirtd that reads but never answers: the opening gives up after the
// timeout with errNoAnswer and closes the connection (go-libvirt has no
// deadline of its own; helper-122 found DialRPCMonitor blocked for good).
func TestRPCMonitorNoAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			_, _ = io.Copy(io.Discard, server) // ends when the client side closes
			close(done)
		}()
		id, _ := parseUUID("a9abe4ee-6d34-41ab-bce3-d3210c1629d5")
		start := time.Now()
		_, err := newRPCMonitor(client, "qemu:///system", id, 5*time.Second, time.Minute)
		if !errors.Is(err, errNoAnswer) {
			t.Fatalf("newRPCMonitor against a silent libvirtd: %v, want errNoAnswer", err)
		}
		if d := time.Since(start); d != 5*time.Second {
			t.Errorf("gave up after %v, want the timeout (5s)", d)
		}
		<-done // the connection was closed
		_ = server.Close()
		synctest.Wait()
	})
}
