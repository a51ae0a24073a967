#!/usr/bin/env bash
# End-to-end faults of libvirt-ft's own parts and of what it depends on
# (issue 11). Each fault runs in a fresh lab while the guest runs its tick
# counter and disk writer and two TCP clients (e2e-tcp's echo and stream)
# talk to it. After each fault:
#   - exactly one copy of the VM runs (virsh domstate running and not a
#     replaying backup), on the host the fault allows;
#   - the guest's frames enter the LAN bridge only from that host from
#     0.5 s after the fault to the end of the clients' run (tcpdump on the
#     bridge ports, source MAC the guest's): the other host shows nothing,
#     not even while the fault is being resolved;
#   - both TCP connections survived (no reset, no lost, duplicated or
#     reordered byte, no stall above STALL_LIMIT);
#   - after a clean shutdown, every disk-writer record on the running
#     host's disk verifies.
# It prints a row per fault: fault, where the VM runs after, longest client
# stall, the protection state, result.
#
#   FAULTS="ftd-kill-a ..." test/e2e/faults.sh
#
# Faults (FAULTS, default all):
#   ftd-kill-a       kill -9 of libvirt-ftd on host A, started again 2 s later
#                    (as systemd's Restart= does)
#   ftd-kill-b       the same on host B
#   restart-a        a planned restart of libvirt-ftd on host A (SIGTERM,
#                    then the next daemon gets the descriptors the first
#                    handed over, as systemctl restart with the unit's
#                    file descriptor store): no failover, protection goes on
#   restart-b        the same on host B
#   libvirtd-kill-a  kill -9 of libvirtd on host A, started again 2 s later:
#                    nothing happens to the VM, protection goes on
#   backup-stop      the backup's QEMU stopped (SIGSTOP) for 10 s: the
#                    primary declares its backup lost and goes on, after
#                    the stall bound (5 s by default) in which the window
#                    holds it: the clients may stall up to 10 s here.
#   qemu-hang-a      the primary's QEMU stopped (SIGSTOP) for good, as a
#                    hung QEMU: its log stops and its monitor never answers;
#                    libvirt-ftd's watchdog kills it (after the hang probe
#                    bound, 2 s, and the monitor probe, 5 s) and host B goes live.
#                    The clients may stall up to 15 s here.
#   blackhole        the log channel (port 7480) dropped both ways on host A
#                    (iptables DROP): a partition; the witness decides
#   cut-a            host A cut off the LAN: host B wins (A cannot reach the
#                    witness either)
#   arbiter-b        the witness unreachable from host B while host A is
#                    healthy: nothing happens; B does not go live
#   both-revive      both hosts torn down and revived (no TCP clients: the
#                    VM cannot survive that): `virsh start` on host A
#                    protects it again with no manual cleanup
set -euo pipefail
source "$(dirname "$0")/lib.sh"
read -r -a faults <<<"${FAULTS:-ftd-kill-a ftd-kill-b restart-a restart-b libvirtd-kill-a backup-stop qemu-hang-a blackhole cut-a arbiter-b both-revive}"
DURATION=${DURATION:-40}
STALL_LIMIT=${STALL_LIMIT:-6s}
GUEST_MAC=52:54:00:fa:00:01
[ -x "$BIN/tcpcheck" ] || die "run make build first (bin/tcpcheck)"
command -v iptables >/dev/null || die "iptables is missing (make setup)"
pids=()
kill_bg() { local p; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; pids=(); }
trap '_rc=$?; kill_bg; lab_stop $_rc' EXIT
rows=() failed=0

# copies: the hosts on which a copy of the VM runs live (domstate running
# and not a replaying backup), space-separated.
copies() {
	local h out=""
	for h in a b; do
		[ "$(virsh_on $h domstate "$DOMAIN" 2>/dev/null || true)" = running ] || continue
		[ "$(replay_mode $h "$DOMAIN" || true)" = play ] && continue
		out+="$h "
	done
	echo "${out% }"
}
one_copy() { local c; c=$(copies); [ -n "$c" ] && [ "${c// /}" = "$c" ]; }
active_on() { virsh_on "$1" list --name 2>/dev/null | grep -qx "$DOMAIN"; }
paused_on() { [ "$(virsh_on "$1" domstate "$DOMAIN" 2>/dev/null || true)" = paused ]; }

