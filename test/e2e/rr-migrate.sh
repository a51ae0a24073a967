#!/usr/bin/env bash
# Determinism check of packaging/qemu 0019 (issue 13, re-protection: a
# running VM gets a new backup without a reboot). QEMU runs on its own,
# with a protected domain's devices, in a network namespace of this
# script's own (test/e2e/qemualone.sh):
#   1. QEMU "live" is a backup that went live: it replays the log of a
#      recorded boot ("record", ended after the guest's network is up)
#      and, at that log's END, runs on as a normal VM (patch 0001), as after
#      a failover. FROM=icount instead starts it with icount and no log (a
#      VM started unprotected, with ioeventfd=off on its virtio devices).
#      An echo and a stream client are connected to it.
#   2. It is stopped, quiesced (x-ft-quiesce: frames in flight between its
#      NIC and netdev), and its state goes out by an ordinary migration
#      (exec: into a file here; to the new backup's QEMU in the product).
#      Its disk is copied (the new backup's copy).
#   3. QMP x-ft-record-start starts a new record log there; cont. The
#      clients go on; bulk transfers both ways; the guest powers off at
#      tick POWEROFF_TICK; SIGTERM ends the log, as libvirt ends QEMU.
#   4. QEMU "backup" starts with -icount rr=replay,rrincoming=on and
#      -incoming from that state, on the copied disk. It must replay the
#      new log to the guest's shutdown at exactly the recorded icount and
#      print what "live" printed after the switch, byte for byte.
# Also: x-ft-record-start is refused on a running VM and on a replaying one.
#   EMULATOR=... [FROM=golive|icount] [LOAD_S=15] [STALL_S=30] [BULK_BYTES=20000000] [KEEP=1] test/e2e/rr-migrate.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
LOAD_S=${LOAD_S:-15}
BULK_BYTES=${BULK_BYTES:-20000000}
# Guest ticks (about a second each) from its boot: the boot, the clients'
# LOAD_S and the bulk transfers fit before it.
POWEROFF_TICK=${POWEROFF_TICK:-$((LOAD_S + 30))}
QEMU_ALONE_NAME=rr-migrate
source "$(dirname "$0")/qemualone.sh"
"$ROOT/test/guest/mkdisk.sh" "$work/live.qcow2" >/dev/null

FROM=${FROM:-golive}
# The two commands of patch 0019, each refused unless the VM is paused and
# runs without a log.
# record_start FILE: the QMP command that starts a new log into FILE.
record_start() { printf '{"execute":"x-ft-record-start","arguments":{"file":"%s"}}' "$1"; }
SWITCH_CMDS=('{"execute":"x-ft-quiesce"}' "$(record_start "$work/refused.bin")")
if [ "$FROM" = golive ]; then
	say "record: the test guest boots; the log its first backup replays"
	cp "$work/live.qcow2" "$work/record.qcow2"
	start_qemu record "shift=auto,rr=record,rrfile=$work/first.bin"
	wait_for 60 "the guest's network" inns "$BIN/tcpcheck" rtt -addr $GUEST_IP:7002 -count 1
	# A VM that records already cannot start another log: no backup could
	# hold its state (patch 0014 refuses its migration).
	qmp_ok record '{"execute":"stop"}'
	for c in "${SWITCH_CMDS[@]}"; do
		r=$(qmp record "$c")
		grep -q 'records a log already' <<<"$r" || die "record: $c on a recording VM answered '$r', not a refusal"
	done
	qmp_ok record '{"execute":"cont"}'
	kill -TERM "$(cat "$work/qemu-record.pid")"
	wait_exit 30 record
	# The log up to QEMU's own end (SHUTDOWN_HOST_SIGNAL, then END), cut
	# before it, then a lone END: a backup fed this goes live there, as
	# libvirt-ftd's feeder ends a log at a failover (docs/replay.md §5).
	cut=$("$BIN/rrdump" -header -find SHUTDOWN_HOST_SIGNAL "$work/first.bin" | awk '$4 == "SHUTDOWN_HOST_SIGNAL" && !n { print $1; n = 1 }')
	[ -n "$cut" ] || die "record: no SHUTDOWN_HOST_SIGNAL in the first log"
	truncate -s $((12 + cut)) "$work/first.bin"
	printf '\047' >>"$work/first.bin"
	say "live: the backup of that boot, gone live at its log's end"
	start_qemu live "shift=auto,rr=replay,rrfile=$work/first.bin"
	end=$((SECONDS + 60))
	until [ "$(qmp live '{"execute":"query-replay"}' | jq -r '.return.mode // empty' 2>/dev/null)" = none ]; do
		[ $SECONDS -lt $end ] || die "live: still replaying after 60s"
		sleep 0.2
	done
	log "live at icount $(icount_of live) (replay mode none)"
