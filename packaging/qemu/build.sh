#!/usr/bin/env bash
# Builds Debian 12's QEMU 7.2 (qemu-system-x86_64 only) with the patches in
# this directory, installed under PREFIX (default /var/tmp/libvirt-ft-qemu)
# as PREFIX/bin/qemu-system-x86_64, with the firmware directories of
# Debian's packages linked in (QEMU finds firmware relative to its binary).
# Re-running is cheap when PREFIX is up to date. Needs root (apt-get).
#   packaging/qemu/build.sh [--background] [PREFIX]
# (--no-apt is the background build's own: the lock and packages are in
# hand.)
# --background installs the build's packages (apt-get: never in the
# background, where it would hold apt's locks beside other apt calls),
# then starts the build and returns: it runs at idle priority (CPU:
# SCHED_IDLE, so any other runnable task takes the CPU from it at once;
# disk: the idle class, where the I/O scheduler has one), logging to
# PREFIX.build.log, so that `make test` overlaps it with the unit tests
# and the stock-QEMU tests (about 7 min on 2 CPUs). It is not stopped if
# make fails meanwhile: it runs to its end (PREFIX is then up to date).
# A build holds PREFIX.lock: a later call waits for the one under way,
# then finds PREFIX up to date (or, if that build failed, shows its log's
# end and builds again).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
background=0 apt=1
case ${1:-} in
--background) background=1 && shift ;;
--no-apt) apt=0 && shift ;; # the background build: its packages are in
esac
prefix=${1:-/var/tmp/libvirt-ft-qemu}
work=${QEMU_WORK:-$prefix-build}
log=$prefix.build.log
stamp=$(cat "$here"/*.patch "$here/build.sh" | sha256sum | cut -c1-16)
up_to_date() {
	[ -x "$prefix/bin/qemu-system-x86_64" ] && [ "$(cat "$prefix/.patches" 2>/dev/null)" = "$stamp" ]
}
# apt_steps: Debian's source list and the build's packages.
apt_steps() {
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
}
if up_to_date; then
	echo "qemu: $prefix is up to date"
	exit 0
fi
mkdir -p "$(dirname "$prefix")"
if [ "$apt" = 0 ]; then
	: # the background build: fd 9, inherited, holds the lock
elif [ "$background" = 1 ]; then
	exec 9>"$prefix.lock"
	if ! flock -n 9; then
		echo "qemu: a build of $prefix is under way (log $log)"
		exit 0
	fi
	if up_to_date; then
		echo "qemu: $prefix is up to date"
		exit 0
	fi
	apt_steps
	# The build inherits fd 9 and so the lock (an flock belongs to the
	# open file, not to this process): no moment without it.
	setsid chrt --idle 0 ionice -c 3 "$here/build.sh" --no-apt "$prefix" >"$log" 2>&1 </dev/null &
	echo "qemu: building $prefix in the background at idle priority (log $log; to stop it: kill -- -$!)"
	exit 0
else
	exec 9>"$prefix.lock"
fi
if [ "$apt" = 1 ] && ! flock -n 9; then
	echo "qemu: waiting for the build under way (log $log)"
	flock 9
	if ! up_to_date; then
		echo "qemu: the build under way did not finish; the end of its log:" >&2
		tail -n 15 "$log" >&2 || true
		echo "qemu: building again" >&2
	fi
fi
if up_to_date; then
	echo "qemu: $prefix is up to date"
	exit 0
fi
[ "$apt" = 0 ] || apt_steps
rm -rf "$work" && mkdir -p "$work" && cd "$work"
apt-get source -q qemu >/dev/null
src=$(find "$work" -maxdepth 1 -type d -name 'qemu-7.2*' | head -n 1)
[ -n "$src" ] || { echo "qemu: no QEMU 7.2 source unpacked in $work" >&2; exit 1; }
for p in "$here"/*.patch; do
	patch -d "$src" -p1 --forward < "$p"
done
mkdir -p "$work/build" && cd "$work/build"
# The compilers do not inherit the lock (a build killed leaves none held).
"$src/configure" --target-list=x86_64-softmmu --prefix=/usr \
	--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu \
	--with-pkgversion=libvirt-ft --disable-docs --disable-werror --enable-slirp --disable-user --disable-install-blobs >/dev/null 9>&-
# ninja prints compiler errors on stdout: keep them, show them on failure.
if ! ninja -j"$(nproc)" qemu-system-x86_64 >"$work/ninja.log" 2>&1 9>&-; then
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
