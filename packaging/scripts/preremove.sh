#!/bin/sh
# libvirt-ft package: before removal or upgrade.
# deb: "remove" | "upgrade" | ...; rpm: $1 = 0 (erase) or 1 (upgrade).
set -e

case "$1" in
remove | 0)
	if [ -x /usr/bin/virt-ft ] && out=$(/usr/bin/virt-ft status 2>/dev/null) && [ "$(printf '%s\n' "$out" | wc -l)" -gt 1 ]; then
		echo "libvirt-ft: removing it while domains are protected: each primary's VM pauses without its daemon, and its backup goes live on the peer host:" >&2
		printf '%s\n' "$out" >&2
	fi
	if [ -d /run/systemd/system ]; then
		systemctl disable --now libvirt-ftd.service || true
	else
		systemctl disable libvirt-ftd.service || true
	fi
	# For postinst, should the package be installed again without a purge.
	if mkdir -p /var/lib/libvirt-ft; then
		: > /var/lib/libvirt-ft/.disabled-by-removal 2>/dev/null || true
	fi
	;;
esac
exit 0
