#!/usr/bin/env bash
# Network benchmarks of the output gate in the two-host lab (part of
# `make bench`): TCP round-trip time between the client namespace and the
# guest (median and p99), bulk receive (client → guest sink) and transmit
# (guest source → client) throughput, and the log channel's bandwidth during
# each, for three set-ups of the same guest and QEMU:
#   gate-on      protected, output gate on (the default)
#   gate-off     protected, <ft:output-gate enabled="no">
#   icount       the same domain without the ft element, with -icount
#                shift=auto as record/replay uses (no log, no backup): the
#                ceiling of what a protected VM can reach under TCG
#   unprotected  the same domain without the ft element (no record/replay)
# Then an application benchmark with a client nobody here wrote: wrk
# (Debian's package, installed on demand) against the guest's busybox httpd
# (a 960-byte page on port 8080), HTTP_CONN connections for HTTP_S seconds:
# requests per second and latency percentiles.
# Each set-up runs unpinned and pinned (PINS="0 1"): pinned, host a's QEMU
# runs on CPU 0 (cputune in the definition) and host b's backup QEMU is
# moved to CPU 1 (virsh emulatorpin/vcpupin --live) as soon as it
# replays, as test/bench/cpu.sh does: the two-host estimate. Ratios are to
# the unprotected row of the same pinning.
# Prints markdown tables (also written to $OUT, default
# /tmp/libvirt-ft-bench-net.md).
#   EMULATOR=... [SETUPS="gate-on gate-off icount unprotected"] [PINS="0 1"] [RTT_COUNT=300] [BULK_BYTES=8000000] [HTTP_CONN=8] [HTTP_S=10] test/bench/net.sh
set -euo pipefail
source "$(dirname "$0")/../e2e/lib.sh"
RTT_COUNT=${RTT_COUNT:-300}
BULK_BYTES=${BULK_BYTES:-8000000}
OUT=${OUT:-/tmp/libvirt-ft-bench-net.md}
HTTP_CONN=${HTTP_CONN:-8}
HTTP_S=${HTTP_S:-10}
SETUPS=${SETUPS:-gate-on gate-off icount unprotected}
PINS=${PINS:-0 1}
PIN_EDIT="s|</devices>|</devices><cputune><vcpupin vcpu='0' cpuset='0'/><emulatorpin cpuset='0'/></cputune>|;"
# The icount set-up's edit: no ft element; -icount as xml/generate.go's
# icountValue gives it, without rr=.
ICOUNT_EDIT='/<metadata>/,/<\/metadata>/d;s|<domain type=.qemu.>|<domain type="qemu" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">|;s|</devices>|</devices><qemu:commandline><qemu:arg value="-icount"/><qemu:arg value="shift=auto"/></qemu:commandline>|'
[ -x "$BIN/tcpcheck" ] || die "run make build first (bin/tcpcheck)"
if ! command -v wrk >/dev/null; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk >/dev/null 2>&1 || true
fi
command -v wrk >/dev/null || echo "net.sh: wrk is missing (apt-get install wrk): the HTTP rows are left out" >&2
trap lab_stop EXIT

# field LINE KEY: the value of KEY=... in a tcpcheck summary line.
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -n 1; }
# sent_bytes: the primary's log bytes sent so far (0 when unprotected).
sent_bytes() {
	ft_on a status --local --json "$DOMAIN" 2>/dev/null | sed -n 's/.*"sent_bytes": \([0-9]*\).*/\1/p' | head -n 1 || true
}
# log_rate CMD...: run CMD; print "MB/s of log sent while it ran".
log_rate() {
	local b0 b1 t0 t1
	b0=$(sent_bytes); t0=$(date +%s%N)
	"$@" >/tmp/ft-bench-step.out
	b1=$(sent_bytes); t1=$(date +%s%N)
	if [ -n "$b0" ] && [ -n "$b1" ]; then
		awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) 'BEGIN { printf "%.2f", b / (t / 1e9) / 1e6 }'
	else
		printf -- "-"
	fi
}

# wrk_us OUTPUT PCT: wrk's latency percentile PCT ("50%") in µs.
wrk_us() {
	awk -v p="$2" '$1 == p { v = $2
		if (v ~ /us$/) { sub(/us$/, "", v); printf "%.0f\n", v }
		else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.0f\n", v * 1000 }
		else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.0f\n", v * 1e6 }
		else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.0f\n", v * 6e7 } }' <<<"$1" | head -n 1
}

