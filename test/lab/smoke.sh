#!/usr/bin/env bash
# Smoke test of the lab and the test guest, as root:
#   lab up; build the guest; boot it in host a (libvirt, TCG); check the
#   console ticks, TCP 7001 (counter), 7002 (echo) and 7003 (status,
#   poweroff) from the client namespace; check the disk with diskcheck;
#   lab down, and check that nothing is left.
# Brings the lab down on any exit. Fails when a lab is already up.
# Prints timings and ends with "smoke: N passed, N failed".
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
L=$here/lab.sh
export LAB_DIR=${LAB_DIR:-/var/tmp/ftlab}
NAME=${SMOKE_DOMAIN:-ftsmoke}
OUT=${GUEST_OUT:-$repo/test/guest/out}
GUEST=10.250.0.100

passed=0
failed=0
lab_started=0
tmp=$(mktemp -d /tmp/ftsmoke.XXXXXX)

ok() {
	passed=$((passed + 1))
	echo "smoke: ok: $*"
}
fail() {
	failed=$((failed + 1))
	echo "smoke: FAIL: $*"
	exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

cleanup() {
	local rc=$?
	set +e
	if [ $lab_started = 1 ]; then
		if [ $rc != 0 ]; then
			echo "smoke: --- diagnostics ---"
			"$L" status
			tail -n 20 "$LAB_DIR/a/root/log-libvirt/qemu/$NAME.log" "$LAB_DIR/a/root/log-libvirt/qemu/$NAME-console.log" 2>/dev/null
		fi
		local pids
		pids=$("$L" pids)
		"$L" down
		local left=""
		for p in $pids; do [ -d "/proc/$p" ] && left="$left $p"; done
		local nss
		nss=$(ip netns list | grep '^ftlab-' | tr '\n' ' ')
		if [ -n "$left" ] || [ -n "$nss" ]; then
			echo "smoke: FAIL: left behind after down: pids:$left netns: $nss"
			failed=$((failed + 1))
			rc=1
		else
			echo "smoke: ok: lab down, no process and no namespace left"
			passed=$((passed + 1))
		fi
	fi
	rm -rf "$tmp"
	echo "smoke: $passed passed, $failed failed"
	[ $failed = 0 ] && [ $rc = 0 ] || exit 1
	exit 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || fail "must run as root"

t=$(now)
"$repo/test/guest/build.sh" "$OUT"
echo "smoke: guest build: $(since "$t") s"
(cd "$repo" && go build -o "$tmp/diskcheck" ./test/tools/diskcheck)

nss=$(ip netns list)
if grep -q '^ftlab-' <<<"$nss" || [ -e "$LAB_DIR/up" ]; then
	fail "a lab is already up (lab.sh down first)"
fi
t=$(now)
lab_started=1
"$L" up
ok "lab up in $(since "$t") s"

# Kernel and initrd where QEMU (libvirt-qemu) can read them, in both hosts.
for h in a b; do
	"$L" exec "$h" install -m 0644 "$OUT/vmlinuz" "$OUT/initrd.img" /var/lib/libvirt/boot/
done
disk=/var/lib/libvirt/images/$NAME.qcow2
"$L" exec a "$repo/test/guest/mkdisk.sh" "$disk" 64M
sed -e "s#@NAME@#$NAME#g" -e "s#@KERNEL@#/var/lib/libvirt/boot/vmlinuz#g" \
	-e "s#@INITRD@#/var/lib/libvirt/boot/initrd.img#g" -e "s#@DISK@#$disk#g" \
	"$here/guest-domain.xml" >"$tmp/$NAME.xml"
"$L" exec a virsh -q define "$tmp/$NAME.xml"

console=$LAB_DIR/a/root/log-libvirt/qemu/$NAME-console.log
t=$(now)
"$L" exec a virsh -q start "$NAME"
start_s=$(since "$t")
for ((i = 0; i < 1800; i++)); do
	grep -q '^tick 1 up ' "$console" 2>/dev/null && break
	sleep 0.1
done
grep -q '^tick 1 up ' "$console" 2>/dev/null || fail "no tick on the console within 180 s"
ok "first console tick $(since "$t") s after virsh start (virsh start returned after $start_s s; $(grep -m1 '^tick 1 ' "$console"))"

qpid=$(tr -dc 0-9 <"$LAB_DIR/a/root/run-libvirt/qemu/$NAME.pid")
quid=$(awk '/^Uid:/ { print $2 }' "/proc/$qpid/status")
[ "$quid" = "$(id -u libvirt-qemu)" ] || fail "QEMU runs as uid $quid, not libvirt-qemu"
ok "QEMU (pid $qpid) runs as libvirt-qemu"

# TCP from the client namespace: 7001 counter stream.
stream=""
for ((i = 0; i < 30; i++)); do
	stream=$("$L" exec c timeout 10 bash -c "exec 3<>/dev/tcp/$GUEST/7001 && head -n 5 <&3" 2>/dev/null) && [ -n "$stream" ] && break
	sleep 1
done
[ "$(echo "$stream" | wc -l)" = 5 ] || fail "7001: got '$stream'"
echo "$stream" | awk 'NR > 1 && $1 != prev + 1 { exit 1 } { prev = $1 }' || fail "7001: not consecutive: $stream"
ok "7001 stream: $(echo "$stream" | tr '\n' ' ')"

# 7002 echo.
token="echo-$$-$RANDOM"
got=$("$L" exec c timeout 10 bash -c "exec 3<>/dev/tcp/$GUEST/7002 && echo $token >&3 && read -r l <&3 && echo \$l")
[ "$got" = "$token" ] || fail "7002 echo: sent $token, got '$got'"
ok "7002 echo round trip"

# 7003 status; let the disk writer write a few records first.
sleep 2
st=$("$L" exec c timeout 10 bash -c "exec 3<>/dev/tcp/$GUEST/7003 && echo status >&3 && read -r l <&3 && echo \$l")
case $st in "records "[1-9]*) ;; *) fail "7003 status: '$st'" ;; esac
ok "7003 status: $st"

# Ticks are consecutive and well-formed.
tr -d '\r' <"$console" | grep '^tick ' | awk '!/^tick [0-9]+ up [0-9]+\.[0-9]+$/ || $2 != NR { bad = 1 } END { exit bad }' ||
	fail "console tick lines are not 'tick N up U' from 1: $(grep '^tick ' "$console" | head -n 5 | tr '\n' '|')"
ok "console: $(grep -c '^tick ' "$console") consecutive tick lines"

# Clean power-off through 7003.
t=$(now)
reply=$("$L" exec c timeout 10 bash -c "exec 3<>/dev/tcp/$GUEST/7003 && echo poweroff >&3 && read -r l <&3 && echo \$l")
for ((i = 0; i < 300; i++)); do
	[ "$("$L" exec a virsh domstate "$NAME" 2>/dev/null)" = "shut off" ] && break
	sleep 0.1
done
[ "$("$L" exec a virsh domstate "$NAME")" = "shut off" ] || fail "domain not shut off 30 s after poweroff"
n=${reply##* }
ok "poweroff: '$reply', shut off $(since "$t") s later"

res=$("$tmp/diskcheck" "$LAB_DIR/a/root/lib-libvirt/images/$NAME.qcow2") || fail "diskcheck: $res"
echo "$res" | grep -q ": $n records, all verified" || fail "diskcheck: '$res', guest said $n records"
ok "diskcheck: $res"
