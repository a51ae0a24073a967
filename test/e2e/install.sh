#!/usr/bin/env bash
# make e2e-install (issue 14, item 2): the packages as an admin installs
# them, then the lab runs the installed files, then a purge leaves nothing.
#  1. apt-get install ./build/libvirt-ft_*.deb ./build/libvirt-ft-qemu_*.deb
#     on this machine (the lab's hosts share its /usr; their /etc/libvirt,
#     /etc/libvirt-ft and /var/lib/libvirt-ft are their own);
#  2. the lab runs what the packages installed: /usr/sbin/libvirt-ftd with
#     the unit's ExecStart arguments (under test/tools/fdstore, standing in
#     for systemd's sd_notify and descriptor store), /usr/bin/virt-ft, the
#     hook the package put in /etc/libvirt/hooks/qemu.d (copied into each
#     lab host's /etc/libvirt, as a real host has it), and libvirt-ft-qemu's
#     emulator with its firmware links;
#  3. replication, then one failover (kill -9 of the primary's QEMU);
#  4. apt-get purge: no file, unit link, AppArmor include line or state
#     directory of the packages is left.
# Skipped (it says so, exit 0) on a machine where it would undo an admin's
# work: libvirt-ft or libvirt-ft-qemu installed (or their config files
# left), /etc/libvirt-ft present, or apt-get would install anything else.
#   test/e2e/install.sh      (make e2e-install builds the packages first)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
deb=$(ls "$ROOT"/build/libvirt-ft_*_amd64.deb 2>/dev/null | tail -n 1)
qdeb=$(ls "$ROOT"/build/libvirt-ft-qemu_*_amd64.deb 2>/dev/null | tail -n 1)
[ -n "$deb" ] && [ -n "$qdeb" ] || die "no packages in build/: run make package (with make qemu-ft first)"
skip() {
	say "e2e-install SKIPPED: $*"
	exit 0
}
for p in libvirt-ft libvirt-ft-qemu; do
	st=$(dpkg-query -W -f '${db:Status-Status}' $p 2>/dev/null || true)
	[ -z "$st" ] || [ "$st" = not-installed ] || skip "$p is $st on this machine (e2e-install installs and purges it)"
done
# (The lab leaves an empty /etc/libvirt-ft as a mount target.)
[ -z "$(ls -A /etc/libvirt-ft 2>/dev/null)" ] || skip "/etc/libvirt-ft holds files on this machine (a purge would delete them)"
sim=$(apt-get -s install --no-install-recommends "$deb" "$qdeb" 2>&1) || { echo "$sim" | tail -n 20; die "apt-get -s install failed"; }
others=$(awk '$1 == "Inst" && $2 != "libvirt-ft" && $2 != "libvirt-ft-qemu" { print $2 }' <<<"$sim")
[ -z "$others" ] || skip "apt-get would also install: $(echo $others) (make setup first)"
installed=no
purge() {
	[ $installed = yes ] || return 0
	installed=no
	local out
	out=$(DEBIAN_FRONTEND=noninteractive apt-get purge -y -q libvirt-ft libvirt-ft-qemu 2>&1) ||
		{ echo "$out" | tail -n 20; echo "install.sh: apt-get purge failed: libvirt-ft may still be installed" >&2; }
}
trap '_rc=$?; (lab_stop $_rc) || true; purge' EXIT

say "apt-get install $(basename "$deb") $(basename "$qdeb")"
installed=yes
t0=$SECONDS
out=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$deb" "$qdeb" 2>&1) || { echo "$out" | tail -n 20; die "apt-get install failed"; }
grep -q "libvirt reads its hook scripts only when it starts" <<<"$out" || die "the package did not say that libvirt must be restarted"
for f in /usr/sbin/libvirt-ftd /usr/bin/virt-ft /etc/libvirt/hooks/qemu.d/libvirt-ft /etc/libvirt-ft/libvirt-ftd.yaml \
	/lib/systemd/system/libvirt-ftd.service /usr/share/man/man1/virt-ft.1 /usr/share/bash-completion/completions/virt-ft \
	/usr/lib/libvirt-ft/qemu/bin/qemu-system-x86_64; do
	[ -e "$f" ] || die "the package did not install $f"
done
for l in share/qemu share/seabios lib/ipxe/qemu; do
	[ -L "/usr/lib/libvirt-ft/qemu/$l" ] && [ -d "/usr/lib/libvirt-ft/qemu/$l/" ] ||
		die "/usr/lib/libvirt-ft/qemu/$l is not a working symbolic link"
done
if [ -e /etc/apparmor.d/usr.sbin.libvirtd ]; then
	grep -qx 'include if exists <abstractions/libvirt-ft-libvirtd>' /etc/apparmor.d/local/usr.sbin.libvirtd ||
		die "the package did not include its AppArmor rules in libvirtd's profile"
fi
log "apt-get install took $((SECONDS - t0)) s"
log "installed: $(/usr/bin/virt-ft --version), $(/usr/lib/libvirt-ft/qemu/bin/qemu-system-x86_64 --version | head -n 1)"
exec_start=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/libvirt-ftd.service)
[ "$exec_start" = "/usr/sbin/libvirt-ftd --config /etc/libvirt-ft/libvirt-ftd.yaml" ] ||
	die "the unit's ExecStart is '$exec_start', not what the lab runs"

export FTD=/usr/sbin/libvirt-ftd VIRT_FT=/usr/bin/virt-ft FT_HOOK=/etc/libvirt/hooks/qemu.d/libvirt-ft
export EMULATOR=/usr/lib/libvirt-ft/qemu/bin/qemu-system-x86_64
say "replication with the installed files"
# Its restarts test the daemon's disk logic, not the installation: the
# e2e/replication scenario runs them.
RESTARTS=0 bash "$ROOT/test/e2e/replication.sh"
say "one failover with the installed files"
TRIALS=1 MODES=qemu bash "$ROOT/test/e2e/failover.sh"
lab_stop 0

say "apt-get purge libvirt-ft libvirt-ft-qemu"
t0=$SECONDS
purge
log "apt-get purge took $((SECONDS - t0)) s"
left=()
for f in /usr/sbin/libvirt-ftd /usr/bin/virt-ft /etc/libvirt/hooks/qemu.d/libvirt-ft /etc/libvirt-ft \
	/lib/systemd/system/libvirt-ftd.service /etc/systemd/system/multi-user.target.wants/libvirt-ftd.service \
	/usr/lib/libvirt-ft /usr/share/doc/libvirt-ft /usr/share/doc/libvirt-ft-qemu /usr/share/man/man1/virt-ft.1 \
	/usr/share/bash-completion/completions/virt-ft /etc/apparmor.d/abstractions/libvirt-ft-qemu \
	/etc/apparmor.d/abstractions/libvirt-ft-libvirtd /var/lib/libvirt-ft /run/libvirt-ft; do
	[ -e "$f" ] || [ -L "$f" ] && left+=("$f")
done
if grep -l 'libvirt-ft' /etc/apparmor.d/local/abstractions/libvirt-qemu /etc/apparmor.d/local/usr.sbin.libvirtd \
	/etc/apparmor.d/local/usr.sbin.virtqemud 2>/dev/null; then
	left+=("AppArmor include lines")
fi
dpkg-query -W -f '${Status}\n' libvirt-ft 2>/dev/null | grep -qv "not-installed" && left+=("dpkg still lists libvirt-ft")
[ ${#left[@]} -eq 0 ] || die "left behind after the purge: ${left[*]}"
say "installed, replicated, failed over and purged: nothing left"
