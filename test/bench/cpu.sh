#!/usr/bin/env bash
# CPU benchmarks of record/replay (issue 12; part of `make bench`): how fast
# the test guest boots, from QEMU's start to "ft-guest: up" on its console
# (BIOS, kernel, modules, init under TCG), in each set-up:
#
#   QEMU alone (no libvirt, no libvirt-ftd; the devices a protected domain
#   gets: virtio-blk under blkreplay, virtio-net with filter-replay on a
#   user netdev, the serial console in a file):
#     plain     TCG, no icount: the unprotected speed
#     icount    -icount shift=auto, no record/replay
#     record    rr=record into a file (a primary with no backup)
#     replay    rr=replay of that file (the backup alone, never waiting for log)
#     record and replay at the same time, pinned to CPU 0 and 1, not coupled:
#               what two busy CPUs of this machine cost each other (it
#               comes and goes: the hypervisor's; session 38)
#   In the lab (libvirt, both daemons):
#     lab-unprotected  the demo domain without the ft element
#     lab-protected    the demo domain protected (primary on host a, backup on b)
#
# Each runs unpinned and pinned: QEMU alone on CPU 0; in the lab host a's
# QEMU on CPU 0 and host b's on CPU 1 from their start (the two-host
# estimate: the lab shares its 2 CPUs between both hosts; each host's
# libvirtd in a cpuset cgroup of its CPU, test/bench/pin.sh, LAB_PIN).
# The recorded log's events and bytes per
# second by kind (test/tools/rrdump -kinds), and perf figures of the record
# and the replay (context switches, futex calls, CPU time, the top symbols)
# follow. Prints markdown (also written to $OUT).
#   EMULATOR=... [RUNS=2] [LAB=1] [PERF=1] [ALONE=1] [LAB_PIN=qemu|hosts|cputune] test/bench/cpu.sh
set -euo pipefail
# LAB is read before lib.sh, which uses the name for test/lab/lab.sh.
BENCH_LAB=${LAB:-1}
source "$(dirname "$0")/../e2e/lib.sh"
source "$(dirname "$0")/pin.sh"
QEMU=${EMULATOR:-/usr/bin/qemu-system-x86_64}
RUNS=${RUNS:-2}
OUT=${OUT:-/tmp/libvirt-ft-bench-cpu.md}
[ -x "$QEMU" ] || die "no QEMU at $QEMU (make qemu-ft)"
[ -x "$BIN/rrdump" ] || die "run make build first ($BIN/rrdump)"
command -v taskset >/dev/null || die "taskset is missing (util-linux)"
if [ "${PERF:-1}" = 1 ] && ! command -v perf >/dev/null; then
	echo "cpu.sh: perf is missing (apt-get install linux-perf): the perf figures are left out" >&2
	PERF=0
fi

work=$(mktemp -d /var/tmp/ft-bench-cpu.XXXXXX)
qpids=()
cleanup() {
	local rc=$? p
	for p in "$work"/qemu-*.pid; do [ -s "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null || true; done
	[ "$BENCH_LAB" = 1 ] && lab_stop $rc
	cpusets_remove
	rm -rf "$work"
}
trap cleanup EXIT

# qemu_args MODE NAME: the command line of a run (MODE plain, icount,
# record or replay); NAME names its files in $work.
NETDEV_DEFAULT='{"type":"user","id":"net0"}'
qemu_args() {
	local mode=$1 name=$2 icount=()
	case $mode in
	icount) icount=(-icount shift=auto) ;;
	record | replay) icount=(-icount "shift=auto,rr=$mode,rrfile=${RRFILE:-$work/log.bin}" -object filter-replay,id=ft-fr0,netdev=net0) ;;
	esac
	local blk='{"driver":"blkreplay","node-name":"ft-rr0","image":"disk-format"}' drive=ft-rr0
	if [ $mode = plain ] || [ $mode = icount ]; then blk='' drive=disk-format; fi
	printf '%s\n' -name guest=ftbench -machine pc-i440fx-7.2,usb=off,dump-guest-core=off -accel tcg -cpu qemu64 \
		-m 256 -smp 1 -display none -no-user-config -nodefaults -rtc base=utc -boot strict=on \
		-kernel "$GUEST/vmlinuz" -initrd "$GUEST/initrd.img" -append "console=ttyS0 quiet loglevel=1 panic=-1" \
		-blockdev "{\"driver\":\"file\",\"filename\":\"$work/$name.qcow2\",\"node-name\":\"disk-storage\"}" \
		-blockdev '{"node-name":"disk-format","driver":"qcow2","file":"disk-storage"}'
	[ -n "$blk" ] && printf '%s\n' -blockdev "$blk"
	printf '%s\n' -device "{\"driver\":\"virtio-blk-pci\",\"bus\":\"pci.0\",\"addr\":\"0x3\",\"id\":\"disk0\",\"drive\":\"$drive\"}" \
		-netdev "${NETDEV:-$NETDEV_DEFAULT}" \
		-device '{"driver":"virtio-net-pci","netdev":"net0","id":"nic0","mac":"52:54:00:fa:00:01","bus":"pci.0","addr":"0x2"}' \
		-chardev "file,id=serial0,path=$work/console-$name.log" \
		-device '{"driver":"isa-serial","chardev":"serial0","id":"serial0","index":0}' \
		-monitor "unix:$work/mon-$name.sock,server=on,wait=off" -pidfile "$work/qemu-$name.pid" \
		"${icount[@]}"
}

