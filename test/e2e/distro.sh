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
#   5. virsh reboot (libvirt's reboot: the power button, then a reset and
#      cont once the guest has shut down): both sides reboot, still
#      protected (patch 0013: the backup does not stop at the shutdown).
#   6. virsh suspend and resume: the guest stops and goes on, still
#      protected.
#   7. virsh snapshot-create-as (internal and disk-only), and QEMU's loadvm,
#      delvm and drive_add: refused with a message naming protection
#      (patch 0014); nothing changes.
#   8. virsh destroy of the primary: the pair stops, with no failover; the
#      next start protects it again.
#   9. kill -9 of the primary's QEMU with a TCP echo client connected: the
#      backup goes live and the client carries on.
# Before the first start, a copy of the domain with a guest agent channel
# is refused (virt-ft check).
# Prints the time of each step.
#   EMULATOR=... test/e2e/distro.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DISTRO=${DISTRO:-$ROOT/test/guest/out/distro}
[ -x "$BIN/tcpcheck" ] || die "run make build first (bin/tcpcheck)"
"$ROOT/test/guest/distro/build.sh" "$DISTRO" | sed 's/^/   /'
pids=()
kill_clients() { local p; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap '_rc=$?; kill_clients; lab_stop $_rc' EXIT

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

say "0. a guest agent channel is refused (libvirt's commands on it reach the primary only)"
xml_agent=$(mktemp --suffix=.xml)
SCRATCH+=("$xml_agent")
domain_xml ftagent "$DOMAIN_XML_EDIT;s#</devices>#<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel></devices>#" >"$xml_agent"
virsh_on a define "$xml_agent" >/dev/null
rc=0; out=$(ft_on a check ftagent 2>&1) || rc=$?
virsh_on a undefine ftagent >/dev/null
[ $rc -eq 1 ] && grep -qF "/domain/devices/channel[1]" <<<"$out" && grep -q "guest agent" <<<"$out" ||
	die "virt-ft check of a domain with a guest agent channel: exit $rc, want 1 and the channel named: $out"
grep -F "/domain/devices/channel[1]" <<<"$out" | head -n 1 | cut -c1-160 | sed 's/^/   /'
log "refused: the guest agent channel"

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
# "stalled", not "stall": a stand that ends short of the bound is logged
# with the bound ("a stall is declared at ...") and is no failure.
grep -q "halt\|stalled" "$LAB_DIR/b/ftd.log" && { grep "halt\|stalled" "$LAB_DIR/b/ftd.log" | tail -n 3; die "the backup halted or stalled during the shutdown"; }
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

# mark_logs: remember where the daemons' logs end; new_lines HOST: what
# HOST's daemon logged since.
mark_logs() { a_mark=$(wc -l <"$LAB_DIR/a/ftd.log"); b_mark=$(wc -l <"$LAB_DIR/b/ftd.log"); }
new_lines() { local m=$a_mark; [ "$1" = a ] || m=$b_mark; tail -n +$((m + 1)) "$LAB_DIR/$1/ftd.log"; }
# no_backup_trouble STEP: since mark_logs, the backup neither halted nor
# stalled nor went live, and the primary did not lose it.
no_backup_trouble() {
	local bad
	bad=$(new_lines b | grep -E "halt|stalled|state going-live|went live" || true)
	[ -z "$bad" ] || { tail -n 3 <<<"$bad" | sed 's/^/     /'; die "$1: the backup halted, stalled or went live"; }
	bad=$(new_lines a | grep -E "state unprotected|backup lost" || true)
	[ -z "$bad" ] || { tail -n 3 <<<"$bad" | sed 's/^/     /'; die "$1: the primary lost its backup"; }
}

# both_go_on_to N STEP: after STEP, both hosts' consoles reach tick N and
# the pair still replicates, with no trouble logged since mark_logs.
both_go_on_to() {
	wait_for 60 "tick $1 on host A" has_tick a "$DOMAIN" "$1"
	wait_for 120 "tick $1 on host B" has_tick b "$DOMAIN" "$1"
	ft_on a status "$DOMAIN" >/dev/null || die "not replicating after $2"
	no_backup_trouble "$2"
}

say "5. virsh reboot (the power button; once the guest is down, libvirt resets and continues it)"
mark_logs
t0=$(date +%s%N)
virsh_on a reboot "$DOMAIN" >/dev/null
wait_for 300 "Debian to come up again after virsh reboot" eval '[ "$(up_on a)" -ge 3 ]'
log "virsh reboot to multi-user in $(ms_since "$t0") ms"
on a cat "$CONSOLE_DIR/$DOMAIN-console.log" | tr -d '\r' | grep -E 'reboot: (Restarting|Power down)' | tail -n 1 | sed 's/^/   A: /' || true
wait_for 120 "host B to replay the reboot (its third ft-guest: up)" eval '[ "$(up_on b)" -ge 3 ]'
ft_on a status "$DOMAIN" >/dev/null || die "not replicating after virsh reboot"
no_backup_trouble "virsh reboot"
n=$(last_tick a "$DOMAIN")
wait_for 120 "tick $n on host B" has_tick b "$DOMAIN" "$n"
log "still replicating after virsh reboot; host B replayed it (tick $n on both)"

say "6. virsh suspend, then resume"
mark_logs
virsh_on a suspend "$DOMAIN" >/dev/null
[ "$(virsh_on a domstate "$DOMAIN")" = paused ] || die "not paused after virsh suspend"
n1=$(last_tick a "$DOMAIN")
sleep 4
n2=$(last_tick a "$DOMAIN")
[ "$n1" = "$n2" ] || die "ticks went on while suspended ($n1 then $n2)"
# libvirt's state and the daemon's, not query-replay: a backup that has
# replayed all the log it got waits in QEMU for more, and its monitor
# answers only once log arrives.
bstate=$(virsh_on b domstate "$DOMAIN" 2>&1 || true)
bft=$(ft_on b status --json 2>/dev/null | jq -r --arg d "$DOMAIN" '.[]? | select(.name == $d) | .state' 2>/dev/null || true)
[ "$bstate" = running ] && [ "$bft" = replicating ] ||
	die "the backup is not replicating while the primary is suspended (host B: domstate $bstate, virt-ft state $bft)"
virsh_on a resume "$DOMAIN" >/dev/null
both_go_on_to $((n2 + 2)) "virsh suspend and resume"
log "suspended at tick $n1 for 4 s, resumed: both hosts went on to tick $((n2 + 2)), still replicating"

say "7. virsh snapshot-create-as: refused while protected"
mark_logs
for kind in internal disk-only; do
	args=("$DOMAIN" "ft-snap-$kind")
	[ $kind = internal ] || args+=(--disk-only --no-metadata)
	if out=$(virsh_on a snapshot-create-as "${args[@]}" 2>&1); then
		die "virsh snapshot-create-as ($kind) of a protected domain succeeded: $out"
	fi
	grep -q "libvirt-ft: this VM is protected" <<<"$out" || die "the $kind snapshot was refused, but not by libvirt-ft: $out"
	log "$kind snapshot refused: $(grep -o 'libvirt-ft: [^;]*' <<<"$out" | head -n 1)"
done
# What virsh snapshot-revert and snapshot-delete of a running VM, and a
# drive added by hand, send QEMU (they need a snapshot, which protection
# refuses to take, so QEMU is asked directly).
for cmd in "loadvm ft-snap-internal" "delvm ft-snap-internal" "drive_add 0 if=none,id=ftsnap,file=/dev/null"; do
	out=$(virsh_on a qemu-monitor-command --hmp "$DOMAIN" "$cmd" 2>&1 || true)
	grep -q "libvirt-ft: this VM is protected" <<<"$out" || die "HMP $cmd was not refused by libvirt-ft: $out"
	log "HMP ${cmd%% *} refused: $(grep -o 'libvirt-ft: [^;]*' <<<"$out" | head -n 1)"
done
[ -z "$(virsh_on a snapshot-list --name "$DOMAIN")" ] || die "a snapshot was left: $(virsh_on a snapshot-list --name "$DOMAIN")"
left=$(on a find "$IMAGES" -name "*ft-snap*" 2>/dev/null || true)
[ -z "$left" ] || die "the refused disk-only snapshot left an overlay: $left"
[ "$(virsh_on a domstate "$DOMAIN")" = running ] || die "the domain is $(virsh_on a domstate "$DOMAIN") after the refused snapshots"
both_go_on_to $(($(last_tick a "$DOMAIN") + 2)) "the refused snapshots"
log "no snapshot taken, still replicating"

say "8. virsh destroy of the primary: the pair stops, no failover"
mark_logs
t0=$(date +%s%N)
virsh_on a destroy "$DOMAIN" >/dev/null
wait_for 60 "the backup to stop on host B" backup_gone
log "host B: the backup stopped $(ms_since "$t0") ms after virsh destroy"
bad=$(new_lines b | grep -E "state going-live|went live" || true)
[ -z "$bad" ] || { sed 's/^/     /' <<<"$bad"; die "host B went live after virsh destroy of the primary"; }
virsh_on b list --all --name | grep -qx "$DOMAIN" && die "host B kept a definition of $DOMAIN after the destroy"
t0=$(date +%s%N)
virsh_on a start "$DOMAIN" >/dev/null
wait_replay_mode 120 "the backup to replay on host B again" b "$DOMAIN" play
wait_for 300 "Debian to reach multi-user after the start" eval '[ "$(up_on a)" -ge 1 ]'
log "started again, protected: multi-user $(ms_since "$t0") ms after virsh start"

say "9. kill -9 of the primary's QEMU, a TCP echo client connected"
# "ft-guest: up" comes at multi-user, which does not wait for
# systemd-networkd to bring the NIC up: wait for the echo service itself.
echo_answers() { [ "$(client sh -c "echo ft-ping | socat -t 3 - TCP:$GUEST_IP:7002,connect-timeout=3" 2>/dev/null)" = ft-ping ]; }
wait_for 60 "the guest's TCP echo service to answer" echo_answers
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
say "Debian guest: start, shutdown, in-step restart, reset, reboot, suspend and resume, snapshot refusal, destroy and failover passed"
