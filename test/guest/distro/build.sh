#!/usr/bin/env bash
# Builds a real distribution guest for libvirt-ft's tests (issue 14): Debian
# 12 (bookworm) with systemd, as an admin would install it, in
# OUTDIR/debian.qcow2 (an ext4 file system on the whole disk, no partition
# table) with its own kernel and initramfs in OUTDIR/vmlinuz and
# OUTDIR/initrd.img (libvirt boots them directly: <kernel>, <initrd>,
# root=/dev/vda; no boot loader to install).
#
#   test/guest/distro/build.sh OUTDIR
#
# debootstrap (installed on demand) fetches the packages from the host's
# Debian mirror; nothing is installed on the host but debootstrap. What the
# guest runs, all from systemd units under test/guest/distro/rootfs:
#   - the tick counter on /dev/ttyS0 ("tick N up SECONDS", as the busybox
#     test guest prints it), preceded by "ft-guest: up" once
#     multi-user.target is reached;
#   - TCP 7001 counter stream and 7002 echo (socket-activated, Accept=yes);
#   - a serial getty on ttyS0 (systemd's own), systemd-networkd with the
#     lab's static address for the NIC 52:54:00:fa:00:01, systemd-logind
#     (with dbus) handling the ACPI power button: `virsh shutdown` works.
# Re-running is cheap: nothing is rebuilt when the inputs did not change.
set -euo pipefail
umask 022
if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
die() { echo "distro/build.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"

SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\)\/*$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SIZE=${SIZE:-2G}
packages=systemd-sysv,udev,dbus,libpam-systemd,linux-image-cloud-amd64,initramfs-tools,iproute2,procps,netbase,kmod,e2fsprogs

stamp_want=$(
	{
		echo "$SUITE $packages $SIZE"
		sha256sum "$0" | cut -d' ' -f1
		(cd "$here/rootfs" && find . -type f | LC_ALL=C sort | xargs sha256sum)
	} | sha256sum | cut -d' ' -f1
)
if [ -f "$out/debian.qcow2" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ] &&
	[ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp_want" ]; then
	echo "distro/build.sh: $out is up to date"
	exit 0
fi
command -v debootstrap >/dev/null ||
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null ||
	die "cannot install debootstrap"
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 is missing (e2fsprogs)"
command -v qemu-img >/dev/null || die "qemu-img is missing (qemu-utils)"

work=$(mktemp -d "/var/tmp/ft-distro.XXXXXX")
cleanup() {
	for m in proc sys dev/pts dev; do umount "$work/root/$m" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT
root=$work/root
echo "distro/build.sh: debootstrap $SUITE from $MIRROR (a few minutes)" >&2
debootstrap --variant=minbase --include="$packages" "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
	{ tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

cp -a "$here/rootfs/." "$root/"
chmod 755 "$root"/usr/local/bin/ft-*
echo ft-debian >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 ft-debian\n' >"$root/etc/hosts"
printf '/dev/vda / ext4 defaults,errors=remount-ro 0 1\n' >"$root/etc/fstab"
# A test machine: root logs in on the serial console without a password.
chroot "$root" passwd -d root >/dev/null
# Services: networkd, the workloads; no timers that would wake the guest
# for nothing (apt, man-db, fstrim, e2scrub).
chroot "$root" systemctl enable systemd-networkd.service ft-tick.service ft-echo.socket ft-stream.socket >/dev/null 2>&1
for t in apt-daily.timer apt-daily-upgrade.timer man-db.timer fstrim.timer e2scrub_all.timer dpkg-db-backup.timer; do
	chroot "$root" systemctl disable "$t" >/dev/null 2>&1 || true
done
rm -f "$root"/var/cache/apt/archives/*.deb

kver=$(ls "$root/lib/modules" | head -n 1)
[ -n "$kver" ] && [ -f "$root/boot/vmlinuz-$kver" ] && [ -f "$root/boot/initrd.img-$kver" ] ||
	die "no kernel and initramfs in $root/boot (linux-image-cloud-amd64)"
cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$work/initrd.img"

# ext4 on the whole disk, filled from the tree (no loop mount).
truncate -s "$SIZE" "$work/disk.raw"
mkfs.ext4 -q -L ft-root -d "$root" "$work/disk.raw"
qemu-img convert -O qcow2 "$work/disk.raw" "$work/debian.qcow2"
mv -f "$work/vmlinuz" "$out/vmlinuz"
mv -f "$work/initrd.img" "$out/initrd.img"
mv -f "$work/debian.qcow2" "$out/debian.qcow2"
echo "$stamp_want" >"$out/.stamp"
echo "distro/build.sh: built $out/debian.qcow2 (Debian $SUITE, kernel $kver, $(du -h "$out/debian.qcow2" | cut -f1) allocated of $SIZE)"
