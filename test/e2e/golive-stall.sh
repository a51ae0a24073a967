#!/usr/bin/env bash
# A go-live that cannot reach the end of the log must fail quickly and
# loudly, never hang (issue 9): the backup's QEMU on host B is stopped with
# SIGSTOP (a replay that no longer advances) and, before the stall bound
# runs out, the primary's QEMU on host A is killed. The backup starts to go
# live, but nobody reads FIFO B (its log, END included, stays unread; an
# idle guest's 0.5 s of log does not fill the 256 KiB pipe): within the stall bound
# (<ft:heartbeat stall-timeout-ms>, default 5 s) plus a few seconds its
# go-live must fail with the reason in libvirt-ftd's log, its QEMU must be
# destroyed (never run on from a state short of the log), and nothing may be
# left running on either host: the VM is lost, and says so, rather than
# waiting for ever.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
STALL_BOUND_MS=5000 # the default (xml.DefaultReplayStall); ftdemo.xml.in leaves it out
trap lab_stop EXIT
say "go-live on a stalled backup: SIGSTOP of the backup's QEMU, then kill -9 of the primary's"
fresh_protected_lab 8
bpid=$(qemu_pid b "$DOMAIN")
on b kill -STOP "$bpid"
# Let the primary's log go on into FIFO B, unread, but stay well inside the
# stall bound. (A full FIFO B while END is written is the unit scenario's:
# failover/testdata/replay_stall.txt.)
sleep 0.5
t0=$(date +%s%3N)
on a kill -9 "$(qemu_pid a "$DOMAIN")"
ftd_b="$LAB_DIR/b/ftd.log"
wait_for $(((STALL_BOUND_MS + 8000) / 1000)) "host B's libvirt-ftd to report the failed go-live" grep -q "go-live failed: the replay stayed at icount" "$ftd_b"
failed=$(($(date +%s%3N) - t0))
log "host B gave up going live $failed ms after the primary died (bound $STALL_BOUND_MS ms without progress):"
grep -m1 "go-live failed: the replay stayed at icount" "$ftd_b" | sed 's/^/     /' | cut -c1-400
[ $failed -le $((STALL_BOUND_MS + 5000)) ] || die "the go-live failed only after $failed ms"
# The stopped QEMU is destroyed (SIGKILL ends a stopped process too) and
# nothing runs on either host.
wait_for 20 "the stalled backup's QEMU to be gone on host B" sh -c "! kill -0 $bpid 2>/dev/null"
for h in a b; do
	wait_for 20 "$DOMAIN to run on neither host (host $h)" sh -c "! '$LAB' exec $h virsh -q -c qemu:///system list --name | grep -qx $DOMAIN"
done
log "the stalled backup was destroyed; $DOMAIN runs on neither host"
say "the go-live failed in $failed ms with its reason instead of hanging"
