#!/usr/bin/env bash
# End-to-end replication: a domain defined with `virsh define` on host A (with
# the ft element) starts with `virsh start`, its backup replays on host B in
# lockstep; the consoles print the same tick lines; after a clean guest
# shutdown both disks hold identical, verified disk-writer records.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
# No input from outside the guest in this scenario: it shuts itself down
# (see test/e2e/network.sh for TCP traffic to a protected guest).
POWEROFF_TICK=${POWEROFF_TICK:-40}
export GUEST_ARGS="ft.poweroff=$POWEROFF_TICK"
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

# 8 MiB of allocated zeros at 32 MiB (past the disk writer's records, which
# start at sector 0 and must be followed by zeros only): the image file
# then has blocks that stay the same, for the delta seed below. Host B has
# no copy: the first start seeds a new one, those blocks as holes.
on a qemu-io -f qcow2 -c "write -q -P 0 32M 8M" "$IMAGES/$DOMAIN.qcow2"

say "virsh start $DOMAIN on host A"
virsh_on a start "$DOMAIN"
wait_replay_mode 60 "the backup to run in replay mode on host B" b "$DOMAIN" play
[ "$(replay_mode a "$DOMAIN")" = record ] || die "primary is not recording"
log "host A: $(virsh_on a domstate "$DOMAIN") (query-replay mode: record)"
log "host B: $(virsh_on b domstate "$DOMAIN") (query-replay mode: play)"

say "waiting for 25 tick lines on host A's console"
wait_for 120 "25 ticks on host A" has_tick a "$DOMAIN" 25
n=$(last_tick a "$DOMAIN")
say "host A printed tick $n; waiting for host B's backup to replay up to it"
wait_for 120 "tick $n on host B" has_tick b "$DOMAIN" "$n"
st_a=$(ft_on a status) || die "virt-ft status on host A: not every domain is replicating"
st_b=$(ft_on b status) || die "virt-ft status on host B: not every domain is replicating"
printf '%s\n%s\n' "$st_a" "$st_b"
say "virt-ft status shows both sides (the peer's view through the daemons)"
grep -q "^$DOMAIN: peer $HOST_B_IP:7480: backup, replicating (failover state replicating)" <<<"$st_a" ||
	die "virt-ft status on host A does not show host B's side as a replicating backup"
grep -q "^$DOMAIN: peer $HOST_A_IP:7480: primary, replicating (failover state replicating)" <<<"$st_b" ||
	die "virt-ft status on host B does not show host A's side as a replicating primary"
jq -e --arg d "$DOMAIN" '.[] | select(.name == $d) | .peer_view.role == "backup" and .peer_view.state == "replicating"' \
	<<<"$(ft_on a status --json)" >/dev/null || die "virt-ft status --json on host A has no peer_view of host B's backup"
[ "$(ft_on a status --local | grep -c ": peer ")" = 0 ] || die "virt-ft status --local asked the peer"
titles=$(virsh_on a list --title; virsh_on b list --title)
echo "$titles" | sed 's/^/     /'
grep -q "$DOMAIN  *running  *libvirt-ft: $DOMAIN protected (backup on $HOST_B_IP)" <<<"$titles" ||
	die "virsh list --title on host A does not show $DOMAIN protected (what virt-manager's list shows)"
grep -q "$DOMAIN  *running  *libvirt-ft backup of $DOMAIN (primary on $HOST_A_IP)" <<<"$titles" ||
	die "virsh list --title on host B does not show the backup domain as a backup"
