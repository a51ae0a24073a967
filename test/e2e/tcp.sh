#!/usr/bin/env bash
# End-to-end output rule (issue 4): TCP clients survive failover.
# In each trial, two clients in the client namespace talk to the protected
# guest: one runs request/response exchanges with its echo service (each
# request carries a sequence number and a checksum; every reply is verified
# byte for byte), one reads its counter stream. Host A fails at a random
# moment (alternately kill -9 of the primary's QEMU and host A torn down).
# Both connections must survive: no reset, no stall longer than the
# heartbeat timeout plus 3 s, no lost, duplicated or reordered byte.
#   TRIALS=N [GATE=on|off] test/e2e/tcp.sh
# GATE=off turns the output gate off (<ft:output-gate enabled="no">): the
# same harness must then see failures in some trials.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
TRIALS=${TRIALS:-1}
GATE=${GATE:-on}
HEARTBEAT_TIMEOUT_S=1
STALL_LIMIT=$((HEARTBEAT_TIMEOUT_S + 3))s
# How long the clients run: about 5 s before the failure, the failure, then
# long enough after go-live to see the connections carry on.
DURATION=${DURATION:-30}
case $GATE in
on) ;;
off) export DOMAIN_XML_EDIT='s|</ft:ft>|<ft:output-gate enabled="no"/></ft:ft>|' ;;
*) die "GATE is on or off" ;;
esac
[ -x "$BIN/tcpcheck" ] || die "run make build first (bin/tcpcheck)"
trap '_rc=$?; kill_clients; lab_stop $_rc' EXIT
pids=()
kill_clients() { local p; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
report=() failed=0
# keep_trial_logs N: a failed trial's daemon and libvirt logs, and any log
# kept at a replay stall, before the next trial's lab replaces them.
keep_trial_logs() {
	local dir=$E2E_LOGS-trial-$1 h f
	rm -rf "$dir" && mkdir -p "$dir"
	for h in a b; do
		for f in "$LAB_DIR/$h"/*.log "$LAB_DIR/$h"/root/lib-libvirt-ft/*/stall-*.rrstream; do
			[ -f "$f" ] && cp "$f" "$dir/$h-$(basename "$f")"
		done
		cp -r "$LAB_DIR/$h/root/log-libvirt" "$dir/$h-libvirt-logs" 2>/dev/null || true
	done
	log "trial $1's logs kept in $dir"
}
for trial in $(seq 1 "$TRIALS"); do
	case $((trial % 2)) in 1) mode=qemu ;; 0) mode=host ;; esac
	say "trial $trial/$TRIALS (gate $GATE): two TCP clients, then host A fails ($mode)"
	fresh_protected_lab 8
	# This trial's client outputs (the next trial's lab_stop removes them).
	out_echo=$(mktemp) out_stream=$(mktemp) stop_clients=$(mktemp -u /tmp/ft-tcp-stop.XXXXXX)
	SCRATCH+=("$out_echo" "$out_stream" "$stop_clients")
	client "$BIN/tcpcheck" echo -addr $GUEST_IP:7002 -duration ${DURATION}s -stall-limit $STALL_LIMIT -stop-file "$stop_clients" >"$out_echo" 2>&1 &
	pids=($!)
	client "$BIN/tcpcheck" stream -addr $GUEST_IP:7001 -duration ${DURATION}s -stall-limit $STALL_LIMIT -stop-file "$stop_clients" >"$out_stream" 2>&1 &
	pids+=($!)
	# A random moment 4-8 s into the exchanges.
	sleep "$((4 + RANDOM % 4)).$((RANDOM % 10))"
	t0=$(date +%s%N)
	case $mode in
	qemu) on a kill -9 "$(qemu_pid a "$DOMAIN")" ;;
	host) lab kill-host a >/dev/null ;;
	esac
	wait_replay_mode 60 "the VM to run live on host B" b "$DOMAIN" record none
	log "running on host B $((($(date +%s%N) - t0) / 1000000)) ms after the failure (as this test polls)"
	golive=$({ ft_on b status "$DOMAIN" || true; } | sed -n 's/^[^:]*: last failover event: //p')
	log "go-live: $golive"
	# The connections go on 10 s more on host B, then the clients end
	# (-stop-file; at -duration at the latest).
	sleep 10
	touch "$stop_clients"
	rc_echo=0 rc_stream=0
	wait "${pids[0]}" || rc_echo=$?
	wait "${pids[1]}" || rc_stream=$?
	pids=()
	echo_line=$(tail -n 1 "$out_echo") stream_line=$(tail -n 1 "$out_stream")
	log "echo:   $echo_line"
	log "stream: $stream_line"
	if [ $rc_echo -ne 0 ] || [ $rc_stream -ne 0 ]; then
		failed=$((failed + 1))
		sed 's/^/     echo> /' "$out_echo" | tail -n 5
		sed 's/^/     stream> /' "$out_stream" | tail -n 5
		report+=("trial $trial ($mode, gate $GATE): FAILED: echo rc=$rc_echo [$echo_line]; stream rc=$rc_stream [$stream_line]; $golive")
		keep_trial_logs "$trial"
	else
		report+=("trial $trial ($mode, gate $GATE): both connections survived; max stall echo $(sed -n 's/.*max_stall_ms=\([0-9]*\).*/\1/p' <<<"$echo_line") ms, stream $(sed -n 's/.*max_stall_ms=\([0-9]*\).*/\1/p' <<<"$stream_line") ms; verified $(sed -n 's/.* verified=\([0-9]*\).*/\1/p' <<<"$echo_line") echo requests, $(sed -n 's/.* lines=\([0-9]*\).*/\1/p' <<<"$stream_line") stream lines; $golive")
	fi
	ft_on b status "$DOMAIN" | tail -n 1 | sed 's/^/     /' || true
done
say "TCP failover report (gate $GATE): $((TRIALS - failed)) of $TRIALS trials passed"
printf '   %s\n' "${report[@]}"
[ $failed -eq 0 ]
