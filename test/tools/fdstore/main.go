// Command fdstore is a test stand-in for systemd as the service manager of
// one service, used by test/lab because the lab has no systemd. It
// implements what systemd's file descriptor store uses of the sd_notify(3)
// protocol (FDSTORE=1, FDNAME=, FDPOLL=0, FDSTOREREMOVE=1; with
// FileDescriptorStoreMax=64 and NotifyAccess=main, systemd.service(5)) and
// hands the stored fds to every start of the service as socket activation
// does (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID; sd_listen_fds(3)).
//
//	fdstore -pidfile FILE [-notify-dir DIR] -- COMMAND [ARGS...]
//
// SIGHUP restarts the service like `systemctl restart` (SIGTERM, SIGKILL
// after 90 s, then a new start with the stored fds); SIGTERM or SIGINT stops
// it like `systemctl stop`, closes the store and exits 0. If the service
// exits on its own, fdstore closes the store and exits 1 (no Restart=).
// FILE holds the service's pid, not fdstore's.
//
// As in systemd, a stored fd that reports POLLHUP or POLLERR is dropped
// unless it was stored with FDPOLL=0 (fdstore checks at each start), and
// an fd that is already in the store is not stored twice. fdstore passes
// the fds in the order they arrived; systemd's order differs (newest first,
// none within one message), so a service must go by LISTEN_FDNAMES.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	storeMax    = 64               // FileDescriptorStoreMax=
	stopTimeout = 90 * time.Second // TimeoutStopSec= default
	// listenPID sets LISTEN_PID to the pid the service will have: exec keeps
	// the shell's, which os/exec only learns after the fork.
	listenPID = `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`
)

type entry struct {
	f    *os.File
	name string
	poll bool // drop on POLLHUP or POLLERR (no FDPOLL=0)
}

type manager struct {
	sock    int
	path    string
	pidfile string
	argv    []string
	store   []entry
	child   *exec.Cmd
	exited  chan error
}

func main() {
	pidfile := flag.String("pidfile", "", "write the service's pid to `FILE`")
	dir := flag.String("notify-dir", "", "create the notify socket in `DIR` (default: a new temporary directory)")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: fdstore -pidfile FILE [-notify-dir DIR] -- COMMAND [ARGS...]")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *pidfile == "" || flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	log.SetFlags(0)
	log.SetPrefix("fdstore: ")
	os.Exit(run(*pidfile, *dir, flag.Args()))
}

func run(pidfile, dir string, argv []string) int {
	if dir == "" {
		d, err := os.MkdirTemp("", "fdstore")
		if err != nil {
			log.Print(err)
			return 1
		}
		defer os.RemoveAll(d)
		dir = d
	}
	m := &manager{path: filepath.Join(dir, "notify"), pidfile: pidfile, argv: argv, exited: make(chan error, 1)}
	if err := m.listen(); err != nil {
		log.Printf("notify socket %s: %v", m.path, err)
		return 1
	}
	defer os.Remove(m.path)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)

	// This goroutine only waits for the socket to be readable: the loop
	// below alone reads it, so that its drain after the service's exit
	// sees everything the service sent.
	readable, resume := make(chan struct{}), make(chan struct{})
	go func() {
		pfd := []unix.PollFd{{Fd: int32(m.sock), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(pfd, -1); err != nil && err != unix.EINTR {
				log.Fatalf("poll: %v", err)
			} else if err == nil {
				readable <- struct{}{}
				<-resume
			}
		}
	}()

	if err := m.start(); err != nil {
		log.Print(err)
		m.closeStore()
		return 1
	}
	pending := "" // "restart" or "stop" once SIGTERM went to the service
	var kill <-chan time.Time
	for {
		select {
		case <-readable:
			m.drain()
			resume <- struct{}{}
		case sig := <-sigs:
			want := "stop"
			if sig == syscall.SIGHUP {
				want = "restart"
			}
			if pending == "stop" || pending == want {
				continue
			}
			if pending == "" {
				log.Printf("%v: %s: SIGTERM to pid %d", sig, want, m.child.Process.Pid)
				m.child.Process.Signal(syscall.SIGTERM)
				kill = time.After(stopTimeout)
			}
			pending = want
		case <-kill:
			log.Printf("pid %d still runs after %v: SIGKILL", m.child.Process.Pid, stopTimeout)
			m.child.Process.Kill()
			kill = nil
		case <-m.exited:
			m.drain() // what it sent before it exited is still the service's
			log.Printf("pid %d exited: %v", m.child.Process.Pid, m.child.ProcessState)
			if pending == "restart" {
				pending, kill = "", nil
				err := m.start()
				if err == nil {
					continue
				}
				log.Print(err)
			}
			m.closeStore()
			os.Remove(pidfile)
			if pending == "stop" {
				log.Print("stopped")
				return 0
			}
			return 1
		}
	}
}

