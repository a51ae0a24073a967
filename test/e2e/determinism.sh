#!/usr/bin/env bash
# Determinism check (issue 9): record the test guest under TCP load into a
# file, replay the file, and require the replay to reach the log's end with
# the same icount and the same console output, byte for byte.
#
# QEMU runs on its own, with a protected domain's devices, in a network
# namespace of this script's own (test/e2e/qemualone.sh).
#
# The load: an echo client and a stream reader for LOAD_S seconds with a
# bulk receive and a bulk transmit burst meanwhile; the guest then powers
# itself off (ft.poweroff); QEMU runs with -no-shutdown, as under libvirt,
# and is ended by SIGTERM at that shutdown, as libvirt ends it, which ends
# the record log. Before the load the host presses the power button and
# resets the guest (QMP system_powerdown, system_reset: patches 0011, 0012),
# then the guest powers off and the host resets and continues it, as
# libvirt's reboot does (virsh reboot: patch 0013). Meanwhile the record
# run is paused PAUSES times for PAUSE_MS (QMP stop, cont). A replay that does
# not advance for STALL_S seconds is a failure, reported with its icount and
# the log's next event there (test/tools/rrdump). BULK_BYTES is the size of
# each of the two bulk transfers (guest to client, client to guest).
# A harder run, as patch 0017 was checked with (a larger BULK_BYTES may
# need a larger LOAD_S: the guest powers off at tick LOAD_S + 14):
#     LOAD_S=40 PAUSES=40 PAUSE_MS=100 BULK_BYTES=150000000 make e2e-determinism
# Usage:
#   EMULATOR=... [LOAD_S=20] [STALL_S=30] [PAUSES=20] [PAUSE_MS=200]
#   [BULK_BYTES=20000000] [FEED=file|trickle] [FEED_SEED=N] [KEEP=1]
#   test/e2e/determinism.sh
# FEED=trickle replays through a FIFO that test/tools/trickle feeds in
# random chunks with random pauses (seed FEED_SEED, logged), so the replay
# waits for its log as a backup does; FEED=file (the default)
# replays the file directly.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
LOAD_S=${LOAD_S:-20}
PAUSES=${PAUSES:-20}
PAUSE_MS=${PAUSE_MS:-200}
BULK_BYTES=${BULK_BYTES:-20000000}
POWEROFF_TICK=${POWEROFF_TICK:-$((LOAD_S + 14))}
source "$(dirname "$0")/qemualone.sh"
"$ROOT/test/guest/mkdisk.sh" "$work/record.qcow2" >/dev/null
cp "$work/record.qcow2" "$work/replay.qcow2"

say "record: the test guest under TCP load (${LOAD_S}s), then it powers off"
start_qemu record "shift=auto,rr=record,rrfile=$work/log.bin"
t0=$SECONDS
wait_for 60 "the guest's network" inns "$BIN/tcpcheck" rtt -addr $GUEST_IP:7002 -count 1
# The host's power button and reset (virsh shutdown, virsh reset): patch
# 0012 records them (the power button as the keyboard's Power key, which
# this guest ignores; the reset as a host reset event), so the replay must
# press the same key and reboot at the same point.
for c in system_powerdown system_reset; do
	r=$(qmp_lines record "{\"execute\":\"$c\"}")
	[ "$(grep -c '^{"return": {}}' <<<"$r")" = 2 ] || die "record: $c answered '$r'"
	sleep 1
done
# The reset is done when QEMU reports it (its RESET event), which can come
# a second or more after the command returned on a busy machine: until
# then the old guest still answers, and the network check below would pass
# on it (seen once, session 29).
wait_for 60 "the record run's RESET event for system_reset" grep -q '"reason": "host-qmp-system-reset"' "$work/events-record.log"
# boots_are N: the record run's console shows N boots ("ft-guest: up").
boots_are() { [ "$(tr -d '\r' <"$work/console-record.log" | grep -c '^ft-guest: up')" = "$1" ]; }
wait_for 60 "the second 'ft-guest: up' on the console after the reset" boots_are 2
wait_for 60 "the guest's network after the reset" inns "$BIN/tcpcheck" rtt -addr $GUEST_IP:7002 -count 1
# libvirt's reboot (virsh reboot, libvirt's "fake reboot"): the guest shuts
# down, QEMU pauses (-no-shutdown), the host resets it and continues it. The
# replay must not stop there (patch 0013) and must reboot where the log
# says.
echo poweroff | inns socat -t 5 - TCP:$GUEST_IP:7003 >/dev/null 2>&1 || true
wait_status record shutdown 60
for c in system_reset cont; do
	r=$(qmp_lines record "{\"execute\":\"$c\"}")
	[ "$(grep -c '^{"return": {}}' <<<"$r")" = 2 ] || die "record: $c after the guest's shutdown answered '$r'"
