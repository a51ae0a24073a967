#!/usr/bin/env bash
# End-to-end replication: a domain defined with `virsh define` on host A (with
# the ft element) starts with `virsh start`, its backup replays on host B in
# lockstep; the consoles print the same tick lines; after a clean guest
# shutdown both disks hold identical, verified disk-writer records.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
VERBOSE=${VERBOSE:-0}
trap lab_stop EXIT

say "lab: two hosts (A $HOST_A_IP, B $HOST_B_IP), a LAN bridge and a client namespace"
lab_stop
lab_start

say "virsh define $DOMAIN on host A (a plain domain plus our <ft:ft> element)"
define_protected "$DOMAIN"
grep -q "input is not replicated" "$LAB_DIR/a/ftd.log" ||
	die "libvirt-ftd did not warn that console input is not replicated"
log "libvirt-ftd rewrote the definition for record/replay:"
virsh_on a dumpxml --inactive "$DOMAIN" | grep -E "qemu:arg value='(shift|filter-replay|\{)" | sed 's/^/     /'

say "virsh start $DOMAIN on host A"
virsh_on a start "$DOMAIN"
wait_for 60 "the backup to run in replay mode on host B" sh -c "[ \"\$(bash -c 'source $ROOT/test/e2e/lib.sh; replay_mode b $DOMAIN')\" = play ]"
[ "$(replay_mode a "$DOMAIN")" = record ] || die "primary is not recording"
log "host A: $(virsh_on a domstate "$DOMAIN") (query-replay mode: record)"
log "host B: $(virsh_on b domstate "$DOMAIN") (query-replay mode: play)"

say "waiting for 25 tick lines on host A's console"
wait_for 120 "25 ticks on host A" has_tick a "$DOMAIN" 25
client sh -c "timeout 5 socat -u TCP:$GUEST_IP:7001,connect-timeout=3 - | head -n 3" | tr '\n' ' ' | sed 's/^/   counter service from the client: /'; echo
echo "e2e $$" | client socat -T 3 - TCP:$GUEST_IP:7002,connect-timeout=3 | grep -q "e2e $$" || die "echo service did not echo"
log "echo service answered from the client namespace"

n=$(last_tick a "$DOMAIN")
say "host A printed tick $n; waiting for host B's backup to replay up to it"
wait_for 120 "tick $n on host B" has_tick b "$DOMAIN" "$n"
ft_on a status
ft_on b status
tick_lines a "$DOMAIN" | awk -v lo=$((n - 19)) -v hi=$n '$2 >= lo && $2 <= hi' > /tmp/ft-ticks-a
tick_lines b "$DOMAIN" | awk -v lo=$((n - 19)) -v hi=$n '$2 >= lo && $2 <= hi' > /tmp/ft-ticks-b
[ "$(wc -l < /tmp/ft-ticks-a)" -eq 20 ] || die "expected 20 tick lines on A, got $(wc -l < /tmp/ft-ticks-a)"
if ! diff -u /tmp/ft-ticks-a /tmp/ft-ticks-b; then die "consoles differ"; fi
say "the last 20 tick lines are identical on both hosts (uptime included):"
paste -d'|' /tmp/ft-ticks-a /tmp/ft-ticks-b | tail -n 5 | awk -F'|' '{printf "     A: %-28s B: %s\n", $1, $2}'

say "libvirtd restart on host A while replicating: libvirt-ftd reconnects and re-registers its events"
lab restart-libvirtd a >/dev/null
wait_for 30 "libvirt-ftd on host A to reconnect" sh -c "[ \$(grep -c 'connected to qemu:///system' '$LAB_DIR/a/ftd.log') -ge 2 ]"
[ "$(virsh_on a domstate "$DOMAIN")" = running ] || die "the primary did not survive the libvirtd restart (reconnect hook?)"
m=$(last_tick a "$DOMAIN")
wait_for 60 "tick $((m + 2)) on host B" has_tick b "$DOMAIN" $((m + 2))
log "reconnected; the primary kept running and host B kept replicating (tick $((m + 2)))"

say "clean guest shutdown (poweroff through the guest's control port)"
log "disk writer: $(guest_ctl status | tr -d '\r' | head -n 1)"
guest_ctl poweroff >/dev/null || true
wait_for 120 "$DOMAIN to shut off on host A" sh -c "'$LAB' exec a virsh -c qemu:///system domstate $DOMAIN | grep -q 'shut off'"
wait_for 120 "the backup to end on host B" sh -c "! '$LAB' exec b virsh -q -c qemu:///system list --name | grep -qx $DOMAIN"
on a cp "$IMAGES/$DOMAIN.qcow2" /tmp/ft-disk-a.qcow2
on b cp "$IMAGES/$DOMAIN.qcow2" /tmp/ft-disk-b.qcow2
"$BIN/diskcheck" /tmp/ft-disk-a.qcow2 /tmp/ft-disk-b.qcow2
rm -f /tmp/ft-disk-a.qcow2 /tmp/ft-disk-b.qcow2 /tmp/ft-ticks-a /tmp/ft-ticks-b

say "nothing left behind"
for h in a b; do
	left=$(on $h find /var/lib/libvirt-ft -type p 2>/dev/null || true)
	[ -z "$left" ] || die "FIFOs left on host $h: $left"
done
log "no FIFO left on either host"
