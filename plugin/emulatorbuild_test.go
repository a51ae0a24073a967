package plugin

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestEmulatorBuild: the --version line and the file's SHA-256; a binary
// replaced in place (another build at the same path) is read again.
func TestEmulatorBuild(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "qemu-system-x86_64")
	write := func(version string) string {
		script := fmt.Sprintf("#!/bin/sh\necho '%s'\necho 'Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers'\n", version)
		// A new file, as a package upgrade writes one: a new inode.
		tmp := path + ".new"
		if err := os.WriteFile(tmp, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte(script))
		return fmt.Sprintf("%s, sha256 %x", version, sum[:8])
	}
	want := write("QEMU emulator version 7.2.22 (libvirt-ft)")
	got, err := emulatorBuild(path)
	if err != nil || got != want {
		t.Fatalf("emulatorBuild = %q, %v; want %q", got, err, want)
	}
	// Whether it flushes before a frame is read from the same line.
	if flushes, err := qemuBuildFlushes(path); err != nil || !flushes {
		t.Fatalf("qemuBuildFlushes of the patched build = %v, %v; want true", flushes, err)
	}
	want = write("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)")
	if got, err := emulatorBuild(path); err != nil || got != want {
		t.Fatalf("after replacing the binary: emulatorBuild = %q, %v; want %q", got, err, want)
	}
	if flushes, err := qemuBuildFlushes(path); err != nil || flushes {
		t.Fatalf("qemuBuildFlushes of the stock build = %v, %v; want false", flushes, err)
	}
	if _, err := emulatorBuild(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing emulator gave no error")
	}
	if _, err := emulatorBuild(""); err == nil {
		t.Error("no emulator gave no error")
	}
	if _, err := emulatorBuild("/dev/zero"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a device as the emulator: %v, want \"not a regular file\"", err)
	}
	// A named pipe with no writer: refused at once (an open without
	// O_NONBLOCK would wait for a writer for ever).
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := emulatorBuild(fifo); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a named pipe as the emulator: %v, want \"not a regular file\"", err)
	}
}

// Callers at the same time (the daemon warming the cache, a start's
// prepare hook) read and run the binary once.
func TestEmulatorBuildOnceForConcurrentCallers(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "qemu-system-x86_64")
	runs := filepath.Join(dir, "runs")
	script := fmt.Sprintf("#!/bin/sh\necho x >> %s\nsleep 0.2\necho 'QEMU emulator version 7.2.22 (libvirt-ft)'\n", runs)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	got := make([]string, 4)
	for i := range got {
		wg.Go(func() {
			v, err := emulatorBuild(path)
			if err != nil {
				t.Error(err)
			}
			got[i] = v
		})
	}
	wg.Wait()
	for _, v := range got[1:] {
		if v != got[0] {
			t.Fatalf("builds differ: %q", got)
		}
	}
	b, err := os.ReadFile(runs)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "x"); n != 1 {
		t.Errorf("the binary ran %d times for 4 concurrent callers, want 1", n)
	}
}
