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
	grep -qxF "$2" "$1" 2>/dev/null && return 0
	# Never join the admin's last line.
	if [ -s "$1" ] && [ -n "$(tail -c 1 "$1")" ]; then echo >>"$1"; fi
	printf '%s\n' "$2" >>"$1"
}
# aa_reload PROFILE: reload a profile the kernel has loaded, as
# dh_apparmor does: never one the admin disabled, keeping complain mode.
aa_reload() {
	[ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" = Y ] || return 0
	command -v apparmor_parser >/dev/null 2>&1 || return 0
	[ -e /etc/apparmor.d/disable/$1 ] && return 0
	mode=
	[ -e /etc/apparmor.d/force-complain/$1 ] && mode=-C
	apparmor_parser -r -T -W $mode /etc/apparmor.d/$1 ||
		echo "libvirt-ft: reloading the AppArmor profile $1 failed (see /etc/apparmor.d/abstractions/libvirt-ft-libvirtd)" >&2
}
if [ -d /etc/apparmor.d/abstractions ] && [ -e /etc/apparmor.d/abstractions/libvirt-qemu ]; then
	aa_include /etc/apparmor.d/local/abstractions/libvirt-qemu 'include if exists <abstractions/libvirt-ft-qemu>'
	for p in usr.sbin.libvirtd usr.sbin.virtqemud; do
		[ -e /etc/apparmor.d/$p ] || continue
		aa_include /etc/apparmor.d/local/$p 'include if exists <abstractions/libvirt-ft-libvirtd>'
		aa_reload $p
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
