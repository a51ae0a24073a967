#!/usr/bin/env bash
# End-to-end hostile peer (issue 11): while the demo domain is protected
# (primary on host A, backup on host B), a client on host c attacks host
# B's peer port (test/tools/hostile): without a certificate, then with a
# valid one (the lab CA signed it for c's address). Every attempt must be
# refused or dropped; afterwards host B's daemon still runs, its peak RSS
# stays bounded, another domain's image on B is unchanged, nothing was
# written through a link and no domain was defined or started, and the
# protected VM is untouched: its tick counter goes on and status still
# says replicating. Last, host B's daemon is killed and a peer holding host
# B's certificate plays it (hostile -fake-backup): it acks more log than the
# primary sent, and the primary must drop it and run on alone.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
RSS_LIMIT_KB=${RSS_LIMIT_KB:-262144}
[ -x "$BIN/hostile" ] || die "run make build first (bin/hostile)"
trap lab_stop EXIT
lab_stop
lab_start
start_protected "$DOMAIN"
wait_for 120 "8 ticks on host A" has_tick a "$DOMAIN" 8

say "host B: another domain's image, and a link to /etc under seed-dirs"
victim=$IMAGES/victim.qcow2
on b qemu-img create -q -f qcow2 "$victim" 16M
domain_xml victim | sed -e "s|$IMAGES/victim.qcow2|$victim|" -e '/<metadata>/,/<\/metadata>/d' | on b sh -c 'cat > /tmp/victim.xml'
virsh_on b define /tmp/victim.xml >/dev/null
on b ln -sfn /etc "$IMAGES/lnk"
victim_sum=$(on b sha256sum "$victim" | cut -d' ' -f1)
domains_before=$(virsh_on b list --all --name | sort | tr '\n' ' ')
xml=$(mktemp)
SCRATCH+=("$xml")
domain_xml "$DOMAIN" >"$xml"
uuid=$(virsh_on a domuuid "$DOMAIN")
ftd_b=$(ftd_pid b)
tick_before=$(last_tick a "$DOMAIN")
log "protected domain $uuid; host B's libvirt-ftd pid $ftd_b, RSS $(awk '/VmRSS/ {print $2}' /proc/$ftd_b/status) kB"

say "the hostile client on host c"
out=$(mktemp)
SCRATCH+=("$out")
rc=0
client "$BIN/hostile" -addr $HOST_B_IP:7480 -ca "$LAB_DIR/c/pki/cacert.pem" -cert "$LAB_DIR/c/pki/c-cert.pem" \
	-key "$LAB_DIR/c/pki/c-key.pem" -uuid "$uuid" -xml "$xml" -victim "$victim" -victim-uuid "$(virsh_on b domuuid victim)" \
	-disk "$IMAGES/$DOMAIN.qcow2" -link "$IMAGES/lnk" \
	-arbiter "etcd http://$WITNESS_IP:2379 /libvirt-ft" -flood 200 -hold 20s >"$out" 2>&1 || rc=$?
sed 's/^/   /' "$out"
fail=0
grep -q 'result=accepted' "$out" && { log "FAIL: an attack was accepted"; fail=1; }
[ $rc -eq 0 ] || { log "FAIL: hostile exited $rc"; fail=1; }
[ "$(grep -c '^attack=' "$out")" -ge 20 ] || { log "FAIL: not every attack ran"; fail=1; }

