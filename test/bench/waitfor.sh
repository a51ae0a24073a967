#!/usr/bin/env bash
# waitfor.sh SECONDS TEXT CMD...: run CMD and wait until a line of its output
# contains TEXT (a fixed string); then end CMD and exit 0. Exit 1 when CMD
# ends or SECONDS pass first.
#
# For the benches' waits: CMD is a watcher that blocks until something
# happens (`tail -n +1 -F FILE`, which follows FILE through inotify, or
# `virsh event --loop`), so the wait costs no CPU while it waits. A loop of
# grep and sleep costs a fork and an exec per poll, and when both of the
# lab's CPUs are busy with the two QEMUs, that CPU time is taken from them
# (two plain boots side by side took 4.4-5.4 s against 2.6-3.0 s alone,
# each vCPU thread waiting 1.85-1.99 s for a CPU, with two such loops
# polling at 50 Hz; BENCHMARKS.md, session 38).
set -u
[ $# -ge 3 ] || {
	echo "usage: waitfor.sh SECONDS TEXT CMD..." >&2
	exit 2
}
secs=$1 text=$2
shift 2
coproc W { exec timeout "$secs" "$@" 2>/dev/null; }
# timeout(1) runs in a process group of its own (its pid): ending that
# group ends the whole watcher, a `lab.sh exec` and what it started
# included.
pid=$W_PID
g=""
stop() { kill -TERM -- "-$pid" 2>/dev/null; }
# Killed (a bench giving up, Ctrl-C): end the watcher and grep too. A trap
# runs only while bash waits, so grep runs in the background; a coproc's
# descriptor is not passed to a background job, a duplicate is.
trap 'stop; [ -z "$g" ] || kill "$g" 2>/dev/null; exit 1' TERM INT HUP
exec 3<&"${W[0]}"
grep -q -F -m 1 -- "$text" <&3 &
g=$!
wait "$g"
rc=$?
stop
wait "$pid" 2>/dev/null
exit $rc
