#!/usr/bin/env bash
# End-to-end re-protection (issue 13): redundancy back without a reboot.
# The demo domain runs protected on host A with two TCP clients connected
# (an echo exchange and a counter stream, tcp.sh's). Each cycle takes the
# next of REPROTECT_MODES (default "qemu backup host"):
#   qemu    kill -9 of the primary's QEMU: the backup goes live;
#   backup  kill -9 of the backup's QEMU: the primary runs on alone;
#   host    the primary's host torn down (the backup goes live), then
#           revived with its daemons;
# then the VM, running alone, gets a new backup on the other host with no
# reboot, and the next cycle starts from that pairing. At the end both
# clients must have stayed connected through every cycle with every byte
# verified, and the guest's ticks must run on with no reboot. A last
# failover (kill -9 of the primary's QEMU) checks that the last
# re-protection protects: its backup goes live.
# PROTECT=auto (the default) leaves the re-protection to libvirt-ftd
# (<ft:reprotect auto="yes">, as soon as the failed host's daemon answers);
# PROTECT=manual turns that off and runs `virt-ft protect` on the live host.
# FTD_KILL=1 (with PROTECT=auto) then kills libvirt-ftd on the VM's host
# while its automatic re-protection copies, and starts it again: the VM
# must run on there, one copy only, and the restarted daemon must adopt it
# and re-protect it onto the other host by itself.
#   CYCLES=N [PROTECT=auto|manual] [REPROTECT_MODES="qemu backup host"] [FTD_KILL=1] test/e2e/reprotect.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
CYCLES=${CYCLES:-1}
PROTECT=${PROTECT:-auto}
case $PROTECT in
auto) export FT_REPROTECT= ;; # the default: yes
manual) export FT_REPROTECT=no ;;
*) die "PROTECT is auto or manual" ;;
esac
HEARTBEAT_TIMEOUT_S=1
STALL_LIMIT=$((HEARTBEAT_TIMEOUT_S + 4))s
[ -x "$BIN/tcpcheck" ] || die "run make build first (bin/tcpcheck)"
trap '_rc=$?; kill_clients; lab_stop $_rc' EXIT
pids=()
kill_clients() { local p; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }

say "re-protection: $CYCLES cycle(s) of failover then re-protection ($PROTECT), TCP clients connected throughout"
fresh_protected_lab 8
first_tick=$(last_tick a "$DOMAIN")
# The clients outlast every cycle (10-20 s each in the lab) and the last
# failover: the test ends them (-stop-file) once it is done, and fails if
# they ended earlier.
duration=$((120 + 60 * CYCLES + ${FTD_KILL:-0} * 240))
out_echo=$(mktemp) out_stream=$(mktemp) stop_clients=$(mktemp -u /tmp/ft-reprotect-stop.XXXXXX)
SCRATCH+=("$out_echo" "$out_stream" "$stop_clients")
client "$BIN/tcpcheck" echo -addr $GUEST_IP:7002 -duration ${duration}s -stall-limit $STALL_LIMIT -stop-file "$stop_clients" >"$out_echo" 2>&1 &
pids=($!)
client "$BIN/tcpcheck" stream -addr $GUEST_IP:7001 -duration ${duration}s -stall-limit $STALL_LIMIT -stop-file "$stop_clients" >"$out_stream" 2>&1 &
pids+=($!)
t_start=$SECONDS
# RARP frames on the LAN: every go-live announces the VM's MAC.
rarp=$(mktemp) disk=$(mktemp --suffix=.qcow2)
SCRATCH+=("$rarp" "$disk")
ip netns exec ftlab-lan tcpdump -i lan0 -n -e -l -U 'ether proto 0x8035' >"$rarp" 2>/dev/null &
tcpdump_pid=$!
pids+=($tcpdump_pid)
sleep 3

