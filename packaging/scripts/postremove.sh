#!/bin/sh
# libvirt-ft package: after removal.
# deb: "remove" | "purge" | "upgrade" | ...; rpm: $1 = 0 (erase) or 1 (upgrade).
set -e

case "$1" in
remove | purge | 0)
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload || true
	fi
	# AppArmor: take our include lines out of libvirt's local files (the
	# rules files are conffiles: they go on purge) and reload.
	for f in /etc/apparmor.d/local/abstractions/libvirt-qemu /etc/apparmor.d/local/usr.sbin.libvirtd /etc/apparmor.d/local/usr.sbin.virtqemud; do
		# (and the plain #include of builds before "include if exists")
		[ -f "$f" ] && sed -i -e '/^\(include if exists\|#include\) <abstractions\/libvirt-ft-\(qemu\|libvirtd\)>$/d' "$f" || true
	done
	if command -v apparmor_parser >/dev/null 2>&1 && [ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" = Y ]; then
		for p in usr.sbin.libvirtd usr.sbin.virtqemud; do
			[ -e /etc/apparmor.d/$p ] && [ ! -e /etc/apparmor.d/disable/$p ] || continue
			mode=
			[ -e /etc/apparmor.d/force-complain/$p ] && mode=-C
			apparmor_parser -r -T -W $mode /etc/apparmor.d/$p || true
		done
	fi
	;;
esac
case "$1" in
purge | 0)
	# The daemon's state: pairing records and FIFO directories (none
	# while no domain is protected). Never across a mount: an arbiter-dir
	# that storage both hosts share may be mounted under it. Certificates
	# and other files an admin put in /etc/libvirt-ft stay.
	rm -rf --one-file-system /var/lib/libvirt-ft /run/libvirt-ft 2>/dev/null || true
	rmdir /etc/libvirt-ft 2>/dev/null || true
	;;
esac
exit 0
