#!/usr/bin/env bash
# Network benchmarks of the output gate in the two-host lab (part of
# `make bench`): TCP round-trip time between the client namespace and the
# guest (median and p99), bulk receive (client → guest sink) and transmit
# (guest source → client) throughput, and the log channel's bandwidth during
# each, for these set-ups of the same guest and QEMU:
#   gate-on      protected, output gate on (the default)
#   gate-off     protected, <ft:output-gate enabled="no">
#   icount       the same domain without the ft element, with -icount
#                shift=auto as record/replay uses (no log, no backup): the
#                ceiling of what a protected VM can reach under TCG
#   record       the icount set-up recording (rr=record into a file on
#                host a, a filter-replay on its NIC, disks without
#                blkreplay): QEMU's record mode alone, no log channel, no
#                backup, no gate (SETUPS=record; not in the default list)
#   unprotected  the same domain without the ft element (no record/replay)
# Then an application benchmark with a client nobody here wrote: wrk
# (Debian's package, installed on demand) against the guest's busybox httpd
# (a 960-byte page on port 8080), HTTP_CONN connections for HTTP_S seconds:
# requests per second and latency percentiles.
# Each set-up runs REPEAT times (default 3) on a fresh lab, and the tables
# give the median of the valid runs: on the lab's shared 2-core machine one
# set-up's figures move by up to 8x from run to run. A protected run is
# valid only if its backup was still replicating at its end: a backup lost
# during the run (a replay stall on this machine, docs/replay.md section
# 12) leaves the primary passing its output through unprotected, which
# would read as a fast protected VM: such runs are left out (automatic
# re-protection is off, FT_REPROTECT=no, so a lost backup stays lost).
# Printed per run as well: the backup's replay stands (1 s or more, logged
# by its libvirt-ftd, the boot included), and the share of each bulk step
# the primary spent held by the lag bound and by the window (virt-ft
# status: held_lag_ms, held_window_ms).
# Each set-up runs unpinned and pinned (PINS="0 1"): pinned, host a's QEMU
# runs on CPU 0 and host b's on CPU 1 from their start, as
# test/bench/cpu.sh does (test/bench/pin.sh, LAB_PIN): the two-host
# estimate. Ratios are to the unprotected row of the same pinning.
# Each bulk step also gives the CPU its threads used per MB moved (ms/MB,
# from /proc/PID/task/TID/schedstat; host b's until its replay has caught
# up):
# host a's and host b's QEMU (vCPU thread, main loop; their other threads
# count in "all") and each host's libvirt-ftd. On this
# machine CPU time per MB moves less from run to run than throughput, and
# it says where the time goes (BENCHMARKS.md, session 50).
# Prints markdown tables (also written to $OUT, default
# /tmp/libvirt-ft-bench-net.md).
#   EMULATOR=... [SETUPS="gate-on gate-off icount unprotected"] [PINS="0 1"] [REPEAT=3] [RTT_COUNT=300] [BULK_BYTES=100000000] [RX_FILL=pattern|random] [HTTP_CONN=8] [HTTP_S=10] test/bench/net.sh
# RX_FILL=random makes bulk receive send incompressible bytes (tcpcheck
# -fill random) instead of the repeated a-z pattern: what the client
# sends does not change the figures while nothing on the path compresses
# (the log is not compressed: BENCHMARKS.md, session 49).
# EXTRA_EDIT (optional) is a sed expression added to every set-up's domain
# edit (e.g. a guest kernel argument); FTD_ENV (test/e2e/lib.sh) gives
# libvirt-ftd an environment variable (e.g. GOMAXPROCS=2 to compare with
# the daemon's own choice, plugin/procs.go).
set -euo pipefail
source "$(dirname "$0")/../e2e/lib.sh"
source "$(dirname "$0")/pin.sh"
RTT_COUNT=${RTT_COUNT:-300}
# 100 MB: 8 MB (the default until session 42) lasted 34-62 ms unprotected
# and 0.15-0.46 s gate-on, mostly the start of each transfer.
BULK_BYTES=${BULK_BYTES:-100000000}
OUT=${OUT:-/tmp/libvirt-ft-bench-net.md}
HTTP_CONN=${HTTP_CONN:-8}
HTTP_S=${HTTP_S:-10}
SETUPS=${SETUPS:-gate-on gate-off icount unprotected}
PINS=${PINS:-0 1}
REPEAT=${REPEAT:-3}
# A lost backup must stay lost for the validity check (domain_xml, lib.sh).
export FT_REPROTECT=no
# icount_edit VALUE [ARG...]: the domain edit of the icount and record
# set-ups: no ft element; -icount VALUE and the further QEMU arguments.
icount_edit() {
	local args="" a
	for a in -icount "$@"; do args+="<qemu:arg value=\"$a\"/>"; done
	echo '/<metadata>/,/<\/metadata>/d;s|<domain type=.qemu.>|<domain type="qemu" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">|;s|</devices>|</devices><qemu:commandline>'"$args"'</qemu:commandline>|'
}
# icount: -icount as xml/generate.go's icountValue gives it, without rr=;
# record: with rr=record into a file, and a filter-replay on the NIC
# (libvirt names the first NIC's netdev hostnet0).
ICOUNT_EDIT=$(icount_edit shift=auto)
RECORD_FILE=$LAB_DIR/bench-record.bin
RECORD_EDIT=$(icount_edit "shift=auto,rr=record,rrfile=$RECORD_FILE" -object filter-replay,id=ft-fr0,netdev=hostnet0)
[ -x "$BIN/tcpcheck" ] || die "run make build first (bin/tcpcheck)"
if ! command -v wrk >/dev/null; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk >/dev/null 2>&1 || true
fi
command -v wrk >/dev/null || echo "net.sh: wrk is missing (apt-get install wrk): the HTTP rows are left out" >&2
trap '_rc=$?; lab_stop $_rc; cpusets_remove' EXIT

