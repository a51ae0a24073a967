#!/usr/bin/env bash
# End-to-end re-protection (issue 13): redundancy back without a reboot.
# The demo domain runs protected on host A with two TCP clients connected
# (an echo exchange and a counter stream, tcp.sh's). Each cycle fails the
# primary's host (odd cycles: kill -9 of its QEMU; even cycles: the host
# torn down and revived), waits until the backup runs live, then runs
# `virt-ft protect` there: the VM gets a new backup on the failed host with
# no reboot, and the next cycle fails over the other way. At the end both
# clients must have stayed connected through every cycle with every byte
# verified, the guest's ticks must run on with no reboot, and the last
# pairing must replicate.
#   CYCLES=N test/e2e/reprotect.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
CYCLES=${CYCLES:-1}
HEARTBEAT_TIMEOUT_S=1
STALL_LIMIT=$((HEARTBEAT_TIMEOUT_S + 4))s
[ -x "$BIN/tcpcheck" ] || die "run make build first (bin/tcpcheck)"
trap 'kill_clients; lab_stop' EXIT
pids=()
kill_clients() { local p; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }

say "re-protection: $CYCLES cycle(s) of failover then virt-ft protect, TCP clients connected throughout"
fresh_protected_lab 8
first_tick=$(last_tick a "$DOMAIN")
# The clients outlast every cycle (about 40 s each), then end by themselves.
duration=$((30 + 45 * CYCLES))
out_echo=$(mktemp) out_stream=$(mktemp)
SCRATCH+=("$out_echo" "$out_stream")
client "$BIN/tcpcheck" echo -addr $GUEST_IP:7002 -duration ${duration}s -stall-limit $STALL_LIMIT >"$out_echo" 2>&1 &
pids=($!)
client "$BIN/tcpcheck" stream -addr $GUEST_IP:7001 -duration ${duration}s -stall-limit $STALL_LIMIT >"$out_stream" 2>&1 &
pids+=($!)
t_start=$SECONDS
sleep 3

primary=a backup=b
report=()
for cycle in $(seq 1 "$CYCLES"); do
	case $((cycle % 2)) in 1) mode=qemu ;; 0) mode=host ;; esac
	say "cycle $cycle/$CYCLES: host $primary fails ($mode); host $backup goes live, then re-protects onto $primary"
	t0=$(date +%s%N)
	case $mode in
	qemu) on "$primary" kill -9 "$(qemu_pid "$primary" "$DOMAIN")" ;;
	host) lab kill-host "$primary" >/dev/null ;;
	esac
	wait_replay_mode 60 "the VM to run live on host $backup" "$backup" "$DOMAIN" none
	failover_ms=$((($(date +%s%N) - t0) / 1000000))
	log "live on host $backup $failover_ms ms after the failure (as this test polls)"
	if [ $mode = host ]; then
		lab revive-host "$primary" >/dev/null
		wait_for 30 "libvirt-ftd on the revived host $primary" ftd_answers "$primary"
	fi
	t1=$(date +%s%N)
	out=$(ft_on "$backup" protect "$DOMAIN" --wait 5m 2>&1) || {
		printf '%s\n' "$out" | sed 's/^/     /'
		ft_on "$backup" status "$DOMAIN" | sed 's/^/     /' || true
		die "cycle $cycle: virt-ft protect on host $backup failed"
	}
	printf '%s\n' "$out" | tail -n 3 | sed 's/^/     /'
	wait_replay_mode 60 "the new backup to replay on host $primary" "$primary" "$DOMAIN" play
	wait_for 30 "the re-protected pairing to replicate" sh -c "'$LAB' exec $backup '$VIRT_FT' status --json '$DOMAIN' | jq -e '.[0].state == \"replicating\"' >/dev/null"
	protected_ms=$((($(date +%s%N) - t1) / 1000000))
	st=$(ft_on "$backup" status --json "$DOMAIN")
	pause=$(jq -r '.[0].reprotect.pause_ms' <<<"$st")
	mem=$(jq -r '.[0].reprotect.memory_bytes' <<<"$st")
	disk=$(jq -r '.[0].reprotect.disk_bytes' <<<"$st")
	report+=("cycle $cycle ($mode, $primary -> $backup): failover $failover_ms ms; protected again $protected_ms ms after virt-ft protect; pause $pause ms; copied $((mem >> 20)) MiB memory, $((disk >> 20)) MiB disk")
	log "${report[-1]}"
	# A few ticks on the new pairing before the next failure.
	tick=$(last_tick "$backup" "$DOMAIN")
	wait_for 60 "3 more ticks on host $backup" has_tick "$backup" "$DOMAIN" $((tick + 3))
	primary=$backup
	[ "$backup" = a ] && backup=b || backup=a
done

say "waiting for the TCP clients to end ($((duration - (SECONDS - t_start))) s left)"
rc_echo=0 rc_stream=0
wait "${pids[0]}" || rc_echo=$?
wait "${pids[1]}" || rc_stream=$?
pids=()
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
st=$(ft_on "$primary" status --json "$DOMAIN")
[ "$(jq -r '.[0].state' <<<"$st")" = replicating ] || { log "host $primary: $(jq -c '.[0] | {state, detail}' <<<"$st")"; failed=1; }
say "re-protection report: $CYCLES cycle(s)"
printf '   %s\n' "${report[@]}"
log "ticks $first_tick -> $last on host $primary, consecutive"
[ $failed -eq 0 ] || die "re-protection: the clients or the guest did not survive (see above)"
say "re-protection: pass"
