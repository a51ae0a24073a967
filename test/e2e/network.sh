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
# Needs the patched QEMU (make e2e-network sets EMULATOR): on stock 7.2 the
# virtio-net transmit path is not recorded and the backup's replay stalls
# after TCP traffic (packaging/qemu/README.md, patch 0003).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[ -x "$BIN/tcpcheck" ] && [ -x "$BIN/rxcheck" ] || die "run make build first (bin/tcpcheck, bin/rxcheck)"
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
trap 'cleanup; lab_stop' EXIT
fresh_protected_lab 10
virsh_on a dumpxml "$DOMAIN" | grep -q "filter-redirector,id=ft-gate0" || die "the primary runs without its output gate"
tap=$(virsh_on a domiflist "$DOMAIN" | awk '$1 ~ /^vnet/ {print $1; exit}')
[ -n "$tap" ] || die "no tap device for $DOMAIN on host A"
drops_before=$(on a cat /sys/class/net/$tap/statistics/tx_dropped)
# --immediate-mode: without it libpcap hands frames over a block at a
# time, and the last ones would still be in the kernel's ring when
# tcpdump is stopped.
ip netns exec ftlab-a tcpdump -i "$tap" -Q out -s 0 -U --immediate-mode -w "$cap" 2>"$cap.log" &
tcpdump_pid=$!
wait_for 10 "tcpdump on host A's $tap" grep -q "listening on" "$cap.log"
for round in 1 2 3; do
	client sh -c "timeout 5 socat -u TCP:$GUEST_IP:7001,connect-timeout=3 - 2>/dev/null | head -n 3" | tr '\n' ' ' | sed 's/^/   counter stream: /'; echo
	echo "e2e $$ $round" | client socat -t 5 -T 5 - TCP:$GUEST_IP:7002,connect-timeout=3 | grep -q "e2e $$ $round" || die "echo service did not echo"
	log "echo round trip $round answered"
	sleep 1
done
log "$(client "$BIN/tcpcheck" echo -addr $GUEST_IP:7002 -duration 8s)"
log "$(client "$BIN/tcpcheck" bulk -addr $GUEST_IP:7004 -mode rx -bytes 2000000)"
sleep 1 # the guest's last ACKs and FIN handshake frames
kill -INT "$tcpdump_pid"
wait "$tcpdump_pid" || true
tcpdump_pid=
log "tcpdump: $(grep -E 'captured|dropped by kernel' "$cap.log" | tr '\n' ' ')"
grep -q "^0 packets dropped by kernel" "$cap.log" || die "tcpdump dropped frames; the comparison would be incomplete"
drops=$(( $(on a cat /sys/class/net/$tap/statistics/tx_dropped) - drops_before ))
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
# The capture must hold the traffic: at least the 2 MB sent to the sink
# (frames may be GSO super-frames, so count bytes, not frames).
captured_bytes=$(sed -n 's/.* captured_bytes=\([0-9]*\).*/\1/p' <<<"$result")
[ "${captured_bytes:-0}" -ge 2000000 ] || die "the capture holds $captured_bytes bytes, less than the 2 MB sent to the guest: wrong tap?"
# ... up to its end: the client's FIN to the sink.
fins=$(tcpdump -r "$cap" -nn 'tcp dst port 7004 and tcp[tcpflags] & tcp-fin != 0' 2>/dev/null | wc -l)
[ "$fins" -ge 1 ] || die "the capture stops before the end of the bulk transfer (no FIN to port 7004)"
log "every frame delivered into the guest's tap is, in order and byte for byte, the next ASYNC_NET log entry the backup replays"
