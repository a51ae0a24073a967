# Shared steps of the end-to-end tests and the demo (sourced, bash).
# Every step runs inside the two-host lab (test/lab/lab.sh): real libvirtd on
# each simulated host, real QEMU, the real guest, real TCP clients.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LAB="$ROOT/test/lab/lab.sh"
export LAB_DIR=${LAB_DIR:-/var/tmp/ftlab}
BIN="$ROOT/bin"
# libvirt-ft's own programs: the tree's build, or (make e2e-install) the
# installed package's.
FTD=${FTD:-$BIN/libvirt-ftd}
VIRT_FT=${VIRT_FT:-$BIN/virt-ft}
FT_HOOK=${FT_HOOK:-$BIN/libvirt-ft-hook}
GUEST="$ROOT/test/guest/out"
DOMAIN=${DOMAIN:-ftdemo}
GUEST_IP=10.250.0.100
HOST_A_IP=10.250.0.1
HOST_B_IP=10.250.0.2
WITNESS_IP=10.250.0.50 # host c: the TCP clients and the etcd witness
IMAGES=/var/lib/libvirt/images
CONSOLE_DIR=/var/log/libvirt/qemu

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
log() { printf '   %s\n' "$*"; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

lab() { "$LAB" "$@"; }
on() { local h=$1; shift; "$LAB" exec "$h" "$@"; }
virsh_on() { local h=$1; shift; "$LAB" exec "$h" virsh -q -c qemu:///system "$@"; }
# virsh_within HOST ARGS...: virsh_on, given up after 10 s (for a report on
# a failure, when libvirtd itself may hang).
virsh_within() { local h=$1; shift; timeout 10 "$LAB" exec "$h" virsh -q -c qemu:///system "$@"; }
ft_on() { local h=$1; shift; "$LAB" exec "$h" "$VIRT_FT" "$@"; }

# wait_for_quiet SECONDS CMD...: poll CMD every 0.2 s; false when it never
# succeeded (the caller decides).
wait_for_quiet() {
	local end=$((SECONDS + $1)); shift
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $end ] || return 1
		sleep 0.2
	done
}

# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.2 s.
wait_for() {
	local secs=$1 what=$2; shift 2
	local end=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $end ] || die "timed out after ${secs}s waiting for $what"
		sleep 0.2
	done
}

# lab_pki: a CA and a certificate per host, a, b and c (server and client
# use, an IP address SAN with the host's address) for the peer port's mutual TLS, made
# with openssl in a fresh directory whose path it prints. The lab's
# libvirt-ftd.yaml points tls: at copies in each host's /etc/libvirt-ft/pki.
lab_pki() {
	local dir h ip
	dir=$(mktemp -d /tmp/ft-pki.XXXXXX)
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=libvirt-ft lab CA" \
		-keyout "$dir/cakey.pem" -out "$dir/cacert.pem" 2>/dev/null
	for h in a b c; do
		ip=$HOST_A_IP; [ $h = b ] && ip=$HOST_B_IP; [ $h = c ] && ip=$WITNESS_IP
		openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=ftlab-$h" \
			-keyout "$dir/$h-key.pem" -out "$dir/$h.csr" 2>/dev/null
		openssl x509 -req -in "$dir/$h.csr" -CA "$dir/cacert.pem" -CAkey "$dir/cakey.pem" -CAcreateserial -days 2 \
			-extfile <(printf 'subjectAltName=IP:%s,DNS:ftlab-%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$ip" "$h") \
			-out "$dir/$h-cert.pem" 2>/dev/null
	done
	echo "$dir"
}

# start_ftd H NAME: start libvirt-ftd on host H as systemd runs the unit
# (Type=notify, FileDescriptorStoreMax=): under test/tools/fdstore, which
# keeps the descriptors a daemon stopping for a planned restart hands over
# and passes them to the next one (SIGHUP to it = systemctl restart). Its
# output goes to NAME.log; the supervisor's pid to ftd-supervisor.pid, the
# daemon's to ftd-daemon.pid. FTD_ENV (optional): one NAME=VALUE for the
# daemon's environment (benchmarks: GOMAXPROCS=2, GODEBUG=...).
start_ftd() {
	local h=$1 name=$2 pid
	rm -f "$LAB_DIR/$h/ftd-daemon.pid"
	pid=$(lab bg "$h" "$name" "$BIN/fdstore" -pidfile "$LAB_DIR/$h/ftd-daemon.pid" -- \
		${LIBVIRT_FT_TEE_DIR:+env LIBVIRT_FT_TEE_DIR=$LIBVIRT_FT_TEE_DIR} ${FTD_ENV:+env $FTD_ENV} "$FTD" --config /etc/libvirt-ft/libvirt-ftd.yaml)
	echo "$pid" >"$LAB_DIR/$h/ftd-supervisor.pid"
	wait_for 10 "libvirt-ftd on host $h to start" test -s "$LAB_DIR/$h/ftd-daemon.pid"
}
ftd_pid() { cat "$LAB_DIR/$1/ftd-daemon.pid"; }
# restart_ftd HOST: start libvirt-ftd again on HOST (after kill-host and
# revive-host, or a kill of the daemon) and wait until it answers.
restart_ftd() {
	start_ftd "$1" "ftd-restarted-$((++FTD_RESTARTS))"
	wait_for 20 "libvirt-ftd on host $1 to answer again" ftd_answers "$1"
}
FTD_RESTARTS=0

# lab_start: bring the lab up with our hook installed, configure and start
# libvirt-ftd on both hosts. LAB_ARBITER replaces the arbiter (default etcd);
# LAB_YAML_EXTRA adds top-level lines to both daemons' configuration (for
# benchmarks, e.g. $'window-bytes: 262144\nmax-lag-ms: 500').
lab_start() {
	[ -x "$BIN/libvirt-ftd" ] || die "run make build first"
	command -v jq >/dev/null || die "jq is missing (make setup)"
	HOOK_BIN="$FT_HOOK" lab up
	local h ip pki
	pki=$(lab_pki)
	for h in a b; do
		ip=$HOST_A_IP; [ $h = b ] && ip=$HOST_B_IP
		on $h mkdir -p /etc/libvirt-ft/pki
		for f in cacert.pem $h-cert.pem $h-key.pem; do
			on $h sh -c "cat > /etc/libvirt-ft/pki/$f && chmod 600 /etc/libvirt-ft/pki/$f" <"$pki/$f"
		done
		if [ $h = b ]; then
			# Host c's certificate (a valid one, for e2e-hostile's client).
			mkdir -p "$LAB_DIR/c/pki"
			cp "$pki/cacert.pem" "$pki/c-cert.pem" "$pki/c-key.pem" "$LAB_DIR/c/pki/"
			rm -rf "$pki"
		fi
		on $h sh -c "mkdir -p /etc/libvirt-ft && cat > /etc/libvirt-ft/libvirt-ftd.yaml" <<-YAML
		listen: $ip:7480
		libvirt-uri: qemu:///system
		tls:
		  ca-cert: /etc/libvirt-ft/pki/cacert.pem
		  server-cert: /etc/libvirt-ft/pki/$h-cert.pem
		  server-key: /etc/libvirt-ft/pki/$h-key.pem
		  client-cert: /etc/libvirt-ft/pki/$h-cert.pem
		  client-key: /etc/libvirt-ft/pki/$h-key.pem
		arbiter: ${LAB_ARBITER:-etcd}
		arbiter-etcd:
		  endpoints: [http://$WITNESS_IP:2379]
		arbiter-dir: /var/lib/libvirt-ft/arbiter
		allowed-emulators: [/usr/bin/qemu-system-x86_64, ${EMULATOR:-/usr/bin/qemu-system-x86_64}]
		keep-stall-log: true
		metrics-address: 127.0.0.1:9477
		${LAB_YAML_EXTRA:-}
		YAML
		start_ftd $h ftd
	done
	for h in a b; do
		wait_for 20 "libvirt-ftd on host $h" ftd_answers $h
	done
	# The guest's kernel and initramfs must be at the same paths on both hosts
	# (the backup is the same machine); its disk exists on host A only and is
	# seeded to host B by libvirt-ftd.
	for h in a b; do
		on $h mkdir -p $IMAGES
		on $h cp "$GUEST/vmlinuz" "$GUEST/initrd.img" $IMAGES/
	done
}

# lab_stop: keep the daemons' and libvirt's logs (under $E2E_LOGS), tear the
# lab down. On failure, show the tail of each libvirt-ftd log.
E2E_LOGS=${E2E_LOGS:-/tmp/libvirt-ft-e2e-logs/$(basename "$0" .sh)}
# SCRATCH: scratch files (mktemp) that the next lab_stop removes: the one at
# the scenario's exit, or the one with which fresh_protected_lab starts the
# next trial (so a trial's files are made after its lab is up).
SCRATCH=()
# qemu_state_dump: for a failed scenario, what each host's running QEMU
# was doing (a stalled guest is otherwise hard to tell from a paused one):
# libvirt's state and reason, QEMU's run state and replay position, its
# threads' kernel state, and the console's last lines. Read-only.
qemu_state_dump() {
	local h d pid t q idle i
	for h in a b; do
		for d in $(virsh_within "$h" list --name 2>/dev/null); do
			echo "--- QEMU of $d on host $h: $(virsh_within "$h" domstate --reason "$d" 2>&1)"
			# Monitor commands only to a monitor that is idle (domcontrol
			# takes no job): one left waiting on a blocked QEMU would hold
			# the domain's job in a lab kept for debugging (KEEP_LAB=1).
			# (A daemon's own queries keep it occupied a few ms at a time.)
			idle=0
			for i in 1 2 3 4 5 6 7 8 9 10; do
				[ "$(virsh_within "$h" domcontrol "$d" 2>/dev/null | tr -d '[:space:]')" = ok ] && { idle=1; break; }
				sleep 0.1
			done
			if [ $idle = 1 ]; then
				for q in query-status query-replay; do
					echo "    $q: $(virsh_within "$h" qemu-monitor-command "$d" "{\"execute\":\"$q\"}" 2>&1)"
				done
			else
				echo "    monitor busy or not answering (virsh domcontrol): not asked"
			fi
			pid=$(qemu_pid "$h" "$d") || continue
			for t in /proc/"$pid"/task/*; do
				[ -r "$t/stat" ] || continue
				echo "    thread $(basename "$t") $(cat "$t/comm" 2>/dev/null): state $(sed 's/.*) //' "$t/stat" 2>/dev/null | awk '{print $1 ", cpu ticks " $12 + $13}'), wchan $(cat "$t/wchan" 2>/dev/null), ctxt $(awk '/ctxt_switches/ {printf "%s ", $2}' "$t/status" 2>/dev/null)$(blocked_on "$pid" "$t")"
			done
			"$LAB" exec "$h" tail -n 3 "$CONSOLE_DIR/$d-console.log" 2>/dev/null | tr -d '\r' | sed 's/^/    console: /'
		done
	done
}
# blocked_on PID TASKDIR: for a thread asleep in read(2) or write(2)
# (/proc/<tid>/syscall: x86-64 numbers 0 and 1), what the descriptor is
# (a QEMU blocked on a full FIFO or socket answers no monitor command).
blocked_on() {
	local nr fd
	read -r nr fd _ 2>/dev/null <"$2/syscall" || return 0
	case $nr in
	0 | 1) ;;
	*) return 0 ;;
	esac
	fd=$((fd))
	printf ', in %s on fd %d -> %s' "$([ "$nr" = 0 ] && echo read || echo write)" "$fd" "$(readlink "/proc/$1/fd/$fd" 2>/dev/null || echo '?')"
}
# lab_stop [RC]: RC is the scenario's exit status (default: $?, right
# only when lab_stop is the trap itself: a trap that runs another command
# first passes its $? on, as in trap '_rc=$?; kill_clients; lab_stop $_rc' EXIT).
lab_stop() {
	local rc=${1-$?}
	rm -f "${SCRATCH[@]}" 2>/dev/null || true
	if [ -d "$LAB_DIR" ]; then
		# A failure seen on one host may still be on its way into the
		# other host's log (a daemon logs an error after the cancel it
		# sent; session 39's CI lost one such line): on failure only.
		[ "$rc" -eq 0 ] || sleep 2
		rm -rf "$E2E_LOGS" && mkdir -p "$E2E_LOGS"
		local h
		for h in a b; do
			for f in "$LAB_DIR/$h"/*.log; do [ -f "$f" ] && cp "$f" "$E2E_LOGS/$h-$(basename "$f")"; done
			cp -r "$LAB_DIR/$h/root/log-libvirt" "$E2E_LOGS/$h-libvirt-logs" 2>/dev/null || true
			# Log kept around a replay stall (keep-stall-log).
			for f in "$LAB_DIR/$h"/root/lib-libvirt-ft/*/stall-*.rrstream; do [ -f "$f" ] && cp "$f" "$E2E_LOGS/$h-$(basename "$f")"; done
		done
		cp "$LAB_DIR/c/etcd.log" "$E2E_LOGS/c-etcd.log" 2>/dev/null || true
		if [ $rc -ne 0 ]; then
			for h in a b; do
				echo "--- libvirt-ftd on host $h (tail; all logs in $E2E_LOGS)"
				tail -n 25 "$LAB_DIR/$h/ftd.log" 2>/dev/null || true
			done
			qemu_state_dump 2>&1 | tee "$E2E_LOGS/qemu-state.txt" || true
		fi
	fi
	if [ $rc -ne 0 ] && [ "${KEEP_LAB:-0}" = 1 ]; then
		echo "KEEP_LAB=1: the lab is left up for debugging; test/lab/lab.sh down removes it"
		return
	fi
	lab down >/dev/null 2>&1 || true
}

# domain_xml NAME [EXTRA-SED]: the demo domain with our ft element.
# EMULATOR (optional) replaces the QEMU binary (same path on both hosts);
# DOMAIN_XML_EDIT (optional) is a sed expression applied to the domain.
# FT_REPROTECT is its <ft:reprotect auto>: "no" unless a scenario says
# otherwise, so that the scenarios that lose a backup or fail over see the
# VM stay alone (reprotect.sh tests re-protection); "" leaves the element
# out (the product's default, yes).
domain_xml() {
	local name=$1 extra=${2:-${DOMAIN_XML_EDIT:-}} auto=${FT_REPROTECT-no}
	sed -e "s|@NAME@|$name|g" -e "s|@KERNEL@|$IMAGES/vmlinuz|g" \
		${auto:+-e "s|</ft:ft>|<ft:reprotect auto=\"$auto\"/></ft:ft>|"} \
		-e "s|@INITRD@|$IMAGES/initrd.img|g" -e "s|@DISK@|$IMAGES/$name.qcow2|g" \
		-e "s|@PEER@|$HOST_B_IP|g" -e "s|@GUEST_ARGS@|${GUEST_ARGS:-}|g" \
		-e "s|<emulator>.*</emulator>|<emulator>${EMULATOR:-/usr/bin/qemu-system-x86_64}</emulator>|" \
		${extra:+-e "$extra"} "$ROOT/test/e2e/ftdemo.xml.in"
}

# define_protected NAME: create the disk on host A and virsh define the
# domain there; wait until libvirt-ftd has rewritten it for record/replay.
define_protected() {
	local name=$1
	on a "$ROOT/test/guest/mkdisk.sh" $IMAGES/$name.qcow2 >/dev/null
	local xml
	xml=$(mktemp --suffix=.xml)
	SCRATCH+=("$xml")
	domain_xml "$name" > "$xml"
	on a virsh -q -c qemu:///system define "$xml"
	wait_for 20 "libvirt-ftd to prepare $name" sh -c "'$LAB' exec a virsh -c qemu:///system dumpxml --inactive $name | grep -q 'rr=record'"
}

# console_file HOST NAME: domain NAME's console log on HOST as this machine
# sees it, for a reader outside the host (tail -F): HOST's /var/log/libvirt
# is LAB_DIR/HOST/root/log-libvirt (test/lab/lab.sh).
console_file() { echo "$LAB_DIR/$1/root/log-libvirt${CONSOLE_DIR#/var/log/libvirt}/$2-console.log"; }
# tick_lines HOST NAME: the console's tick lines.
tick_lines() { on "$1" cat "$CONSOLE_DIR/$2-console.log" 2>/dev/null | tr -d '\r' | grep -E '^tick [0-9]+ up ' || true; }
last_tick() { tick_lines "$1" "$2" | tail -n 1 | awk '{print $2}'; }
has_tick() { tick_lines "$1" "$2" | grep -q "^tick $3 up "; }

# ftd_answers HOST: libvirt-ftd on HOST answers virt-ft status (exit 0 or
# 1: protected, or degraded or unprotected; 2: could not ask).
ftd_answers() { local rc=0; "$LAB" exec "$1" "$VIRT_FT" status >/dev/null 2>&1 || rc=$?; [ $rc -ne 2 ]; }

# metrics HOST: libvirt-ftd's Prometheus metrics on HOST (plugin/metrics.go).
metrics() { on "$1" curl -sf --max-time 5 http://127.0.0.1:9477/metrics; }

# metric HOST SERIES: the value of one series (its name and labels exactly
# as exposed), nothing when absent. (awk reads everything: a reader that
# stops early would fail curl with SIGPIPE under pipefail.)
metric() { metrics "$1" | awk -v s="$2" '$1 == s { v = $2 } END { if (v != "") print v }'; }

# client CMD...: run in the client namespace.
client() { "$LAB" exec c "$@"; }

# guest_ctl LINE: send a line to the guest's control port and print the reply.
# socat -t 5: after our line, wait up to 5 s for the reply (the default,
# 0.5 s, is shorter than a reply held by the output gate may take).
guest_ctl() { client socat -t 5 -T 5 - TCP:$GUEST_IP:7003,connect-timeout=5 <<<"$1"; }

# replay_mode HOST NAME: the replay mode of NAME's QEMU on HOST as
# query-replay reports it (play, record or none); nothing when QEMU does not
# answer.
replay_mode() {
	virsh_on "$1" qemu-monitor-command "$2" '{"execute":"query-replay"}' 2>/dev/null |
		jq -r '.return.mode // empty'
}

# replay_mode_is HOST NAME MODE...: NAME's QEMU on HOST is in one of MODEs.
replay_mode_is() {
	local h=$1 name=$2 m want
	shift 2
	m=$(replay_mode "$h" "$name" || true)
	for want in "$@"; do [ "$m" = "$want" ] && return 0; done
	return 1
}

# wait_replay_mode SECONDS DESCRIPTION HOST NAME MODE...: wait until NAME's
# QEMU on HOST is in one of MODEs (play: the backup replays; record or none:
# it went live).
wait_replay_mode() {
	local secs=$1 what=$2
	shift 2
	wait_for "$secs" "$what" replay_mode_is "$@"
}

# qemu_pid HOST NAME: the pid of NAME's QEMU on HOST (libvirt's pid file).
qemu_pid() { on "$1" cat "/run/libvirt/qemu/$2.pid" 2>/dev/null; }

# start_protected NAME: define on A, start, wait until the backup replays.
start_protected() {
	local name=$1
	define_protected "$name"
	virsh_on a start "$name" >/dev/null
	wait_replay_mode 90 "the backup to run in replay mode on host B" b "$name" play
}

# ticks_consecutive HOST NAME: every tick line follows the one before it
# (N+1, uptime not smaller): the guest never rebooted.
ticks_consecutive() {
	tick_lines "$1" "$2" | awk '
		NR == 1 { n = $2; up = $4; next }
		{ if ($2 != n + 1 || $4 + 0 < up + 0) { printf "tick %s (up %s) follows tick %s (up %s)\n", $2, $4, n, up; bad = 1 }
		  n = $2; up = $4 }
		END { exit bad }'
}

# end_clients STOPFILE CAPTURE_PID: end the echo and stream clients (the
# first two of pids, started with -stop-file STOPFILE), then the RARP
# capture; sets rc_echo and rc_stream to the clients' exit statuses.
end_clients() {
	touch "$1"
	rc_echo=0 rc_stream=0
	wait "${pids[0]}" || rc_echo=$?
	wait "${pids[1]}" || rc_stream=$?
	kill "$2" 2>/dev/null || true
	wait "$2" 2>/dev/null || true
	pids=()
}

# fresh_protected_lab TICKS: a new lab with the demo domain protected and
# running, host A's console at tick TICKS or later.
fresh_protected_lab() {
	lab_stop 0
	lab_start
	start_protected "$DOMAIN"
	wait_for 120 "$1 ticks on host A" has_tick a "$DOMAIN" "$1"
}