# settled: the fault's outcome is complete: exactly one copy runs, and
# the rest is as the fault leaves it (protection goes on; the other host's
# QEMU is gone; a host cut off keeps at most a paused copy).
settled() {
	one_copy || return 1
	local c other
	c=$(copies)
	other=a; [ "$c" = a ] && other=b
	case $fault in
	libvirtd-kill-a | arbiter-b | restart-a | restart-b) [ "$c" = a ] && replay_mode_is b "$DOMAIN" play && replicating_on a && replicating_on b ;;
	ftd-kill-b | backup-stop) [ "$c" = a ] && ! active_on b && [ "$(state a)" = unprotected ] ;;
	cut-a) [ "$c" = b ] && [ "$(state b)" = live ] ;;
	*) ! active_on $other ;;
	esac
}

# restart_ftd H: start libvirt-ftd on H again, as systemd would.

# state H: the domain's state in virt-ft status on H.
state() { ft_on "$1" status --json 2>/dev/null | jq -r --arg d "$DOMAIN" '.[]? | select(.name == $d) | .state' 2>/dev/null || true; }
replicating_on() { [ "$(state "$1")" = replicating ]; }

for fault in "${faults[@]}"; do
	case $fault in
	ftd-kill-a) what="kill -9 of libvirt-ftd on host A (restarted 2 s later)"; want=any ;;
	ftd-kill-b) what="kill -9 of libvirt-ftd on host B (restarted 2 s later)"; want=a ;;
	restart-a) what="planned restart of libvirt-ftd on host A (SIGTERM, then the next daemon, as systemctl restart)"; want=a ;;
	restart-b) what="planned restart of libvirt-ftd on host B"; want=a ;;
	libvirtd-kill-a) what="kill -9 of libvirtd on host A (restarted 2 s later)"; want=a ;;
	backup-stop) what="the backup's QEMU stopped (SIGSTOP) for 10 s"; want=a ;;
	qemu-hang-a) what="the primary's QEMU stopped (SIGSTOP) for good: hung"; want=b ;;
	blackhole) what="the log channel dropped both ways on host A (iptables)"; want=any ;;
	cut-a) what="host A cut off the LAN"; want=b ;;
	arbiter-b) what="the witness unreachable from host B, host A healthy"; want=a ;;
	both-revive) what="both hosts torn down and revived, then virsh start on host A"; want=a ;;
	*) die "unknown fault $fault" ;;
	esac
	say "fault $fault: $what"
	fresh_protected_lab 8
	if [ $fault = both-revive ]; then
		lab kill-host a >/dev/null
		lab kill-host b >/dev/null
		lab revive-host a >/dev/null 2>&1
		lab revive-host b >/dev/null 2>&1
		restart_ftd a
		restart_ftd b
		t0=$(date +%s%N)
		virsh_on a start "$DOMAIN" >/dev/null
		wait_replay_mode 90 "the backup to replay on host B again" b "$DOMAIN" play
		wait_for 60 "virt-ft status on host A to say replicating" replicating_on a
		ms=$((($(date +%s%N) - t0) / 1000000))
		log "protected again $ms ms after virsh start"
		ft_on a status "$DOMAIN" | sed 's/^/     /' || true
		rows+=("$(printf '%-16s %-6s %8s %8s  %-12s %s' "$fault" a - - replicating "pass: protected again $ms ms after virsh start, nothing cleaned by hand")")
		continue
	fi
	out_echo=$(mktemp) out_stream=$(mktemp) frames_a=$(mktemp) frames_b=$(mktemp) stop_clients=$(mktemp -u /tmp/ft-faults-stop.XXXXXX)
	SCRATCH+=("$out_echo" "$out_stream" "$frames_a" "$frames_b" "$stop_clients")
	for h in a b; do
		f=$frames_a; [ $h = b ] && f=$frames_b
		# -Q in: frames host h sends into the LAN (the bridge also floods
		# the other host's broadcasts out of this port).
		ip netns exec ftlab-lan tcpdump -Q in -i "veth-$h" -n -e -l -tt "ether src $GUEST_MAC" >"$f" 2>/dev/null &
		pids+=($!)
	done
	stall_limit=$STALL_LIMIT
	[ $fault = qemu-hang-a ] && stall_limit=15s
	[ $fault = backup-stop ] && stall_limit=10s
	client "$BIN/tcpcheck" echo -addr $GUEST_IP:7002 -duration ${DURATION}s -stall-limit $stall_limit -stop-file "$stop_clients" >"$out_echo" 2>&1 &
	echo_pid=$!
	client "$BIN/tcpcheck" stream -addr $GUEST_IP:7001 -duration ${DURATION}s -stall-limit $stall_limit -stop-file "$stop_clients" >"$out_stream" 2>&1 &
	stream_pid=$!
	sleep 5
	t0=$(date +%s%N)
	case $fault in
	ftd-kill-a | ftd-kill-b)
		h=${fault#ftd-kill-}
		on $h kill -9 "$(ftd_pid $h)"
		sleep 2
		restart_ftd $h
		;;
	restart-a | restart-b)
		# systemctl restart: SIGTERM, then the next daemon with the
		# descriptors the first handed over.
		h=${fault#restart-}
		old_pid=$(ftd_pid $h)
		kill -HUP "$(cat "$LAB_DIR/$h/ftd-supervisor.pid")"
		wait_for 20 "libvirt-ftd on host $h to be restarted" sh -c "[ -s '$LAB_DIR/$h/ftd-daemon.pid' ] && [ \"\$(cat '$LAB_DIR/$h/ftd-daemon.pid')\" != $old_pid ]"
		wait_for 20 "libvirt-ftd on host $h to answer again" ftd_answers $h
		;;
	libvirtd-kill-a)
		on a kill -9 "$(cat "$LAB_DIR/a/root/run-libvirt/libvirtd.pid")"
		sleep 2
		lab restart-libvirtd a >/dev/null 2>&1
		;;
	backup-stop)
		bpid=$(qemu_pid b "$DOMAIN")
		on b kill -STOP "$bpid"
		sleep 10
		on b kill -CONT "$bpid" 2>/dev/null || true
		;;
	qemu-hang-a)
		apid=$(qemu_pid a "$DOMAIN")
		[ -n "$apid" ] || die "qemu-hang-a: no QEMU pid file for $DOMAIN on host A"
		on a kill -STOP "$apid"
		;;
	blackhole)
		for chain in INPUT OUTPUT; do
			on a iptables -I $chain -p tcp --dport 7480 -j DROP
			on a iptables -I $chain -p tcp --sport 7480 -j DROP
		done
		;;
	cut-a) lab cut-host a >/dev/null ;;
	arbiter-b) on b iptables -I OUTPUT -p tcp -d "$WITNESS_IP" --dport 2379 -j DROP ;;
	esac
	# Settled, and still so 3 s later.
	wait_for 90 "the fault to settle (running copies now: '$(copies)')" settled
	settled_ms=$((($(date +%s%N) - t0) / 1000000))
	sleep 3
	settled || die "$fault: not settled any more 3 s later: running copies '$(copies)'"
	# The clients go on 5 s more on the settled VM, then end (-stop-file;
	# at -duration at the latest).
	sleep 5
	touch "$stop_clients"
	where=$(copies)
	paused_note=""
	for h in a b; do paused_on $h && paused_note+=" (host $h keeps a paused copy)"; done
	log "one copy, on host $where, $settled_ms ms after the fault$paused_note"
	if [ $want != any ] && [ "$where" != $want ]; then die "$fault: the VM runs on host $where, want host $want"; fi
	rc_echo=0 rc_stream=0
	wait $echo_pid || rc_echo=$?
	wait $stream_pid || rc_stream=$?
	sleep 1
	kill_bg
	other=a; [ "$where" = a ] && other=b
	fa=$frames_a fo=$frames_b; [ "$where" = b ] && { fa=$frames_b; fo=$frames_a; }
	t_from=$(awk -v t="$t0" 'BEGIN { printf "%.3f", t / 1e9 + 0.5 }')
	n_here=$(awk -v t="$t_from" '$1 + 0 > t + 0' "$fa" | wc -l)
	n_other=$(awk -v t="$t_from" '$1 + 0 > t + 0' "$fo" | wc -l)
	log "guest frames into the LAN since 0.5 s after the fault: $n_other from host $other, $n_here from host $where"
	echo_line=$(tail -n 1 "$out_echo") stream_line=$(tail -n 1 "$out_stream")
	log "echo:   $echo_line"
	log "stream: $stream_line"
	st_here=$(state "$where")
	log "virt-ft status on host $where: $st_here"
	ft_on "$where" status "$DOMAIN" 2>/dev/null | sed 's/^/     /' || true
	ft_on "$other" status "$DOMAIN" 2>/dev/null | sed 's/^/     /' || true
	result=pass why=""
	if [ "$n_other" -ne 0 ]; then
		result=FAIL; why+=" $n_other frames from host $other after the fault;"
		# awk stops after 5 itself: head under pipefail could kill it by SIGPIPE.
		awk -v t="$t_from" '$1 + 0 > t + 0 { print; if (++n == 5) exit }' "$fo" | sed "s/^/     from host $other: /"
	fi
	[ "$n_here" -gt 0 ] || { result=FAIL; why+=" no frames from host $where;"; }
	[ $rc_echo -eq 0 ] || { result=FAIL; why+=" echo client failed;"; }
	[ $rc_stream -eq 0 ] || { result=FAIL; why+=" stream client failed;"; }
	case $fault in
	libvirtd-kill-a | arbiter-b | restart-a | restart-b) [ "$st_here" = replicating ] || { result=FAIL; why+=" protection did not go on (state $st_here);"; } ;;
	qemu-hang-a)
		if line=$(grep -m1 "recording QEMU hung" "$LAB_DIR/a/ftd.log"); then
			log "host A: ${line#*msg=}"
		else
			result=FAIL why+=" host A's daemon did not report the hang;"
		fi
		if grep -q "destroying it through libvirt instead" "$LAB_DIR/a/ftd.log"; then
			result=FAIL why+=" the SIGKILL failed (libvirt's destroy was used);"
		fi
		cause=$(ft_on b status --json 2>/dev/null | jq -r --arg d "$DOMAIN" '.[]? | select(.name == $d) | .loss.cause // empty' 2>/dev/null || true)
		log "host B's loss cause: $cause"
		case $cause in *"primary QEMU hung and was killed"*) ;; *) result=FAIL why+=" host B's loss cause is not the hang;" ;; esac
		;;
	esac
	# The disk writer's records on the running host's disk.
	if [ $fault = cut-a ]; then lab kill-host a >/dev/null; fi
	guest_ctl poweroff >/dev/null || true
	wait_for 120 "$DOMAIN to shut off on host $where" sh -c "! '$LAB' exec $where virsh -q -c qemu:///system list --name | grep -qx $DOMAIN"
	disk=$(mktemp --suffix=.qcow2)
	SCRATCH+=("$disk")
	on "$where" cat "$IMAGES/$DOMAIN.qcow2" >"$disk"
	if ! "$BIN/diskcheck" "$disk" | sed 's/^/     /'; then result=FAIL; why+=" disk records do not verify;"; fi
	stall_e=$(sed -n 's/.*max_stall_ms=\([0-9]*\).*/\1/p' <<<"$echo_line")
	stall_s=$(sed -n 's/.*max_stall_ms=\([0-9]*\).*/\1/p' <<<"$stream_line")
	row=$(printf '%-16s %-6s %8s %8s  %-12s %s' "$fault" "$where" "${stall_e:-?}" "${stall_s:-?}" "${st_here:-?}" "$result${why:+:$why}")
	rows+=("$row")
	log "$row"
	[ $result = pass ] || failed=$((failed + 1))
done
say "fault report ($((${#faults[@]} - failed)) of ${#faults[@]} passed)"
printf '   %-16s %-6s %8s %8s  %-12s %s\n' fault runs-on "echo-ms" "strm-ms" state result
printf '   %s\n' "${rows[@]}"
[ $failed -eq 0 ]
