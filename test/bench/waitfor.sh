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
# (a plain boot pinned to CPU 0 took 4.5 s instead of 3.0 when another ran
# on CPU 1, its vCPU thread 1.7 s waiting for CPU, with two such loops
# polling at 50 Hz; BENCHMARKS.md, session 38).
set -u
[ $# -ge 3 ] || {
	echo "usage: waitfor.sh SECONDS TEXT CMD..." >&2
	exit 2
}
secs=$1 text=$2
shift 2
coproc W { exec timeout "$secs" "$@" 2>/dev/null; }
pid=$W_PID
grep -q -F -m 1 -- "$text" <&"${W[0]}"
rc=$?
# timeout(1) runs in a process group of its own (its pid), which ends the
# whole watcher, a `lab.sh exec` and what it started included.
kill -TERM -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
exit $rc