declare -A RTT_MED RTT_P99 RX TX LOGS HTTP_RPS HTTP_P50 HTTP_P99 HTTP_ERR HTTP_LOG
ROWS=()
for pin in $PINS; do
for setup in $SETUPS; do
	tag=unpinned; [ "$pin" = 1 ] && tag=pinned
	k="$setup,$tag"
	ROWS+=("$k")
	say "set-up: $setup, $tag"
	unset DOMAIN_XML_EDIT
	edit=""
	case $setup in
	gate-off) edit='s|</ft:ft>|<ft:output-gate enabled="no"/></ft:ft>|;' ;;
	unprotected) edit='/<metadata>/,/<\/metadata>/d;' ;;
	icount) edit="$ICOUNT_EDIT;" ;;
	esac
	[ "$pin" = 1 ] && edit+=$PIN_EDIT
	[ -n "$edit" ] && export DOMAIN_XML_EDIT="$edit"
	lab_stop
	lab_start
	if [ $setup = unprotected ] || [ $setup = icount ]; then
		on a "$ROOT/test/guest/mkdisk.sh" $IMAGES/$DOMAIN.qcow2 >/dev/null
		xml=$(mktemp --suffix=.xml)
		domain_xml "$DOMAIN" >"$xml"
		on a virsh -q -c qemu:///system define "$xml"
		rm -f "$xml"
		virsh_on a start "$DOMAIN" >/dev/null
	else
		start_protected "$DOMAIN"
		if [ "$pin" = 1 ]; then
			# The backup's definition is the primary's, cputune included.
			virsh_on b emulatorpin "$DOMAIN" 1 --live >/dev/null
			virsh_on b vcpupin "$DOMAIN" 0 1 --live >/dev/null
		fi
	fi
	wait_for 120 "8 ticks on host A" has_tick a "$DOMAIN" 8
	idle=$(log_rate sleep 5)
	rtt_log=$(log_rate client "$BIN/tcpcheck" rtt -addr $GUEST_IP:7002 -count "$RTT_COUNT")
	rtt=$(tail -n 1 /tmp/ft-bench-step.out)
	rx_log=$(log_rate client "$BIN/tcpcheck" bulk -addr $GUEST_IP:7004 -mode rx -bytes "$BULK_BYTES")
	rx=$(tail -n 1 /tmp/ft-bench-step.out)
	tx_log=$(log_rate client "$BIN/tcpcheck" bulk -addr $GUEST_IP:7005 -mode tx -bytes "$BULK_BYTES")
	tx=$(tail -n 1 /tmp/ft-bench-step.out)
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
				log "host $h: $(virsh_on $h emulatorpin "$DOMAIN" 2>/dev/null | awk 'NF == 2 && $1 ~ /^\*/ { printf "emulator on CPU %s", $2 }'), $(virsh_on $h vcpupin "$DOMAIN" 2>/dev/null | awk '$1 == "0" { printf "vCPU 0 on CPU %s", $2 }')"
			fi
		done
	fi
	ft_on a status "$DOMAIN" 2>/dev/null | sed -n 2p | sed "s/^/   status: /" || true
	gate=$(ft_on a status "$DOMAIN" 2>/dev/null | sed -n 's/.*output gate: //p' || true)
	[ -z "$gate" ] || log "gate: $gate"
	RTT_MED[$k]=$(field "$rtt" median_us) RTT_P99[$k]=$(field "$rtt" p99_us)
	RX[$k]=$(field "$rx" mb_per_s) TX[$k]=$(field "$tx" mb_per_s)
	LOGS[$k]="$idle | $rtt_log | $rx_log | $tx_log"
done
done
# ratio A B: A / B to 3 decimals ("-" when either is missing).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.3f", a / b }'; }
{
	echo "| set-up | RTT median (µs) | RTT median ÷ unprotected | RTT p99 (µs) | bulk rx (MB/s) | rx ÷ unprotected | bulk tx (MB/s) | tx ÷ unprotected | log MB/s idle | log MB/s during RTT | log MB/s during rx | log MB/s during tx |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
	for k in "${ROWS[@]}"; do
		u="unprotected,${k#*,}"
		echo "| ${k%,*} (${k#*,}) | ${RTT_MED[$k]} | $(ratio "${RTT_MED[$k]}" "${RTT_MED[$u]:-}") | ${RTT_P99[$k]} | ${RX[$k]} | $(ratio "${RX[$k]}" "${RX[$u]:-}") | ${TX[$k]} | $(ratio "${TX[$k]}" "${TX[$u]:-}") | ${LOGS[$k]} |"
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
rm -f /tmp/ft-bench-step.out