# stop_qemu NAME JOB: quit QEMU run NAME (background job JOB) through its
# monitor; kill it after 20 s.
stop_qemu() {
	local name=$1 job=$2 w=$((SECONDS + 20))
	socat - "UNIX-CONNECT:$work/mon-$name.sock" <<<"quit" >/dev/null 2>&1 || true
	while kill -0 "$job" 2>/dev/null && [ $SECONDS -lt $w ]; do sleep 0.1; done
	kill -9 "$job" 2>/dev/null || true
	wait "$job" 2>/dev/null || true
}

# boot MODE NAME PIN [PERF]: run QEMU until "ft-guest: up"; print the seconds
# it took. PIN is a CPU list for taskset, or "". A record run goes on 1 s
# before it quits (its log ends with END). PERF stat: count CPU time,
# context switches and futex calls (perf stat); record: sample (perf record).
boot() {
	local mode=$1 name=$2 pin=$3 perf=${4:-} t0 t1 pre=()
	[ -n "$pin" ] && pre=(taskset -c "$pin")
	case $perf in
	stat) pre+=(perf stat -x, -o "$work/perfstat-$name.csv" -e task-clock,context-switches,cpu-migrations,syscalls:sys_enter_futex --) ;;
	record) pre+=(perf record -q -g -o "$work/perf-$name.data" --) ;;
	esac
	[ $mode = replay ] || "$ROOT/test/guest/mkdisk.sh" "$work/$name.qcow2" >/dev/null
	[ $mode = replay ] && cp "${RDISK:-$work/record-disk.qcow2}" "$work/$name.qcow2"
	[ $mode = record ] && cp "$work/$name.qcow2" "$work/record-disk.qcow2"
	rm -f "$work/qemu-$name.pid"
	# The console file exists before the watcher starts: tail -F notices a
	# file that appears later only after about 2 s. QEMU truncates it.
	: >"$work/console-$name.log"
	mapfile -t args < <(qemu_args "$mode" "$name")
	# The watcher costs no CPU while it waits (waitfor.sh); QEMU dying
	# first ends the wait too.
	"$ROOT/test/bench/waitfor.sh" 240 "ft-guest: up" tail -n +1 -F "$work/console-$name.log" >/dev/null &
	local watch=$! ended=""
	t0=$(date +%s%N)
	"${pre[@]}" "$QEMU" "${args[@]}" >"$work/qemu-$name.out" 2>&1 &
	local job=$!
	wait -n -p ended $watch $job || true
	t1=$(date +%s%N)
	if [ "$ended" != "$watch" ] || ! grep -q "ft-guest: up" "$work/console-$name.log"; then
		kill $watch 2>/dev/null || true
		cat "$work/qemu-$name.out" >&2
		die "$name: no 'ft-guest: up' within 240 s, or QEMU exited before it"
	fi
	[ $mode = record ] && sleep 1
	stop_qemu "$name" $job
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'
}

