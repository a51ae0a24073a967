package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// childEnv makes the test binary the service run under fdstore; its value
// is the file the service reports to.
const childEnv = "FDSTORE_TEST_CHILD"

func TestMain(m *testing.M) {
	if out := os.Getenv(childEnv); out != "" {
		os.Exit(child(out))
	}
	os.Exit(m.Run())
}

// child is the service. Each start reports "start PID LISTEN_PID LISTEN_FDS
// LISTEN_FDNAMES" (quoted). With no fds it stores the read end of a pipe
// holding "hello" as "pipe" (FDPOLL=0) and a pipe's read end as "hup" (its
// writer dies with the service, so the store must drop it), then reports
// "stored". With fds it reads a line from fd 3 and reports "got NAME LINE",
// removes "pipe" from the store and reports "removed". Then it waits for
// SIGTERM (a minute at most).
func child(out string) int {
	report := func(format string, a ...any) {
		if f, err := os.OpenFile(out, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
			fmt.Fprintf(f, format+"\n", a...)
			f.Close()
		}
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	sock := os.Getenv("NOTIFY_SOCKET")
	report("start %d %q %q %q", os.Getpid(), os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_FDNAMES"))
	var keep []*os.File
	if os.Getenv("LISTEN_FDS") != "" {
		name, _, _ := strings.Cut(os.Getenv("LISTEN_FDNAMES"), ":")
		line, err := bufio.NewReader(os.NewFile(3, name)).ReadString('\n')
		if err != nil {
			report("read fd 3: %v", err)
			return 1
		}
		report("got %s %s", name, strings.TrimSpace(line))
		if err := notify(sock, "FDSTOREREMOVE=1\nFDNAME=pipe"); err != nil {
			report("notify: %v", err)
			return 1
		}
		report("removed")
	} else {
		for _, msg := range []string{"FDSTORE=1\nFDNAME=pipe\nFDPOLL=0", "FDSTORE=1\nFDNAME=hup"} {
			r, w, err := os.Pipe()
			if err == nil {
				_, err = w.WriteString("hello\n")
			}
			if err == nil {
				err = notify(sock, msg, r)
			}
			if err != nil {
				report("store: %v", err)
				return 1
			}
			keep = append(keep, r, w)
		}
		if err := notify(sock, "READY=1\nSTATUS=running"); err != nil {
			report("notify: %v", err)
			return 1
		}
		report("stored")
	}
	select {
	case <-term:
		for _, f := range keep {
			f.Close()
		}
		return 0
	case <-time.After(time.Minute):
		return 1
	}
}

// notify sends state and files to the notify socket at path, as
// sd_pid_notify_with_fds does.
func notify(path, state string, files ...*os.File) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	oob := unix.UnixCredentials(&unix.Ucred{Pid: int32(os.Getpid()), Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())})
	if len(files) > 0 {
		var fds []int
		for _, f := range files {
			fds = append(fds, int(f.Fd()))
		}
		oob = append(oob, unix.UnixRights(fds...)...)
	}
	return unix.Sendmsg(fd, []byte(state), oob, &unix.SockaddrUnix{Name: path}, 0)
}

type fdstore struct {
	cmd                     *exec.Cmd
	done                    chan struct{}
	dir, out, pidfile, sock string
	stderr                  string
}

// startFdstore builds fdstore and runs it with the test binary as the
// service.
func startFdstore(t *testing.T) *fdstore {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "fdstore")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	p := &fdstore{done: make(chan struct{}), dir: dir, out: filepath.Join(dir, "report"), pidfile: filepath.Join(dir, "pid"),
		sock: filepath.Join(dir, "notify"), stderr: filepath.Join(dir, "stderr")}
	log, err := os.Create(p.stderr)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	p.cmd = exec.Command(bin, "-pidfile", p.pidfile, "-notify-dir", dir, "--", self)
	p.cmd.Env = append(os.Environ(), childEnv+"="+p.out)
	if os.Getenv("GORACE") == "" {
		// A -race service would linger a second after each SIGTERM.
		p.cmd.Env = append(p.cmd.Env, "GORACE=atexit_sleep_ms=0")
	}
	p.cmd.Stdout, p.cmd.Stderr = log, log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		for _, s := range p.starts() { // services left behind
			if pid, _ := strconv.Atoi(s[1]); pid > 0 {
				if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.HasPrefix(string(b), self+"\x00") {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		if t.Failed() {
			b, _ := os.ReadFile(p.stderr)
			r, _ := os.ReadFile(p.out)
			t.Logf("fdstore's stderr:\n%s\nthe service's report:\n%s", b, r)
		}
	})
	return p
}

