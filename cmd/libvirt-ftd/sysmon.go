package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
)

// The Go runtime's monitor thread (sysmon) and the daemon's wake-ups.
//
// libvirt-ftd's hot path wakes thousands of times a second under network
// load (a log write from QEMU, the backup's ack, a frame to release), each
// time for a few system calls. When every P is idle, sysmon sleeps deeply
// on a futex, and the first system call after that wakes it
// (runtime/proc.go: reentersyscall, entersyscallWakeSysmon): a futex wake,
// a switch to sysmon's thread, then its 20 µs naps until it sees the
// daemon idle again. So each wake-up of the daemon paid for a second
// thread's wake-up as well. Measured in the lab during bulk transmit
// (perf stat, 2 s): about 2,000 sysmon naps a second in each daemon,
// sysmon 16% of the primary daemon's samples, both daemons together about
// half a CPU.
//
// sysmon never sleeps deeply while the runtime's scheduler trace is on
// (GODEBUG schedtrace, runtime/proc.go sysmon: "sysmon should not enter
// deep sleep if schedtrace is enabled"); it then naps with its usual
// back-off, doubling from 20 µs up to 10 ms while it has nothing to do,
// about 100 wake-ups a second when idle. sysmonGODEBUG turns the trace on
// with the longest period GODEBUG takes (2147483647 ms, 24.8 days), so
// the trace itself is one line on standard error ("SCHED ...ms:
// gomaxprocs=...") every 24.8 days of the host's monotonic clock (at once
// on a host up for longer). On a fatal error the runtime then also prints
// a scheduler dump, a line per thread, P and goroutine, before the
// traceback (runtime/panic.go startpanic_m): a few hundred lines more in
// the journal. The one runtime crash it can turn into a hang instead of
// an exit is one inside the scheduler's own lock (the dump takes it); the
// daemon then stops moving the log, QEMU blocks on FIFO A and the backup
// goes live on the missing heartbeats, as after a crash, but systemd does
// not restart it.
// The runtime reads GODEBUG's scheduler settings only at start, hence the
// re-execution (keepSysmonAwake). The Go issue: golang/go#18236 ("runtime:
// sysmon tick is hardcoded").
//
// Trade-off: a P held by a blocking system call or cgo call (libvirt) is
// taken back by sysmon at its next nap's end rather than at once, so with
// one P (plugin/procs.go) such a call can hold the daemon's other
// goroutines for up to about 20 ms.
//
// GODEBUG naming schedtrace in the environment (the systemd unit's
// Environment=, or by hand) wins, schedtrace=0 included.
const sysmonGODEBUG = "schedtrace=2147483647"

// sysmonEnv returns environ with sysmonGODEBUG added to GODEBUG, and
// whether it changed anything: false when GODEBUG already sets schedtrace.
func sysmonEnv(environ []string) ([]string, bool) {
	out := make([]string, 0, len(environ)+1)
	godebug := ""
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			godebug = v
			continue
		}
		out = append(out, kv)
	}
	for _, f := range strings.Split(godebug, ",") {
		if strings.HasPrefix(strings.TrimSpace(f), "schedtrace=") {
			return environ, false
		}
	}
	if godebug != "" {
		godebug += ","
	}
	return append(out, "GODEBUG="+godebug+sysmonGODEBUG), true
}

// keepSysmonAwake re-executes the daemon in place (same pid, arguments
// and open files, so systemd's fd store and LISTEN_FDS stay valid) with
// sysmonGODEBUG in GODEBUG, unless GODEBUG already sets schedtrace. It
// executes its own path (the target of /proc/self/exe), not the link
// itself, so that the process keeps its name (ps, pgrep, the journal's
// _COMM). It returns
// only when it did not re-execute: nil when the setting is in force or
// left to the environment; an error when the binary was replaced on disk
// since the start (a package upgrade: the new one is not started half-way
// through this start) or execve failed. The daemon then runs on, with
// more wake-ups.
func keepSysmonAwake() error {
	env, changed := sysmonEnv(os.Environ())
	if !changed {
		return nil
	}
	// Not os.Executable: it strips " (deleted)".
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return err
	}
	if strings.HasSuffix(exe, " (deleted)") {
		return fmt.Errorf("%s was replaced on disk since the daemon started", strings.TrimSuffix(exe, " (deleted)"))
	}
	return syscall.Exec(exe, os.Args, env)
}