say "afterwards"
[ -d /proc/$ftd_b ] || die "host B's libvirt-ftd died"
hwm=$(awk '/VmHWM/ {print $2}' /proc/$ftd_b/status)
log "host B's libvirt-ftd: peak RSS $hwm kB (limit $RSS_LIMIT_KB kB)"
[ "$hwm" -le "$RSS_LIMIT_KB" ] || { log "FAIL: peak RSS above the limit"; fail=1; }
[ "$(on b sha256sum "$victim" | cut -d' ' -f1)" = "$victim_sum" ] || { log "FAIL: the other domain's image changed"; fail=1; }
if on b test -e /etc/libvirt-ft-hostile; then log "FAIL: a file was written through the link"; on b rm -f /etc/libvirt-ft-hostile; fail=1; fi
if on b test -e /libvirt-ft-hostile; then log "FAIL: a file was written through .. after the link"; on b rm -f /libvirt-ft-hostile; fail=1; fi
if on b test -e "$IMAGES/libvirt-ft-hostile-delta.qcow2"; then log "FAIL: a malformed delta seed left a file"; on b rm -f "$IMAGES/libvirt-ft-hostile-delta.qcow2"; fail=1; fi
domains_after=$(virsh_on b list --all --name | sort | tr '\n' ' ')
[ "$domains_after" = "$domains_before" ] || { log "FAIL: host B's domains changed: '$domains_before' -> '$domains_after'"; fail=1; }
wait_for 30 "the tick counter to go on on host A" has_tick a "$DOMAIN" $((tick_before + 3))
state=$({ ft_on a status --json || true; } | jq -r --arg d "$DOMAIN" '.[] | select(.name == $d) | .state')
log "host A: tick $(last_tick a "$DOMAIN") (was $tick_before), status $state; host B: replay mode $(replay_mode b "$DOMAIN")"
[ "$state" = replicating ] || { log "FAIL: the protected domain is $state, not replicating"; fail=1; }
replay_mode_is b "$DOMAIN" play || { log "FAIL: the backup no longer replays"; fail=1; }
grep -E 'refused|TLS|tls' "$LAB_DIR/b/ftd.log" | tail -n 5 | sed 's/^/     host B log: /' || true

say "a lying backup: host B's daemon gone, a peer with host B's certificate plays it and acks more log than the primary sent"
state_a() { ft_on a status --json 2>/dev/null | jq -r --arg d "$DOMAIN" '.[]? | select(.name == $d) | .state' 2>/dev/null || true; }
on b kill -9 "$(ftd_pid b)"
a_alone() { [ "$(state_a)" = unprotected ]; }
wait_for 60 "host A to run on alone" a_alone
virsh_on a destroy "$DOMAIN" >/dev/null
wait_for 30 "$DOMAIN to stop on host A" sh -c "! '$LAB' exec a virsh -q -c qemu:///system list --name | grep -qx $DOMAIN"
qv=$(virsh_on a version | awk '/Running hypervisor/ {print $NF}')
fake_out=$(mktemp)
SCRATCH+=("$fake_out")
on b "$BIN/hostile" -fake-backup $HOST_B_IP:7480 -ca /etc/libvirt-ft/pki/cacert.pem -cert /etc/libvirt-ft/pki/b-cert.pem \
	-key /etc/libvirt-ft/pki/b-key.pem -qemu-version "$qv" -timeout 180s >"$fake_out" 2>&1 &
fake_pid=$!
wait_for 10 "the lying backup to listen" grep -q listening "$fake_out"
virsh_on a start "$DOMAIN" >/dev/null
rc=0
wait $fake_pid || rc=$?
sed 's/^/   /' "$fake_out"
grep -q 'attack=ack-beyond-sent result=dropped' "$fake_out" || { log "FAIL: the primary did not drop the channel after an ack beyond what it sent (hostile exited $rc)"; fail=1; }
wait_for 30 "host A to run on alone after the lie" a_alone
why=$({ ft_on a status --json || true; } | jq -r --arg d "$DOMAIN" '.[] | select(.name == $d) | [.detail, (.loss.cause // "")] | join(" / ")')
log "host A: $(state_a): $why"
grep -q 'beyond' <<<"$why" || { log "FAIL: host A's status does not say why its backup was dropped"; fail=1; }
wait_for 60 "the guest to tick on host A" has_tick a "$DOMAIN" 3
[ $fail -eq 0 ]
