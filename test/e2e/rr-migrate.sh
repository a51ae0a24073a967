#!/usr/bin/env bash
# Determinism check of packaging/qemu 0019-0021 (issue 13, re-protection:
# a running VM gets a new backup without a reboot). QEMU runs on its own,
# with a protected domain's devices, in a network namespace of this
# script's own (test/e2e/qemualone.sh):
#   1. QEMU "live" is a backup that went live: it replays the log of a
#      recorded boot ("record", ended after the guest's network is up)
#      and, at that log's END, runs on as a normal VM (patch 0001), as after
#      a failover. FROM=icount instead starts it with icount and no log (a
#      VM started unprotected, with ioeventfd=off on its virtio devices).
#      FROM=plain starts the guest as libvirt starts a VM without the ft
#      element (no icount, ioeventfds on, no replay filters or gate) and
#      migrates it into "live", a QEMU armed as a re-protection's backup
#      whose log is only END, so that it goes live at once with icount
#      (packaging/qemu 0022): its ticks and its clock must go on.
#      An echo and a stream client are connected to it.
#   2. SWITCH=live (the default; 0021): QEMU "backup" waits, started with
#      -icount rr=replay,rrincoming=on, -incoming defer and -S, its disk
#      exported over NBD. libvirt-ftd's code (plugin/reprotect, through
#      test/tools/reprotect) mirrors the live VM's disk to it, arms the
#      record start, and migrates the VM live; stopped before the
#      switchover, the mirror ends, then QEMU saves the device state and
#      records from there at once; cont.
#      SWITCH=stop (0019): the VM is stopped, quiesced (x-ft-quiesce),
#      migrated into a file, its disk copied, and x-ft-record-start starts
#      the new log; cont.
#   3. The clients go on; bulk transfers both ways; the guest powers off at
#      tick POWEROFF_TICK; SIGTERM ends the log, as libvirt ends QEMU.
#   4. The backup (SWITCH=stop: started now from the file) replays the new
#      log to the guest's shutdown at exactly the recorded icount and must
#      print what "live" printed after the switch, byte for byte.
# Also the refusals of x-ft-record-start and x-ft-record-at-switchover: on a
# running VM, on a recording one, on a replaying one, into an existing
# file, armed twice. DBGCMP=1 compares the two guests' memory, registers
# and disks at the switchover (SWITCH=live); DBGSAVE=1 keeps the migration
# stream and the backup's disk as loaded, for a replay later.
#   EMULATOR=... [FROM=golive|icount|plain] [SWITCH=live|stop] [LOAD_S=15] [STALL_S=30] [BULK_BYTES=20000000] [KEEP=1] test/e2e/rr-migrate.sh
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
# wait_live SECS: QEMU "live" leaves replay mode (it read END) within SECS.
wait_live() {
	local end=$((SECONDS + $1))
	until [ "$(qmp live '{"execute":"query-replay"}' | jq -r '.return.mode // empty' 2>/dev/null)" = none ]; do
		[ $SECONDS -lt $end ] || die "live: still replaying after $1s (END not read)"
		sleep 0.2
	done
	log "live at icount $(icount_of live) (replay mode none)"
}
# The two commands of patch 0019, each refused unless the VM is paused and
# runs without a log.
# record_start FILE: the QMP command that starts a new log into FILE.
record_start() { printf '{"execute":"x-ft-record-start","arguments":{"file":"%s"}}' "$1"; }
# record_at FILE: patch 0020's, armed for the next migration's switchover.
record_at() { printf '{"execute":"x-ft-record-at-switchover","arguments":{"file":"%s"}}' "$1"; }
SWITCH=${SWITCH:-live}
SWITCH_CMDS=('{"execute":"x-ft-quiesce"}' "$(record_start "$work/refused.bin")")
if [ "$FROM" = golive ]; then
	say "record: the test guest boots; the log its first backup replays"
	cp "$work/live.qcow2" "$work/record.qcow2"
	start_qemu record "shift=auto,rr=record,rrfile=$work/first.bin"
	wait_for 60 "the guest's network" inns "$BIN/tcpcheck" rtt -addr $GUEST_IP:7002 -count 1
	# A VM that records already cannot start another log: no backup could
	# hold its state (patch 0014 refuses its migration).
	qmp_ok record '{"execute":"stop"}'
	for c in "${SWITCH_CMDS[@]}" "$(record_at "$work/refused.bin")"; do
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
	wait_live 60
