#!/usr/bin/env bash
# A real distribution guest, protected (issue 14): Debian 12 with systemd
# (test/guest/distro/build.sh), booted from its own kernel and initramfs
# with its root file system on the protected disk, through an admin's
# everyday operations:
#   1. virsh start: the backup replays systemd's boot; the consoles agree.
#   2. virsh shutdown (libvirt's default: the ACPI power button, which
#      patch 0012 turns into the keyboard's Power key under record):
#      systemd powers off; the backup replays the shutdown to the end and
#      stops; both disks end byte-identical; nothing is left on host B.
#   3. virsh start again: protected without reading the disks (in step).
#   4. virsh reset (QMP system_reset): the guest reboots and stays
#      protected (patches 0011 and 0012: the host's reset, logged).
#   5. kill -9 of the primary's QEMU with a TCP echo client connected: the
#      backup goes live and the client carries on.
# Prints the time of each step.
#   EMULATOR=... test/e2e/distro.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DISTRO=${DISTRO:-$ROOT/test/guest/out/distro}
[ -x "$BIN/tcpcheck" ] || die "run make build first (bin/tcpcheck)"
"$ROOT/test/guest/distro/build.sh" "$DISTRO" | sed 's/^/   /'
pids=()
kill_clients() { local p; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap 'kill_clients; lab_stop' EXIT

# The domain: the lab's, booting Debian's kernel with root=/dev/vda.
export DOMAIN_XML_EDIT="s|<memory unit='MiB'>256</memory>|<memory unit='MiB'>512</memory>|;s|$IMAGES/vmlinuz|$IMAGES/debian-vmlinuz|;s|$IMAGES/initrd.img|$IMAGES/debian-initrd.img|;s|<cmdline>.*</cmdline>|<cmdline>console=ttyS0 root=/dev/vda rw quiet</cmdline>|"
# up_on HOST: how many times the guest printed its "ft-guest: up" line (multi-user reached).
up_on() { on "$1" cat "$CONSOLE_DIR/$DOMAIN-console.log" 2>/dev/null | tr -d '\r' | grep -c '^ft-guest: up' || true; }
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
shut_off() { [ "$(virsh_on a domstate "$DOMAIN" 2>/dev/null)" = "shut off" ]; }
backup_gone() {
	local names
	names=$("$LAB" exec b virsh -q -c qemu:///system list --name) || return 1
	! grep -qx "$DOMAIN" <<<"$names"
}

lab_start
for h in a b; do
	on $h cp "$DISTRO/vmlinuz" $IMAGES/debian-vmlinuz
	on $h cp "$DISTRO/initrd.img" $IMAGES/debian-initrd.img
done
on a cp --sparse=always "$DISTRO/debian.qcow2" $IMAGES/$DOMAIN.qcow2
xml=$(mktemp --suffix=.xml)
SCRATCH+=("$xml")
domain_xml "$DOMAIN" >"$xml"
virsh_on a define "$xml" >/dev/null
wait_for 20 "libvirt-ftd to prepare $DOMAIN" sh -c "'$LAB' exec a virsh -c qemu:///system dumpxml --inactive $DOMAIN | grep -q 'rr=record'"

say "1. virsh start: Debian boots protected (the first start seeds its disk to host B)"
t0=$(date +%s%N)
virsh_on a start "$DOMAIN" >/dev/null
log "virsh start returned after $(ms_since "$t0") ms (disk hashed and seeded to host B)"
wait_replay_mode 120 "the backup to replay on host B" b "$DOMAIN" play
wait_for 300 "Debian to reach multi-user on host A (ft-guest: up)" eval '[ "$(up_on a)" -ge 1 ]'
boot_ms=$(ms_since "$t0")
on a cat "$CONSOLE_DIR/$DOMAIN-console.log" | tr -d '\r' | grep '^ft-guest: up' | head -n 1 | sed 's/^/   A: /'
log "boot to multi-user, protected: $boot_ms ms from virsh start"
wait_for 120 "8 ticks on host A" has_tick a "$DOMAIN" 8
n=$(last_tick a "$DOMAIN")
wait_for 120 "tick $n on host B" has_tick b "$DOMAIN" "$n"
ft_on a status "$DOMAIN" | sed 's/^/     /' || die "virt-ft status on host A: not replicating"
ta=$(mktemp) tb=$(mktemp)
SCRATCH+=("$ta" "$tb")
tick_lines a "$DOMAIN" | awk -v n="$n" '$2 <= n' >"$ta"
tick_lines b "$DOMAIN" | awk -v n="$n" '$2 <= n' >"$tb"
diff -u "$ta" "$tb" || die "the consoles' tick lines differ"
log "ticks 1..$n identical on both hosts (uptime included)"

say "2. virsh shutdown (the ACPI power button): systemd powers the VM off"
t0=$(date +%s%N)
virsh_on a shutdown "$DOMAIN" >/dev/null
wait_for 180 "$DOMAIN to shut off on host A" shut_off
log "host A: shut off $(ms_since "$t0") ms after virsh shutdown"
on a cat "$CONSOLE_DIR/$DOMAIN-console.log" | tr -d '\r' | grep -E 'Power-Off|reboot: Power down|Powering off' | tail -n 2 | sed 's/^/   A: /' || true
wait_for 120 "the backup to replay the shutdown and stop on host B" backup_gone
log "host B: the backup stopped $(ms_since "$t0") ms after virsh shutdown"
st=$(ft_on a status --local "$DOMAIN") || die "virt-ft status on host A after the shutdown is not clean: $st"
echo "$st" | sed 's/^/     /'
grep -q "halt\|stall" "$LAB_DIR/b/ftd.log" && { grep "halt\|stall" "$LAB_DIR/b/ftd.log" | tail -n 3; die "the backup halted or stalled during the shutdown"; }
on a qemu-img compare -q $IMAGES/$DOMAIN.qcow2 "$LAB_DIR/b/root/lib-libvirt/images/$DOMAIN.qcow2" 2>/dev/null ||
	cmp -s "$LAB_DIR/a/root/lib-libvirt/images/$DOMAIN.qcow2" "$LAB_DIR/b/root/lib-libvirt/images/$DOMAIN.qcow2" ||
	die "the two disks differ after the replayed shutdown"
log "the two disks are identical after the replayed shutdown"

say "3. virsh start again: protected without reading the disks"
t0=$(date +%s%N)
virsh_on a start "$DOMAIN" >/dev/null
log "virsh start returned after $(ms_since "$t0") ms"
if ! grep -q "both copies unchanged since pairing .* not read" "$LAB_DIR/a/ftd.log"; then
	grep -h "in step" "$LAB_DIR/a/ftd.log" "$LAB_DIR/b/ftd.log" | sed 's/^/     /' || true
	die "the restart read the disks (the first pairing did not end in step)"
fi
wait_replay_mode 120 "the backup to replay on host B" b "$DOMAIN" play
# (QEMU truncates the console file at each start.)
wait_for 300 "Debian to reach multi-user again" eval '[ "$(up_on a)" -ge 1 ]'
log "boot to multi-user: $(ms_since "$t0") ms"

say "4. virsh reset (a hard reset from the host): the guest reboots and stays protected"
t0=$(date +%s%N)
virsh_on a reset "$DOMAIN" >/dev/null
wait_for 300 "Debian to come up again after the reset" eval '[ "$(up_on a)" -ge 2 ]'
log "reset to multi-user in $(ms_since "$t0") ms"
wait_for 120 "host B to replay the reset (its second ft-guest: up)" eval '[ "$(up_on b)" -ge 2 ]'
ft_on a status "$DOMAIN" >/dev/null || die "not replicating after the reset"
log "still replicating after the reset; host B replayed it"

say "5. kill -9 of the primary's QEMU, a TCP echo client connected"
out=$(mktemp)
SCRATCH+=("$out")
client "$BIN/tcpcheck" echo -addr $GUEST_IP:7002 -duration 20s -stall-limit 4s >"$out" 2>&1 &
pids=($!)
sleep 5
t0=$(date +%s%N)
on a kill -9 "$(qemu_pid a "$DOMAIN")"
wait_replay_mode 30 "the backup to go live on host B" b "$DOMAIN" none
log "host B live $(ms_since "$t0") ms after the kill"
wait "${pids[0]}" || { cat "$out"; die "the TCP echo client failed across the failover"; }
pids=()
tail -n 1 "$out" | sed 's/^/   echo: /'
say "Debian guest: start, shutdown, in-step restart, reset and failover passed"