done
wait_for 60 "the guest's network after libvirt's reboot" inns "$BIN/tcpcheck" rtt -addr $GUEST_IP:7002 -count 1
wait_for 60 "the third 'ft-guest: up' on the console (the guest booted again after its shutdown, system_reset and cont)" boots_are 3
start_clients "$LOAD_S"
# Meanwhile the record run is paused and resumed PAUSES times (QMP stop,
# PAUSE_MS, cont), as libvirt-ftd pauses a primary for a planned restart or
# for a lagging backup: the replay, which never stops, must still reach
# the end (patch 0007: a paused primary logged its tx bottom half twice).
pause_record() {
	local i r
	for i in $(seq "$PAUSES"); do
		sleep 0.$((3 + RANDOM % 5))
		r=$(qmp_lines record '{"execute":"stop"}')
		[ "$(grep -c '^{"return": {}}' <<<"$r")" = 2 ] || { echo "pause $i: stop answered '$r'"; return 1; }
		sleep "$(awk -v ms="$PAUSE_MS" 'BEGIN { print ms / 1000 }')"
		r=$(qmp_lines record '{"execute":"cont"}')
		[ "$(grep -c '^{"return": {}}' <<<"$r")" = 2 ] || { echo "pause $i: cont answered '$r'"; return 1; }
	done
	echo "$PAUSES pauses of $PAUSE_MS ms"
}
pause_record >"$work/pauses.out" 2>&1 &
pp=$!
pids+=($pp)
inns "$BIN/tcpcheck" bulk -addr $GUEST_IP:7004 -mode rx -bytes "$BULK_BYTES" >"$work/rx.out" 2>&1 || die "bulk rx: $(tail -n 1 "$work/rx.out")"
inns "$BIN/tcpcheck" bulk -addr $GUEST_IP:7005 -mode tx -bytes "$BULK_BYTES" >"$work/tx.out" 2>&1 || die "bulk tx: $(tail -n 1 "$work/tx.out")"
wait $pp || die "pausing the record run: $(tail -n 1 "$work/pauses.out")"
wait $pe || die "echo: $(tail -n 1 "$work/echo.out")"
wait $ps || die "stream: $(tail -n 1 "$work/stream.out")"
for f in pauses echo stream rx tx; do log "$f: $(tail -n 1 "$work/$f.out")"; done
# The guest powers itself off at tick POWEROFF_TICK; QEMU pauses there
# (-no-shutdown) and is ended by SIGTERM, as libvirt ends it.
wait_status record shutdown 180
kill -TERM "$(cat "$work/qemu-record.pid")"
wait_exit 30 record
log "recorded in $((SECONDS - t0))s: $(stat -c %s "$work/log.bin") bytes of log"
summary=$("$BIN/rrdump" -header -summary "$work/log.bin" | tail -n 1)
total=$(sed -n 's/.*icount \([0-9]*\) at the end walked.*/\1/p' <<<"$summary")
log "log: $summary"
[ -n "$total" ] && [ "$total" -gt 0 ] || die "cannot read the record log's icount"
grep -q '^tick ' "$work/console-record.log" || die "the record run's console has no tick line"