# field LINE KEY: the value of KEY=... in a tcpcheck summary line.
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -n 1; }
# sent_bytes: the primary's log bytes sent so far ("" when unprotected or
# unreadable; see status_fields below).
# status_fields NAME...: the values of the numeric fields NAME of the
# primary's status (virt-ft status --local --json), one line, in order
# ("" for a field it lacks, all "" when unprotected or unreadable).
status_fields() {
	local j f
	j=$(ft_on a status --local --json "$DOMAIN" 2>/dev/null || true)
	for f in "$@"; do
		printf '%s ' "$(sed -n "s/.*\"$f\": \([0-9]*\).*/\1/p" <<<"$j" | head -n 1)"
	done
	echo
}
# stand_kinds FTD_LOG: the backup's stands and stalls counted by how its
# QEMU's threads spent them, as libvirt-ftd words it from the scheduler's
# times (plugin/schedtimes.go, docs/replay.md section 12): main loop and
# vCPU both busy (the shape of a livelock), the vCPU busy (a slow replay),
# the main loop busy, starved of CPU, a loaded CPU (running and waiting in
# turns), off a CPU (waiting or stopped).
stand_kinds() {
	grep -hE 'the replay stood still for|replay stalled at' "$1" 2>/dev/null |
		awk '/were both busy/ { b++; next } /its vCPU was busy/ { v++; next } /its main loop was busy/ { m++; next }
			/waiting for a CPU \(the host/ { s++; next } /in turns \(a loaded CPU/ { l++; next } /mostly off a CPU/ { o++; next } { u++ }
			END { printf "%d both busy, %d vCPU busy, %d main loop busy, %d starved, %d loaded, %d off a CPU, %d without figures\n", b, v, m, s, l, o, u }'
}
sent_bytes() { status_fields sent_bytes | tr -d ' '; }
# held: the primary's time held so far by the lag bound and the window,
# "LAG_MS WINDOW_MS" ("" when the status cannot be read: held_pct then
# prints "-").
held() { status_fields held_lag_ms held_window_ms | awk 'NF == 2 { print $1 + 0, $2 + 0 }'; }
# held_pct BEFORE AFTER MS: the percentage of MS the primary was held
# between two held readings, "lag%/window%".
held_pct() {
	awk -v b="$1" -v a="$2" -v ms="$3" 'BEGIN { split(b, x, " "); split(a, y, " ")
		if (ms <= 0 || b == "" || a == "") { print "-"; exit }
		printf "%.0f/%.0f", 100 * (y[1] - x[1]) / ms, 100 * (y[2] - x[2]) / ms }'
}

# cpu_ticks: "busy total" jiffies of each CPU (cpu0 cpu1 ...), from
# /proc/stat (busy: all but idle and iowait).
cpu_ticks() {
	awk '/^cpu[0-9]/ { t = 0; for (i = 2; i <= NF; i++) t += $i; printf "%s %d %d\n", $1, t - $5 - $6, t }' /proc/stat
}

# cpu_busy BEFORE AFTER: "cpu0 N% cpu1 M%": each CPU's busy share between
# two cpu_ticks samples.
cpu_busy() {
	printf '%s\n--\n%s\n' "$1" "$2" | awk '$1 == "--" { after = 1; next }
		!after { b[$1] = $2; t[$1] = $3; next }
		{ dt = $3 - t[$1]; printf "%s %.0f%% ", $1, (dt > 0 ? 100 * ($2 - b[$1]) / dt : 0) }'
}

# log_rate CMD...: run CMD; print "MB/s of log sent while it ran". How
# busy each CPU was meanwhile goes to /tmp/ft-bench-step.cpu.
log_rate() {
	local b0 b1 t0 t1 c0
	b0=$(sent_bytes); t0=$(date +%s%N); c0=$(cpu_ticks)
	"$@" >/tmp/ft-bench-step.out
	cpu_busy "$c0" "$(cpu_ticks)" >/tmp/ft-bench-step.cpu
	# The command's own time (ms), for held_pct.
	echo $((($(date +%s%N) - t0) / 1000000)) >/tmp/ft-bench-step.ms
	b1=$(sent_bytes); t1=$(date +%s%N)
	if [ -n "$b0" ] && [ -n "$b1" ]; then
		awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) 'BEGIN { printf "%.2f", b / (t / 1e9) / 1e6 }'
	else
		printf -- "-"
	fi
}

