#!/usr/bin/env bash
# virt-ft protect of a VM started without the ft element (issue 13;
# plugin/convert.go, packaging/qemu 0022). The demo guest is defined on
# host A without the ft element and started: a plain VM (no icount, no
# record log, no output gate), with two TCP clients connected (tcp.sh's
# echo exchange and counter stream). Then `virt-ft protect ftdemo --peer B`
# on host A: the VM moves live to host B, which runs it with icount and
# gives it a backup on host A by itself (automatic re-protection). Checked:
# - the VM never reboots and never stops ticking: the first tick on host B
#   follows host A's last one, a second later in the guest's uptime, and
#   every tick after follows the one before;
#   one copy runs at a time: host A's QEMU is gone once host B runs it;
# - host B's VM becomes protected: host A's new backup replays;
# - a failover afterwards works: kill -9 of host B's QEMU, host A's backup
#   goes live;
# - the clients stay connected throughout, every byte verified; RARP frames
#   with the guest's MAC are seen for the move and for the failover;
# - host A's definition has the ft element afterwards;
# - then (host A re-protected the VM onto host B by itself) virt-ft
#   unprotect on host A and a clean shutdown of the guest: nothing is left
#   on either host (no QEMU, FIFO, socket or pairing record), and the disk
#   writer's records verify.
#   test/e2e/protect-plain.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
export FT_REPROTECT= # the product's default: automatic re-protection on
STALL_LIMIT=${STALL_LIMIT:-10s}
[ -x "$BIN/tcpcheck" ] || die "run make build first (bin/tcpcheck)"
trap '_rc=$?; kill_clients; lab_stop $_rc' EXIT
pids=()
kill_clients() { local p; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }

say "protect a running VM started without the ft element: it moves to host B, which re-protects it onto host A"
lab_stop
lab_start
on a "$ROOT/test/guest/mkdisk.sh" $IMAGES/$DOMAIN.qcow2 >/dev/null
xml=$(mktemp --suffix=.xml)
SCRATCH+=("$xml")
# The demo domain without its <metadata> (the ft element): a plain VM.
domain_xml "$DOMAIN" '/<metadata>/,/<\/metadata>/d' >"$xml"
! grep -q 'ft:ft' "$xml" || die "the plain domain still has the ft element"
virsh_on a define "$xml" >/dev/null
virsh_on a start "$DOMAIN" >/dev/null
wait_for 120 "8 ticks of the plain VM on host A" has_tick a "$DOMAIN" 8
[ "$(replay_mode a "$DOMAIN" || true)" = none ] || die "the plain VM is not in replay mode none"
if virsh_on a qemu-monitor-command "$DOMAIN" '{"execute":"query-replay"}' | jq -e '.return.icount > 0' >/dev/null; then
	die "the plain VM counts instructions (icount): it is not plain"
fi

out_echo=$(mktemp) out_stream=$(mktemp) stop_clients=$(mktemp -u /tmp/ft-protect-plain-stop.XXXXXX)
rarp=$(mktemp) disk=$(mktemp --suffix=.qcow2)
SCRATCH+=("$out_echo" "$out_stream" "$stop_clients" "$rarp" "$disk")
client "$BIN/tcpcheck" echo -addr $GUEST_IP:7002 -duration 600s -stall-limit $STALL_LIMIT -stop-file "$stop_clients" >"$out_echo" 2>&1 &
pids=($!)
client "$BIN/tcpcheck" stream -addr $GUEST_IP:7001 -duration 600s -stall-limit $STALL_LIMIT -stop-file "$stop_clients" >"$out_stream" 2>&1 &
pids+=($!)
ip netns exec ftlab-lan tcpdump -i lan0 -n -e -l -U 'ether proto 0x8035' >"$rarp" 2>/dev/null &
tcpdump_pid=$!
pids+=($tcpdump_pid)
sleep 3