say "replay: the same machine from the log${FEED:+ ($FEED)}"
rrfile=$work/log.bin
case ${FEED:-file} in file | trickle) ;; *) die "FEED=$FEED: use file or trickle" ;; esac
if [ "${FEED:-file}" = trickle ]; then
	[ -x "$BIN/trickle" ] || die "run make build first ($BIN/trickle)"
	seed=${FEED_SEED:-$RANDOM}
	# Through a FIFO fed in random chunks with random pauses (seeded), as
	# a backup's FIFO B is fed: the replay keeps catching up and waiting
	# for the next bytes, which a file never makes
	# it do.
	rrfile=$work/log.fifo
	rm -f "$rrfile"
	mkfifo "$rrfile"
	"$BIN/trickle" -seed "$seed" "$work/log.bin" "$rrfile" >"$work/trickle.out" 2>&1 &
	pids+=($!)
	log "feeding the log through a FIFO in random chunks and pauses: test/tools/trickle -seed $seed (FEED_SEED=$seed repeats them)"
fi
start_qemu replay "shift=auto,rr=replay,rrfile=$rrfile"
t1=$SECONDS
# Stop one instruction before the guest's final shutdown to read the icount
# there (replay-break), then let it replay the rest: the SHUTDOWN is
# replayed only at the icount the record run had. Under -no-shutdown the
# replay then runs the instructions the record ran until its main loop
# stopped the vCPU, and pauses at the log's HOST_SIGNAL (patch 0013).
# (awk reads all: an early exit would end rrdump with SIGPIPE.)
# The last guest shutdown ends the run; the first was libvirt's reboot.
end_ic=$("$BIN/rrdump" -header -find-all SHUTDOWN_GUEST_SHUTDOWN "$work/log.bin" | awk '$4 == "SHUTDOWN_GUEST_SHUTDOWN" { v = $3 } END { print v }')
shutdowns=$("$BIN/rrdump" -header -find-all SHUTDOWN_GUEST_SHUTDOWN "$work/log.bin" | awk '$4 == "SHUTDOWN_GUEST_SHUTDOWN" { n++ } END { print n + 0 }')
[ "$shutdowns" = 2 ] || die "the record log has $shutdowns guest shutdowns, not 2 (libvirt's reboot, then the end)"
reset_at=$("$BIN/rrdump" -header -find SHUTDOWN_HOST_QMP_SYSTEM_RESET "$work/log.bin" | awk '$4 == "SHUTDOWN_HOST_QMP_SYSTEM_RESET" && !n { print $3; n = 1 }')
[ -n "$reset_at" ] || die "the record log has no host reset event (packaging/qemu 0012)"
log "the host reset the guest at icount $reset_at (logged)"
[ -n "$end_ic" ] || die "no SHUTDOWN event in the record log"
log "the guest shut down at icount $end_ic"
brk=$((end_ic - 1))
replay_to_break replay "$brk"
log "replay paused at icount $ic after $((SECONDS - t1))s (the guest shut down at $end_ic)"
qmp replay '{"execute":"cont"}' >/dev/null
# The replay runs the instructions the record ran after the guest's
# shutdown, then the log's HOST_SIGNAL (the record QEMU's end) pauses it
# as a guest shutdown (patch 0013); it is then ended as libvirt would.
wait_status replay shutdown 120
# One SHUTDOWN event, the guest's (libvirt-ftd's in-step record needs
# libvirt's SHUTDOWN_GUEST on the backup), and none for the first shutdown
# (libvirt would have ended a backup that reported it).
ev=$(shutdown_events replay)
[ "$(grep -c . <<<"$ev")" = 1 ] && grep -q '"guest": true' <<<"$ev" ||
	die "the replay's SHUTDOWN events: '$ev' (want one, from the guest)"
log "the replay reported one SHUTDOWN, the guest's: $ev"
kill -TERM "$(cat "$work/qemu-replay.pid")"
wait_exit 30 replay replay
# The feed (informational: a truncated one could not have passed the
# checks above; the replay need not read the log's last bytes).
[ ! -s "$work/trickle.out" ] || log "$(tail -n 1 "$work/trickle.out")"
# The replay ran every instruction the record ran (patch 0013: it does not
# stop at the guest's shutdown), so the consoles must be equal byte for
# byte.
same_console record replay
say "determinism: pass: the replay reached icount $brk exactly and replayed the guest's shutdown at $end_ic, as recorded, and printed the same console ($(grep -c '^tick ' "$work/console-record.log") tick lines, $(stat -c %s "$work/console-record.log") bytes); record $((t1 - t0))s, replay $((SECONDS - t1))s"
