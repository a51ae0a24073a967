#!/usr/bin/env bash
# Records logchan/testdata/boot.rrlog.gz: a real QEMU 7.2 record/replay log
# of the test guest booting, recorded with plain QEMU (no libvirt).
#
#   logchan/testdata/record-fixture.sh [OUT]
#
# OUT defaults to boot.rrlog.gz beside this script; the SHA-256 sums of the
# guest kernel and initrd go beside it (OUT without .rrlog.gz, plus
# .guest.sha256), so that the replay test can tell whether the guest in
# test/guest/out is still the recorded one. The guest comes from
# test/guest/build.sh (built into test/guest/out if missing). The VM has a
# qcow2 disk under a blkreplay node (the guest's disk writer makes BLOCK
# events) and a virtio-net NIC on a user netdev with filter-replay. The
# script waits until the guest has written a few disk records, then quits
# QEMU through QMP so that the log is finished: SHUTDOWN and END events at
# the end and the version in the 12-byte header. Needs qemu-system-x86_64
# 7.2, qemu-img and gzip; QMP is spoken over a pipe chardev, so no socket
# tool is needed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$here/boot.rrlog.gz}
guest=${GUEST_OUT:-$repo/test/guest/out}
# Disk records to wait for after the guest is up.
records=${RECORDS:-3}
timeout_s=${TIMEOUT:-120}

if [ ! -f "$guest/vmlinuz" ] || [ ! -f "$guest/initrd.img" ]; then
	"$repo/test/guest/build.sh" "$guest"
fi

work=$(mktemp -d)
qemu_pid=
cleanup() {
	if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
		kill "$qemu_pid" 2>/dev/null || true
		wait "$qemu_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

qemu-img create -q -f qcow2 "$work/disk.qcow2" 64M
mkfifo "$work/qmp.in" "$work/qmp.out"

# Keep this command line in step with replayArgs in logchan/replay_test.go.
qemu-system-x86_64 \
	-M pc -m 256 -smp 1 -nodefaults -no-user-config -display none \
	-serial "file:$work/console.log" \
	-kernel "$guest/vmlinuz" -initrd "$guest/initrd.img" \
	-append 'console=ttyS0 panic=-1' \
	-icount "shift=auto,rr=record,rrfile=$work/boot.rrlog" \
	-drive "file=$work/disk.qcow2,if=none,id=img0,format=qcow2" \
	-drive driver=blkreplay,if=none,image=img0,id=rr0 \
	-device virtio-blk-pci,drive=rr0 \
	-netdev user,id=net0 \
	-object filter-replay,id=fr0,netdev=net0 \
	-device virtio-net-pci,netdev=net0,mac=52:54:00:f7:00:01 \
	-chardev "pipe,id=qmp,path=$work/qmp" -mon chardev=qmp,mode=control \
	>"$work/qemu.out" 2>&1 &
qemu_pid=$!

# Keep QMP's output drained so that QEMU never blocks on it.
cat "$work/qmp.out" >"$work/qmp.log" &

deadline=$((SECONDS + timeout_s))
until grep -q "ft-guest: disk writer starts" "$work/console.log" 2>/dev/null; do
	kill -0 "$qemu_pid" 2>/dev/null || { cat "$work/qemu.out" >&2; exit 1; }
	[ $SECONDS -lt $deadline ] || { echo "record-fixture.sh: guest did not come up" >&2; exit 1; }
	sleep 0.2
done
# Each disk record is one synchronous write; wait for a few.
start=$SECONDS
while [ $((SECONDS - start)) -lt $((records + 1)) ]; do
	kill -0 "$qemu_pid" 2>/dev/null || { cat "$work/qemu.out" >&2; exit 1; }
	sleep 0.2
done

printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"quit"}' >"$work/qmp.in"
wait "$qemu_pid"
qemu_pid=

head -c 4 "$work/boot.rrlog" | od -An -tx1 | grep -q '00 e0 20 0c' ||
	{ echo "record-fixture.sh: log header lacks version 0xe0200c (unclean exit?)" >&2; exit 1; }
gzip -9 -n -c "$work/boot.rrlog" >"$out.tmp"
mv "$out.tmp" "$out"
(cd "$guest" && sha256sum vmlinuz initrd.img) >"${out%.rrlog.gz}.guest.sha256"
echo "record-fixture.sh: $(stat -c %s "$work/boot.rrlog") bytes of log, $(stat -c %s "$out") gzipped into $out"
tail -n 3 "$work/console.log" | sed 's/^/  console: /'