primary=a backup=b
report=()
golives=1 # the last failover's
read -r -a modes <<<"${REPROTECT_MODES:-qemu backup host}"
for cycle in $(seq 1 "$CYCLES"); do
	mode=${modes[$(((cycle - 1) % ${#modes[@]}))]}
	case $mode in
	qemu | host) say "cycle $cycle/$CYCLES: host $primary fails ($mode); host $backup goes live, then re-protects onto $primary" ;;
	backup) say "cycle $cycle/$CYCLES: the backup on host $backup is lost (kill -9 of its QEMU); host $primary re-protects onto it" ;;
	*) die "unknown mode $mode (REPROTECT_MODES: qemu backup host)" ;;
	esac
	t0=$(date +%s%N)
	case $mode in
	qemu) on "$primary" kill -9 "$(qemu_pid "$primary" "$DOMAIN")" ;;
	host) lab kill-host "$primary" >/dev/null ;;
	backup) on "$backup" kill -9 "$(qemu_pid "$backup" "$DOMAIN")" ;;
	esac
	if [ $mode = backup ]; then
		# The primary runs on alone, then gets a new backup there.
		old=$primary primary=$backup backup=$old
		wait_for 60 "host $backup to run the VM alone" sh -c "'$LAB' exec $backup '$VIRT_FT' status --json '$DOMAIN' | jq -e '.[0].state != \"replicating\"' >/dev/null"
		failover_ms=$((($(date +%s%N) - t0) / 1000000))
		log "host $backup unprotected $failover_ms ms after the backup's loss (as this test polls)"
	else
		golives=$((golives + 1))
		wait_replay_mode 60 "the VM to run live on host $backup" "$backup" "$DOMAIN" none
		failover_ms=$((($(date +%s%N) - t0) / 1000000))
		log "live on host $backup $failover_ms ms after the failure (as this test polls)"
	fi
	if [ $mode = host ]; then
		lab revive-host "$primary" >/dev/null
		restart_ftd "$primary"
	fi
	t1=$(date +%s%N)
	if [ $PROTECT = manual ]; then
		out=$(ft_on "$backup" protect "$DOMAIN" --wait 5m 2>&1) || {
			printf '%s\n' "$out" | sed 's/^/     /'
			ft_on "$backup" status "$DOMAIN" | sed 's/^/     /' || true
			die "cycle $cycle: virt-ft protect on host $backup failed"
		}
		printf '%s\n' "$out" | tail -n 3 | sed 's/^/     /'
	fi
	wait_replay_mode 120 "the new backup to replay on host $primary" "$primary" "$DOMAIN" play
	wait_for 30 "the re-protected pairing to replicate" sh -c "'$LAB' exec $backup '$VIRT_FT' status --json '$DOMAIN' | jq -e '.[0].state == \"replicating\"' >/dev/null"
	protected_ms=$((($(date +%s%N) - t1) / 1000000))
	ft_on "$backup" status "$DOMAIN" | grep -E 're-protected|re-protection' | sed 's/^/     /' || true
	st=$(ft_on "$backup" status --json "$DOMAIN" || true) # exit 1: unprotected
	pause=$(jq -r '.[0].reprotect.pause_ms' <<<"$st")
	mem_bytes=$(jq -r '.[0].reprotect.memory_bytes' <<<"$st")
	disk_bytes=$(jq -r '.[0].reprotect.disk_bytes' <<<"$st")
	report+=("cycle $cycle ($mode; runs on $backup, new backup on $primary): failover or loss $failover_ms ms; protected again $protected_ms ms after that ($PROTECT); pause $pause ms; copied $((mem_bytes >> 20)) MiB memory, $((disk_bytes >> 20)) MiB disk")
	log "${report[-1]}"
	# A few ticks on the new pairing before the next failure.
	tick=$(last_tick "$backup" "$DOMAIN")
	wait_for 60 "3 more ticks on host $backup" has_tick "$backup" "$DOMAIN" $((tick + 3))
	# The new backup counts its replay from its log's start, as the log
	# does (docs/replay.md §15). Read on the backup before the primary's
	# log figure, it cannot be above it; one counting the migrated
	# icount too reads billions above.
	b_icount=$({ ft_on "$primary" status --json "$DOMAIN" || true; } | jq -r '.[0].backup_icount')
	p_log=$({ ft_on "$backup" status --json "$DOMAIN" || true; } | jq -r '.[0].log_instructions')
	[[ $b_icount =~ ^[0-9]+$ && $p_log =~ ^[0-9]+$ ]] || die "cycle $cycle: no icount figures in virt-ft status (backup $b_icount, log $p_log)"
	[ "$b_icount" -gt 0 ] || die "cycle $cycle: the re-protected backup reports icount 0 after 3 ticks: it counts nothing"
	[ "$b_icount" -le "$p_log" ] || die "cycle $cycle: the re-protected backup's icount $b_icount is above its primary's log ($p_log instructions): it counts the migrated icount"
	log "the new backup on host $primary replayed to icount $b_icount of the log's $p_log"
	primary=$backup
	[ "$backup" = a ] && backup=b || backup=a
done