elif [ "$FROM" = plain ]; then
	live_ticks() { [ "$(grep -c '^tick [0-9]* up [0-9.]*$' "$work/console-live.log" 2>/dev/null)" -ge "$1" ]; }
	say "plain: the test guest started as libvirt starts a VM without the ft element (no icount)"
	# The plain VM's tap and the one of the QEMU it migrates into share a
	# bridge with the namespace's address, as two libvirt guests' taps do.
	inns ip tuntap add dev ftdt2 mode tap vnet_hdr
	inns ip link add ftbr0 type bridge
	inns ip addr del $HOST_A_IP/24 dev ftdt0
	inns ip addr add $HOST_A_IP/24 dev ftbr0
	for t in ftdt0 ftdt2; do inns ip link set $t master ftbr0; inns ip link set $t up; done
	inns ip link set ftbr0 up
	# Shared storage (one image, two names): QEMU hands the image over at
	# the migration's end.
	ln -s live.qcow2 "$work/plain.qcow2"
	start_qemu plain plain
	wait_for 60 "the guest's network" inns "$BIN/tcpcheck" rtt -addr $GUEST_IP:7002 -count 1
	# Long enough for the virtual clock a QEMU without 0022 restarts to
	# be far behind.
	wait_for 60 "the plain guest's tick 8" grep -q '^tick 8 ' "$work/console-plain.log"
	# As libvirt-ftd protects it (virt-ft protect): the state goes into a
	# QEMU armed as a re-protection's backup (rr=replay,rrincoming=on), and
	# the log that QEMU replays is a header and END: it loads the state,
	# reads END when it first runs and goes on live (0001), with icount,
	# at the plain VM's clock and TSC (packaging/qemu 0022).
	say "live: the plain VM migrated into a replaying QEMU whose log is only END (packaging/qemu 0022)"
	printf '\000\340\040\014\000\000\000\000\000\000\000\000\047' >"$work/convert.bin"
	QEMU_TAP=ftdt2 start_qemu live "shift=auto,rr=replay,rrfile=$work/convert.bin,rrincoming=on" -incoming defer
	qmp_ok live "{\"execute\":\"migrate-incoming\",\"arguments\":{\"uri\":\"unix:$work/plain-mig.sock\"}}"
	qmp_ok plain "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"unix:$work/plain-mig.sock\"}}"
	wait_status plain postmigrate 60
	wait_status live running 30
	kill -TERM "$(cat "$work/qemu-plain.pid")"
	wait_exit 30 plain
	wait_live 30
	# The guest goes on: its tick lines continue on the new QEMU's console
	# with no tick lost, and its clock goes on steadily: each tick is one
	# "sleep 1" of the guest's and a little more, so consecutive ticks are
	# steps of a second or so in its uptime, also across the migration
	# (the guest's clock stops while the VM is stopped). Without 0022 the
	# virtual clock restarted near 0 and the TSC jumped back: ticks
	# stalled for seconds (4 s in the lab) or for minutes.
	wait_for 60 "10 ticks of the migrated guest" live_ticks 10
	ticks=$( (grep -a '^tick [0-9]* up [0-9.]*$' "$work/console-plain.log" | tail -n 1
		grep -a '^tick [0-9]* up [0-9.]*$' "$work/console-live.log" | head -n 10) | tr '\n' ' ')
	log "the plain VM's last tick, then the migrated guest's first ten: $ticks"
	# Each step is at least 0.9 s of uptime per tick, and at most 2.5
	# times the median step: a loaded host stretches every step alike
	# (each includes the guest's fork and exec of sleep, at icount's
	# pace), a clock that jumped stretches one (4.1 and 4.4 s among
	# steps of 1.0-1.4 s without 0022). A tick line the migration cut in
	# two is in neither list whole: the first step may then be two ticks.
	awk '{ m = 0
		for (i = 1; i + 3 <= NF; i += 4) {
			n[++m] = $(i + 1); u[m] = $(i + 3)
		}
		for (j = 2; j <= m; j++) { k[j] = n[j] - n[j - 1]; step[j - 1] = (u[j] - u[j - 1]) / (k[j] > 0 ? k[j] : 1) }
		c = m - 1
		for (a = 1; a <= c; a++) for (b = a + 1; b <= c; b++) if (step[b] < step[a]) { t = step[a]; step[a] = step[b]; step[b] = t }
		med = step[int((c + 1) / 2)]
		for (j = 2; j <= m; j++) {
			d = u[j] - u[j - 1]
			if (!((k[j] == 1 || (k[j] == 2 && j == 2)) && d >= 0.9 * k[j] && d <= 2.5 * med * k[j]))
				{ printf "tick %d at %s after tick %d at %s (median step %.2f s)\n", n[j], u[j], n[j - 1], u[j - 1], med; bad = 1 }
		}
		exit bad }' <<<"$ticks" >"$work/ticks.bad" || die "the migrated guest's ticks did not go on a second apart: $(cat "$work/ticks.bad")"