def=$(virsh_on a dumpxml --inactive "$DOMAIN")
if grep -q "<title>" <<<"$def"; then die "the persistent definition on host A got a title"; fi
say "Prometheus metrics on both hosts"
v=$(metric a "libvirt_ft_domain_state{domain=\"$DOMAIN\",role=\"primary\",state=\"replicating\",uuid=\"$(virsh_on a domuuid "$DOMAIN")\"}")
[ "$v" = 1 ] || die "host A's metrics do not show $DOMAIN replicating as primary (got '$v')"
[ "$(metric a "libvirt_ft_replay_mode{domain=\"$DOMAIN\",mode=\"record\"}")" = 1 ] || die "host A's metrics: replay mode is not record"
[ "$(metric b "libvirt_ft_replay_mode{domain=\"$DOMAIN\",mode=\"play\"}")" = 1 ] || die "host B's metrics: replay mode is not play"
sent=$(metric a "libvirt_ft_log_sent_bytes_total{domain=\"$DOMAIN\",role=\"primary\"}")
acked=$(metric a "libvirt_ft_log_acked_bytes_total{domain=\"$DOMAIN\"}")
awk -v s="$sent" -v a="$acked" 'BEGIN { exit !(s > 0 && a > 0) }' || die "host A's metrics: log sent '$sent', acked '$acked'"
m_a=$(metrics a) m_b=$(metrics b)
grep -q '^libvirt_ft_output_gate_hold_seconds_count{domain="'"$DOMAIN"'"' <<<"$m_a" || die "host A's metrics have no output gate hold histogram"
log "host A: log sent $sent B, acked $acked B; $(grep -c '^libvirt_ft_' <<<"$m_a") libvirt_ft_ series on A, $(grep -c '^libvirt_ft_' <<<"$m_b") on B"
ticks_a=$(mktemp) ticks_b=$(mktemp)
SCRATCH+=("$ticks_a" "$ticks_b")
tick_lines a "$DOMAIN" | awk -v lo=$((n - 19)) -v hi=$n '$2 >= lo && $2 <= hi' > "$ticks_a"
tick_lines b "$DOMAIN" | awk -v lo=$((n - 19)) -v hi=$n '$2 >= lo && $2 <= hi' > "$ticks_b"
[ "$(wc -l < "$ticks_a")" -eq 20 ] || die "expected 20 tick lines on A, got $(wc -l < "$ticks_a")"
if ! diff -u "$ticks_a" "$ticks_b"; then die "consoles differ"; fi
say "the last 20 tick lines are identical on both hosts (uptime included):"
paste -d'|' "$ticks_a" "$ticks_b" | awk -F'|' '{printf "     A: %-28s B: %s\n", $1, $2}'

say "clean guest shutdown: the guest powers itself off after tick $POWEROFF_TICK (ft.poweroff)"
wait_for 180 "$DOMAIN to shut off on host A" sh -c "'$LAB' exec a virsh -c qemu:///system domstate $DOMAIN | grep -q 'shut off'"
wait_for 120 "the backup to end on host B" sh -c "! '$LAB' exec b virsh -q -c qemu:///system list --name | grep -qx $DOMAIN"
disk_a=$(mktemp --suffix=.qcow2) disk_b=$(mktemp --suffix=.qcow2)
SCRATCH+=("$disk_a" "$disk_b")
on a cat "$IMAGES/$DOMAIN.qcow2" >"$disk_a"
on b cat "$IMAGES/$DOMAIN.qcow2" >"$disk_b"
"$BIN/diskcheck" "$disk_a" "$disk_b"
cmp "$disk_a" "$disk_b" || die "the two disk images differ as files after the replayed shutdown (their guest records verify)"
log "the two disk images are byte-identical after the replayed shutdown"

# RESTARTS=0 (install.sh: the same daemon code, installed) leaves out the
# two restarts below.
if [ "${RESTARTS:-1}" = 1 ]; then
	say "restart: both copies ended the pairing in step, so no disk is read (issue 13)"
	uuid=$(virsh_on a domuuid "$DOMAIN")
	in_step=yes
	wait_for 10 "host A to record its disk as in step" on a test -s "/var/lib/libvirt-ft/in-step/$uuid.json"
	if ! wait_for_quiet 10 on b test -s "/var/lib/libvirt-ft/in-step/$uuid.json"; then
		# A backup whose replay of the shutdown stalled (halted: it never
		# reached the end) must record nothing, and the restart then hashes.
		# Seen once in about ten runs: the replay stopping before an INTERRUPT
		# in the guest's last second (a known replay limit, see the closing
		# notes); the disks' records still matched.
		stall=$(grep -o 'replay stalled at icount [0-9]*, next event [A-Z_]*' "$LAB_DIR/b/ftd.log" | tail -n 1 || true)
		# Or the primary's log after the guest's shutdown was longer
		# than FIFO B and QEMU's buffer hold (256 + 4 KiB since session
		# 41, 16 + 4 KiB before): the replaying
		# QEMU stopped reading at the shutdown with log left unfed, and
		# the backup cannot tell that tail from log it needed (seen once
		# in session 39's CI, stock QEMU: 12,913 bytes unfed).
		unfed=$(grep -o 'not in step (the next start hashes the disks): [1-9][0-9]* of the [0-9]* log bytes received were fed' "$LAB_DIR/b/ftd.log" | tail -n 1 || true)
		if [ -n "$unfed" ]; then
			# Only after the replay shut the guest down by itself (a
			# replaying QEMU that died first leaves log unfed too).
			last=$(grep -h 'shutting down, reason=' "$LAB_DIR/b/root/log-libvirt/qemu/$DOMAIN.log" 2>/dev/null | tail -n 1 || true)
			case "$last" in
			*reason=shutdown*) ;;
			*) die "host B left log unfed, but its replay did not shut the guest down by itself (libvirt: ${last:-no shutdown line})" ;;
			esac
		fi
		[ -n "$stall$unfed" ] || die "host B recorded nothing in step, and its replay neither stalled nor left log unfed"
		log "KNOWN: host B recorded nothing in step (${stall:-$unfed}), so the restart must hash both copies"
		in_step=no
	else
		log "in-step records on both hosts: $(on a jq -c '{epoch, role, disks: [.disks[].path]}' "/var/lib/libvirt-ft/in-step/$uuid.json"), $(on b jq -c '{epoch, role}' "/var/lib/libvirt-ft/in-step/$uuid.json")"
	fi
	virsh_on a start "$DOMAIN" >/dev/null
	wait_replay_mode 60 "the backup to run in replay mode on host B" b "$DOMAIN" play
	if [ $in_step = yes ]; then
		grep "not read" "$LAB_DIR/a/ftd.log" | tail -n 1 | sed 's/^/     /' || true
		grep -q "both copies unchanged since pairing .* ended in step" "$LAB_DIR/a/ftd.log" || die "host A read (hashed or seeded) the disk on a restart with both copies in step"
	else
		grep -qE "disk [^:]*: (backup copy identical|seeded and verified)" "$LAB_DIR/a/ftd.log" || die "host A did not hash the disks on a restart without in-step records"
		grep -E "disk [^:]*: (backup copy identical|seeded and verified)" "$LAB_DIR/a/ftd.log" | tail -n 1 | sed 's/^/     /'
	fi
	# (QEMU truncates a file console at start: these are the second boot's.)
	wait_for 120 "10 ticks of the second boot on host B" has_tick b "$DOMAIN" 10
	virsh_on a destroy "$DOMAIN" >/dev/null
	wait_for 60 "the backup to end on host B" sh -c "! '$LAB' exec b virsh -q -c qemu:///system list --name | grep -qx $DOMAIN"
	log "the restarted pair replicated on the unread copies (tick 10 of the second boot on host B)"

	say "restart after a destroy and 1 MiB overwritten in host B's copy: only the differing blocks are sent (issue 13)"
	# The destroy left no in-step record. Host B's copy is made the size of
	# host A's (the destroy may have cut its replay short of the last cluster
	# allocation) and gets 1 MiB of other bytes at 2 MiB, inside the 8 MiB of
	# zeros written before the first start (a qcow2 file is plain bytes until
	# QEMU opens it; that block goes back as zeros, a hole). Both hosts list their blocks; only those that differ go
	# over (docs/protocol.md §5a), and the lists must match after.
	size_a=$(on a stat -c %s "$IMAGES/$DOMAIN.qcow2")
	[ "$size_a" -ge $((8 << 20)) ] || die "host A's image is $size_a bytes, less than the 8 MiB written into it"
	on b truncate -s "$size_a" "$IMAGES/$DOMAIN.qcow2"
	on b dd if=/dev/urandom of="$IMAGES/$DOMAIN.qcow2" bs=1M seek=2 count=1 conv=notrunc status=none
	mark=$(wc -l <"$LAB_DIR/a/ftd.log")
	virsh_on a start "$DOMAIN" >/dev/null
	wait_replay_mode 60 "the backup to run in replay mode on host B" b "$DOMAIN" play
	seedlog=$(tail -n +"$((mark + 1))" "$LAB_DIR/a/ftd.log" | grep -F "disk $IMAGES/$DOMAIN.qcow2: " || true)
	sed 's/.*msg="//; s/" .*//; s/^/     /' <<<"$seedlog"
	grep -q "seeded and verified" <<<"$seedlog" || die "host A did not seed and verify host B's damaged copy"
	read -r k n < <(grep -oE "[0-9]+ of [0-9]+ blocks of [0-9]+ KiB differ from the backup's copy" <<<"$seedlog" | awk '{print $1, $3}') ||
		die "host A did not seed only the differing blocks (no \"K of N blocks differ\" line)"
	[ "$k" -ge 1 ] && [ "$k" -lt "$n" ] || die "host A sent $k of $n blocks: want at least the damaged one and fewer than all"
	left=$(on b find "$IMAGES" -name ".*.seed-*" 2>/dev/null || true)
	[ -z "$left" ] || die "temporary seed files left on host B: $left"
	log "host A sent $k of the image's $n blocks; no temporary file left on host B"
	virsh_on a destroy "$DOMAIN" >/dev/null
	wait_for 60 "the backup to end on host B" sh -c "! '$LAB' exec b virsh -q -c qemu:///system list --name | grep -qx $DOMAIN"
fi

say "nothing left behind"
for h in a b; do
	left=$(on $h find /var/lib/libvirt-ft -type p 2>/dev/null || true)
	[ -z "$left" ] || die "FIFOs left on host $h: $left"
done
log "no FIFO left on either host"
