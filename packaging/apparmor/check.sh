#!/usr/bin/env bash
# Checks libvirt-ft's AppArmor rules with apparmor_parser, loading nothing
# into the kernel: libvirtd's and virtqemud's profiles with our include
# line, and a domain's profile (libvirt's TEMPLATE.qemu) with the
# libvirt-qemu abstraction that includes ours, as the package's maintainer
# scripts set them up. Uses the installed apparmor_parser and profiles, or
# else unpacks Debian's apparmor package into OUT (never installed: with
# AppArmor enabled in the kernel, installing it would confine the lab's
# libvirtd).
#   packaging/apparmor/check.sh [OUT]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../build/apparmor}
mkdir -p "$out"
out=$(cd "$out" && pwd)
parser=$(command -v apparmor_parser || true)
base=$out/etc
rm -rf "$base" && mkdir -p "$base"
if [ -z "$parser" ] || [ ! -d /etc/apparmor.d/tunables ]; then
	if [ ! -x "$out/pkg/sbin/apparmor_parser" ]; then
		(cd "$out" && rm -f apparmor_*.deb && apt-get download -q apparmor 2>&1 | grep -v 'unsandboxed as root' || true)
		ls "$out"/apparmor_*.deb >/dev/null 2>&1 || { echo "check.sh: apt-get download apparmor failed" >&2; exit 1; }
		rm -rf "$out/pkg" && dpkg-deb -x "$out"/apparmor_*.deb "$out/pkg"
	fi
	parser=$out/pkg/sbin/apparmor_parser
	[ -x "$parser" ] || parser=$out/pkg/usr/sbin/apparmor_parser
	cp -a "$out/pkg/etc/apparmor.d/." "$base/"
fi
# libvirt's profiles (libvirt-daemon-system ships them with or without the
# apparmor package), over the parser's own abstractions and tunables.
cp -a /etc/apparmor.d/. "$base/"
[ -e "$base/usr.sbin.libvirtd" ] || { echo "check.sh: no /etc/apparmor.d/usr.sbin.libvirtd: install libvirt-daemon-system" >&2; exit 1; }
cp "$here/libvirt-ft-qemu" "$here/libvirt-ft-libvirtd" "$base/abstractions/"
mkdir -p "$base/local/abstractions"
echo 'include if exists <abstractions/libvirt-ft-qemu>' >>"$base/local/abstractions/libvirt-qemu"
checked=()
for p in usr.sbin.libvirtd usr.sbin.virtqemud; do
	[ -e "$base/$p" ] || continue
	echo 'include if exists <abstractions/libvirt-ft-libvirtd>' >>"$base/local/$p"
	"$parser" -QT --base "$base" -I "$base" "$base/$p" 2>&1 | grep -v '^Cache read/write disabled' || true
	"$parser" -QT --base "$base" -I "$base" "$base/$p" >/dev/null 2>&1 || { echo "check.sh: $p does not parse with libvirt-ft's rules" >&2; exit 1; }
	checked+=("$p")
done
sed 's/LIBVIRT_TEMPLATE/libvirt-00000000-0000-0000-0000-000000000000/' "$base/libvirt/TEMPLATE.qemu" >"$base/libvirt-vm"
"$parser" -QT --base "$base" -I "$base" "$base/libvirt-vm" >/dev/null 2>&1 || { echo "check.sh: a domain's profile does not parse with libvirt-ft's rules" >&2; exit 1; }
checked+=("a domain's profile (TEMPLATE.qemu)")
# The rules must be in the parsed result, not skipped ("if exists"): grep
# the preprocessed profiles (-p), read whole (grep -q would stop the
# parser's output early: SIGPIPE under pipefail).
vm=$("$parser" -p --base "$base" -I "$base" "$base/libvirt-vm" 2>/dev/null)
grep -q 'record.fifo rw' <<<"$vm" || { echo "check.sh: the domain's profile lacks libvirt-ft's rules" >&2; exit 1; }
ld=$("$parser" -p --base "$base" -I "$base" "$base/usr.sbin.libvirtd" 2>/dev/null)
grep -q 'libvirt-ft/qemu/bin/qemu-system-x86_64 PUxr' <<<"$ld" || { echo "check.sh: libvirtd's profile lacks libvirt-ft's rules" >&2; exit 1; }
echo "apparmor: ${checked[*]} parse with libvirt-ft's rules ($("$parser" --version | head -n 1))"