else
	say "live: the test guest with icount and no record log"
	start_qemu live "shift=auto" -global virtio-net-pci.ioeventfd=off -global virtio-blk-pci.ioeventfd=off
fi
t0=$SECONDS
wait_for 60 "the guest's network" inns "$BIN/tcpcheck" rtt -addr $GUEST_IP:7002 -count 1
if [ "$SWITCH" = live ]; then
	# failed_migration URI FILE: an armed migration to URI must fail, and
	# the VM run on without a log and no longer armed.
	failed_migration() {
		qmp_ok live "$(record_at "$2")"
		qmp_ok live "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"$1\"}}"
		local end=$((SECONDS + 60)) r mode st
		until [ "$(qmp live '{"execute":"query-migrate"}' | jq -r '.return.status // empty')" = failed ] &&
			[ "$(qmp live '{"execute":"query-status"}' | jq -r '.return.status // empty')" = running ]; do
			[ $SECONDS -lt $end ] || die "live: the migration to $1 not failed, or the VM not running, after 60s"
			sleep 0.2
		done
		# One disarm, which must find nothing armed: QEMU disarmed it.
		r=$(qmp live '{"execute":"x-ft-record-disarm"}')
		grep -q 'not armed' <<<"$r" || die "live: still armed after a failed migration to $1 ('$r')"
		mode=$(qmp live '{"execute":"query-replay"}' | jq -r '.return.mode // empty')
		[ "$mode" = none ] || die "live: replay mode '$mode' after a failed migration to $1, not none"
		log "a migration to $1 failed: the VM runs on, without a log, disarmed"
	}
	say "live: armed migrations that fail leave the VM as it was"
	# At its connection (0021 disarms in migrate_fd_cleanup).
	failed_migration "unix:$work/nobody.sock" "$work/failed1.bin"
	# After the switchover: the "destination" takes the whole stream but
	# never answers on the return path; it ends once nothing has come for
	# 5 s (socat -T), after the stream is written and the VM switched.
	# QEMU then ends the new log and runs the VM on.
	qmp_ok live '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"return-path","state":true}]}}'
	failed_migration "exec:exec socat -u -T 5 STDIN GOPEN:/dev/null" "$work/failed2.bin"
	qmp_ok live '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"return-path","state":false}]}}'
	grep -q 'failed after the record start' "$work/qemu-live.out" || die "live: QEMU did not report the failure after the switchover"
	wait_for 60 "the guest's network" inns "$BIN/tcpcheck" rtt -addr $GUEST_IP:7002 -count 1