func (m *manager) listen() error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return err
	}
	os.Remove(m.path)
	if err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err == nil {
		err = unix.Bind(fd, &unix.SockaddrUnix{Name: m.path})
	}
	if err != nil {
		unix.Close(fd)
		return err
	}
	m.sock = fd
	return nil
}

// start runs the service with the stored fds as fds 3, 4, ...
func (m *manager) start() error {
	m.prune()
	env := []string{"NOTIFY_SOCKET=" + m.path}
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES":
		default:
			env = append(env, kv)
		}
	}
	var files []*os.File
	var names []string
	for _, e := range m.store {
		files, names = append(files, e.f), append(names, e.name)
	}
	cmd := exec.Command(m.argv[0], m.argv[1:]...)
	if len(files) > 0 {
		cmd = exec.Command("/bin/sh", append([]string{"-c", listenPID}, m.argv...)...)
		env = append(env, "LISTEN_FDS="+strconv.Itoa(len(files)), "LISTEN_FDNAMES="+strings.Join(names, ":"))
	}
	cmd.Env, cmd.ExtraFiles = env, files
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", m.argv[0], err)
	}
	m.child = cmd
	go func() { m.exited <- cmd.Wait() }()
	log.Printf("started pid %d with %d stored fds %q", cmd.Process.Pid, len(names), names)
	tmp := m.pidfile + ".tmp"
	err := os.WriteFile(tmp, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
	if err == nil {
		err = os.Rename(tmp, m.pidfile)
	}
	if err != nil {
		cmd.Process.Kill()
		return fmt.Errorf("pidfile: %w", err)
	}
	return nil
}

// drain handles every queued notification.
func (m *manager) drain() {
	buf := make([]byte, 4096) // systemd's NOTIFY_BUFFER_MAX
	oob := make([]byte, unix.CmsgSpace(253*4)+unix.CmsgSpace(unix.SizeofUcred))
	for {
		n, oobn, flags, _, err := unix.Recvmsg(m.sock, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		} else if err != nil {
			if err != unix.EAGAIN {
				log.Printf("recvmsg: %v", err)
			}
			return
		}
		m.handle(buf[:n], oob[:oobn], flags)
	}
}