func (p *fdstore) report() string {
	b, _ := os.ReadFile(p.out)
	return string(b)
}

// starts returns the fields of the report's start lines.
func (p *fdstore) starts() [][]string {
	var s [][]string
	for _, l := range strings.Split(p.report(), "\n") {
		if f := strings.Fields(l); len(f) == 5 && f[0] == "start" {
			s = append(s, f)
		}
	}
	return s
}

// waitFor polls cond for 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func (p *fdstore) waitReport(t *testing.T, line string, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d× %q in the report", n, line), func() bool {
		return strings.Count("\n"+p.report(), "\n"+line+"\n") >= n
	})
}

// waitStarted waits for the n-th start and the pidfile naming it, and
// returns the start's fields.
func (p *fdstore) waitStarted(t *testing.T, n int) []string {
	t.Helper()
	waitFor(t, fmt.Sprintf("start %d", n), func() bool { return len(p.starts()) >= n })
	s := p.starts()[n-1]
	waitFor(t, "the pidfile to hold pid "+s[1], func() bool {
		b, _ := os.ReadFile(p.pidfile)
		return string(b) == s[1]+"\n"
	})
	return s
}

func (p *fdstore) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

func (p *fdstore) waitExit(t *testing.T, code int) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for fdstore to exit")
	}
	if got := p.cmd.ProcessState.ExitCode(); got != code {
		t.Fatalf("fdstore exited with %d, want %d", got, code)
	}
	for _, f := range []string{p.pidfile, p.sock} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s left behind (%v)", f, err)
		}
	}
}

func TestRestartPassesTheStore(t *testing.T) {
	p := startFdstore(t)
	if s := p.waitStarted(t, 1); s[2] != `""` || s[3] != `""` || s[4] != `""` {
		t.Errorf("first start with an empty store: %v, want no LISTEN_*", s)
	}
	p.waitReport(t, "stored", 1)

	// An fd from another process than the service is not stored.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if err := notify(p.sock, "FDSTORE=1\nFDNAME=intruder", r); err != nil {
		t.Fatal(err)
	}

	p.signal(t, syscall.SIGHUP)
	s := p.waitStarted(t, 2)
	if want := []string{"start", s[1], strconv.Quote(s[1]), `"1"`, `"pipe"`}; strings.Join(s, " ") != strings.Join(want, " ") {
		t.Errorf("restart: %v, want %v", s, want)
	}
	p.waitReport(t, "got pipe hello", 1)
	p.waitReport(t, "removed", 1)
	b, _ := os.ReadFile(p.stderr)
	if want := fmt.Sprintf("ignoring a notification from pid %d", os.Getpid()); !strings.Contains(string(b), want) {
		t.Errorf("fdstore's stderr lacks %q", want)
	}

	// FDSTOREREMOVE=1 emptied the store: the next start has no LISTEN_*.
	p.signal(t, syscall.SIGHUP)
	if s := p.waitStarted(t, 3); s[2] != `""` || s[3] != `""` || s[4] != `""` {
		t.Errorf("start after FDSTOREREMOVE=1: %v, want no LISTEN_*", s)
	}
	p.waitReport(t, "stored", 2)

	p.signal(t, syscall.SIGTERM)
	p.waitExit(t, 0)
}

func TestServiceExitEndsFdstore(t *testing.T) {
	p := startFdstore(t)
	s := p.waitStarted(t, 1)
	p.waitReport(t, "stored", 1)
	pid, _ := strconv.Atoi(s[1])
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.waitExit(t, 1)
}