fi
start_clients "$LOAD_S"
sleep 2
for c in "${SWITCH_CMDS[@]}"; do
	r=$(qmp live "$c")
	grep -q 'stop it first' <<<"$r" || die "live: $c on a running VM answered '$r', not a refusal"
done
log "refused while running: $(jq -r '.error.desc' <<<"$r")"

if [ "$SWITCH" = live ]; then
	say "backup: a QEMU waiting for the live VM's state, its disk exported over NBD"
	qemu-img create -q -f qcow2 "$work/backup.qcow2" "$(qemu-img info -U --output=json "$work/live.qcow2" | jq -r '."virtual-size"')"
	# The log the backup replays: a header now (QEMU reads it at start),
	# the recorded events once the recording has ended.
	printf '\000\340\040\014\000\000\000\000\000\000\000\000' >"$work/replay.bin"
	inns ip tuntap add dev ftdt1 mode tap vnet_hdr
	inns ip link set ftdt1 up
	QEMU_TAP=ftdt1 start_qemu backup "shift=auto,rr=replay,rrfile=$work/replay.bin,rrincoming=on" -incoming defer -S
	r=$(qmp backup '{"execute":"replay-break","arguments":{"icount":1}}')
	grep -q 'not loaded yet' <<<"$r" || die "backup: replay-break before its state loaded answered '$r', not a refusal"
	"$BIN/reprotect" dest-prepare -qmp "$work/qmp-backup.sock" -migrate "unix:$work/mig.sock" -nbd "$work/nbd.sock" -export disk-format ||
		die "backup: reprotect dest-prepare failed"

	say "live: its disk mirrored to the backup's, then migrated live; it records from the switchover on"
	r=$(qmp live "$(record_at "$work/live.qcow2")")
	grep -q 'is not a FIFO' <<<"$r" || die "live: x-ft-record-at-switchover into the VM's own disk answered '$r', not a refusal"
	qmp_ok live "$(record_at "$work/disarmed.bin")"
	r=$(qmp live "$(record_at "$work/log.bin")")
	grep -q 'armed already' <<<"$r" || die "live: a second x-ft-record-at-switchover answered '$r', not a refusal"
	qmp_ok live '{"execute":"x-ft-record-disarm"}'
	[ ! -s "$work/disarmed.bin" ] || die "live: the disarmed log was written"
	# libvirt-ftd's code (plugin/reprotect): the disk mirrored to the
	# backup's export, the record start armed, a live migration stopped
	# before its switchover to end the mirror, then the switch; with
	# DBGCMP=1 the VM stays paused for the comparison below.
	cont_flag=-cont
	[ "${DBGCMP:-0}" != 1 ] || cont_flag=
	if [ "${DBGSAVE:-0}" = 1 ]; then
		# The stream also into a file, for a replay of the backup later.
		miguri="exec:tee $work/state.bin | socat - UNIX-CONNECT:$work/mig.sock"
	else
		miguri="unix:$work/mig.sock"
	fi
	out=$("$BIN/reprotect" source -qmp "$work/qmp-live.sock" -log "$work/log.bin" -migrate "$miguri" \
		-nbd "$work/nbd.sock" -disk ft-rr0=disk-format -console "$work/console-live.log" $cont_flag) ||
		die "live: reprotect source failed"
	log "reprotect source: $out"
	base=$(jq -r .icount <<<"$out")
	off=$(jq -r .console_bytes <<<"$out")
	if [ "${DBGCMP:-0}" = 1 ]; then
		cp "$work/live.qcow2" "$work/live-at-switch.qcow2"
		qmp_ok live "{\"execute\":\"pmemsave\",\"arguments\":{\"val\":0,\"size\":268435456,\"filename\":\"$work/mem-live.bin\"}}"
		qmp live '{"execute":"human-monitor-command","arguments":{"command-line":"info registers"}}' >"$work/regs-live.txt"
		qmp_ok live '{"execute":"cont"}'
	fi
	"$BIN/reprotect" dest-finish -qmp "$work/qmp-backup.sock" -export disk-format ||
		die "backup: reprotect dest-finish failed"
	[ -n "$base" ] && [ "$base" -gt 0 ] || die "live: no icount where the new log starts"
	if [ "${DBGCMP:-0}" = 1 ]; then
		qmp_ok backup "{\"execute\":\"pmemsave\",\"arguments\":{\"val\":0,\"size\":268435456,\"filename\":\"$work/mem-backup.bin\"}}"
		qmp backup '{"execute":"human-monitor-command","arguments":{"command-line":"info registers"}}' >"$work/regs-backup.txt"
		cmp "$work/mem-live.bin" "$work/mem-backup.bin" && log "DBG: memory same" || log "DBG: memory differs: $(cmp -l "$work/mem-live.bin" "$work/mem-backup.bin" | wc -l) bytes"
		cmp "$work/regs-live.txt" "$work/regs-backup.txt" && log "DBG: registers same" || log "DBG: registers differ"
		qemu-img compare -U "$work/live-at-switch.qcow2" "$work/backup.qcow2" && log "DBG: disks same" || log "DBG: disks differ"
	fi
	[ "${DBGSAVE:-0}" != 1 ] || cp "$work/backup.qcow2" "$work/backup-at-switch.qcow2"
	pause_what="a live migration ($(jq -r .memory_bytes <<<"$out") bytes of memory, $(jq -r .disk_bytes <<<"$out") of disk) that stopped it only at its switchover, the disk mirror's end, record start"