# best LIST: the smallest of the numbers in LIST.
best() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | head -n 1; }

declare -A T P
rec_s=- log_bytes=0
BULK_MB=${BULK_MB:-20} ECHO_S=${ECHO_S:-10} IDLE_S=${IDLE_S:-10}
# ALONE=0 skips the QEMU-alone rows (the lab rows only).
if [ "${ALONE:-1}" = 1 ]; then
	say "QEMU alone: boot to 'ft-guest: up' ($RUNS runs each, best kept)"
	for pin in "" 0; do
		tag=unpinned; [ -n "$pin" ] && tag=pinned
		for mode in plain icount record replay; do
			runs=""
			for i in $(seq "$RUNS"); do
				s=$(boot $mode "$mode-$tag-$i" "$pin")
				runs+="$s "
				[ $mode = record ] && cp "$work/log.bin" "$work/log-$tag.bin"
				[ $mode = record ] && cp "$work/record-disk.qcow2" "$work/record-disk-$tag.qcow2"
				[ $mode = record ] && cp "$work/console-$mode-$tag-$i.log" "$work/console-record-$tag.log"
			done
			T[$mode,$tag]=$(best "$runs")
			log "$mode $tag: $runs s"
		done
	done
	# Both CPUs busy at once, not coupled: a record on CPU 0 while the
	# pinned record's log replays from a file on CPU 1: what two busy CPUs
	# of this machine cost each other. Until session 38 these rows took
	# 5.3-6.0 s against 3.4 alone, mostly the waits' own polling (a grep
	# and a sleep every 20 ms for each run), which had no idle CPU left to
	# run on. With waitfor.sh they take what each takes alone in most
	# runs; in others the QEMU on CPU 1 needs half as much CPU time again
	# (the hypervisor's sharing of the host's cores, not ours).
	runs_r="" runs_p=""
	for i in $(seq "$RUNS"); do
		( RRFILE=$work/log-conc.bin boot record "conc-record-$i" 0 >"$work/conc-record.s" ) &
		rec_job=$!
		( RRFILE=$work/log-pinned.bin RDISK=$work/record-disk-pinned.qcow2 boot replay "conc-replay-$i" 1 >"$work/conc-replay.s" ) &
		rep_job=$!
		# Both waited for before either failure ends the script (its
		# cleanup removes $work).
		rc_rec=0 rc_rep=0
		wait $rec_job || rc_rec=$?
		wait $rep_job || rc_rep=$?
		[ $rc_rec = 0 ] || die "the concurrent record failed"
		[ $rc_rep = 0 ] || die "the concurrent replay failed"
		# The replay stops at "up", the record ran 1 s more: a prefix.
		n=$(stat -c %s "$work/console-conc-replay-$i.log")
		cmp -s <(head -c "$n" "$work/console-record-pinned.log") "$work/console-conc-replay-$i.log" ||
			die "the concurrent replay's console differs from the pinned record's"
		runs_r+="$(cat "$work/conc-record.s") " runs_p+="$(cat "$work/conc-replay.s") "
	done
	T[conc-record,pinned]=$(best "$runs_r") T[conc-replay,pinned]=$(best "$runs_p")
	log "record pinned, while a replay runs on CPU 1: $runs_r s"
	log "replay pinned, while a record runs on CPU 0: $runs_p s"

	# After the boot: network load, then idle (QEMU alone, pinned). The record
	# run boots, then the host moves BULK_MB each way through a user netdev's
	# forwarded ports, runs an echo client for ECHO_S, lets the guest idle for
	# IDLE_S and quits; the replay of that file runs to the recorded quit.
	# Replay faster than record here is possible: a replay need not wait out
	# the real time the recording spent waiting for packets or timers.
	phases() {
		local t0 t1 p=$((17000 + RANDOM % 20000)) args
		export NETDEV="{\"type\":\"user\",\"id\":\"net0\",\"net\":\"10.250.0.0/24\",\"host\":\"10.250.0.2\",\"hostfwd\":[{\"str\":\"tcp:127.0.0.1:$p-10.250.0.100:7004\"},{\"str\":\"tcp:127.0.0.1:$((p + 1))-10.250.0.100:7005\"},{\"str\":\"tcp:127.0.0.1:$((p + 2))-10.250.0.100:7002\"}]}"
		"$ROOT/test/guest/mkdisk.sh" "$work/phases.qcow2" >/dev/null
		cp "$work/phases.qcow2" "$work/phases-orig.qcow2"
		rm -f "$work/console-phases.log" "$work/log.bin"
		mapfile -t args < <(qemu_args record phases)
		t0=$(date +%s%N)
		taskset -c 0 "$QEMU" "${args[@]}" >"$work/qemu-phases.out" 2>&1 &
		local job=$! end=$((SECONDS + 240))
		until grep -q "ft-guest: up" "$work/console-phases.log" 2>/dev/null; do
			[ $SECONDS -lt $end ] && kill -0 $job 2>/dev/null || die "phases: the record run did not come up"
			sleep 0.05
		done
		"$BIN/tcpcheck" bulk -addr 127.0.0.1:$p -mode rx -bytes $((BULK_MB * 1000000)) >"$work/phases-rx.out" 2>&1 || die "phases: bulk rx: $(tail -n 1 "$work/phases-rx.out")"
		"$BIN/tcpcheck" bulk -addr 127.0.0.1:$((p + 1)) -mode tx -bytes $((BULK_MB * 1000000)) >"$work/phases-tx.out" 2>&1 || die "phases: bulk tx: $(tail -n 1 "$work/phases-tx.out")"
		"$BIN/tcpcheck" echo -addr 127.0.0.1:$((p + 2)) -duration "${ECHO_S}s" -interval 5ms >"$work/phases-echo.out" 2>&1 || die "phases: echo: $(tail -n 1 "$work/phases-echo.out")"
		sleep "$IDLE_S"
		stop_qemu phases $job
		t1=$(date +%s%N)
		P[record]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
		cp "$work/phases-orig.qcow2" "$work/phases.qcow2"
		mv "$work/console-phases.log" "$work/console-phases-record.log"
		mapfile -t args < <(qemu_args replay phases)
		t0=$(date +%s%N)
		timeout 600 taskset -c 0 "$QEMU" "${args[@]}" >"$work/qemu-phases-replay.out" 2>&1 || true
		t1=$(date +%s%N)
		P[replay]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
		if cmp -s <(tr -d '\r' <"$work/console-phases-record.log") <(tr -d '\r' <"$work/console-phases.log"); then P[console]=same; else P[console]=DIFFERENT; fi
		P[log]=$("$BIN/rrdump" -header -summary "$work/log.bin" | tail -n 1)
		unset NETDEV
	}
	say "QEMU alone, pinned: boot, ${BULK_MB} MB each way, ${ECHO_S} s of echo, ${IDLE_S} s idle; then its replay"
	phases
	log "record ${P[record]} s, replay ${P[replay]} s, console ${P[console]}; ${P[log]}"

	say "the recorded log (pinned record run): events and bytes by kind"
	rec_s=${T[record,pinned]}
	"$BIN/rrdump" -header -kinds "$work/log-pinned.bin" >"$work/kinds.txt" || true
	log_bytes=$(stat -c %s "$work/log-pinned.bin")

	if [ "${PERF:-1}" = 1 ]; then
		say "perf: record and replay, pinned"
		boot record record-perf 0 stat >/dev/null
		boot replay replay-perf 0 stat >/dev/null
		boot record record-prof 0 record >/dev/null
		boot replay replay-prof 0 record >/dev/null
	fi
