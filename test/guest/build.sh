#!/usr/bin/env bash
# Builds the libvirt-ft test guest: OUTDIR/vmlinuz and OUTDIR/initrd.img.
#
#   test/guest/build.sh OUTDIR
#
# Kernel: Debian 12's current cloud kernel (the package that
# linux-image-cloud-amd64 depends on), fetched with `apt-get download` into
# OUTDIR/cache and unpacked with dpkg-deb -x (never installed on the host).
# Initramfs: busybox-static (also fetched into the cache), the virtio modules
# and the files under test/guest/rootfs (the /init and its workloads).
# Set KERNEL_PKG to pin another kernel package. Re-running is cheap: nothing
# is rebuilt when the inputs did not change.
set -euo pipefail
umask 022 # the initrd records file modes: keep builds identical

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
cache=$out/cache
mkdir -p "$cache"

modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev
	virtio_pci failover net_failover virtio_net virtio_blk)

die() { echo "build.sh: $*" >&2; exit 1; }

# resolve_kernel prints the kernel package name behind linux-image-cloud-amd64.
resolve_kernel() {
	if [ -n "${KERNEL_PKG:-}" ]; then
		echo "$KERNEL_PKG"
		return
	fi
	local pkg
	pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
	if [ -z "$pkg" ]; then
		# No apt lists (apt-get update not run): fall back to a cached deb.
		local deb
		deb=$(ls "$cache"/linux-image-*-cloud-amd64_*.deb 2>/dev/null | sort -V | tail -n 1)
		[ -n "$deb" ] || die "cannot resolve linux-image-cloud-amd64 (run apt-get update) and no kernel in $cache"
		pkg=$(basename "$deb")
		pkg=${pkg%%_*}
	fi
	echo "$pkg"
}

# fetch PKG prints the path of PKG's .deb in the cache, downloading it once.
fetch() {
	local pkg=$1 deb
	deb=$(ls "$cache/${pkg}"_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
	if [ -z "$deb" ]; then
		echo "build.sh: downloading $pkg" >&2
		(cd "$cache" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2) ||
			die "apt-get download $pkg failed"
		deb=$(ls "$cache/${pkg}"_*.deb 2>/dev/null | sort -V | tail -n 1)
		[ -n "$deb" ] || die "apt-get download $pkg left no .deb in $cache"
	fi
	echo "$deb"
}

kpkg=$(resolve_kernel)
kdeb=$(fetch "$kpkg")
bdeb=$(fetch busybox-static)

# Inputs that define the result; the stamp records them.
stamp_want=$(
	{
		basename "$kdeb"
		basename "$bdeb"
		sha256sum "$0" | cut -d' ' -f1
		(cd "$here/rootfs" && find . -type f | LC_ALL=C sort | xargs sha256sum)
	} | sha256sum | cut -d' ' -f1
)
if [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ] &&
	[ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp_want" ]; then
	echo "build.sh: $out is up to date ($kpkg)"
	exit 0
fi

work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

dpkg-deb -x "$kdeb" "$work/k"
dpkg-deb -x "$bdeb" "$work/bb"
kver=$(ls "$work/k/lib/modules" | head -n 1)
[ -n "$kver" ] || die "no /lib/modules in $kdeb"
[ -f "$work/k/boot/vmlinuz-$kver" ] || die "no /boot/vmlinuz-$kver in $kdeb"

root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,run,tmp,lib/modules,etc,root}
cp "$work/bb/bin/busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
	[ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
cp -a "$here/rootfs/." "$root/"
chmod 755 "$root/init" "$root"/bin/ft-*
# The kernel opens /dev/console before /init runs.
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null ||
	echo "build.sh: warning: cannot mknod /dev/console (not root?), relying on the kernel's built-in one" >&2

# Modules: take .ko, .ko.xz, .ko.zst or .ko.gz; store them uncompressed.
mdir=$work/k/lib/modules/$kver
loaded=() builtin=()
for m in "${modules[@]}"; do
	f=$(find "$mdir/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" \) | head -n 1)
	if [ -z "$f" ]; then
		if grep -q "/$m.ko\$" "$mdir/modules.builtin" 2>/dev/null; then
			builtin+=("$m")
			continue
		fi
		die "module $m is neither in $kpkg nor built in"
	fi
	case "$f" in
	*.ko) cp "$f" "$root/lib/modules/$m.ko" ;;
	*.ko.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
	*.ko.zst) zstd -qdc "$f" >"$root/lib/modules/$m.ko" ;;
	*.ko.gz) gzip -dc "$f" >"$root/lib/modules/$m.ko" ;;
	esac
	loaded+=("$m")
done
echo "$kver" >"$root/etc/ft-guest-kernel"

# Reproducible newc archive: sorted names, fixed times.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) |
	gzip -9 -n >"$work/initrd.img"
cp "$work/k/boot/vmlinuz-$kver" "$work/vmlinuz"
mv -f "$work/vmlinuz" "$out/vmlinuz"
mv -f "$work/initrd.img" "$out/initrd.img"
echo "$stamp_want" >"$out/.stamp"
echo "build.sh: built $out/vmlinuz and $out/initrd.img ($kver; modules: ${loaded[*]:-none}; built in: ${builtin[*]:-none})"