else
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
	pause_what="quiesce, $(stat -c %s "$work/state.bin") bytes of state into a file, a disk copy, record start"
fi
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
log "stopped at icount $base for $pause_ms ms ($pause_what), console at byte $off; recording since"
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

if [ "$SWITCH" = live ]; then
	say "backup: loaded the live VM's state at its switchover; now the new log"
	tail -c +13 "$work/log.bin" >>"$work/replay.bin"
	t2=$SECONDS
else
	say "backup: the migrated state, then the new log"
	start_qemu backup "shift=auto,rr=replay,rrfile=$work/log.bin,rrincoming=on" -incoming defer
	t2=$SECONDS
	r=$(qmp backup '{"execute":"replay-break","arguments":{"icount":1}}')
	grep -q 'not loaded yet' <<<"$r" || die "backup: replay-break before its state loaded answered '$r', not a refusal"
	qmp_ok backup "{\"execute\":\"migrate-incoming\",\"arguments\":{\"uri\":\"exec:cat $work/state.bin\"}}"
	# The state was saved from a stopped VM: the backup stays paused once
	# it has loaded it, until cont (libvirt-ftd's, once the live VM records).
	wait_status backup paused 60
fi
for c in "$(record_start "$work/refused.bin")" "$(record_at "$work/refused.bin")"; do
	r=$(qmp backup "$c")
	grep -q 'replays a log' <<<"$r" || die "backup: $c on a replaying VM answered '$r', not a refusal"
done
REPLAY_CONT=1 replay_to_break backup $((end_ic - 1))
log "replay paused at icount $ic after $((SECONDS - t2))s (the guest shut down at $end_ic)"
qmp backup '{"execute":"cont"}' >/dev/null
wait_status backup shutdown 120
kill -TERM "$(cat "$work/qemu-backup.pid")"
wait_exit 30 backup replay
same_console live backup "$off"
say "rr-migrate: pass: the backup loaded the live VM's migrated state at icount $base, replayed its new log to the guest's shutdown at $end_ic exactly and printed the same console after the switch ($(tail -c +$((off + 1)) "$work/console-live.log" | grep -c '^tick ') tick lines); the live VM paused $pause_ms ms, recorded $((t2 - t1))s, replayed in $((SECONDS - t2))s"
