#!/bin/sh
# libvirt-ft package: after removal.
# deb: "remove" | "purge" | "upgrade" | ...; rpm: $1 = 0 (erase) or 1 (upgrade).
set -e

case "$1" in
remove | purge | 0)
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload || true
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
