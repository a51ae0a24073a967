#!/bin/sh
# libvirt-ft package: after install or upgrade.
# deb: "configure" [old-version]; rpm: $1 = 1 (install) or 2 (upgrade).
set -e

first=no
case "$1" in
configure) [ -n "$2" ] || first=yes ;;
1) first=yes ;;
esac
# Removed (not purged) and installed again: dpkg passes the old version,
# but prerm disabled the unit on removal and left this marker.
marker=/var/lib/libvirt-ft/.disabled-by-removal
if [ -e $marker ]; then
	first=yes
	rm -f $marker
fi

# AppArmor (on by default on Debian and Ubuntu): include our rules from the
# local files of libvirt's profiles, and reload libvirtd's and virtqemud's
# profiles if AppArmor is on. A domain's own profile includes the
# libvirt-qemu abstraction when libvirt generates it at the domain's start.
aa_include() { # FILE LINE: add LINE to FILE once (only where libvirt has profiles)
	[ -d "$(dirname "$1")" ] || return 0
	grep -qxF "$2" "$1" 2>/dev/null || printf '%s\n' "$2" >>"$1"
}
if [ -d /etc/apparmor.d/abstractions ] && [ -e /etc/apparmor.d/abstractions/libvirt-qemu ]; then
	aa_include /etc/apparmor.d/local/abstractions/libvirt-qemu '#include <abstractions/libvirt-ft-qemu>'
	for p in usr.sbin.libvirtd usr.sbin.virtqemud; do
		[ -e /etc/apparmor.d/$p ] || continue
		aa_include /etc/apparmor.d/local/$p '#include <abstractions/libvirt-ft-libvirtd>'
		if command -v apparmor_parser >/dev/null 2>&1 && [ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" = Y ]; then
			apparmor_parser -r -T -W /etc/apparmor.d/$p ||
				echo "libvirt-ft: reloading the AppArmor profile $p failed (see /etc/apparmor.d/abstractions/libvirt-ft-libvirtd)" >&2
		fi
	done
fi

if [ $first = yes ]; then
	# Works without a running systemd too (an image build).
	systemctl enable libvirt-ftd.service || true
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	if [ $first = yes ]; then
		if ! systemctl start libvirt-ftd.service; then
			echo "libvirt-ft: libvirt-ftd did not start: set its peer TLS certificates and split-brain arbiter in /etc/libvirt-ft/libvirt-ftd.yaml, then: systemctl start libvirt-ftd (journalctl -u libvirt-ftd says what it misses)" >&2
		fi
	else
		# A planned restart: the old daemon hands each replicating
		# domain's descriptors to the new one (systemd's descriptor
		# store), so protection goes on across the upgrade.
		systemctl try-restart libvirt-ftd.service || true
	fi
fi

if [ $first = yes ]; then
	cat >&2 <<'MSG'
libvirt-ft: libvirt reads its hook scripts only when it starts. Restart it once so
that it runs /etc/libvirt/hooks/qemu.d/libvirt-ft before each domain start
(running VMs keep running):
    systemctl restart libvirtd        # monolithic libvirt
    systemctl restart virtqemud       # modular libvirt
Until then a domain with the ft element starts unprotected.
MSG
fi
exit 0
