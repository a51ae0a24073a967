#!/usr/bin/env bash
# TCP traffic to a protected guest, output gate on: the client namespace
# reads the guest's counter stream, does echo round trips and sends bulk
# data to the guest, then powers the guest off through its control port; the
# backup must follow to the end of the log.
#
# It also checks that nothing the guest receives is changed by the output
# gate (issue 4, item 4): every frame host A's kernel delivered into the
# guest's tap while the traffic ran (tcpdump -Q out on the tap) must be the
# next ASYNC_NET log entry in the record log libvirt-ftd read from QEMU
# (LIBVIRT_FT_TEE_DIR), in the same order and byte for byte; the backup
# replays exactly those entries (test/tools/rxcheck).
#
# The capture must be complete, or the comparison proves nothing: the
# frames tcpdump captured must be exactly the frames the tap took while it
# ran, as the tap's own counters on host A count them (tx_packets, read by
# QEMU, plus tx_dropped), and tcpdump must report no frame dropped by the
# kernel.
#
# Needs the patched QEMU (make e2e-network sets EMULATOR): on stock 7.2 the
# virtio-net transmit path is not recorded and the backup's replay stalls
# after TCP traffic (packaging/qemu/README.md, patch 0003).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[ -x "$BIN/tcpcheck" ] && [ -x "$BIN/rxcheck" ] || die "run make build first (bin/tcpcheck, bin/rxcheck)"
# The tee directory must be visible to libvirt-ftd in host A's mount
# namespace, which has a /run of its own (TMPDIR may be there): /tmp is
# shared with it.
LIBVIRT_FT_TEE_DIR=$(mktemp -d /tmp/ft-tee.XXXXXX)
export LIBVIRT_FT_TEE_DIR
cap=$LIBVIRT_FT_TEE_DIR/rx.pcap
tcpdump_pid=
cleanup() {
	local rc=$?
	[ -z "$tcpdump_pid" ] || kill "$tcpdump_pid" 2>/dev/null || true
	[ "${KEEP_CAPTURE:-0}" = 1 ] && echo "capture and record log kept in $LIBVIRT_FT_TEE_DIR" || rm -rf "$LIBVIRT_FT_TEE_DIR"
	return $rc
}
trap '_rc=$?; cleanup; lab_stop $_rc' EXIT
fresh_protected_lab 10
# The XML is read whole before grep looks at it: piped into grep -q under
# pipefail, virsh could be killed by SIGPIPE for its next write once grep
# had its match and quit, and the check would fail on a gated primary
# (what CI's stop 30 saw).
xml=$(virsh_on a dumpxml "$DOMAIN") || die "virsh dumpxml $DOMAIN failed on host A"
grep -q "filter-redirector,id=ft-gate0" <<<"$xml" || die "the primary runs without its output gate"
tap=$(virsh_on a domiflist "$DOMAIN" | awk '$1 ~ /^vnet/ {print $1; exit}')
[ -n "$tap" ] || die "no tap device for $DOMAIN on host A"

# tap_stats: "TX_PACKETS TX_DROPPED" of the guest's tap on host A. The tap
# counts a frame the kernel hands it in tx_packets when QEMU reads it, in
# tx_dropped when it cannot queue it: their sum is every frame delivered
# into the tap, each of which tcpdump -Q out sees.
tap_stats() {
	on a cat "/sys/class/net/$tap/statistics/tx_packets" "/sys/class/net/$tap/statistics/tx_dropped" | paste -sd ' ' -
}
stats_sum() { local p d; read -r p d <<<"$1"; echo $((p + d)); }

# start_capture: tcpdump on the tap, until it listens.
# --immediate-mode: without it libpcap hands frames over a block at a
# time, and the last ones would still be in the kernel's ring when
# tcpdump is stopped. In immediate mode, though, libpcap's ring has one
# slot per frame, each as large as the largest frame (64 KiB: the tap takes
# GSO frames), and the default 2 MiB buffer makes 32 slots: a burst of the
# bulk transfer overflowed them while tcpdump waited for a CPU ("15 packets
# dropped by kernel"). -B 65536 (KiB) makes 1023 slots, more than the
# whole scenario's traffic into the guest (894 frames in that run). -s 0:
# whole frames (rxcheck refuses a cut one). -U: each frame written to the
# file at once.
start_capture() {
	ip netns exec ftlab-a tcpdump -i "$tap" -Q out -s 0 -B 65536 -U --immediate-mode -w "$cap" 2>"$cap.log" &
	tcpdump_pid=$!
	wait_for 10 "tcpdump on host A's $tap" grep -q "listening on" "$cap.log"
}
stop_capture() {
	kill -INT "$tcpdump_pid"
	wait "$tcpdump_pid" || true
	tcpdump_pid=
}

# The tap's counters are read before tcpdump starts and once it listens;
# when a frame went into the tap in between (a stray broadcast), nobody
# knows whether the capture holds it: start over.
for attempt in 1 2 3 4 5; do
	stats_before=$(tap_stats)
	start_capture
	stats_start=$(tap_stats)
	[ "$stats_before" != "$stats_start" ] || break
	log "frames went into $tap while tcpdump started (tx_packets tx_dropped: $stats_before, then $stats_start): starting it again"
	stop_capture
	[ $attempt -lt 5 ] || die "frames kept going into $tap while tcpdump started: no capture with a known start"