func (m *manager) handle(data, oob []byte, flags int) {
	var fds []int
	pid := int32(-1)
	cmsgs, _ := unix.ParseSocketControlMessage(oob)
	for i := range cmsgs {
		if r, err := unix.ParseUnixRights(&cmsgs[i]); err == nil {
			fds = append(fds, r...)
		} else if c, err := unix.ParseUnixCredentials(&cmsgs[i]); err == nil {
			pid = c.Pid
		}
	}
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		log.Printf("ignoring a truncated notification from pid %d", pid)
		return
	}
	if int(pid) != m.child.Process.Pid {
		log.Printf("ignoring a notification from pid %d: only the service (pid %d) may send (NotifyAccess=main)", pid, m.child.Process.Pid)
		return
	}
	lines := strings.Split(string(data), "\n")
	name, named := "", false
	for _, l := range lines {
		switch k, v, _ := strings.Cut(l, "="); k {
		case "FDNAME":
			if !named {
				name, named = v, true
			}
		case "FDSTORE", "FDSTOREREMOVE", "FDPOLL", "":
		case "READY", "STOPPING", "STATUS", "MAINPID":
			log.Print(l)
		default:
			log.Printf("ignoring %s (not supported)", l)
		}
	}
	switch {
	case slices.Contains(lines, "FDSTOREREMOVE=1"):
		if !named || !validName(name) {
			log.Print("FDSTOREREMOVE=1 without a valid FDNAME=: ignored")
			break
		}
		n := 0
		m.store = slices.DeleteFunc(m.store, func(e entry) bool {
			if e.name == name {
				e.f.Close()
				n++
			}
			return e.name == name
		})
		log.Printf("removed %d fds %q; the store holds %d", n, name, len(m.store))
	case slices.Contains(lines, "FDSTORE=1"):
		if named && !validName(name) {
			log.Printf("invalid FDNAME=%q: using \"stored\"", name)
			named = false
		}
		if !named {
			name = "stored"
		}
		m.add(fds, name, !slices.Contains(lines, "FDPOLL=0"))
		fds = nil
	}
	if len(fds) > 0 {
		log.Printf("closing %d fds sent without FDSTORE=1", len(fds))
	}
}

// add stores fds under name, as far as FileDescriptorStoreMax allows; it
// closes those over the limit and those already in the store.
func (m *manager) add(fds []int, name string, poll bool) {
	stored, dup, full := 0, 0, 0
	for _, fd := range fds {
		switch {
		case len(m.store) >= storeMax:
			full++
			unix.Close(fd)
		case slices.ContainsFunc(m.store, func(e entry) bool { return sameFile(int(e.f.Fd()), fd) }):
			dup++
			unix.Close(fd)
		default:
			m.store = append(m.store, entry{os.NewFile(uintptr(fd), name), name, poll})
			stored++
		}
	}
	log.Printf("stored %d fds %q (%d already stored); the store holds %d", stored, name, dup, len(m.store))
	if full > 0 {
		log.Printf("the store is full (FileDescriptorStoreMax=%d): closed %d fds %q", storeMax, full, name)
	}
}

// prune drops the stored fds that report POLLHUP or POLLERR, unless they
// came with FDPOLL=0 (systemd watches them all the time).
func (m *manager) prune() {
	m.store = slices.DeleteFunc(m.store, func(e entry) bool {
		p := []unix.PollFd{{Fd: int32(e.f.Fd())}}
		if n, _ := unix.Poll(p, 0); !e.poll || n != 1 || p[0].Revents&(unix.POLLHUP|unix.POLLERR) == 0 {
			return false
		}
		log.Printf("dropping stored fd %q: POLLHUP or POLLERR (FDPOLL=0 keeps it)", e.name)
		e.f.Close()
		return true
	})
}

func (m *manager) closeStore() {
	for _, e := range m.store {
		e.f.Close()
	}
	log.Printf("closed the store (%d fds)", len(m.store))
	m.store = nil
}

// sameFile reports whether a and b share one open file description, as
// systemd's same_fd: kcmp(2), else the same inode and flags.
func sameFile(a, b int) bool {
	const kcmpFile = 0
	pid := uintptr(os.Getpid())
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, pid, pid, kcmpFile, uintptr(a), uintptr(b), 0)
	if errno == 0 {
		return r == 0
	}
	var sa, sb unix.Stat_t
	fa, errA := unix.FcntlInt(uintptr(a), unix.F_GETFL, 0)
	fb, errB := unix.FcntlInt(uintptr(b), unix.F_GETFL, 0)
	return errA == nil && errB == nil && fa == fb && unix.Fstat(a, &sa) == nil && unix.Fstat(b, &sb) == nil &&
		sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// validName is systemd's fdname_is_valid: at most 255 printable ASCII
// characters other than ':'.
func validName(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' || s[i] == ':' {
			return false
		}
	}
	return len(s) <= 255
}