# thread_ns: one line per thread of host a's and host b's QEMU and of each
# host's libvirt-ftd, "GROUP TID RUN_NS" (run time from schedstat):
# groups qa-vcpu, qa-main (the main loop thread), qa-other, the same for
# qb, fa and fb (libvirt-ftd, all threads). Processes not running give
# nothing.
thread_ns() {
	local label pid t comm g
	for label in qa qb fa fb; do
		case $label in
		qa) pid=$(qemu_pid a "$DOMAIN" || true) ;;
		qb) pid=$(qemu_pid b "$DOMAIN" || true) ;;
		fa) pid=$(ftd_pid a 2>/dev/null || true) ;;
		fb) pid=$(ftd_pid b 2>/dev/null || true) ;;
		esac
		[ -n "$pid" ] && [ -d "/proc/$pid" ] || continue
		for t in /proc/$pid/task/*; do
			comm=$(cat "$t/comm" 2>/dev/null) || continue
			case $label,$comm in
			f?,*) g=$label ;;
			*,*TCG*) g=$label-vcpu ;;
			*,qemu-system-*) g=$label-main ;;
			*) g=$label-other ;;
			esac
			awk -v g="$g" -v tid="${t##*/}" '{ print g, tid, $1 }' "$t/schedstat" 2>/dev/null || true
		done
	done
}

# cpu_per_mb BEFORE AFTER_A AFTER_B BYTES: "qa-vcpu qa-main qb-vcpu
# qb-main fa fb all" in ms of CPU per MB of BYTES (the bytes the transfer
# moved) between thread_ns samples: host a's groups (qa-*, fa) from BEFORE
# to AFTER_A, taken when the transfer ended, host b's (qb-*, fb) to
# AFTER_B, taken once its replay caught up (settle). Only threads present
# in both samples count (a thread that started or ended between them is
# left out); "-" for a group with no such thread, and all "-" when BYTES
# is not a positive number or nothing was sampled.
cpu_per_mb() {
	printf '%s\n--\n%s\n--\n%s\n' "$1" "$2" "$3" | awk -v bytes="$4" '
		$1 == "--" { part++; next }
		NF < 3 { next }
		part == 0 { b[$1 " " $2] = $3; next }
		part == 1 && $1 !~ /^(qa|fa)/ { next }
		part == 2 && $1 !~ /^(qb|fb)/ { next }
		($1 " " $2) in b { d = $3 - b[$1 " " $2]; a[$1] += d; tot += d; n++ }
		END { split("qa-vcpu qa-main qb-vcpu qb-main fa fb", gs, " ")
			if (bytes !~ /^[0-9]+$/ || bytes + 0 <= 0 || n == 0) { print "- - - - - - -"; exit }
			mb = bytes / 1e6
			for (i = 1; i <= 6; i++)
				if (gs[i] in a) printf "%.2f ", a[gs[i]] / 1e6 / mb; else printf "- "
			printf "%.2f\n", tot / 1e6 / mb }'
}

