#!/usr/bin/env bash
# Determinism check (issue 9): record the test guest under TCP load into a
# file, replay the file, and require the replay to reach the log's end with
# the same icount and the same console output, byte for byte.
#
# QEMU runs on its own (no libvirt, no libvirt-ftd) with the devices
# libvirt-ftd gives a protected domain on the lab's libvirt 9.0: machine
# pc-i440fx-7.2, qemu64, one vCPU, a virtio-blk disk under blkreplay, a
# virtio-net NIC on a tap with filter-replay and an output-gate
# filter-redirector whose two sockets are joined by test/tools/gaterelay
# (every frame the guest sends comes back at once, as through an output gate
# that never holds),
# and the serial console in a file. The tap, the TCP clients and QEMU run in
# a network namespace of this script's own; nothing leaves it.
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
#   [BULK_BYTES=20000000] [KEEP=1]
#   test/e2e/determinism.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
QEMU=${EMULATOR:-/usr/bin/qemu-system-x86_64}
LOAD_S=${LOAD_S:-20}
STALL_S=${STALL_S:-30}
PAUSES=${PAUSES:-20}
PAUSE_MS=${PAUSE_MS:-200}
BULK_BYTES=${BULK_BYTES:-20000000}
POWEROFF_TICK=${POWEROFF_TICK:-$((LOAD_S + 14))}
[ -x "$QEMU" ] || die "no QEMU at $QEMU (make qemu-ft)"
for b in tcpcheck rrdump gaterelay; do [ -x "$BIN/$b" ] || die "run make build first ($BIN/$b)"; done
command -v socat >/dev/null || die "socat is missing (make setup)"
command -v jq >/dev/null || die "jq is missing (make setup)"

