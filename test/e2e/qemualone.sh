# QEMU on its own (no libvirt, no libvirt-ftd) with the devices libvirt-ftd
# gives a protected domain on the lab's libvirt 9.0: machine
# pc-i440fx-7.2, qemu64, one vCPU, a virtio-blk disk under blkreplay, a
# virtio-net NIC on a tap with filter-replay and an output-gate
# filter-redirector whose two sockets are joined by test/tools/gaterelay
# (every frame the guest sends comes back at once, as through an output gate
# that never holds), and the serial console in a file. The tap, the TCP
# clients and QEMU run in a network namespace of the caller's own; nothing
# leaves it. Sourced by test/e2e/determinism.sh and test/e2e/rr-migrate.sh
# after lib.sh; the caller sets POWEROFF_TICK (EMULATOR, STALL_S and KEEP
# are the user's).
#
# Each QEMU has a NAME: its disk is $work/NAME.qcow2, its console
# $work/console-NAME.log, its QMP socket $work/qmp-NAME.sock.
QEMU=${EMULATOR:-/usr/bin/qemu-system-x86_64}
STALL_S=${STALL_S:-30}
[ -x "$QEMU" ] || die "no QEMU at $QEMU (make qemu-ft)"
for b in tcpcheck rrdump gaterelay; do [ -x "$BIN/$b" ] || die "run make build first ($BIN/$b)"; done
command -v socat >/dev/null || die "socat is missing (make setup)"
command -v jq >/dev/null || die "jq is missing (make setup)"

ns=ftdet$$
work=$(mktemp -d /var/tmp/ft-${QEMU_ALONE_NAME:-determinism}.XXXXXX)
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
		echo "${QEMU_ALONE_NAME:-determinism}: logs and consoles kept in $work"
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

# qemu_args NAME ICOUNT [ARG...]: the command line of QEMU NAME with
# -icount ICOUNT and ARG... last; every run must describe the same machine
# (QEMU_TAP: another tap than ftdt0, for a second QEMU at once). ICOUNT
# "plain" is a VM as libvirt starts one without the ft element: no icount,
# no filter-replay, no blkreplay node, no output gate (the same guest
# devices, so its state migrates into the others).
declare -A job_of
qemu_args() {
	local name=$1 icount=$2 drive=ft-rr0
	shift 2
	[ "$icount" != plain ] || drive=disk-format
	printf '%s\n' -name guest=ftdet -machine pc-i440fx-7.2,usb=off,dump-guest-core=off -accel tcg -cpu qemu64 \
		-m 256 -smp 1 -uuid 8a0c6a3e-5a34-4a4e-9d1c-6f7e3c2d1b00 -display none -no-user-config -nodefaults \
		-rtc base=utc -boot strict=on -no-shutdown \
		-kernel "$GUEST/vmlinuz" -initrd "$GUEST/initrd.img" \
		-append "console=ttyS0 quiet loglevel=1 panic=-1 ft.poweroff=$POWEROFF_TICK" \
		-blockdev "{\"driver\":\"file\",\"filename\":\"$work/$name.qcow2\",\"node-name\":\"disk-storage\"}" \
		-blockdev '{"node-name":"disk-format","driver":"qcow2","file":"disk-storage"}'
	[ "$icount" = plain ] || printf '%s\n' -blockdev '{"driver":"blkreplay","node-name":"ft-rr0","image":"disk-format"}'
	printf '%s\n' -device '{"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x3","id":"disk0","drive":"'$drive'"}' \
		-netdev "{\"type\":\"tap\",\"id\":\"net0\",\"ifname\":\"${QEMU_TAP:-ftdt0}\",\"script\":\"no\",\"downscript\":\"no\"}" \
		-device '{"driver":"virtio-net-pci","netdev":"net0","id":"nic0","mac":"52:54:00:fa:00:01","bus":"pci.0","addr":"0x2"}' \
		-chardev "file,id=serial0,path=$work/console-$name.log" \
		-device '{"driver":"isa-serial","chardev":"serial0","id":"serial0","index":0}'
	[ "$icount" = plain ] || printf '%s\n' -icount "$icount" \
		-object filter-replay,id=ft-fr0,netdev=net0 \
		-chardev "socket,id=ft-gout0,path=$work/gate-out.sock" \
		-chardev "socket,id=ft-gin0,path=$work/gate-in.sock" \
		-object filter-redirector,id=ft-gate0,netdev=net0,queue=rx,outdev=ft-gout0,indev=ft-gin0
	printf '%s\n' -qmp "unix:$work/qmp-$name.sock,server=on,wait=off" -pidfile "$work/qemu-$name.pid" \
		-chardev "socket,id=ftev0,path=$work/events-$name.sock,server=on,wait=off" -mon chardev=ftev0,mode=control \
		"$@"
}