done
log "tcpdump's ring on host A: $(ip netns exec ftlab-a ss -0 -e -n 2>/dev/null | grep -o 'ring_rx([^)]*)' | head -n 1 || true)"
for round in 1 2 3; do
	client sh -c "timeout 5 socat -u TCP:$GUEST_IP:7001,connect-timeout=3 - 2>/dev/null | head -n 3" | tr '\n' ' ' | sed 's/^/   counter stream: /'; echo
	echo "e2e $$ $round" | client socat -t 5 -T 5 - TCP:$GUEST_IP:7002,connect-timeout=3 | grep -q "e2e $$ $round" || die "echo service did not echo"
	log "echo round trip $round answered"
	sleep 1
done
log "$(client "$BIN/tcpcheck" echo -addr $GUEST_IP:7002 -duration 8s)"
log "$(client "$BIN/tcpcheck" bulk -addr $GUEST_IP:7004 -mode rx -bytes 2000000)"
# The guest's last ACKs and FIN handshake frames: wait until the tap's
# counters stood still for a second (at most 20 s), so that no frame goes
# into the tap while tcpdump stops.
sleep 1
stats_end=$(tap_stats)
for _ in $(seq 20); do
	sleep 1
	s=$(tap_stats)
	[ "$s" != "$stats_end" ] || break
	stats_end=$s
done
stop_capture
stats_after=$(tap_stats)
log "tcpdump: $(grep -E 'captured|dropped by kernel' "$cap.log" | tr '\n' ' ')"
grep -q "^0 packets dropped by kernel" "$cap.log" || die "tcpdump dropped frames; the comparison would be incomplete"
captured=$(awk '$2 ~ /^packets?$/ && $3 == "captured" { print $1 }' "$cap.log")
[ -n "$captured" ] || die "no \"packets captured\" line from tcpdump: $(tr '\n' ' ' <"$cap.log")"
read -r p0 d0 <<<"$stats_start"
read -r p1 d1 <<<"$stats_end"
delivered=$(($(stats_sum "$stats_end") - $(stats_sum "$stats_start")))
log "guest's tap $tap while tcpdump ran: $((p1 - p0)) frames read by QEMU (tx_packets $p0 -> $p1) + $((d1 - d0)) dropped (tx_dropped $d0 -> $d1) = $delivered delivered; tcpdump captured $captured"
if [ "$stats_after" = "$stats_end" ]; then
	[ "$captured" -eq "$delivered" ] ||
		die "tcpdump captured $captured frames, the tap took $delivered: the capture is not the traffic into the guest"
else
	# Frames went into the tap while tcpdump stopped: the capture may hold
	# some of them, and must hold every frame before.
	log "$(($(stats_sum "$stats_after") - $(stats_sum "$stats_end"))) frames went into the tap while tcpdump stopped (tx_packets tx_dropped: $stats_after)"
	[ "$captured" -ge "$delivered" ] ||
		die "tcpdump captured $captured frames, the tap took $delivered before tcpdump stopped: frames are missing from the capture"
fi
drops=$(($(cut -d' ' -f2 <<<"$stats_after") - $(cut -d' ' -f2 <<<"$stats_before")))
log "frames the tap dropped (the guest's QEMU did not read them): $drops"
n=$(last_tick a "$DOMAIN")
wait_for 60 "tick $n on host B" has_tick b "$DOMAIN" "$n"
ticks_consecutive b "$DOMAIN" || die "the backup's console diverged"
log "disk writer: $(guest_ctl status | tr -d '\r' | head -n 1)"
guest_ctl poweroff >/dev/null || true
wait_for 120 "$DOMAIN to shut off on host A" sh -c "'$LAB' exec a virsh -c qemu:///system domstate $DOMAIN | grep -q 'shut off'"
wait_for 60 "the backup to replay to the end and stop" sh -c "! '$LAB' exec b virsh -q -c qemu:///system list --name | grep -qx $DOMAIN"
log "the backup replayed the TCP traffic and the shutdown"
rrlog=$(ls "$LIBVIRT_FT_TEE_DIR"/*.rrstream)
log "record log: $(stat -c %s "$rrlog") bytes"
[ "$drops" -eq 0 ] || die "the tap dropped $drops frames: they were captured but never reached QEMU"
result=$("$BIN/rxcheck" "$cap" "$rrlog") || die "what the guest received differs from what host A delivered: $result"
log "$result"
# The file rxcheck read holds every frame tcpdump captured.
file_frames=$(sed -n 's/.* captured=\([0-9]*\) .*/\1/p' <<<"$result")
[ "${file_frames:-0}" -eq "$captured" ] || die "the capture file holds $file_frames frames, tcpdump captured $captured"
# The capture must hold the traffic: at least the 2 MB sent to the sink
# (frames may be GSO super-frames, so count bytes, not frames).
captured_bytes=$(sed -n 's/.* captured_bytes=\([0-9]*\).*/\1/p' <<<"$result")
[ "${captured_bytes:-0}" -ge 2000000 ] || die "the capture holds $captured_bytes bytes, less than the 2 MB sent to the guest: wrong tap?"
# ... up to its end: the client's FIN to the sink.
fins=$(tcpdump -r "$cap" -nn 'tcp dst port 7004 and tcp[tcpflags] & tcp-fin != 0' 2>/dev/null | wc -l)
[ "$fins" -ge 1 ] || die "the capture stops before the end of the bulk transfer (no FIN to port 7004)"
log "every frame delivered into the guest's tap is, in order and byte for byte, the next ASYNC_NET log entry the backup replays"