say "virt-ft protect $DOMAIN --peer $HOST_B_IP on host A"
plain_pid=$(qemu_pid a "$DOMAIN")
# Host A's console file is made again when its new backup starts: keep
# the plain VM's tick lines as they were last seen (the longest copy).
a_ticks=$(mktemp) a_try=$(mktemp)
SCRATCH+=("$a_ticks" "$a_try")
(while :; do
	tick_lines a "$DOMAIN" >"$a_try"
	[ "$(wc -l <"$a_try")" -lt "$(wc -l <"$a_ticks")" ] || cp "$a_try" "$a_ticks"
	sleep 0.2
done) &
keeper=$!
pids+=($keeper)
t0=$(date +%s%N)
out=$(ft_on a protect "$DOMAIN" --peer "$HOST_B_IP" --wait 5m 2>&1) || {
	printf '%s\n' "$out" | sed 's/^/     /'
	ft_on a status "$DOMAIN" | sed 's/^/     /' || true
	die "virt-ft protect on host A failed"
}
printf '%s\n' "$out" | tail -n 2 | sed 's/^/     /'
moved_ms=$((($(date +%s%N) - t0) / 1000000))
wait_replay_mode 30 "the VM to run on host B (live, or recording once re-protected)" b "$DOMAIN" none record
# One copy: host A's plain QEMU is gone (its pid no longer runs).
wait_for 30 "host A's plain QEMU to end" sh -c "! '$LAB' exec a kill -0 $plain_pid 2>/dev/null"
# libvirt-ftd's own figures (host A's run is the new backup's by now).
moved=$(grep -ho 'protect: the VM moved to [^"]*' "$LAB_DIR"/a/ftd*.log | tail -n 1 || true)
[ -n "$moved" ] || die "host A's libvirt-ftd did not log the move"
report=("virt-ft protect returned after $moved_ms ms; ${moved#protect: }")
log "${report[-1]}"
virsh_on a dumpxml --inactive "$DOMAIN" | grep -q 'ft:ft' || die "host A's definition has no ft element after the move"

# The guest's ticks: host A's console ends where host B's begins.
kill "$keeper" 2>/dev/null || true
wait "$keeper" 2>/dev/null || true
a_last=$(tail -n 1 "$a_ticks")
wait_for 60 "3 ticks on host B" sh -c "[ \$('$LAB' exec b cat '$CONSOLE_DIR/$DOMAIN-console.log' 2>/dev/null | tr -d '\r' | grep -cE '^tick [0-9]+ up ') -ge 3 ]"
b_first=$(tick_lines b "$DOMAIN" | head -n 1)
log "host A's last tick: $a_last; host B's first: $b_first"
read -r _ na _ ua <<<"$a_last"
read -r _ nb _ ub <<<"$b_first"
# (A tick line the move cut in two is whole on neither host: the step may
# then be two ticks.)
k=$((nb - na))
{ [ $k -eq 1 ] || [ $k -eq 2 ]; } || die "the guest's ticks went from $na on host A to $nb on host B"
awk -v a="$ua" -v b="$ub" -v k=$k 'BEGIN { exit !(b - a >= 0.9 * k && b - a <= 3 * k) }' ||
	die "the guest's uptime went from $ua (tick $na, host A) to $ub (tick $nb, host B): its clock did not go on"
ticks_consecutive b "$DOMAIN" || die "the ticks on host B are not consecutive"

say "host B re-protects the VM onto host A by itself"
t1=$(date +%s%N)
wait_replay_mode 180 "the new backup to replay on host A" a "$DOMAIN" play
wait_for 60 "the pairing to replicate" sh -c "'$LAB' exec b '$VIRT_FT' status --json '$DOMAIN' | jq -e '.[0].state == \"replicating\"' >/dev/null"
st=$(ft_on b status --json "$DOMAIN" || true)
report+=("protected: host A's backup replays $((($(date +%s%N) - t1) / 1000000)) ms after the move; re-protection pause $(jq -r '.[0].reprotect.pause_ms // "?"' <<<"$st") ms")
log "${report[-1]}"
tick=$(last_tick b "$DOMAIN")
wait_for 60 "3 more ticks on host B" has_tick b "$DOMAIN" $((tick + 3))

