#!/usr/bin/env bash
# TCP soak (issue 9): TCP load against a protected guest for DURATION, no
# failover. The load runs in rounds: an echo client and a stream reader for
# the whole round, a bulk receive and a bulk transmit burst, then a pause.
# Every CHECK_S seconds the soak checks that the backup follows:
#   - the backup's executed icount (query-replay on host B) advanced since
#     the last check, or has caught up with the log fed to it;
#   - host B's console is at most LAG_TICKS tick lines behind host A's.
# A check that fails is a stall; each is reported with the backup's icount,
# the log fed and the backup daemon's status. The soak ends with
#   "soak-tcp: N checks, M stalls"
# and fails when M > 0 or a client failed.
#   DURATION=20m [CHECK_S=5] [LAG_TICKS=3] test/e2e/soak-tcp.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-2m}
CHECK_S=${CHECK_S:-5}
LAG_TICKS=${LAG_TICKS:-3}
case $DURATION in
*h) secs=$((${DURATION%h} * 3600)) ;;
*m) secs=$((${DURATION%m} * 60)) ;;
*s) secs=${DURATION%s} ;;
*) secs=$DURATION ;;
esac
[[ $secs =~ ^[0-9]+$ ]] && [ "$secs" -gt 0 ] || die "DURATION is a number of seconds, or Ns, Nm, Nh (got '$DURATION')"
[ -x "$BIN/tcpcheck" ] || die "run make build first (bin/tcpcheck)"
# The clients' outputs: a directory of its own, removed by stop_load.
work=$(mktemp -d -t ft-soak.XXXXXX)
loadpid=
stop_load() { [ -z "$loadpid" ] || kill "$loadpid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap '_rc=$?; stop_load; lab_stop $_rc' EXIT

# backup_icount: the backup QEMU's executed icount (query-replay).
backup_icount() {
	virsh_on b qemu-monitor-command "$DOMAIN" '{"execute":"query-replay"}' 2>/dev/null |
		jq -r '.return.icount // empty'
}
# fed_instructions: the INSTRUCTION sum libvirt-ftd on host B fed to its QEMU.
fed_instructions() {
	{ ft_on b status --json "$DOMAIN" 2>/dev/null || true; } | jq -r '.[0].log_instructions // empty'
}

# load ROUND_S: rounds of TCP load until $work/stop appears; every client's
# summary line goes to $work/clients.log, failures to $work/failed.
load() {
	local round=0 r
	while [ ! -e "$work/stop" ]; do
		round=$((round + 1))
		client "$BIN/tcpcheck" echo -addr $GUEST_IP:7002 -duration 20s >"$work/echo" 2>&1 &
		local pe=$!
		client "$BIN/tcpcheck" stream -addr $GUEST_IP:7001 -duration 20s >"$work/stream" 2>&1 &
		local ps=$!
		client "$BIN/tcpcheck" bulk -addr $GUEST_IP:7004 -mode rx -bytes 3000000 >"$work/rx" 2>&1 || echo "round $round rx: $(tail -n 1 "$work/rx")" >>"$work/failed"
		client "$BIN/tcpcheck" bulk -addr $GUEST_IP:7005 -mode tx -bytes 3000000 >"$work/tx" 2>&1 || echo "round $round tx: $(tail -n 1 "$work/tx")" >>"$work/failed"
		wait $pe || echo "round $round echo: $(tail -n 1 "$work/echo")" >>"$work/failed"
		wait $ps || echo "round $round stream: $(tail -n 1 "$work/stream")" >>"$work/failed"
		for r in echo stream rx tx; do echo "round $round $r: $(tail -n 1 "$work/$r")" >>"$work/clients.log"; done
		sleep 2
	done
}

say "TCP soak for ${secs}s: echo, stream, bulk rx and tx in rounds; the backup checked every ${CHECK_S}s"
fresh_protected_lab 8
load &
loadpid=$!
checks=0 stalls=0 prev=0 stalled=0
end=$((SECONDS + secs))
while [ $SECONDS -lt $end ]; do
	sleep "$CHECK_S"
	checks=$((checks + 1))
	mode=$(replay_mode b "$DOMAIN")
	icount=$(backup_icount) fed=$(fed_instructions)
	ta=$(last_tick a "$DOMAIN") tb=$(last_tick b "$DOMAIN")
	problem=
	sta=$(ft_on a status "$DOMAIN" 2>/dev/null || true)
	if [[ "$(sed -n 2p <<<"$sta")" != *replicating* ]]; then
		problem="host A's primary no longer replicates: $(sed -n 2p <<<"$sta" | awk '{print $4}'); $(grep -m1 'stalled' <<<"$sta" || true)"
	elif [ "$mode" != play ]; then
		problem="the backup is not replaying (mode '${mode:-none}')"
	elif [ -z "$icount" ] || [ -z "$fed" ]; then
		problem="no icount from the backup (icount '${icount}', fed '${fed}')"
	elif [ "$icount" -le "$prev" ] && [ "$fed" -gt "$icount" ]; then
		problem="the backup's icount stayed at $icount for ${CHECK_S}s with log up to icount $fed fed"
	elif [ $((${ta:-0} - ${tb:-0})) -gt "$LAG_TICKS" ]; then
		problem="host B's console is at tick ${tb:-none}, host A's at ${ta:-none}"
	fi
	if [ -n "$problem" ]; then
		if [ $stalled = 0 ]; then
			stalls=$((stalls + 1))
			log "STALL $stalls at ${SECONDS}s: $problem"
			ft_on b status "$DOMAIN" 2>/dev/null | sed 's/^/     B: /' || true
			ft_on a status "$DOMAIN" 2>/dev/null | sed 's/^/     A: /' || true
		fi
		stalled=1
		# A backup that is gone does not come back in this soak.
		[[ "$(sed -n 2p <<<"$sta")" == *replicating* ]] || break
	else
		stalled=0
	fi
	prev=${icount:-0}
	[ $((checks % 12)) -ne 0 ] || log "${SECONDS}s: backup icount $icount (fed $fed), ticks A $ta B $tb, $(wc -l <"$work/clients.log" 2>/dev/null || echo 0) client runs"
done
touch "$work/stop"
wait "$loadpid" || true
loadpid=
clients=$(wc -l <"$work/clients.log" 2>/dev/null || echo 0)
failed=$(cat "$work/failed" 2>/dev/null || true)
[ -z "$failed" ] || { log "client failures:"; printf '     %s\n' "$failed"; }
say "soak-tcp: $checks checks, $stalls stalls ($clients client runs, $(grep -c . <<<"$failed" || true) failed; ${secs}s)"
[ $stalls -eq 0 ] && [ -z "$failed" ]