# settle: wait (up to 5 s) until host b's replaying vCPU has caught up
# with a transfer, so that its work is charged to that transfer and not to
# the next: its run time grows by less than 20 ms in 100 ms (an idle
# guest's vCPU costs 6-10 ms per 100 ms under TCG). Nothing to wait for
# without a backup.
settle() {
	local qb t r0 r1 i
	qb=$(qemu_pid b "$DOMAIN" 2>/dev/null || true)
	[ -n "$qb" ] && [ -d "/proc/$qb" ] || return 0
	t=$(grep -l TCG /proc/$qb/task/*/comm 2>/dev/null | head -n 1) || return 0
	[ -n "$t" ] || return 0
	t=${t%/comm}
	r0=$(awk '{ print $1 }' "$t/schedstat" 2>/dev/null) || return 0
	for i in $(seq 50); do
		sleep 0.1
		r1=$(awk '{ print $1 }' "$t/schedstat" 2>/dev/null) || return 0
		[ $((r1 - r0)) -lt 20000000 ] && return 0
		r0=$r1
	done
	return 0
}

# wrk_us OUTPUT PCT: wrk's latency percentile PCT ("50%") in µs.
wrk_us() {
	awk -v p="$2" '$1 == p { v = $2
		if (v ~ /us$/) { sub(/us$/, "", v); printf "%.0f\n", v }
		else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.0f\n", v * 1000 }
		else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.0f\n", v * 1e6 }
		else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.0f\n", v * 6e7 } }' <<<"$1" | head -n 1
}

# median VALUES...: the median of the numeric values given ("" if none).
median() {
	printf '%s\n' "$@" | awk '$1 ~ /^[0-9.]+$/' | sort -g | awk '{ v[NR] = $1 } END {
		if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.10g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Per run (key "set-up,pinning#run"): the figures; per set-up (key
# "set-up,pinning"): the medians of its valid runs (set after the runs).
declare -A RTT_MED RTT_P99 RX TX LOGS HTTP_RPS HTTP_P50 HTTP_P99 HTTP_ERR HTTP_LOG VALID STANDS HELD RXCPU TXCPU
ROWS=()
for pin in $PINS; do
for setup in $SETUPS; do
	tag=unpinned; [ "$pin" = 1 ] && tag=pinned
	ROWS+=("$setup,$tag")
for run in $(seq "$REPEAT"); do
	k="$setup,$tag#$run"
	say "set-up: $setup, $tag, run $run of $REPEAT"
	unset DOMAIN_XML_EDIT
	edit=""
	case $setup in
	gate-off) edit='s|</ft:ft>|<ft:output-gate enabled="no"/></ft:ft>|;' ;;
	unprotected) edit='/<metadata>/,/<\/metadata>/d;' ;;
	icount) edit="$ICOUNT_EDIT;" ;;
	record) edit="$RECORD_EDIT;" ;;
	esac
	[ "$pin" = 1 ] && edit+=$(pin_edit)
	edit+=${EXTRA_EDIT:-}
	[ -n "$edit" ] && export DOMAIN_XML_EDIT="$edit"
	lab_stop 0
	rm -f "$RECORD_FILE"
	lab_start
	if [ $setup = record ]; then
		# QEMU runs as libvirt's QEMU user: a file it may write.
		install -m 0666 /dev/null "$RECORD_FILE"
	fi
	[ "$pin" = 1 ] && pin_hosts
	if [ $setup = unprotected ] || [ $setup = icount ] || [ $setup = record ]; then
		on a "$ROOT/test/guest/mkdisk.sh" $IMAGES/$DOMAIN.qcow2 >/dev/null
		xml=$(mktemp --suffix=.xml)
		domain_xml "$DOMAIN" >"$xml"
		on a virsh -q -c qemu:///system define "$xml"
		rm -f "$xml"
		virsh_on a start "$DOMAIN" >/dev/null
	else
		start_protected "$DOMAIN"
		if [ "$pin" = 1 ]; then pin_backup || die "could not pin host b's QEMU to CPU 1"; fi
	fi
	wait_for 120 "8 ticks on host A" has_tick a "$DOMAIN" 8
	idle=$(log_rate sleep 5)
	rtt_log=$(log_rate client "$BIN/tcpcheck" rtt -addr $GUEST_IP:7002 -count "$RTT_COUNT")
	rtt=$(tail -n 1 /tmp/ft-bench-step.out) rtt_cpu=$(cat /tmp/ft-bench-step.cpu)
	h0=$(held)
	t0=$(thread_ns)
	rx_log=$(log_rate client "$BIN/tcpcheck" bulk -addr $GUEST_IP:7004 -mode rx -bytes "$BULK_BYTES" -fill "${RX_FILL:-pattern}")
	t1a=$(thread_ns)
	rx=$(tail -n 1 /tmp/ft-bench-step.out) rx_ms=$(cat /tmp/ft-bench-step.ms) rx_cpu=$(cat /tmp/ft-bench-step.cpu)
	h1=$(held)
	settle
	t1b=$(thread_ns)
	h1b=$(held)
	t2=$(thread_ns)
	tx_log=$(log_rate client "$BIN/tcpcheck" bulk -addr $GUEST_IP:7005 -mode tx -bytes "$BULK_BYTES")
	t3a=$(thread_ns)
	tx=$(tail -n 1 /tmp/ft-bench-step.out) tx_ms=$(cat /tmp/ft-bench-step.ms) tx_cpu=$(cat /tmp/ft-bench-step.cpu)
	h2=$(held)
	settle
	t3b=$(thread_ns)
	RXCPU[$k]=$(cpu_per_mb "$t0" "$t1a" "$t1b" "$(field "$rx" bytes)") TXCPU[$k]=$(cpu_per_mb "$t2" "$t3a" "$t3b" "$(field "$tx" bytes)")
	log "CPUs busy: during the echoes $rtt_cpu; rx $rx_cpu; tx $tx_cpu"
	log "CPU per MB (ms; a vCPU, a main loop, b vCPU, b main loop, ftd a, ftd b, all): rx ${RXCPU[$k]}; tx ${TXCPU[$k]}"
	HELD[$k]="$(held_pct "$h0" "$h1" "$rx_ms") $(held_pct "$h1b" "$h2" "$tx_ms")"
	case $setup in gate-*) log "held (lag bound % / window %): rx ${HELD[$k]% *}, tx ${HELD[$k]#* }" ;; esac
	if command -v wrk >/dev/null; then
		HTTP_LOG[$k]=$(log_rate client wrk -t1 -c"$HTTP_CONN" -d"${HTTP_S}s" --latency "http://$GUEST_IP:8080/")
		http=$(cat /tmp/ft-bench-step.out)
		HTTP_RPS[$k]=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$http")
		HTTP_P50[$k]=$(wrk_us "$http" 50%) HTTP_P99[$k]=$(wrk_us "$http" 99%)
		HTTP_ERR[$k]=$(awk '/Socket errors|Non-2xx/ { $1 = $1; printf "%s; ", $0 }' <<<"$http")
		log "http: ${HTTP_RPS[$k]} requests/s, p50 ${HTTP_P50[$k]} µs, p99 ${HTTP_P99[$k]} µs ${HTTP_ERR[$k]}"
	fi
	log "rtt: $rtt"
	log "rx:  $rx"
	log "tx:  $tx"
	if [ "$pin" = 1 ]; then
		for h in a b; do
			if virsh_on $h list --name 2>/dev/null | grep -qx "$DOMAIN"; then
				qp=$(qemu_pid $h "$DOMAIN" 2>/dev/null || true)
				log "host $h: QEMU on CPU $(awk '/^Cpus_allowed_list:/ { print $2 }' "/proc/${qp:-0}/status" 2>/dev/null)"
			fi
		done
	fi
	if [ $setup = record ]; then
		log "record: the log file holds $(stat -c %s "$RECORD_FILE" 2>/dev/null || echo "no") bytes"
	fi
	status=""
	for i in 1 2 3; do
		status=$(ft_on a status "$DOMAIN" 2>/dev/null | sed -n 2p || true)
		[ -z "$status" ] || break
		sleep 1
	done
	[ -z "$status" ] || log "status: $status"
	gate=$(ft_on a status "$DOMAIN" 2>/dev/null | sed -n 's/.*output gate: //p' || true)
	[ -z "$gate" ] || log "gate: $gate"
	VALID[$k]=1
	if [ $setup = gate-on ] || [ $setup = gate-off ]; then
		# The primary's state column (virt-ft status, second line).
		# Replicating at the end, and with the run it started with (a
		# re-protection would start a second one; FT_REPROTECT=no above).
		runs=$(grep -c 'msg="state replicating"' "$LAB_DIR/a/ftd.log" 2>/dev/null || true)
		if [ -z "$status" ]; then
			VALID[$k]=0
			log "run $run left out: the primary's status could not be read"
		elif ! awk '{ for (i = 1; i <= NF; i++) if ($i == "replicating") f = 1 } END { exit !f }' <<<"$status" || [ "${runs:-0}" != 1 ]; then
			VALID[$k]=0
			log "run $run left out: the backup was lost during it (primary's status: $status; runs replicating: ${runs:-0}); $(grep -ho 'replay stalled at icount [0-9]*, next event [A-Z_]*' "$LAB_DIR/b/ftd.log" 2>/dev/null | head -n 1)"
		fi
		STANDS[$k]=$(grep -c 'the replay stood still for' "$LAB_DIR/b/ftd.log" 2>/dev/null || true)
		log "the backup's stands and stalls, by how its QEMU's threads spent them: $(stand_kinds "$LAB_DIR/b/ftd.log")"
	fi
	RTT_MED[$k]=$(field "$rtt" median_us) RTT_P99[$k]=$(field "$rtt" p99_us)
	RX[$k]=$(field "$rx" mb_per_s) TX[$k]=$(field "$tx" mb_per_s)
	LOGS[$k]="$idle|$rtt_log|$rx_log|$tx_log"
done
done
done
# The medians of each set-up's valid runs.
for s in "${ROWS[@]}"; do
	declare -A vals=()
	n=0 stands="" held=""
	for run in $(seq "$REPEAT"); do
		k="$s#$run"
		[ -n "${STANDS[$k]:-}" ] && stands+="${STANDS[$k]} "
		case $s in gate-*) held+="${HELD[$k]:-} / " ;; esac
		[ "${VALID[$k]:-0}" = 1 ] || continue
		n=$((n + 1))
		vals[rm]+="${RTT_MED[$k]} " vals[rp]+="${RTT_P99[$k]} " vals[rx]+="${RX[$k]} " vals[tx]+="${TX[$k]} "
		read -r -a rc <<<"${RXCPU[$k]:-}"
		read -r -a tc <<<"${TXCPU[$k]:-}"
		for i in 0 1 2 3 4 5 6; do vals[rc$i]+="${rc[$i]:-} " vals[tc$i]+="${tc[$i]:-} "; done
		vals[hr]+="${HTTP_RPS[$k]:-} " vals[h5]+="${HTTP_P50[$k]:-} " vals[h9]+="${HTTP_P99[$k]:-} " vals[hl]+="${HTTP_LOG[$k]:-} "
		IFS='|' read -r l0 l1 l2 l3 <<<"${LOGS[$k]}"
		vals[l0]+="$l0 " vals[l1]+="$l1 " vals[l2]+="$l2 " vals[l3]+="$l3 "
		[ -z "${HTTP_ERR[$k]:-}" ] || HTTP_ERR[$s]+="run $run: ${HTTP_ERR[$k]}"
	done
	for f in rm rp rx tx hr h5 h9 hl l0 l1 l2 l3 rc{0..6} tc{0..6}; do vals[$f]=$(median ${vals[$f]:-}); done
	RXCPU[$s]="${vals[rc0]:--} | ${vals[rc1]:--} | ${vals[rc2]:--} | ${vals[rc3]:--} | ${vals[rc4]:--} | ${vals[rc5]:--} | ${vals[rc6]:--}"
	TXCPU[$s]="${vals[tc0]:--} | ${vals[tc1]:--} | ${vals[tc2]:--} | ${vals[tc3]:--} | ${vals[tc4]:--} | ${vals[tc5]:--} | ${vals[tc6]:--}"
	RTT_MED[$s]=${vals[rm]} RTT_P99[$s]=${vals[rp]} RX[$s]=${vals[rx]} TX[$s]=${vals[tx]}
	HTTP_RPS[$s]=${vals[hr]} HTTP_P50[$s]=${vals[h5]} HTTP_P99[$s]=${vals[h9]} HTTP_LOG[$s]=${vals[hl]}
	LOGS[$s]="${vals[l0]:--} | ${vals[l1]:--} | ${vals[l2]:--} | ${vals[l3]:--}"
	VALID[$s]="$n of $REPEAT" STANDS[$s]=${stands:--} HELD[$s]=${held% / }
	[ -n "${HELD[$s]}" ] || HELD[$s]=-
	unset vals
done
# ratio A B: A / B to 3 decimals ("-" when either is missing).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.3f", a / b }'; }
{
	echo "Medians of each set-up's valid runs (REPEAT=$REPEAT; a protected run whose backup was lost is left out)."
	echo
	echo "| set-up | valid runs | RTT median (µs) | RTT median ÷ unprotected | RTT p99 (µs) | bulk rx (MB/s) | rx ÷ unprotected | bulk tx (MB/s) | tx ÷ unprotected | log MB/s idle | log MB/s during RTT | log MB/s during rx | log MB/s during tx | the backup's replay stands ≥ 1 s, per run (boot included) | primary held, % of rx and of tx (lag bound/window), per run |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
	for k in "${ROWS[@]}"; do
		u="unprotected,${k#*,}"
		echo "| ${k%,*} (${k#*,}) | ${VALID[$k]} | ${RTT_MED[$k]} | $(ratio "${RTT_MED[$k]}" "${RTT_MED[$u]:-}") | ${RTT_P99[$k]} | ${RX[$k]} | $(ratio "${RX[$k]}" "${RX[$u]:-}") | ${TX[$k]} | $(ratio "${TX[$k]}" "${TX[$u]:-}") | ${LOGS[$k]} | ${STANDS[$k]} | ${HELD[$k]} |"
	done
	echo
	echo "CPU per MB of bulk transfer (ms of CPU time per 10^6 bytes, /proc schedstat; medians of the valid runs): host a's QEMU is the primary (or the only QEMU), host b's the backup; all: every thread of both QEMUs and both libvirt-ftd, the client's not counted"
	echo
	echo "| set-up | transfer | a: vCPU | a: main loop | b: vCPU | b: main loop | libvirt-ftd a | libvirt-ftd b | all |"
	echo "|---|---|---|---|---|---|---|---|---|"
	for k in "${ROWS[@]}"; do
		echo "| ${k%,*} (${k#*,}) | rx | ${RXCPU[$k]} |"
		echo "| ${k%,*} (${k#*,}) | tx | ${TXCPU[$k]} |"
	done
	if command -v wrk >/dev/null; then
		echo
		echo "HTTP: wrk -t1 -c$HTTP_CONN -d${HTTP_S}s --latency against busybox httpd in the guest (a 960-byte page)"
		echo
		echo "| set-up | requests/s | ÷ unprotected | latency p50 (µs) | latency p99 (µs) | log MB/s | errors |"
		echo "|---|---|---|---|---|---|---|"
		for k in "${ROWS[@]}"; do
			u="unprotected,${k#*,}"
			echo "| ${k%,*} (${k#*,}) | ${HTTP_RPS[$k]:-} | $(ratio "${HTTP_RPS[$k]:-}" "${HTTP_RPS[$u]:-}") | ${HTTP_P50[$k]:-} | ${HTTP_P99[$k]:-} | ${HTTP_LOG[$k]:-} | ${HTTP_ERR[$k]:-none} |"
		done
	fi
} | tee "$OUT"
rm -f /tmp/ft-bench-step.out /tmp/ft-bench-step.cpu "$RECORD_FILE"