else
	say "live: the test guest with icount and no record log"
	start_qemu live "shift=auto" -global virtio-net-pci.ioeventfd=off -global virtio-blk-pci.ioeventfd=off
fi
t0=$SECONDS
wait_for 60 "the guest's network" inns "$BIN/tcpcheck" rtt -addr $GUEST_IP:7002 -count 1
start_clients "$LOAD_S"
sleep 2
for c in "${SWITCH_CMDS[@]}"; do
	r=$(qmp live "$c")
	grep -q 'stop it first' <<<"$r" || die "live: $c on a running VM answered '$r', not a refusal"
done
log "refused while running: $(jq -r '.error.desc' <<<"$r")"

say "live: stopped, quiesced, migrated out (its state for the new backup), then recording from there"
qmp_ok live '{"execute":"stop"}'
qmp_ok live '{"execute":"x-ft-quiesce"}'
qmp_ok live "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"exec:cat > $work/state.bin\"}}"
end=$((SECONDS + 60))
while :; do
	st=$(qmp live '{"execute":"query-migrate"}' | jq -r '.return.status // empty' 2>/dev/null || true)
	[ "$st" = completed ] && break
	[ "$st" != failed ] || die "live: the migration failed: $(qmp live '{"execute":"query-migrate"}')"
	[ $SECONDS -lt $end ] || die "live: migration status '$st' after 60s"
	sleep 0.2