# The last re-protection protects: one more failover, to its new backup.
say "final failover: host $primary fails (kill -9 of its QEMU); the re-protected backup on host $backup goes live"
t0=$(date +%s%N)
on "$primary" kill -9 "$(qemu_pid "$primary" "$DOMAIN")"
wait_replay_mode 60 "the VM to run live on host $backup" "$backup" "$DOMAIN" none
report+=("final failover ($primary -> $backup): live $((($(date +%s%N) - t0) / 1000000)) ms after the failure")
log "${report[-1]}"
primary=$backup
other=$([ "$primary" = a ] && echo b || echo a)
if [ "${FTD_KILL:-0}" = 1 ] && [ $PROTECT = auto ]; then
	# Our daemon dies in the middle of its automatic re-protection, and
	# starts again 2 s later (systemd's Restart=): the VM must run on, one
	# copy only; the restarted daemon adopts it (its gates made again),
	# ends what the dead one left armed on the other host, and re-protects
	# it there.
	say "libvirt-ftd killed on host $primary during its automatic re-protection onto host $other"
	phase() { { "$LAB" exec "$primary" "$VIRT_FT" status --json "$DOMAIN" 2>/dev/null || true; } | jq -r '.[0].reprotect.phase // empty' || true; }
	in_reprotect() { case $(phase) in arming | disks | memory | switchover) return 0 ;; esac; return 1; }
	wait_for 60 "a re-protection under way on host $primary" in_reprotect
	at=$(phase)
	t_kill=$(date +%s%N)
	on "$primary" kill -9 "$(ftd_pid "$primary")"
	sleep 2
	restart_ftd "$primary"
	state_on() { { "$LAB" exec "$1" "$VIRT_FT" status --json "$DOMAIN" 2>/dev/null || true; } | jq -r '.[0].state // empty' || true; }
	replicating_on() { [ "$(state_on "$1")" = replicating ] && [ "$(replay_mode "$1" "$DOMAIN" || true)" = record ] && [ "$(replay_mode "$2" "$DOMAIN" || true)" = play ]; }
	# Killed after the new backup's log channel was up, the other host
	# may win the pairing's claim and run the VM: then it re-protects
	# the VM onto this host. Either way one copy runs, protected again.
	replicating_either() { replicating_on "$primary" "$other" || replicating_on "$other" "$primary"; }
	wait_for 240 "the VM to be re-protected after libvirt-ftd's restart on host $primary" replicating_either
	killed=$primary how="the restarted daemon re-protected the VM onto host $other"
	if replicating_on "$other" "$primary"; then
		how="host $other won the pairing's claim and re-protected the VM onto host $primary"
		primary=$other other=$killed
	fi
	report+=("libvirt-ftd killed on host $killed during a re-protection (phase $at): $how $((($(date +%s%N) - t_kill) / 1000000)) ms after the kill")
	log "${report[-1]}"
	ft_on "$primary" status "$DOMAIN" | sed 's/^/     /' || true
fi
tick=$(last_tick "$primary" "$DOMAIN")
wait_for 60 "3 more ticks on host $primary" has_tick "$primary" "$DOMAIN" $((tick + 3))

for p in "${pids[@]:0:2}"; do
	kill -0 "$p" 2>/dev/null || die "the TCP clients ended before the last failover ($duration s): the cycles took longer than the test allows"
done
say "ending the TCP clients ($((SECONDS - t_start)) s connected)"
end_clients "$stop_clients" "$tcpdump_pid"
echo_line=$(tail -n 1 "$out_echo") stream_line=$(tail -n 1 "$out_stream")
log "echo:   $echo_line"
log "stream: $stream_line"
failed=0
if [ $rc_echo -ne 0 ] || [ $rc_stream -ne 0 ]; then
	sed 's/^/     echo> /' "$out_echo" | tail -n 5
	sed 's/^/     stream> /' "$out_stream" | tail -n 5
	failed=1
fi
# No reboot: the tick counter runs on from before the first cycle.
last=$(last_tick "$primary" "$DOMAIN")
if ! [ "${last:-0}" -gt "$first_tick" ] || ! ticks_consecutive "$primary" "$DOMAIN"; then
	log "ticks on host $primary: first $first_tick, last ${last:-none}"
	failed=1
fi
st=$(ft_on "$primary" status --json "$DOMAIN" || true) # exit 1: unprotected
# Live, or (PROTECT=auto) re-protected again onto the host whose QEMU died.
case $(jq -r '.[0].state' <<<"$st") in
live | replicating) ;;
*) log "host $primary: $(jq -c '.[0] | {state, detail}' <<<"$st")"; failed=1 ;;
esac
n_rarp=$(grep -ci "52:54:00:fa:00:01.*Reverse" "$rarp" || true)
if [ "$n_rarp" -lt $golives ]; then
	log "RARP frames with the guest's MAC on the LAN: $n_rarp, want a burst per go-live ($golives)"
	failed=1
fi
# The disk writer's records: power the guest off where it runs (once no
# re-protection is under way), then check its disk there.
[ $PROTECT = manual ] || wait_for 120 "the last auto re-protection on host $primary" sh -c "'$LAB' exec $primary '$VIRT_FT' status --json '$DOMAIN' | jq -e '.[0].state == \"replicating\"' >/dev/null"
log "disk writer: $(guest_ctl status | tr -d '\r' | head -n 1)"
guest_ctl poweroff >/dev/null || true
wait_for 120 "$DOMAIN to shut off on host $primary" sh -c "! '$LAB' exec $primary virsh -q -c qemu:///system list --name | grep -qx $DOMAIN"
on "$primary" cat "$IMAGES/$DOMAIN.qcow2" >"$disk"
"$BIN/diskcheck" "$disk" || { log "the disk writer's records do not verify on host $primary"; failed=1; }
say "re-protection report: $CYCLES cycle(s)"
printf '   %s\n' "${report[@]}"
log "ticks $first_tick -> $last on host $primary, consecutive; $n_rarp RARP frames with the guest's MAC seen"
[ $failed -eq 0 ] || die "re-protection: the clients or the guest did not survive (see above)"
say "re-protection: pass"
