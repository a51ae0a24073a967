#!/usr/bin/env bash
# Disk work at a protected start (issue 13, item 4), in the two-host lab: a
# 10 GiB qcow2 disk holding DATA_GIB (default 4) GiB of data, and the time
# from `virsh start` on host A to the backup replaying on host B:
#   1. first protection: the backup host has no copy (hash here, copy, hash
#      there);
#   2. restart with nothing changed since a clean guest shutdown that the
#      backup replayed (both copies recorded in step: no disk is read);
#   2b. the same without the records: both copies hashed (the behaviour
#      before in-step records);
#   3. restart after 100 MiB written to host A's image while the domain was
#      off (outside protection: the copies are no longer known to be in
#      step, so both are hashed and the image copied again).
# Prints a markdown table (also to $OUT, default /tmp/libvirt-ft-bench-disk.md).
#   EMULATOR=... [DATA_GIB=4] test/bench/disk.sh
set -euo pipefail
source "$(dirname "$0")/../e2e/lib.sh"
DATA_GIB=${DATA_GIB:-4}
OUT=${OUT:-/tmp/libvirt-ft-bench-disk.md}
export GUEST_ARGS="ft.poweroff=6"
trap lab_stop EXIT
lab_stop
lab_start
disk=$IMAGES/$DOMAIN.qcow2

say "a 10 GiB qcow2 disk with $DATA_GIB GiB of data on host A"
on a qemu-img create -q -f qcow2 "$disk" 10G
args=()
for i in $(seq 0 $((DATA_GIB * 4 - 1))); do
	args+=(-c "write -q -P $((0x40 + i % 64)) $((i * 256))M 256M")
done
on a qemu-io -f qcow2 "${args[@]}" "$disk"
log "image: $(on a du -h --apparent-size "$disk" | cut -f1) apparent, $(on a du -h "$disk" | cut -f1) allocated"
xml=$(mktemp --suffix=.xml)
SCRATCH+=("$xml")
domain_xml "$DOMAIN" >"$xml"
on a virsh -q -c qemu:///system define "$xml"
wait_for 20 "libvirt-ftd to prepare $DOMAIN" sh -c "'$LAB' exec a virsh -c qemu:///system dumpxml --inactive $DOMAIN | grep -q 'rr=record'"

# protected_start LABEL: virsh start on host A, then until the backup
# replays on host B, page cache dropped first; prints the seconds. Then waits for the guest's own
# shutdown (ft.poweroff) and the backup's end.
declare -A SECS HOW
protected_start() {
	local t0 t1
	# Cold caches, as on a host whose images are not in memory: each start
	# reads what it hashes from disk.
	sync
	echo 3 >/proc/sys/vm/drop_caches
	t0=$(date +%s%N)
	virsh_on a start "$DOMAIN" >/dev/null
	wait_replay_mode 900 "the backup to run in replay mode on host B" b "$DOMAIN" play
	t1=$(date +%s%N)
	SECS[$1]=$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.1f", d / 1e9 }')
	HOW[$1]=$(grep -E "disk $disk: (both copies unchanged|backup copy identical|seeding|seeded)" "$LAB_DIR/a/ftd.log" | tail -n 1 |
		sed -e 's/.*msg="disk [^:]*: //' -e 's/" .*//' -e 's/ (the guest shut down.*)//')
	log "$1: protected after ${SECS[$1]} s (${HOW[$1]})"
	wait_for 300 "$DOMAIN to shut off on host A" sh -c "'$LAB' exec a virsh -c qemu:///system domstate $DOMAIN | grep -q 'shut off'"
	wait_for 120 "the backup to end on host B" sh -c "! '$LAB' exec b virsh -q -c qemu:///system list --name | grep -qx $DOMAIN"
}

say "1. first protection"
protected_start first
uuid=$(virsh_on a domuuid "$DOMAIN")
for h in a b; do
	wait_for 10 "host $h to record its disk as in step" on $h test -s "/var/lib/libvirt-ft/in-step/$uuid.json"
done
say "2. restart with nothing changed"
protected_start unchanged
say "2b. restart with nothing changed, without the in-step records (both copies hashed, as before issue 13)"
for h in a b; do on $h rm -f "/var/lib/libvirt-ft/in-step/$uuid.json"; done
protected_start unrecorded
say "3. restart after 100 MiB written to host A's image outside protection"
for h in a b; do
	wait_for 10 "host $h to record its disk as in step" on $h test -s "/var/lib/libvirt-ft/in-step/$uuid.json"
done
on a qemu-io -f qcow2 -c "write -q -P 0x77 1G 100M" "$disk"
protected_start changed

{
	echo "| start | time to protected (s) | disk work |"
	echo "|---|---|---|"
	echo "| first protection (no copy on host B) | ${SECS[first]} | ${HOW[first]} |"
	echo "| restart, nothing changed | ${SECS[unchanged]} | ${HOW[unchanged]} |"
	echo "| restart, nothing changed, records removed (both copies hashed) | ${SECS[unrecorded]} | ${HOW[unrecorded]} |"
	echo "| restart after 100 MiB written outside protection | ${SECS[changed]} | ${HOW[changed]} |"
} | tee "$OUT"