fi

if [ "$BENCH_LAB" = 1 ]; then
	say "the lab: virsh start to 'ft-guest: up'"
	# lab_boot SETUP PIN: SETUP unprotected or protected; PIN 1 pins the
	# lab (test/bench/pin.sh: by default each host's QEMU on its CPU from
	# its start; LAB_PIN=cputune as until session 40).
	# Before the clock starts, libvirtd on both hosts probes the emulator
	# (domcapabilities): libvirt does that once per emulator binary and
	# caches it, and a fresh lab would otherwise charge host b's probe
	# (about 1 s) to the backup's start. The console and the backup's
	# start are waited for by watchers that block (waitfor.sh: tail -F,
	# virsh event), not by polls: until session 38 a grep loop on the
	# console and a virsh loop every 10 ms on host b took CPU from the two
	# QEMUs. Prints the seconds to "ft-guest: up", and for protected: the
	# seconds until the backup domain ran, and the ms the primary was held
	# by the lag bound and by the window (virt-ft status). Logs where each
	# QEMU's vCPU spent its time (qemu_times) and the daemons' CPU time.
	# qemu_times HOST: where host HOST's QEMU spent its time until now: its
	# vCPU thread's run time and its wait for a CPU (/proc schedstat), and
	# the seconds since QEMU started; the rest the vCPU slept (a backup
	# waiting for log, a primary held by its pump). One line, seconds.
	qemu_times() {
		local pid t
		pid=$(tr -dc 0-9 2>/dev/null <"$LAB_DIR/$1/root/run-libvirt/qemu/$DOMAIN.pid") || return 0
		[ -n "$pid" ] || return 0
		local st up
		st=$(awk '{ print $22 }' "/proc/$pid/stat" 2>/dev/null) || return 0
		up=$(awk '{ print $1 }' /proc/uptime)
		for t in /proc/$pid/task/*; do
			case $(cat "$t/comm" 2>/dev/null) in
			"CPU "* | "ALL CPUs"*) echo "vcpu $(cat "$t/schedstat")" ;;
			*) echo "other $(cat "$t/schedstat")" ;;
			esac
		done | awk -v st="$st" -v up="$up" -v hz="$(getconf CLK_TCK)" -v h="$1" '
			$1 == "vcpu" { r += $2; w += $3 } $1 == "other" { o += $2 }
			END { e = up - st / hz; printf "%s: vCPU ran %.2f, waited for a CPU %.2f, slept %.2f of %.2f s; its other threads ran %.2f s", h, r / 1e9, w / 1e9, e - (r + w) / 1e9, e, o / 1e9 }'
	}

	# daemon_cpu: the CPU time (s) so far of libvirt-ftd and libvirtd on
	# hosts a and b, as "ftd-a ftd-b libvirtd-a libvirtd-b".
	daemon_cpu() {
		local f pid
		for f in "$LAB_DIR/a/ftd-daemon.pid" "$LAB_DIR/b/ftd-daemon.pid" "$LAB_DIR/a/root/run-libvirt/libvirtd.pid" "$LAB_DIR/b/root/run-libvirt/libvirtd.pid"; do
			pid=$(tr -dc 0-9 <"$f" 2>/dev/null || true)
			awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f ", ($14 + $15) / hz }' "/proc/${pid:-0}/stat" 2>/dev/null || printf "0 "
		done
	}

	lab_boot() {
		local setup=$1 pin=$2 t0 t1 tb="" h bg="" i
		unset DOMAIN_XML_EDIT
		local edit=""
		[ $setup = unprotected ] && edit='/<metadata>/,/<\/metadata>/d;'
		[ "$pin" = 1 ] && edit+=$(pin_edit)
		[ -n "$edit" ] && export DOMAIN_XML_EDIT="$edit"
		lab_stop 0 >/dev/null 2>&1
		lab_start >/dev/null
		[ "$pin" = 1 ] && pin_hosts
		if [ $setup = unprotected ]; then
			on a "$ROOT/test/guest/mkdisk.sh" $IMAGES/$DOMAIN.qcow2 >/dev/null
			domain_xml "$DOMAIN" >"$work/lab.xml"
			on a virsh -q -c qemu:///system define "$work/lab.xml" >/dev/null
		else
			define_protected "$DOMAIN" >/dev/null
		fi
		for h in a b; do virsh_on $h domcapabilities --emulatorbin "$QEMU" --virttype qemu >/dev/null; done
		rm -f "$work/backup-running"
		# The waits below block on events (waitfor.sh): a poll loop of
		# grep and sleep, or of virsh, takes CPU from the two QEMUs.
		local console
		console=$(console_file a "$DOMAIN")
		: >"$console"
		"$ROOT/test/bench/waitfor.sh" 240 "ft-guest: up" tail -n +1 -F "$console" >/dev/null &
		local watch=$!
		if [ $setup = protected ]; then
			(
				# The backup domain's start, from libvirt's lifecycle
				# events on host b (one virsh, subscribed before the
				# clock starts). Killed, it ends its watcher.
				"$ROOT/test/bench/waitfor.sh" 240 "domain '$DOMAIN': Started" \
					"$LAB" exec b virsh -q -c qemu:///system event --event lifecycle --loop >/dev/null &
				w=$!
				trap 'kill $w 2>/dev/null; exit 1' TERM
				wait $w || exit 1
				date +%s%N >"$work/backup-running"
				if [ "$pin" = 1 ]; then pin_backup || exit 1; fi
			) >/dev/null &
			bg=$!
		fi
		# Both watchers subscribed (tail's inotify, virsh's event
		# callback) before the clock starts.
		sleep 1
		local cpu0
		cpu0=$(daemon_cpu)
		t0=$(date +%s%N)
		if ! virsh_on a start "$DOMAIN" >/dev/null; then
			kill $watch ${bg:-} 2>/dev/null
			die "lab $setup: virsh start failed"
		fi
		if ! wait $watch; then
			[ -z "$bg" ] || { kill "$bg" 2>/dev/null; wait "$bg" 2>/dev/null; }
			die "lab $setup: no 'ft-guest: up' within 240 s"
		fi
		t1=$(date +%s%N)
		log "$setup (pin $pin) at 'up': $(qemu_times a)${bg:+; $(qemu_times b)}" >&2
		log "$setup (pin $pin) daemons' CPU until 'up' (s): $(awk -v a="$cpu0" -v b="$(daemon_cpu)" 'BEGIN { split(a, x); split(b, y); printf "libvirt-ftd a %.2f, b %.2f; libvirtd a %.2f, b %.2f", y[1] - x[1], y[2] - x[2], y[3] - x[3], y[4] - x[4] }')" >&2
		if [ -n "$bg" ]; then
			# The backup ran long before "up"; its event is given 10 s
			# more (a missed event fails here, not 240 s later).
			for i in $(seq 100); do
				kill -0 "$bg" 2>/dev/null || break
				sleep 0.1
			done
			if kill -0 "$bg" 2>/dev/null; then
				kill "$bg" 2>/dev/null
				die "lab $setup: no 'Started' event of the backup domain on host b (virsh event)"
			fi
			wait "$bg" || die "lab $setup: the backup domain did not run on host b, or could not be pinned to CPU 1"
		fi
		[ -s "$work/backup-running" ] && tb=$(awk -v a="$t0" -v b="$(cat "$work/backup-running")" 'BEGIN { printf " %.2f", (b - a) / 1e9 }')
		# The primary's holds until "up" (virt-ft status: ms its pump was
		# held by the lag bound and by the window).
		local held=""
		# (virt-ft status exits 1 when the domain is not replicating; its
		# JSON is read all the same.)
		[ $setup = protected ] && held=$({ ft_on a status --json || true; } | jq -r '.[0] | "\(.held_lag_ms) \(.held_window_ms)"' 2>/dev/null || true)
		awk -v a="$t0" -v b="$t1" -v tb="$tb" -v h="${held:+ $held}" 'BEGIN { printf "%.2f%s%s\n", (b - a) / 1e9, tb, h }'
	}
	for pin in 0 1; do
		tag=unpinned; [ $pin = 1 ] && tag=pinned
		for setup in unprotected protected; do
			runs="" bruns="" hruns=""
			for i in $(seq "$RUNS"); do
				read -r s b hl hw < <(lab_boot $setup $pin)
				runs+="$s " bruns+="${b:+$b }" hruns+="${hl:+$hl/$hw }"
			done
			T[lab-$setup,$tag]=$(best "$runs")
			log "lab $setup $tag: $runs s${bruns:+ (backup running after $bruns s; the primary held by the lag bound/window $hruns ms)}"
			[ -n "$bruns" ] && T[lab-backup-start,$tag]=$(best "$bruns")
		done
	done
	lab_stop 0
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
{
	echo "### CPU: boot to \"ft-guest: up\" (s, best of $RUNS; lower is better)"
	echo
	echo "| set-up | unpinned | pinned | work rate vs plain/unprotected (pinned) |"
	echo "|---|---|---|---|"
	for m in plain icount record replay; do
		echo "| QEMU alone: $m | ${T[$m,unpinned]:-} | ${T[$m,pinned]:-} | $(ratio "${T[plain,pinned]:-}" "${T[$m,pinned]:-}") |"
	done
	if [ -n "${T[conc-record,pinned]:-}" ]; then
		echo "| QEMU alone: record on CPU 0 while a replay runs on CPU 1 | | ${T[conc-record,pinned]} | $(ratio "${T[plain,pinned]:-}" "${T[conc-record,pinned]}") |"
		echo "| QEMU alone: replay on CPU 1 while a record runs on CPU 0 | | ${T[conc-replay,pinned]} | $(ratio "${T[plain,pinned]:-}" "${T[conc-replay,pinned]}") |"
	fi
	if [ "$BENCH_LAB" = 1 ]; then
		for s in unprotected protected; do
			echo "| lab: $s | ${T[lab-$s,unpinned]:-} | ${T[lab-$s,pinned]:-} | $(ratio "${T[lab-unprotected,pinned]:-}" "${T[lab-$s,pinned]:-}") |"
		done
		echo
		echo "Lab, protected: the backup domain ran ${T[lab-backup-start,unpinned]:-?} s (unpinned) and ${T[lab-backup-start,pinned]:-?} s (pinned) after \`virsh start\` (libvirt starts it on host b at the primary's first log; the primary waits for it at the window)."
	fi
	echo
	echo "Replay speed / record speed (pinned): $(ratio "${T[record,pinned]:-}" "${T[replay,pinned]:-}") (target ≥ 1)."
	echo
	echo "After the boot, QEMU alone, pinned (boot, ${BULK_MB} MB each way through forwarded ports, ${ECHO_S} s of echo, ${IDLE_S} s idle, quit): record ${P[record]:-} s, its replay ${P[replay]:-} s, replay speed / record speed $(ratio "${P[record]:-}" "${P[replay]:-}"), replay's console ${P[console]:-} as the record's."
	echo
	echo "### The recorded log (pinned record run: ${rec_s} s to ready, then 1 s)"
	echo
	echo "$log_bytes bytes: $(awk -v b="$log_bytes" -v s="$rec_s" 'BEGIN { printf "%.2f MB/s, %.2f Mbit/s", b / (s + 1) / 1e6, b * 8 / (s + 1) / 1e6 }') over the run."
	echo
	echo "| kind | events | events/s | bytes |"
	echo "|---|---|---|---|"
	[ -s "$work/kinds.txt" ] && awk -v s="$rec_s" '/^kind / { printf "| %s | %s | %.0f | %s |\n", $2, $4, $4 / (s + 1), $6 }' "$work/kinds.txt"
	if [ "${PERF:-1}" = 1 ] && [ "${ALONE:-1}" = 1 ]; then
		echo
		echo "### perf (pinned): record and replay of the boot"
		echo
		echo "| run | task-clock ms | context switches | cpu migrations | futex calls |"
		echo "|---|---|---|---|---|"
		for r in record replay; do
			awk -F, -v r="$r" '
				$3 == "task-clock" { tc = $1 } $3 == "context-switches" { cs = $1 }
				$3 == "cpu-migrations" { cm = $1 } $3 == "syscalls:sys_enter_futex" { fx = $1 }
				END { printf "| %s | %.0f | %s | %s | %s |\n", r, tc, cs, cm, fx }' "$work/perfstat-$r-perf.csv"
		done
		for r in record replay; do
			echo
			echo "Top symbols, $r (perf report --no-children, self %):"
			echo
			echo '```'
			{ perf report -i "$work/perf-$r-prof.data" --no-children --stdio --sort comm,dso,symbol 2>/dev/null || true; } |
				grep -E '^ +[0-9]+\.[0-9]+%' | sed -n 1,15p || true
			echo '```'
		done
	fi
} | tee "$OUT"
