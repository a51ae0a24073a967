#!/usr/bin/env bash
# TCP traffic to a protected guest: the client namespace reads the guest's
# counter stream and does echo round trips, then powers the guest off
# through its control port; the backup must follow to the end of the log.
#
# Needs the patched QEMU (make e2e-network sets EMULATOR): on stock 7.2 the
# virtio-net transmit path is not recorded and the backup's replay stalls
# after TCP traffic (packaging/qemu/README.md, patch 0003).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap lab_stop EXIT
fresh_protected_lab 10
for round in 1 2 3; do
	client sh -c "timeout 5 socat -u TCP:$GUEST_IP:7001,connect-timeout=3 - 2>/dev/null | head -n 3" | tr '\n' ' ' | sed 's/^/   counter stream: /'; echo
	echo "e2e $$ $round" | client socat -T 3 - TCP:$GUEST_IP:7002,connect-timeout=3 | grep -q "e2e $$ $round" || die "echo service did not echo"
	log "echo round trip $round answered"
	sleep 1
done
n=$(last_tick a "$DOMAIN")
wait_for 60 "tick $n on host B" has_tick b "$DOMAIN" "$n"
ticks_consecutive b "$DOMAIN" || die "the backup's console diverged"
log "disk writer: $(guest_ctl status | tr -d '\r' | head -n 1)"
guest_ctl poweroff >/dev/null || true
wait_for 120 "$DOMAIN to shut off on host A" sh -c "'$LAB' exec a virsh -c qemu:///system domstate $DOMAIN | grep -q 'shut off'"
wait_for 60 "the backup to replay to the end and stop" sh -c "! '$LAB' exec b virsh -q -c qemu:///system list --name | grep -qx $DOMAIN"
log "the backup replayed the TCP traffic and the shutdown"