ns=ftdet$$
work=$(mktemp -d /var/tmp/ft-determinism.XXXXXX)
pids=()
cleanup() {
	local rc=$? p
	# QEMU by its own pid file: `ip netns exec` forks, so the pid of the
	# background job is that of ip, not QEMU's.
	for p in "$work"/qemu-*.pid; do [ -s "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null || true; done
	for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	ip netns del "$ns" 2>/dev/null || true
	if [ $rc -ne 0 ] || [ "${KEEP:-0}" = 1 ]; then
		echo "determinism: logs and consoles kept in $work"
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT
inns() { ip netns exec "$ns" "$@"; }

ip netns add "$ns"
inns ip link set lo up
inns ip tuntap add dev ftdt0 mode tap vnet_hdr
inns ip addr add $HOST_A_IP/24 dev ftdt0
inns ip link set ftdt0 up
"$ROOT/test/guest/mkdisk.sh" "$work/record.qcow2" >/dev/null
cp "$work/record.qcow2" "$work/replay.qcow2"

# qemu_args MODE: the command line of the record (MODE record) or replay
# (MODE replay) run; both must describe the same machine.
qemu_args() {
	local mode=$1
	printf '%s\n' -name guest=ftdet -machine pc-i440fx-7.2,usb=off,dump-guest-core=off -accel tcg -cpu qemu64 \
		-m 256 -smp 1 -uuid 8a0c6a3e-5a34-4a4e-9d1c-6f7e3c2d1b00 -display none -no-user-config -nodefaults \
		-rtc base=utc -boot strict=on -no-shutdown \
		-kernel "$GUEST/vmlinuz" -initrd "$GUEST/initrd.img" \
		-append "console=ttyS0 quiet loglevel=1 panic=-1 ft.poweroff=$POWEROFF_TICK" \
		-blockdev "{\"driver\":\"file\",\"filename\":\"$work/$mode.qcow2\",\"node-name\":\"disk-storage\"}" \
		-blockdev '{"node-name":"disk-format","driver":"qcow2","file":"disk-storage"}' \
		-blockdev '{"driver":"blkreplay","node-name":"ft-rr0","image":"disk-format"}' \
		-device '{"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x3","id":"disk0","drive":"ft-rr0"}' \
		-netdev '{"type":"tap","id":"net0","ifname":"ftdt0","script":"no","downscript":"no"}' \
		-device '{"driver":"virtio-net-pci","netdev":"net0","id":"nic0","mac":"52:54:00:fa:00:01","bus":"pci.0","addr":"0x2"}' \
		-chardev "file,id=serial0,path=$work/console-$mode.log" \
		-device '{"driver":"isa-serial","chardev":"serial0","id":"serial0","index":0}' \
		-icount "shift=auto,rr=$mode,rrfile=$work/log.bin" \
		-object filter-replay,id=ft-fr0,netdev=net0 \
		-chardev "socket,id=ft-gout0,path=$work/gate-out.sock" \
		-chardev "socket,id=ft-gin0,path=$work/gate-in.sock" \
		-object filter-redirector,id=ft-gate0,netdev=net0,queue=rx,outdev=ft-gout0,indev=ft-gin0 \
		-qmp "unix:$work/qmp-$mode.sock,server=on,wait=off" -pidfile "$work/qemu-$mode.pid" \
		-chardev "socket,id=ftev0,path=$work/events-$mode.sock,server=on,wait=off" -mon chardev=ftev0,mode=control
}

# start_qemu MODE: gaterelay joins the gate's sockets, then QEMU starts in
# MODE.
start_qemu() {
	[ -z "${evfd:-}" ] || exec {evfd}>&-
	local mode=$1 args
	rm -f "$work"/gate-*.sock
	"$BIN/gaterelay" "$work/gate-out.sock" "$work/gate-in.sock" &
	pids+=($!)
	local i=0
	until [ -S "$work/gate-in.sock" ] || [ $i -ge 50 ]; do sleep 0.1; i=$((i + 1)); done
	mapfile -t args < <(qemu_args "$mode")
	inns "$QEMU" "${args[@]}" >"$work/qemu-$mode.out" 2>&1 &
	qemu_pid=$!
	pids+=($qemu_pid)
	# A second monitor that stays connected: QEMU's events (SHUTDOWN and
	# its cause, which libvirt passes on to libvirt-ftd) in events-MODE.log.
	i=0
	until [ -S "$work/events-$mode.sock" ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
	[ -S "$work/events-$mode.sock" ] || die "$mode: QEMU made no event monitor socket in 10 s"
	# socat reads a FIFO this script holds open read-write (no helper
	# process to outlive the test; no SIGPIPE if socat has gone). The
	# record run's descriptor was closed at the top: the replay's
	# processes do not inherit it.
	mkfifo "$work/events-$mode.in"
	exec {evfd}<>"$work/events-$mode.in"
	socat - UNIX-CONNECT:"$work/events-$mode.sock" <"$work/events-$mode.in" >"$work/events-$mode.log" 2>&1 &
	pids+=($!)
	echo '{"execute":"qmp_capabilities"}' >&$evfd
}
# shutdown_events MODE: the SHUTDOWN events QEMU sent, one per line.
shutdown_events() { grep -o '"event": "SHUTDOWN"[^}]*}' "$work/events-$1.log" || true; }

# qmp_lines MODE COMMAND-JSON: every line QEMU wrote back: the greeting,
# the two replies (qmp_capabilities, COMMAND) and any events.
qmp_lines() {
	printf '{"execute":"qmp_capabilities"}\n%s\n' "$2" |
		socat -t 2 - UNIX-CONNECT:"$work/qmp-$1.sock" 2>/dev/null
}
# qmp MODE COMMAND-JSON: one QMP command, its reply on stdout.
qmp() { qmp_lines "$@" | tail -n 1; }
icount_of() { qmp "$1" '{"execute":"query-replay"}' | jq -r '.return.icount // empty' 2>/dev/null; }
# wait_status MODE STATUS SECS: wait until QEMU's run state is STATUS
# (query-status).
wait_status() {
	local mode=$1 want=$2 end=$((SECONDS + $3)) st
	while :; do
		st=$(qmp "$mode" '{"execute":"query-status"}' | jq -r '.return.status // empty' 2>/dev/null || true)
		[ "$st" = "$want" ] && return 0
		kill -0 "$qemu_pid" 2>/dev/null || die "$mode: QEMU exited while waiting for status $want"
		[ $SECONDS -lt $end ] || die "$mode: status '$st', not $want, after $3s"
		sleep 0.5
	done
}

# check_replay_progress: sample the replay's icount (into $ic); fail when it
# has stood still for STALL_S seconds, with the log around that icount. The
# caller initialises last=-1 since=$SECONDS.
check_replay_progress() {
	ic=$(icount_of replay || true)
	[ -n "$ic" ] || return 0
	[ "$ic" = "$last" ] || { last=$ic; since=$SECONDS; }
	if [ $((SECONDS - since)) -ge "$STALL_S" ]; then
		log "replay stalled at icount $ic; the log around it:"
		"$BIN/rrdump" -header -icount "$ic" -before 12 -after 8 "$work/log.bin" | sed 's/^/     /'
		die "the replay stopped at icount $ic of ${total:-?} (${STALL_S}s without progress): record and replay diverged"
	fi
}

# wait_exit SECS MODE: wait for QEMU to exit by itself; while replaying, fail
# when its icount stands still for STALL_S seconds.
wait_exit() {
	local secs=$1 mode=$2 end=$((SECONDS + $1))
	last=-1 since=$SECONDS
	while kill -0 "$qemu_pid" 2>/dev/null; do
		[ $SECONDS -lt $end ] || die "$mode: QEMU still running after ${secs}s"
		[ "$mode" != replay ] || check_replay_progress
		sleep 1
	done
	wait "$qemu_pid" && rc=0 || rc=$?
	[ $rc -eq 0 ] || { tail -n 5 "$work/qemu-$mode.out" >&2; die "$mode: QEMU exited with status $rc"; }
}

say "record: the test guest under TCP load (${LOAD_S}s), then it powers off"
start_qemu record
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
wait_for 60 "the guest's network after the reset" inns "$BIN/tcpcheck" rtt -addr $GUEST_IP:7002 -count 1
[ "$(tr -d '\r' <"$work/console-record.log" | grep -c '^ft-guest: up')" = 2 ] || die "record: the guest did not boot again after system_reset"
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
[ "$(tr -d '\r' <"$work/console-record.log" | grep -c '^ft-guest: up')" = 3 ] || die "record: the guest did not boot again after its shutdown, system_reset and cont"
inns "$BIN/tcpcheck" echo -addr $GUEST_IP:7002 -duration ${LOAD_S}s -interval 5ms >"$work/echo.out" 2>&1 &
pe=$!
pids+=($pe)
inns "$BIN/tcpcheck" stream -addr $GUEST_IP:7001 -duration ${LOAD_S}s >"$work/stream.out" 2>&1 &
ps=$!
pids+=($ps)
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

say "replay: the same machine from the log"
start_qemu replay
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
i=0
# (jq -e is not used: jq 1.6 exits 0 on empty input.)
until [ "$(qmp replay "{\"execute\":\"replay-break\",\"arguments\":{\"icount\":$brk}}" | jq -r '.return != null' 2>/dev/null)" = true ]; do
	[ $i -lt 50 ] || die "replay: no QMP"
	sleep 0.1; i=$((i + 1))
done
end=$((SECONDS + 600)) last=-1 since=$SECONDS
while :; do
	[ $SECONDS -lt $end ] || die "replay: not at icount $brk after 600s"
	kill -0 "$qemu_pid" 2>/dev/null || die "replay: QEMU exited before reaching icount $brk (the guest shut down at $end_ic)"
	st=$(qmp replay '{"execute":"query-status"}')
	[ "$(jq -r '.return.status // empty' <<<"$st" 2>/dev/null)" = paused ] && break
	check_replay_progress
	sleep 1
done
ic=$(icount_of replay)
log "replay paused at icount $ic after $((SECONDS - t1))s (the guest shut down at $end_ic)"
[ "$ic" = "$brk" ] || die "replay paused at icount $ic, not at $brk"
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
wait_exit 30 replay
# The replay ran every instruction the record ran (patch 0013: it does not
# stop at the guest's shutdown), so the consoles must be equal byte for
# byte.
if ! cmp -s "$work/console-record.log" "$work/console-replay.log"; then
	# diff exits 1 on a difference, and head could kill it by SIGPIPE under
	# pipefail: neither may end the script before die says why.
	{ diff <(tr -d '\r' <"$work/console-record.log") <(tr -d '\r' <"$work/console-replay.log") || true; } | head -n 10 | sed 's/^/     /' || true
	die "the consoles of the record and replay runs differ"
fi
say "determinism: pass: the replay reached icount $brk exactly and replayed the guest's shutdown at $end_ic, as recorded, and printed the same console ($(grep -c '^tick ' "$work/console-record.log") tick lines, $(stat -c %s "$work/console-record.log") bytes); record $((t1 - t0))s, replay $((SECONDS - t1))s"
