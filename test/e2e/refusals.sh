#!/usr/bin/env bash
# End-to-end refusals: each domain that cannot be protected is defined with
# `virsh define`, and `virsh start` is refused with a message that names the
# field and the fix; nothing is started on either host and the definition is
# left as the user wrote it.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap lab_stop EXIT
lab_stop
lab_start

# name ; sed expression applied to the demo domain ; text the refusal must contain
cases=(
	"vcpus;s#<vcpu placement='static'>1</vcpu>#<vcpu placement='static'>2</vcpu>#;/domain/vcpu"
	"kvm;s#<domain type='qemu'#<domain type='kvm'#;/domain/@type"
	"localtime;s#<clock offset='utc'#<clock offset='localtime'#;/domain/clock/@offset"
	"raw;s#type='qcow2'#type='raw'#;/domain/devices/disk[1]/driver/@type"
	"nopeer;/<ft:peer /d;ft:peer"
	"badpeer;s#<ft:peer address='[^']*'#<ft:peer address='not a host!'#;/domain/metadata/ft:ft/ft:peer/@address"
	"badport;s#port='7480'#port='99999'#;/domain/metadata/ft:ft/ft:peer/@port"
	"wrongns;s#https://libvirt-ft.org/xmlns/ft/1.0#https://example.org/not-ft#;https://libvirt-ft.org/xmlns/ft/1.0"
	"agent;s#</devices>#<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel></devices>#;/domain/devices/channel[1]"
)
failures=0
for c in "${cases[@]}"; do
	IFS=';' read -r name expr want <<<"$c"
	dom="ftbad-$name"
	say "refusal: $name"
	on a "$ROOT/test/guest/mkdisk.sh" "$IMAGES/$dom.qcow2" >/dev/null
	xml=$(mktemp --suffix=.xml); SCRATCH+=("$xml")
	domain_xml "$dom" "$expr" > "$xml"
	if ! out=$(on a virsh -q -c qemu:///system define "$xml" 2>&1); then
		# libvirt itself may refuse (for example type='kvm' on a host without
		# KVM); that also leaves nothing started.
		log "libvirt refused the definition: $(tail -n 1 <<<"$out")"
		# Where libvirt itself refuses (type='kvm' on a host without KVM),
		# run our hook as libvirt would at start, against the running
		# daemon, so that our own refusal is still checked.
		if out=$(on a /etc/libvirt/hooks/qemu.d/libvirt-ft "$dom" prepare begin - < "$xml" 2>&1); then
			log "the hook accepted $dom: it must refuse"; failures=$((failures + 1))
		elif ! grep -qF -- "$want" <<<"$out"; then
			log "the hook's refusal does not name $want: $out"; failures=$((failures + 1))
		else
			log "the hook refuses it too: $out"
		fi
		for h in a b; do
			left=$(on $h find /var/lib/libvirt-ft -type p 2>/dev/null || true)
			[ -z "$left" ] || { log "FIFOs on host $h: $left"; failures=$((failures + 1)); }
		done
		continue
	fi
	before=$(virsh_on a dumpxml --inactive "$dom")
	sleep 1 # let libvirt-ftd see the DEFINED event (it must not rewrite a refused domain)
	# virt-ft check names the same refusal, without starting anything.
	rc=0; out=$(ft_on a check "$dom" 2>&1) || rc=$?
	if [ $rc -ne 1 ] || ! grep -qF -- "$want" <<<"$out"; then
		log "virt-ft check $dom: exit $rc, want 1 and $want: $out"; failures=$((failures + 1))
	fi
	if out=$(virsh_on a start "$dom" 2>&1); then
		log "virsh start succeeded: it must be refused"; failures=$((failures + 1))
		virsh_on a destroy "$dom" >/dev/null 2>&1 || true
	elif ! grep -qF -- "$want" <<<"$out"; then
		log "refusal does not name $want: $out"; failures=$((failures + 1))
	else
		log "refused: $(grep -o 'libvirt-ft: .*' <<<"$out" | head -n 1)"
	fi
	state=$(virsh_on a domstate "$dom")
	[ "$state" = "shut off" ] || { log "domain state is '$state'"; failures=$((failures + 1)); }
	after=$(virsh_on a dumpxml --inactive "$dom")
	[ "$before" = "$after" ] || { log "the definition was changed"; failures=$((failures + 1)); }
	if virsh_on b list --all --name | grep -qx "$dom"; then
		log "a backup exists on host B"; failures=$((failures + 1))
	fi
	for h in a b; do
		left=$(on $h find /var/lib/libvirt-ft -type p 2>/dev/null || true)
		[ -z "$left" ] || { log "FIFOs on host $h: $left"; failures=$((failures + 1)); }
	done
	pids=$(on a pgrep -f "[q]emu-system.*guest=$dom," || true)
	[ -z "$pids" ] || { log "QEMU runs for $dom: $pids"; failures=$((failures + 1)); }
	ft_on a status "$dom" | sed 's/^/     /' || true
	virsh_on a undefine "$dom" >/dev/null
done

# Unprotecting by removing the ft element: libvirt-ftd takes the
# record/replay wiring it generated out of the definition, and the domain
# starts as a plain VM (no FIFO, no backup, no -icount).
say "unprotect: the ft element removed from a protected definition"
dom=ftplain
define_protected $dom
# virt-ft check: it can be protected (exit 0), and the backup host answers.
out=$(ft_on a check $dom 2>&1) || { log "virt-ft check $dom failed: $out"; failures=$((failures + 1)); }
log "virt-ft check: $(tail -n 1 <<<"$out")"
xml=$(mktemp --suffix=.xml); SCRATCH+=("$xml")
virsh_on a dumpxml --inactive $dom | sed '/<ft:ft[ >]/,/<\/ft:ft>/d' > "$xml"
if grep -q '<ft:ft' "$xml"; then
	log "could not remove the ft element from the definition"; failures=$((failures + 1))
else
	on a virsh -q -c qemu:///system define "$xml" >/dev/null
	wait_for 20 "libvirt-ftd to remove the record/replay wiring from $dom" sh -c "! '$LAB' exec a virsh -c qemu:///system dumpxml --inactive $dom | grep -qE 'rr=record|ft-rr|ft-gate'"
	log "the definition without the ft element has no record/replay wiring left"
	if out=$(virsh_on a start $dom 2>&1); then
		pid=$(qemu_pid a $dom || true)
		if [ -z "$pid" ] || on a grep -q 'rr=' /proc/$pid/cmdline; then
			log "$dom did not start as a plain VM (QEMU pid '${pid:-none}')"; failures=$((failures + 1))
		else
			log "$dom started as a plain VM (QEMU pid $pid, no -icount rr)"
		fi
		virsh_on b list --all --name | grep -qx $dom && { log "a backup exists on host B"; failures=$((failures + 1)); }
		left=$(on a find /var/lib/libvirt-ft -type p 2>/dev/null || true)
		[ -z "$left" ] || { log "FIFOs on host a: $left"; failures=$((failures + 1)); }
		virsh_on a destroy $dom >/dev/null 2>&1 || true
	else
		log "the unprotected $dom did not start: $out"; failures=$((failures + 1))
	fi
fi
# virt-ft enable and disable make the same edits for the operator.
say "virt-ft enable $dom --peer $HOST_B_IP, then virt-ft disable $dom"
if out=$(ft_on a enable $dom --peer $HOST_B_IP 2>&1); then
	log "$out"
	wait_for 20 "libvirt-ftd to rewrite $dom for record/replay" sh -c "'$LAB' exec a virsh -c qemu:///system dumpxml --inactive $dom | grep -q 'rr=record'"
	out=$(ft_on a check $dom 2>&1) || { log "virt-ft check after enable failed: $out"; failures=$((failures + 1)); }
	if out=$(ft_on a disable $dom 2>&1); then
		log "$out"
		wait_for 20 "libvirt-ftd to remove the wiring from $dom" sh -c "! '$LAB' exec a virsh -c qemu:///system dumpxml --inactive $dom | grep -qE 'ft:ft|rr=record|ft-rr|ft-gate'"
		log "enabled (rewritten for record/replay, check passed), then disabled (plain definition again)"
	else
		log "virt-ft disable failed: $out"; failures=$((failures + 1))
	fi
else
	log "virt-ft enable failed: $out"; failures=$((failures + 1))
fi
virsh_on a undefine $dom >/dev/null 2>&1 || true

# A daemon with no arbiter configured refuses to protect, naming the keys.
say "refusal: no split-brain arbiter configured on host A"
lab stop a ftd
on a sed -i -e '/^arbiter/d' -e '/^  endpoints:/d' /etc/libvirt-ft/libvirt-ftd.yaml
lab bg a ftd-noarbiter "$FTD" --config /etc/libvirt-ft/libvirt-ftd.yaml >/dev/null
wait_for 20 "libvirt-ftd on host A" ftd_answers a
dom=ftbad-noarbiter
on a "$ROOT/test/guest/mkdisk.sh" "$IMAGES/$dom.qcow2" >/dev/null
xml=$(mktemp --suffix=.xml); SCRATCH+=("$xml")
domain_xml "$dom" > "$xml"
virsh_on a define "$xml" >/dev/null
sleep 1
if out=$(virsh_on a start "$dom" 2>&1); then
	log "virsh start succeeded without an arbiter: it must be refused"; failures=$((failures + 1))
	virsh_on a destroy "$dom" >/dev/null 2>&1 || true
elif ! grep -qF -- "arbiter-etcd" <<<"$out"; then
	log "refusal does not name arbiter-etcd: $out"; failures=$((failures + 1))
else
	log "refused: $(grep -o 'libvirt-ft: .*' <<<"$out" | head -n 1)"
fi
[ "$(virsh_on a domstate "$dom")" = "shut off" ] || { log "$dom is not shut off"; failures=$((failures + 1)); }
if virsh_on b list --all --name | grep -qx "$dom"; then log "a backup exists on host B"; failures=$((failures + 1)); fi
ft_on a status "$dom" | sed 's/^/     /' || true

[ $failures -eq 0 ] || die "$failures refusal check(s) failed"
say "all refusals named the field and the fix; nothing was started"