done
wait_status live postmigrate 10
off=$(stat -c %s "$work/console-live.log")
cp "$work/live.qcow2" "$work/backup.qcow2"
base=$(icount_of live)
[ -n "$base" ] && [ "$base" -gt 0 ] || die "live: no icount from query-replay"
# An existing file is refused and left alone (a mistyped path must not
# truncate a disk image: here the VM's own).
sz=$(stat -c %s "$work/live.qcow2")
r=$(qmp live "$(record_start "$work/live.qcow2")")
grep -q 'is not a FIFO' <<<"$r" || die "live: x-ft-record-start into the VM's own disk answered '$r', not a refusal"
[ "$(stat -c %s "$work/live.qcow2")" = "$sz" ] || die "live: x-ft-record-start changed the size of the file it refused"
# A FIFO nobody reads is refused at once (the main loop must not block).
mkfifo "$work/unread.fifo"
r=$(qmp live "$(record_start "$work/unread.fifo")")
grep -q 'nobody reads' <<<"$r" || die "live: x-ft-record-start into an unread FIFO answered '$r', not a refusal"
qmp_ok live "$(record_start "$work/log.bin")"
mode=$(qmp live '{"execute":"query-replay"}' | jq -r '.return.mode // empty')
[ "$mode" = record ] || die "live: replay mode '$mode' after x-ft-record-start, not record"
qmp_ok live '{"execute":"cont"}'
# Recording now: it may no longer be migrated (patch 0014).
r=$(qmp live "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"exec:cat > /dev/null\"}}")
grep -q 'this VM is protected' <<<"$r" || die "live: migrate while recording answered '$r', not a refusal"
# The pause, from QEMU's own STOP and RESUME events (this script drives
# the steps through socat, one connection per command).
sleep 0.5
pause_ms=$(jq -rs '[.[] | select(.event == "STOP" or .event == "RESUME") | {e: .event, t: (.timestamp.seconds * 1000 + .timestamp.microseconds / 1000)}] as $ev
	| ($ev | map(select(.e == "RESUME")) | last | .t) - ($ev | map(select(.e == "STOP")) | last | .t) | floor' "$work/events-live.log" 2>/dev/null || true)
t1=$SECONDS
pause_ms=${pause_ms:-?}
log "stopped at icount $base for $pause_ms ms (quiesce, $(stat -c %s "$work/state.bin") bytes of state into a file, a disk copy, record start), console at byte $off; recording since"
inns "$BIN/tcpcheck" bulk -addr $GUEST_IP:7004 -mode rx -bytes "$BULK_BYTES" >"$work/rx.out" 2>&1 || die "bulk rx: $(tail -n 1 "$work/rx.out")"
inns "$BIN/tcpcheck" bulk -addr $GUEST_IP:7005 -mode tx -bytes "$BULK_BYTES" >"$work/tx.out" 2>&1 || die "bulk tx: $(tail -n 1 "$work/tx.out")"
wait $pe || die "echo: $(tail -n 1 "$work/echo.out")"
wait $ps || die "stream: $(tail -n 1 "$work/stream.out")"
for f in echo stream rx tx; do log "$f: $(tail -n 1 "$work/$f.out")"; done
wait_status live shutdown 180
kill -TERM "$(cat "$work/qemu-live.pid")"
wait_exit 30 live
log "recorded in $((SECONDS - t1))s: $(stat -c %s "$work/log.bin") bytes of log"
RRDUMP_ARGS="-base-icount $base"
summary=$("$BIN/rrdump" -header $RRDUMP_ARGS -summary "$work/log.bin" | tail -n 1)
total=$(sed -n 's/.*icount \([0-9]*\) at the end walked.*/\1/p' <<<"$summary")
log "log: $summary"
end_ic=$("$BIN/rrdump" -header $RRDUMP_ARGS -find-all SHUTDOWN_GUEST_SHUTDOWN "$work/log.bin" | awk '$4 == "SHUTDOWN_GUEST_SHUTDOWN" { v = $3 } END { print v }')
[ -n "$end_ic" ] || die "no guest SHUTDOWN event in the new log"
log "the guest shut down at icount $end_ic"

say "backup: the migrated state, then the new log"
start_qemu backup "shift=auto,rr=replay,rrfile=$work/log.bin,rrincoming=on" -incoming defer
t2=$SECONDS
r=$(qmp backup "$(record_start "$work/refused.bin")")
grep -q 'replays a log' <<<"$r" || die "backup: x-ft-record-start on a replaying VM answered '$r', not a refusal"
r=$(qmp backup '{"execute":"replay-break","arguments":{"icount":1}}')
grep -q 'not loaded yet' <<<"$r" || die "backup: replay-break before its state loaded answered '$r', not a refusal"
qmp_ok backup "{\"execute\":\"migrate-incoming\",\"arguments\":{\"uri\":\"exec:cat $work/state.bin\"}}"
# The state was saved from a stopped VM: the backup stays paused once it
# has loaded it, until cont (libvirt-ftd's, once the live VM records).
wait_status backup paused 60
REPLAY_CONT=1 replay_to_break backup $((end_ic - 1))
log "replay paused at icount $ic after $((SECONDS - t2))s (the guest shut down at $end_ic)"
qmp backup '{"execute":"cont"}' >/dev/null
wait_status backup shutdown 120
kill -TERM "$(cat "$work/qemu-backup.pid")"
wait_exit 30 backup replay
same_console live backup "$off"
say "rr-migrate: pass: the backup loaded the live VM's migrated state at icount $base, replayed its new log to the guest's shutdown at $end_ic exactly and printed the same console after the switch ($(tail -c +$((off + 1)) "$work/console-live.log" | grep -c '^tick ') tick lines); the live VM paused $pause_ms ms, recorded $((t2 - t1))s, replayed in $((SECONDS - t2))s"
