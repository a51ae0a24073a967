package plugin

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestKillQEMU: killQEMU signals only the process its pid file names when
// that process runs the domain (-uuid on its command line, any case).
func TestKillQEMU(t *testing.T) {
	const uuid = "5c0e7d1a-2b3c-4d5e-8f60-718293a4b5c6"
	dir := t.TempDir()
	pidFile := func(content string) string {
		p := filepath.Join(dir, "ftdemo.pid")
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// A stand-in QEMU: sh with "-uuid UUID" among its arguments, waiting
	// in its builtin read on a pipe nobody writes (so it never execs
	// another program, which would change its command line).
	start := func(u string) *exec.Cmd {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("sh", "-c", "echo ready; read x", "-uuid", u)
		cmd.Stdin = r
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		r.Close()
		// Start returns once exec began, before the kernel has set up
		// the new command line: wait until sh runs its script.
		if line, err := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
			t.Fatalf("stand-in QEMU: %q, %v", line, err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); w.Close() })
		return cmd
	}
	other := start("00000000-0000-0000-0000-000000000000")
	for _, c := range []struct{ name, content, want string }{
		{"no pid file", "", "QEMU's pid"},
		{"not a pid", "qemu\n", "not a pid"},
		{"pid 1", "1\n", "not a pid"},
		{"another domain's QEMU", strconv.Itoa(other.Process.Pid) + "\n", "does not run domain"},
		{"this test process", strconv.Itoa(os.Getpid()), "does not run domain"},
	} {
		p := filepath.Join(dir, "missing.pid")
		if c.content != "" {
			p = pidFile(c.content)
		}
		if err := killQEMU(p, uuid); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: killQEMU = %v, want an error saying %q", c.name, err, c.want)
		}
	}
	if err := other.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("another domain's QEMU was signalled: %v", err)
	}
	qemu := start(strings.ToUpper(uuid))
	if err := killQEMU(pidFile(strconv.Itoa(qemu.Process.Pid)+"\n"), uuid); err != nil {
		cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(qemu.Process.Pid) + "/cmdline")
		t.Fatalf("%v (its command line: %q)", err, cmdline)
	}
	err := qemu.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the domain's QEMU ended with %v, want SIGKILL", err)
	}
}
