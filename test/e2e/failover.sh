#!/usr/bin/env bash
# End-to-end failover: host A fails at a random moment while the guest runs
# its tick counter and disk writer; the backup on host B goes live from
# exactly where the log ended. Trials rotate through MODES (default
# "qemu host"):
#   qemu       kill -9 of the primary's QEMU
#   host       host A torn down entirely (every process in its namespaces,
#              QEMU, libvirtd and daemon alike, then its network)
#   partition  host A cut off the LAN, its processes alive: the
#              split-brain lock must leave exactly one VM (either host)
#   switchover a planned switchover: `virt-ft failover` on host A
#   TRIALS=N [MODES="qemu host partition switchover"] test/e2e/failover.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
TRIALS=${TRIALS:-1}
read -r -a modes <<<"${MODES:-qemu host}"
trap lab_stop EXIT
report=()
for trial in $(seq 1 "$TRIALS"); do
	mode=${modes[$(((trial - 1) % ${#modes[@]}))]}
	case $mode in
	qemu) what='kill -9 of the primary QEMU' ;;
	host) what='host A torn down' ;;
	partition) what='host A cut off the LAN (a partition; its processes keep running)' ;;
	switchover) what='planned switchover (virt-ft failover on host A)' ;;
	*) die "unknown mode $mode (MODES: qemu host partition switchover)" ;;
	esac
	say "trial $trial/$TRIALS: failure = $what"
	fresh_protected_lab 10
	# A random moment: 0-4 s more.
	sleep "$((RANDOM % 5)).$((RANDOM % 10))"
	# This trial's scratch files (the next trial's lab_stop removes them).
	rarp=$(mktemp) disk_b=$(mktemp --suffix=.qcow2)
	SCRATCH+=("$rarp" "$disk_b")
	ip netns exec ftlab-lan tcpdump -i lan0 -n -e -l -U 'ether proto 0x8035 or arp' > "$rarp" 2>/dev/null &
	tcpdump_pid=$!
	sleep 0.3
	before=$(last_tick b "$DOMAIN")
	t0=$(date +%s%N)
	case $mode in
	qemu) on a kill -9 "$(qemu_pid a "$DOMAIN")" ;;
	host) lab kill-host a >/dev/null ;;
	partition) lab cut-host a >/dev/null ;;
	switchover)
		ft_on a failover "$DOMAIN" | sed 's/^/     /' || die "virt-ft failover failed"
		# The primary is stopped only after the backup went live.
		[ "$(virsh_on a domstate "$DOMAIN" 2>/dev/null || true)" != running ] ||
			wait_for 20 "the old primary to be stopped on host A" sh -c "[ \"\$('$LAB' exec a virsh -q -c qemu:///system domstate $DOMAIN 2>/dev/null)\" != running ]"
		;;
	esac
	log "failed at host B's tick $before"
	if [ $mode = partition ]; then
		# No split brain: within a few heartbeat timeouts exactly one VM runs.
		# Whoever takes the split-brain lock first wins; the other halts.
		end=$((SECONDS + 20)); winner=""
		while [ $SECONDS -lt $end ]; do
			a_state=$(virsh_on a domstate "$DOMAIN" 2>/dev/null || true)
			b_mode=$(replay_mode b "$DOMAIN" || true)
			if [ "$a_state" = "shut off" ] && { [ "$b_mode" = none ] || [ "$b_mode" = record ]; }; then winner=b; break; fi
			if [ "$a_state" = running ] && ! virsh_on b list --name | grep -qx "$DOMAIN"; then winner=a; break; fi
			sleep 0.2
		done
		[ -n "$winner" ] || die "no single winner after the partition: host A '$a_state', host B mode '$b_mode'"
		t1=$(date +%s%N)
		total=$(((t1 - t0) / 1000000))
		log "exactly one VM after $total ms: host $winner won the split-brain lock, the other halted"
		{ ft_on a status "$DOMAIN"; ft_on b status "$DOMAIN"; } 2>/dev/null | sed 's/^/     /' || true
		kill "$tcpdump_pid" 2>/dev/null || true
		wait "$tcpdump_pid" 2>/dev/null || true
		report+=("trial $trial (partition): host $winner won; one VM after $total ms")
		continue
	fi
	# Live: restarted recording (stock QEMU path) or, with packaging/qemu's
	# end-of-log patch, the backup's QEMU left replay mode (none).
	wait_replay_mode 60 "the VM to run live on host B" b "$DOMAIN" record none
	t1=$(date +%s%N)
	total=$(((t1 - t0) / 1000000))
	log "running on host B $total ms after the failure"
	{ ft_on b status "$DOMAIN" || true; } | sed 's/^/     /' # exit 1: live, unprotected
	golive=$({ ft_on b status "$DOMAIN" || true; } | sed -n 's/^[^:]*: last failover event: //p')
	n_live=$(metrics b | awk -v d="$DOMAIN" 'index($1, "libvirt_ft_go_lives_total{domain=\"" d "\"") == 1 { n += $2 } END { print n + 0 }')
	[ "$n_live" -ge 1 ] || die "host B's metrics count no go-live (libvirt_ft_go_lives_total)"
	log "metrics on host B: go-lives $n_live, go-live histogram count $(metric b "libvirt_ft_go_live_duration_seconds_count{domain=\"$DOMAIN\"}")"
	# The replay's flushes stopped at the OS (packaging/qemu 0024): after a
	# continued go-live, host B's daemon fsyncs each disk and says so.
	b_json() { { ft_on b status --json "$DOMAIN" 2>/dev/null || true; }; } # exit 1: live, unprotected
	if b_json | grep -q '"path": "continued"'; then
		synced() { b_json | grep -q '"disks_synced_ms": [1-9]'; }
		wait_for 60 "host B's daemon to flush the live VM's disks (disks_synced_ms)" synced
		! b_json | grep -q '"disk_sync_error"' || die "flushing the live VM's disks failed: $(b_json | grep disk_sync_error)"
		log "host B flushed the live VM's disks after go-live in $(b_json | sed -n 's/.*"disks_synced_ms": \([0-9]*\).*/\1/p' | head -n 1) ms"
	fi
	n=$(last_tick b "$DOMAIN")
	wait_for 60 "5 more ticks on host B" has_tick b "$DOMAIN" $((n + 5))
	ticks_consecutive b "$DOMAIN" || die "the tick counter did not continue (guest rebooted or diverged)"
	first_live=$(tick_lines b "$DOMAIN" | awk -v b="$before" '$2 > b { print; exit }')
	log "tick counter continues without a gap on host B (last before failure: $before, then: $first_live ...)"
	tick_lines b "$DOMAIN" | awk -v b="$before" '$2 >= b - 2 && $2 <= b + 4' | sed 's/^/     host B console: /' 
	kill "$tcpdump_pid" 2>/dev/null || true
	wait "$tcpdump_pid" 2>/dev/null || true
	grep -qi "52:54:00:fa:00:01.*Reverse" "$rarp" || grep -qi "52:54:00:fa:00:01 .*ethertype Reverse ARP\|52:54:00:fa:00:01 > ff:ff:ff:ff:ff:ff, ethertype Reverse" "$rarp" ||
		die "no RARP frame with the guest's MAC on the LAN bridge: $(head -n 5 "$rarp")"
	log "RARP announcing 52:54:00:fa:00:01 seen on the LAN bridge ($(grep -ci 'Reverse' "$rarp") frames)"
	say "clean shutdown on host B, then the disk writer's records must all verify"
	log "disk writer: $(guest_ctl status | tr -d '\r' | head -n 1)"
	guest_ctl poweroff >/dev/null || true
	wait_for 120 "$DOMAIN to shut off on host B" sh -c "! '$LAB' exec b virsh -q -c qemu:///system list --name | grep -qx $DOMAIN"
	on b cat "$IMAGES/$DOMAIN.qcow2" >"$disk_b"
	"$BIN/diskcheck" "$disk_b"
	report+=("trial $trial ($mode): failure to running $total ms; $golive")
done
say "failover report"
printf '   %s\n' "${report[@]}"