# start_qemu NAME ICOUNT [ARG...]: gaterelay joins the gate's sockets, then
# QEMU starts (qemu_args); ${job_of[NAME]} is the background job's pid.
evfds=()
start_qemu() {
	local name=$1 args evfd
	rm -f "$work"/gate-*.sock
	"$BIN/gaterelay" "$work/gate-out.sock" "$work/gate-in.sock" &
	pids+=($!)
	local i=0
	until [ -S "$work/gate-in.sock" ] || [ $i -ge 50 ]; do sleep 0.1; i=$((i + 1)); done
	mapfile -t args < <(qemu_args "$@")
	# Without the event FIFOs of the QEMUs before it (they would stay open
	# while this one runs).
	(
		for evfd in "${evfds[@]}"; do eval "exec $evfd>&-"; done
		exec ip netns exec "$ns" "$QEMU" "${args[@]}" >"$work/qemu-$name.out" 2>&1
	) &
	job_of[$name]=$!
	pids+=($!)
	# A second monitor that stays connected: QEMU's events (SHUTDOWN and
	# its cause, which libvirt passes on to libvirt-ftd) in events-NAME.log.
	i=0
	until [ -S "$work/events-$name.sock" ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
	[ -S "$work/events-$name.sock" ] || die "$name: QEMU made no event monitor socket in 10 s"
	# socat reads a FIFO this script holds open read-write (no helper
	# process to outlive the test; no SIGPIPE if socat has gone).
	rm -f "$work/events-$name.in"
	mkfifo "$work/events-$name.in"
	exec {evfd}<>"$work/events-$name.in"
	evfds+=("$evfd")
	socat - UNIX-CONNECT:"$work/events-$name.sock" <"$work/events-$name.in" >"$work/events-$name.log" 2>&1 &
	pids+=($!)
	echo '{"execute":"qmp_capabilities"}' >&$evfd
}
# start_clients SECS: an echo client (a round trip every 5 ms) and a
# stream client for SECS seconds in the background ($pe, $ps; output in
# $work/echo.out, stream.out).
start_clients() {
	inns "$BIN/tcpcheck" echo -addr $GUEST_IP:7002 -duration "$1s" -interval 5ms >"$work/echo.out" 2>&1 &
	pe=$!
	pids+=($pe)
	inns "$BIN/tcpcheck" stream -addr $GUEST_IP:7001 -duration "$1s" >"$work/stream.out" 2>&1 &
	ps=$!
	pids+=($ps)
}
# shutdown_events NAME: the SHUTDOWN events QEMU sent, one per line.
shutdown_events() { grep -o '"event": "SHUTDOWN"[^}]*}' "$work/events-$1.log" || true; }

# qmp_lines NAME COMMAND-JSON: every line QEMU wrote back: the greeting,
# the two replies (qmp_capabilities, COMMAND) and any events.
qmp_lines() {
	printf '{"execute":"qmp_capabilities"}\n%s\n' "$2" |
		socat -t 2 - UNIX-CONNECT:"$work/qmp-$1.sock" 2>/dev/null
}
# qmp NAME COMMAND-JSON: one QMP command, its reply on stdout (the last
# return or error line: an event may come after it).
qmp() { qmp_lines "$@" | grep -E '^\{"(return|error)"' | tail -n 1 || true; }
# qmp_ok NAME COMMAND-JSON: the command must answer {"return": {}}.
qmp_ok() {
	local r
	r=$(qmp_lines "$1" "$2")
	[ "$(grep -c '^{"return": {}}' <<<"$r")" = 2 ] || die "$1: $2 answered '$r'"
}
icount_of() { qmp "$1" '{"execute":"query-replay"}' | jq -r '.return.icount // empty' 2>/dev/null; }
# wait_status NAME STATUS SECS: wait until QEMU's run state is STATUS
# (query-status).
wait_status() {
	local name=$1 want=$2 end=$((SECONDS + $3)) st
	while :; do
		st=$(qmp "$name" '{"execute":"query-status"}' | jq -r '.return.status // empty' 2>/dev/null || true)
		[ "$st" = "$want" ] && return 0
		kill -0 "${job_of[$name]}" 2>/dev/null || die "$name: QEMU exited while waiting for status $want"
		[ $SECONDS -lt $end ] || die "$name: status '$st', not $want, after $3s"
		sleep 0.5
	done
}

# check_replay_progress NAME: sample the replay's icount (into $ic); fail
# when it has stood still for STALL_S seconds, with the log around that
# icount (RRDUMP_ARGS: rrdump's options for $work/log.bin). The caller
# initialises last=-1 since=$SECONDS.
check_replay_progress() {
	ic=$(icount_of "$1" || true)
	[ -n "$ic" ] || return 0
	[ "$ic" = "$last" ] || { last=$ic; since=$SECONDS; }
	if [ $((SECONDS - since)) -ge "$STALL_S" ]; then
		log "replay stalled at icount $ic; the log around it:"
		# shellcheck disable=SC2086
		"$BIN/rrdump" -header ${RRDUMP_ARGS:-} -icount "$ic" -before 12 -after 8 "$work/log.bin" | sed 's/^/     /'
		die "the replay stopped at icount $ic of ${total:-?} (${STALL_S}s without progress): record and replay diverged"
	fi
}

# wait_exit SECS NAME [replay]: wait for QEMU to exit by itself; with
# "replay", fail when its icount stands still for STALL_S seconds.
wait_exit() {
	local secs=$1 name=$2 end=$((SECONDS + $1))
	last=-1 since=$SECONDS
	while kill -0 "${job_of[$name]}" 2>/dev/null; do
		[ $SECONDS -lt $end ] || die "$name: QEMU still running after ${secs}s"
		[ "${3:-}" != replay ] || check_replay_progress "$name"
		sleep 1
	done
	wait "${job_of[$name]}" && rc=0 || rc=$?
	[ $rc -eq 0 ] || { tail -n 5 "$work/qemu-$name.out" >&2; die "$name: QEMU exited with status $rc"; }
}

# replay_to_break NAME BRK: set a replay breakpoint at icount BRK (then
# cont with REPLAY_CONT=1), wait until the replay pauses there (failing on
# a stall), and check its icount.
replay_to_break() {
	local name=$1 brk=$2 i=0 end st
	# (jq -e is not used: jq 1.6 exits 0 on empty input.)
	until [ "$(qmp "$name" "{\"execute\":\"replay-break\",\"arguments\":{\"icount\":$brk}}" | jq -r '.return != null' 2>/dev/null)" = true ]; do
		[ $i -lt 50 ] || die "$name: no QMP"
		sleep 0.1; i=$((i + 1))
	done
	[ "${REPLAY_CONT:-0}" != 1 ] || qmp_ok "$name" '{"execute":"cont"}'
	end=$((SECONDS + 600)) last=-1 since=$SECONDS
	while :; do
		[ $SECONDS -lt $end ] || die "$name: not at icount $brk after 600s"
		kill -0 "${job_of[$name]}" 2>/dev/null || die "$name: QEMU exited before reaching icount $brk"
		st=$(qmp "$name" '{"execute":"query-status"}')
		[ "$(jq -r '.return.status // empty' <<<"$st" 2>/dev/null)" = paused ] && break
		check_replay_progress "$name"
		sleep 1
	done
	ic=$(icount_of "$name")
	[ "$ic" = "$brk" ] || die "$name: replay paused at icount $ic, not at $brk"
}

# same_console A B [OFFSET]: console-A.log from byte OFFSET (default 0)
# must equal console-B.log, byte for byte.
same_console() {
	local a=$1 b=$2 off=${3:-0}
	if ! cmp -s <(tail -c +$((off + 1)) "$work/console-$a.log") "$work/console-$b.log"; then
		# diff exits 1 on a difference, and head could kill it by SIGPIPE
		# under pipefail: neither may end the script before die says why.
		{ diff <(tail -c +$((off + 1)) "$work/console-$a.log" | tr -d '\r') <(tr -d '\r' <"$work/console-$b.log") || true; } | head -n 10 | sed 's/^/     /' || true
		die "the consoles of $a and $b differ"
	fi
}
