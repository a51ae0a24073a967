#!/usr/bin/env bash
# Builds Debian 12's QEMU 7.2 (qemu-system-x86_64 only) with the patches in
# this directory, installed under PREFIX (default /var/tmp/libvirt-ft-qemu)
# as PREFIX/bin/qemu-system-x86_64, with the firmware directories of
# Debian's packages linked in (QEMU finds firmware relative to its binary).
# Re-running is cheap when PREFIX is up to date. Needs root (apt-get).
#   packaging/qemu/build.sh [--background] [PREFIX]
# --background starts the build and returns at once: it runs at idle
# priority (CPU: SCHED_IDLE, so any other runnable task takes the CPU
# from it at once; disk: the idle class), logging to PREFIX.build.log,
# so that `make test` overlaps it with the unit tests and the stock-QEMU
# tests (about 7 min on 2 CPUs). A build holds PREFIX.lock: a later call
# waits for the one under way, then finds PREFIX up to date (or, if that
# build failed, builds again and shows why).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
background=0
if [ "${1:-}" = --background ]; then
	background=1
	shift
fi
prefix=${1:-/var/tmp/libvirt-ft-qemu}
work=${QEMU_WORK:-/var/tmp/libvirt-ft-qemu-build}
stamp=$(cat "$here"/*.patch "$here/build.sh" | sha256sum | cut -c1-16)
up_to_date() {
	[ -x "$prefix/bin/qemu-system-x86_64" ] && [ "$(cat "$prefix/.patches" 2>/dev/null)" = "$stamp" ]
}
if up_to_date; then
	echo "qemu: $prefix is up to date"
	exit 0
fi
mkdir -p "$(dirname "$prefix")"
if [ "$background" = 1 ]; then
	setsid chrt --idle 0 ionice -c 3 "$here/build.sh" "$prefix" >"$prefix.build.log" 2>&1 </dev/null &
	echo "qemu: building $prefix in the background at idle priority (pid $!, log $prefix.build.log)"
	exit 0
fi
exec 9>"$prefix.lock"
if ! flock -n 9; then
	echo "qemu: waiting for the build under way (log $prefix.build.log)"
	flock 9
fi
if up_to_date; then
	echo "qemu: $prefix is up to date"
	exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get source --print-uris -q qemu >/dev/null 2>&1 || [ -z "$(apt-get source --print-uris -q qemu 2>/dev/null | grep dsc)" ]; then
	cat > /etc/apt/sources.list.d/libvirt-ft-src.sources <<-SRC
	Types: deb-src
	URIs: http://deb.debian.org/debian
	Suites: bookworm bookworm-updates
	Components: main
	Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	SRC
	apt-get update -q
fi
apt-get install -y -q --no-install-recommends dpkg-dev meson ninja-build libglib2.0-dev \
	libpixman-1-dev libslirp-dev libfdt-dev python3-venv flex bison xz-utils >/dev/null
rm -rf "$work" && mkdir -p "$work" && cd "$work"
apt-get source -q qemu >/dev/null
src=$(find "$work" -maxdepth 1 -type d -name 'qemu-7.2*' | head -n 1)
[ -n "$src" ] || { echo "qemu: no QEMU 7.2 source unpacked in $work" >&2; exit 1; }
for p in "$here"/*.patch; do
	patch -d "$src" -p1 --forward < "$p"
done
mkdir -p "$work/build" && cd "$work/build"
"$src/configure" --target-list=x86_64-softmmu --prefix=/usr \
	--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu \
	--with-pkgversion=libvirt-ft --disable-docs --disable-werror --enable-slirp --disable-user --disable-install-blobs >/dev/null
# ninja prints compiler errors on stdout: keep them, show them on failure.
if ! ninja -j"$(nproc)" qemu-system-x86_64 >"$work/ninja.log" 2>&1; then
	grep -E -B2 -A8 'error|FAILED' "$work/ninja.log" | head -n 60 >&2
	echo "qemu: the build failed (whole log: $work/ninja.log)" >&2
	exit 1
fi
mkdir -p "$prefix/bin" "$prefix/share" "$prefix/lib/ipxe"
install -m 0755 qemu-system-x86_64 "$prefix/bin/qemu-system-x86_64"
ln -sfn /usr/share/qemu "$prefix/share/qemu"
ln -sfn /usr/share/seabios "$prefix/share/seabios"
ln -sfn /usr/lib/ipxe/qemu "$prefix/lib/ipxe/qemu"
chmod 755 "$prefix" "$prefix/bin"
echo "$stamp" > "$prefix/.patches"
rm -rf "$work"
echo "qemu: built $prefix/bin/qemu-system-x86_64 ($("$prefix/bin/qemu-system-x86_64" --version | head -n 1))"