say "failover: kill -9 of host B's QEMU; host A's backup goes live"
t2=$(date +%s%N)
on b kill -9 "$(qemu_pid b "$DOMAIN")"
wait_replay_mode 60 "the VM to run live on host A" a "$DOMAIN" none
report+=("failover to host A: live $((($(date +%s%N) - t2) / 1000000)) ms after the kill (as this test polls)")
log "${report[-1]}"
tick=$(last_tick a "$DOMAIN")
wait_for 60 "3 more ticks on host A" has_tick a "$DOMAIN" $((tick + 3))

for p in "${pids[@]:0:2}"; do
	kill -0 "$p" 2>/dev/null || die "the TCP clients ended early"
done
say "ending the TCP clients"
end_clients "$stop_clients" "$tcpdump_pid"
log "echo:   $(tail -n 1 "$out_echo")"
log "stream: $(tail -n 1 "$out_stream")"
failed=0
if [ $rc_echo -ne 0 ] || [ $rc_stream -ne 0 ]; then
	sed 's/^/     echo> /' "$out_echo" | tail -n 5
	sed 's/^/     stream> /' "$out_stream" | tail -n 5
	failed=1
fi
n_rarp=$(grep -ci "52:54:00:fa:00:01.*Reverse" "$rarp" || true)
if [ "$n_rarp" -lt 2 ]; then
	log "RARP frames with the guest's MAC on the LAN: $n_rarp, want a burst for the move and one for the failover"
	failed=1
fi
# Once host A's automatic re-protection onto host B is done: virt-ft
# unprotect on host A, then a clean shutdown of the guest, after which
# nothing of the protection is left on either host.
wait_for 180 "host A's automatic re-protection onto host B" sh -c "'$LAB' exec a '$VIRT_FT' status --json '$DOMAIN' | jq -e '.[0].state == \"replicating\"' >/dev/null"
say "virt-ft unprotect on host A, then a clean shutdown of the guest"
out=$(ft_on a unprotect "$DOMAIN" 2>&1) || die "virt-ft unprotect failed: $out"
wait_for 30 "host B's backup to stop" sh -c "! '$LAB' exec b virsh -q -c qemu:///system list --name | grep -qx $DOMAIN"
log "disk writer: $(guest_ctl status | tr -d '\r' | head -n 1)"
guest_ctl poweroff >/dev/null || true
wait_for 120 "$DOMAIN to shut off on host A" sh -c "! '$LAB' exec a virsh -q -c qemu:///system list --name | grep -qx $DOMAIN"
# Nothing left: no QEMU, no FIFO or socket in the state directory, no
# pairing record, on either host.
left_on() {
	on "$1" sh -c "find /var/lib/libvirt-ft \( -type p -o -type s \) 2>/dev/null; ls /run/libvirt-ft/pairings 2>/dev/null; cat /run/libvirt/qemu/$DOMAIN.pid 2>/dev/null" || true
}
for h in a b; do
	end=$((SECONDS + 20))
	while left=$(left_on $h) && [ -n "$left" ] && [ $SECONDS -lt $end ]; do sleep 0.5; done
	[ -z "$left" ] || { log "left on host $h after unprotect and shutdown: $left"; failed=1; }
done
[ $failed -eq 1 ] || log "nothing left on either host (no QEMU, FIFO, socket or pairing record)"
on a cat "$IMAGES/$DOMAIN.qcow2" >"$disk"
"$BIN/diskcheck" "$disk" || { log "the disk writer's records do not verify on host A"; failed=1; }
say "protect-plain report"
printf '   %s\n' "${report[@]}"
log "$n_rarp RARP frames with the guest's MAC seen"
[ $failed -eq 0 ] || die "protect-plain: the clients or the guest did not survive (see above)"
say "protect-plain: pass"
