package plugin

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadConfigDefaults(t *testing.T) {
	c, err := LoadConfig(filepath.Join(t.TempDir(), "missing.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":7480" || c.LibvirtURI != "qemu:///system" || c.WindowBytes != DefaultWindowBytes || c.QEMUUser != "libvirt-qemu" {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestLoadConfigRefusesUnknownKeys(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(p, []byte("listen: 10.0.0.1:7480\nlisten-adress: x\n"), 0o600)
	_, err := LoadConfig(p)
	if err == nil || !strings.Contains(err.Error(), "listen-adress") {
		t.Fatalf("err %v", err)
	}
}

func TestLoadConfigBadListen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(p, []byte("listen: nowhere\n"), 0o600)
	if _, err := LoadConfig(p); err == nil || !strings.Contains(err.Error(), "listen") {
		t.Fatalf("err %v", err)
	}
}

func TestSeedAllowed(t *testing.T) {
	c := Config{SeedDirs: []string{"/var/lib/libvirt/images"}}
	for path, want := range map[string]bool{
		"/var/lib/libvirt/images/a.qcow2":        true,
		"/var/lib/libvirt/images/sub/a.qcow2":    true,
		"/var/lib/libvirt/images/../../../etc/x": false,
		"/var/lib/libvirt/images-evil/a.qcow2":   false,
		"/etc/shadow":                            false,
	} {
		if got := c.seedAllowed(path); got != want {
			t.Errorf("seedAllowed(%s) = %v", path, got)
		}
	}
}

func TestSeedWriterVerifies(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.WriteFile(src, []byte("disk contents"), 0o600)
	h, err := hashFile(src)
	if err != nil || !h.Exists {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "images", "d.qcow2")
	os.Mkdir(filepath.Dir(dst), 0o755)
	w, err := newSeedWriter(dst, h)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("disk contents"))
	if err := w.commit(placeNow); err != nil {
		t.Fatal(err)
	}
	if got, _ := hashFile(dst); got != h {
		t.Fatalf("copy %+v, want %+v", got, h)
	}
	// A corrupted copy is refused and does not replace the destination.
	w, _ = newSeedWriter(dst, h)
	w.Write([]byte("disk c0ntents"))
	if err := w.commit(placeNow); err == nil {
		t.Fatal("corrupt copy accepted")
	}
	if got, _ := hashFile(dst); got != h {
		t.Fatal("corrupt copy replaced the good one")
	}
	entries, _ := os.ReadDir(filepath.Dir(dst))
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
}

// TestReplayPipeBytes: FIFO B is 256 KiB while the lag bound is on, the
// old 16 KiB with max-lag-ms -1 (the window alone then bounds the lag).
func TestReplayPipeBytes(t *testing.T) {
	for _, c := range []struct {
		maxLag int
		want   int
	}{{100, 256 << 10}, {0, 16 << 10}} {
		if got := (Config{MaxLagMS: c.maxLag}).replayPipeBytes(); got != c.want {
			t.Errorf("max-lag-ms %d (after defaults): FIFO B %d bytes, want %d", c.maxLag, got, c.want)
		}
	}
}

// TestLoadConfigWindowBounds: window-bytes above maxWindowBytes (the log
// ring could no longer place a stalled backup's icount) is refused with
// the field and the fix; the bound itself is accepted.
func TestLoadConfigWindowBounds(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(p, []byte(fmt.Sprintf("window-bytes: %d\n", maxWindowBytes+1)), 0o600)
	if _, err := LoadConfig(p); err == nil || !strings.Contains(err.Error(), "window-bytes") || !strings.Contains(err.Error(), "lower it") {
		t.Fatalf("window-bytes %d: err %v, want a refusal naming window-bytes", maxWindowBytes+1, err)
	}
	os.WriteFile(p, []byte(fmt.Sprintf("window-bytes: %d\n", maxWindowBytes)), 0o600)
	if c, err := LoadConfig(p); err != nil || c.WindowBytes != maxWindowBytes {
		t.Fatalf("window-bytes %d: %v", maxWindowBytes, err)
	}
}
