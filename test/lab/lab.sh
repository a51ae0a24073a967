#!/usr/bin/env bash
# The libvirt-ft two-host lab (docs/replay.md §11). Run as root.
#
#   lab.sh up                       build the lab, start virtlogd+libvirtd in a and b
#   lab.sh down                     stop and remove everything (idempotent)
#   lab.sh status                   show namespaces, daemons and domains
#   lab.sh pids                     list the pids of every process in the lab
#   lab.sh exec a|b|c|lan CMD...    run CMD inside that host
#   lab.sh bg a|b NAME CMD...       run CMD in the background (LAB_DIR/<h>/NAME.{log,pid})
#   lab.sh stop a|b NAME            stop a bg command (TERM, KILL after 5 s)
#   lab.sh restart-libvirtd a|b     stop libvirtd by its pid, start it, wait until ready
#   lab.sh kill-host a|b            SIGKILL everything in the host, cut its network
#   lab.sh revive-host a|b          reconnect a killed host, start its daemons again
#   lab.sh cut-host a|b             take a host off the LAN; its processes keep running
#
# Environment: LAB_DIR (default /var/tmp/ftlab); HOOK_BIN (installed by `up`
# as /etc/libvirt/hooks/qemu.d/libvirt-ft in a and b); LAB_CAPS_CACHE
# (optional dir keeping libvirt's QEMU capabilities cache between labs);
# LAB_LIBVIRT_DEBUG (optional libvirtd log_filters, logging at debug level).
#
# Shared storage: LAB_DIR/shared/arbiter is mounted at
# /var/lib/libvirt-ft/arbiter in both a and b (libvirt-ftd's arbiter-dir).
# Witness: an etcd (Debian's etcd-server) runs in c, the third host, at
# http://10.250.0.50:2379 (libvirt-ftd's arbiter-etcd); its pid is in
# LAB_DIR/c/etcd.pid, its log in LAB_DIR/c/etcd.log.
#
# Layout: network namespaces ftlab-lan (bridge lan0), ftlab-a, ftlab-b,
# ftlab-c; a veth from each of a/b/c into lan0 (eth0 inside the host,
# veth-<h> in ftlab-lan). a and b: eth0 in bridge ftbr0 carrying the host
# address (a 10.250.0.1/24, b 10.250.0.2/24); c: 10.250.0.50/24 on eth0.
# a and b also have a mount namespace (LAB_DIR/ns/<h>.mnt) and a UTS
# namespace (hostname ftlab-<h>): own /run (tmpfs), /sys (sysfs of the host's
# netns), /etc/hosts (names ftlab-a/b/c), /dev/kvm hidden (TCG only), and
# LAB_DIR/<h>/root/* bind-mounted over the libvirt and libvirt-ft
# directories (see MOUNTS below).
set -euo pipefail

LAB_DIR=${LAB_DIR:-/var/tmp/ftlab}
NSDIR=$LAB_DIR/ns
SELF=$(readlink -f "$0")
DAEMON_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
PREFIX=10.250.0
declare -A HOST_IP=([a]=$PREFIX.1 [b]=$PREFIX.2 [c]=$PREFIX.50)
declare -A HOST_NUM=([a]=1 [b]=2 [c]=3)

# Per-host directory (under LAB_DIR/<h>/root) and where it is mounted.
MOUNTS=(
	run-libvirt:/run/libvirt
	run-libvirt-ft:/run/libvirt-ft
	etc-libvirt:/etc/libvirt
	etc-libvirt-ft:/etc/libvirt-ft
	lib-libvirt:/var/lib/libvirt
	lib-libvirt-ft:/var/lib/libvirt-ft
	log-libvirt:/var/log/libvirt
	cache-libvirt:/var/cache/libvirt
)

log() { echo "lab: $*" >&2; }
die() {
	echo "lab: $*" >&2
	exit 1
}

need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }

check_host() { # check_host H ALLOWED...
	local h=$1
	shift
	local x
	for x in "$@"; do [ "$h" = "$x" ] && return 0; done
	die "unknown host '$h' (want one of: $*)"
}

ns_exists() { [ -e "/run/netns/ftlab-$1" ]; }
mnt_ready() { [ -e "$NSDIR/$1.mnt" ] && mountpoint -q "$NSDIR/$1.mnt" 2>/dev/null; }

# host_cmd H: sets HCMD to the command prefix that enters host H
# (a/b: net+mount+uts namespaces; c/lan: net namespace). The prefix execs
# the command, so a background job's $! is the command's pid.
host_cmd() {
	local h=$1 wd=$PWD
	ns_exists "$h" || die "host $h is not up (no netns ftlab-$h)"
	case $h in
	a | b)
		mnt_ready "$h" || die "host $h has no mount namespace"
		# The working directory is looked up inside the host.
		case $wd in /run | /run/* | "$LAB_DIR"/ns*) wd=/ ;; esac
		HCMD=(env FTLAB_HOST="$h" nsenter --net="/run/netns/ftlab-$h" --mount="$NSDIR/$h.mnt"
			--uts="$NSDIR/$h.uts" --wdns="$wd" --)
		;;
	*) HCMD=(env FTLAB_HOST="$h" ip netns exec "ftlab-$h") ;;
	esac
}

# hexec H CMD...: run CMD inside host H.
hexec() {
	local HCMD
	host_cmd "$1"
	shift
	"${HCMD[@]}" "$@"
}

# host_pids H: every process in host H's network, mount or UTS namespace.
host_pids() {
	local h=$1 ids=()
	[ -e "/run/netns/ftlab-$h" ] && ids+=("net:[$(stat -L -c %i "/run/netns/ftlab-$h")]")
	[ -e "$NSDIR/$h.mnt" ] && mountpoint -q "$NSDIR/$h.mnt" && ids+=("mnt:[$(stat -L -c %i "$NSDIR/$h.mnt")]")
	[ -e "$NSDIR/$h.uts" ] && mountpoint -q "$NSDIR/$h.uts" && ids+=("uts:[$(stat -L -c %i "$NSDIR/$h.uts")]")
	[ ${#ids[@]} -gt 0 ] || return 0
	# (find fails when a process vanishes meanwhile: not an error here.)
	{ find /proc/[0-9]*/ns -maxdepth 1 \( -name net -o -name mnt -o -name uts \) -printf '%h %l\n' 2>/dev/null || true; } |
		awk -v ids="${ids[*]}" -v self=$$ '
			BEGIN { n = split(ids, a, " "); for (i = 1; i <= n; i++) want[a[i]] = 1 }
			($2 in want) { split($1, p, "/"); if (p[3] != self && !(p[3] in seen)) { seen[p[3]] = 1; print p[3] } }'
}

# in_host PID H: is PID a process of host H?
in_host() {
	local pid=$1 h=$2
	[ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
	local pids
	pids=$(host_pids "$h")
	grep -qx "$pid" <<<"$pids"
}

# kill_procs SIG_FIRST WAIT PID...: send SIG_FIRST, wait up to WAIT seconds,
# then SIGKILL what is left.
kill_procs() {
	local sig=$1 wait=$2 i p alive
	shift 2
	[ $# -gt 0 ] || return 0
	kill "-$sig" "$@" 2>/dev/null || true
	for ((i = 0; i < wait * 10; i++)); do
		alive=0
		for p in "$@"; do alive "$p" && alive=1; done
		[ $alive = 0 ] && return 0
		sleep 0.1
	done
	kill -KILL "$@" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		alive=0
		for p in "$@"; do alive "$p" && alive=1; done
		[ $alive = 0 ] && return 0
		sleep 0.1
	done
}

# kill_host_procs H SIG WAIT: kill every process of host H until none is left.
kill_host_procs() {
	local h=$1 sig=$2 wait=$3 i pids
	for ((i = 0; i < 20; i++)); do
		mapfile -t pids < <(host_pids "$h")
		[ ${#pids[@]} -gt 0 ] || return 0
		kill_procs "$sig" "$wait" "${pids[@]}"
		sig=KILL
		sleep 0.1
	done
	log "warning: processes left in host $h: $(host_pids "$h" | tr '\n' ' ')"
}

# alive PID: PID runs (a zombie does not count).
alive() {
	[ -n "$1" ] && [ -d "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

pidfile_pid() { if [ -f "$1" ]; then tr -dc 0-9 <"$1"; fi; }

# ---------------------------------------------------------------- up

setup_net() {
	ip netns add ftlab-lan
	ip -n ftlab-lan link set lo up
	ip -n ftlab-lan link add lan0 type bridge
	ip -n ftlab-lan link set lan0 up
	local h
	for h in a b c; do
		ip netns add "ftlab-$h"
		ip -n "ftlab-$h" link set lo up
		connect_host "$h"
	done
	for h in lan a b c; do
		ip netns exec "ftlab-$h" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 || true
	done
}

# connect_host H: the veth between host H and lan0 (and ftbr0 in a/b).
connect_host() {
	local h=$1 n=${HOST_NUM[$1]}
	ip -n ftlab-lan link add "veth-$h" type veth peer name eth0 netns "ftlab-$h"
	ip -n ftlab-lan link set "veth-$h" master lan0 up
	ip netns exec "ftlab-$h" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 || true
	ip -n "ftlab-$h" link set eth0 address "02:fa:00:00:00:0$n"
	if [ "$h" = c ]; then
		ip -n "ftlab-$h" addr add "${HOST_IP[$h]}/24" dev eth0
		ip -n "ftlab-$h" link set eth0 up
		return
	fi
	if ! ip -n "ftlab-$h" link show ftbr0 >/dev/null 2>&1; then
		ip -n "ftlab-$h" link add ftbr0 address "02:fa:00:00:01:0$n" type bridge
		ip -n "ftlab-$h" addr add "${HOST_IP[$h]}/24" dev ftbr0
	fi
	ip -n "ftlab-$h" link set eth0 master ftbr0 up
	ip -n "ftlab-$h" link set ftbr0 up
}

# setup_host_dirs H: LAB_DIR/H/root/* from the host's libvirt skeleton.
setup_host_dirs() {
	local h=$1 r=$LAB_DIR/$1/root
	mkdir -p "$r" "$LAB_DIR/$h"
	local m src
	for m in "${MOUNTS[@]}"; do
		mkdir -p "$r/${m%%:*}"
		chmod 755 "$r/${m%%:*}"
	done
	# Directory skeletons (owners and modes as the packages made them).
	for m in lib-libvirt:/var/lib/libvirt log-libvirt:/var/log/libvirt cache-libvirt:/var/cache/libvirt; do
		src=${m#*:}
		[ -d "$src" ] || continue
		(cd "$src" && find . -maxdepth 1 -type d ! -name sanlock -print0 | cpio -0pdm --quiet "$r/${m%%:*}")
		chown --reference="$src" "$r/${m%%:*}"
		chmod --reference="$src" "$r/${m%%:*}"
	done
	mkdir -p "$r/lib-libvirt/images" "$r/lib-libvirt/boot" "$r/log-libvirt/qemu"
	# /etc/libvirt: daemon configs only (no networks, nothing autostarted).
	local e=$r/etc-libvirt
	mkdir -p "$e/qemu" "$e/hooks/qemu.d"
	for f in libvirt.conf libvirtd.conf virtlogd.conf qemu.conf; do
		if [ -f "/etc/libvirt/$f" ]; then cp "/etc/libvirt/$f" "$e/$f"; else : >"$e/$f"; fi
	done
	cat >>"$e/libvirtd.conf" <<-'EOF'

		# --- libvirt-ft lab ---
		log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
	EOF
	# LAB_LIBVIRT_DEBUG="1:qemu.qemu_monitor 3:util ...": libvirtd's
	# log_filters, its log at debug level (e.g. each QMP command's time).
	if [ -n "${LAB_LIBVIRT_DEBUG:-}" ]; then
		sed -i -e 's|^log_outputs = "3:|log_outputs = "1:|' "$e/libvirtd.conf"
		printf 'log_filters = "%s"\n' "$LAB_LIBVIRT_DEBUG" >>"$e/libvirtd.conf"
	fi
	cat >>"$e/virtlogd.conf" <<-'EOF'

		# --- libvirt-ft lab ---
		log_outputs = "3:file:/var/log/libvirt/virtlogd.log"
	EOF
	# Container-like host: no MAC security driver (DAC stays: QEMU runs as
	# the default libvirt-qemu user), no cgroups (none are visible in the
	# host's mount namespace; both hosts would otherwise share one
	# hierarchy), no private /dev for QEMU, no owner xattrs (a killed host
	# would leave stale ones on shared files).
	cat >>"$e/qemu.conf" <<-'EOF'

		# --- libvirt-ft lab ---
		security_driver = "none"
		cgroup_controllers = [ ]
		namespaces = [ ]
		remember_owner = 0
	EOF
	if [ -n "${HOOK_BIN:-}" ]; then
		install -m 0755 "$HOOK_BIN" "$e/hooks/qemu.d/libvirt-ft"
	fi
	chmod 755 "$r/lib-libvirt-ft" "$r/etc-libvirt-ft" "$r/run-libvirt-ft"
	# /etc/hosts of the host: the lab's names resolve everywhere inside.
	{
		echo "127.0.0.1 localhost"
		echo "${HOST_IP[a]} ftlab-a"
		echo "${HOST_IP[b]} ftlab-b"
		echo "${HOST_IP[c]} ftlab-c"
	} >"$LAB_DIR/$h/root/hosts"
	: >"$r/no-kvm"
	chmod 600 "$r/no-kvm"
}

# ensure_mountpoints: the mount targets must exist on the machine; the ones
# created here are listed in LAB_DIR/created-dirs and removed by down.
ensure_mountpoints() {
	local m t
	for m in "${MOUNTS[@]}"; do
		t=${m#*:}
		case $t in /run/*) continue ;; esac # /run is a tmpfs inside the host
		if [ ! -d "$t" ]; then
			mkdir -p "$t"
			echo "$t" >>"$LAB_DIR/created-dirs"
		fi
	done
}

# setup_mntns H: persistent mount + UTS namespaces for host H.
setup_mntns() {
	local h=$1
	touch "$NSDIR/$h.mnt" "$NSDIR/$h.uts"
	nsenter --net="/run/netns/ftlab-$h" \
		unshare --mount="$NSDIR/$h.mnt" --uts="$NSDIR/$h.uts" --propagation private \
		-- "$SELF" _nsinit "$h"
}

# _nsinit H: runs once inside host H's new mount namespace.
nsinit() {
	local h=$1 r=$LAB_DIR/$1/root m mp
	hostname "ftlab-$h"
	# Drop this namespace's copies of other namespaces' handles, so that
	# nothing here keeps another host's namespaces alive.
	umount -l "$NSDIR" 2>/dev/null || true
	while read -r mp; do
		umount -l "$mp" 2>/dev/null || true
	done < <(awk '$5 ~ "^/run/" { print $5 }' /proc/self/mountinfo | sort -r)
	# sysfs of this host's network namespace (as `ip netns exec` does).
	umount -R -l /sys 2>/dev/null || true
	mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
	# A host of its own: fresh /run.
	mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
	mkdir -p /run/lock
	chmod 1777 /run/lock
	for m in "${MOUNTS[@]}"; do
		mkdir -p "${m#*:}"
		mount --bind "$r/${m%%:*}" "${m#*:}"
	done
	mount --bind "$r/hosts" /etc/hosts
	# Storage shared by both hosts (as NFS would be): the split-brain
	# arbiter's lock files (libvirt-ftd's arbiter-dir).
	mkdir -p "$LAB_DIR/shared/arbiter" /var/lib/libvirt-ft/arbiter
	mount --bind "$LAB_DIR/shared/arbiter" /var/lib/libvirt-ft/arbiter
	# TCG only: hide /dev/kvm. (Where root may use it and libvirt-qemu may
	# not, libvirt finds its capabilities cache stale at every start and
	# probes QEMU again, which takes seconds.)
	if [ -e /dev/kvm ]; then mount --bind "$r/no-kvm" /dev/kvm; fi
}

# launch_daemons H: virtlogd and libvirtd (both daemonize) with pid files in
# H's /run/libvirt. wait_libvirtd waits until libvirtd answers.
launch_daemons() {
	local h=$1
	hexec "$h" env -i PATH=$DAEMON_PATH LC_ALL=C HOME=/root \
		virtlogd --daemon --pid-file /run/libvirt/virtlogd.pid \
		</dev/null >>"$LAB_DIR/$h/virtlogd.out" 2>&1
	launch_libvirtd "$h"
}

# launch_witness: the etcd witness in c (a single member, data in
# LAB_DIR/c/etcd); waits until it answers.
launch_witness() {
	local ip=${HOST_IP[c]} i
	command -v etcd >/dev/null || die "etcd is missing (Debian package etcd-server; make setup)"
	mkdir -p "$LAB_DIR/c"
	rm -rf "$LAB_DIR/c/etcd"
	ip netns exec ftlab-c env -i PATH=$DAEMON_PATH etcd --name witness --data-dir "$LAB_DIR/c/etcd" \
		--listen-client-urls "http://$ip:2379" --advertise-client-urls "http://$ip:2379" \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster witness=http://127.0.0.1:2380 </dev/null >"$LAB_DIR/c/etcd.log" 2>&1 &
	echo $! >"$LAB_DIR/c/etcd.pid"
	for ((i = 0; i < 100; i++)); do
		if ip netns exec ftlab-c bash -c "exec 3<>/dev/tcp/$ip/2379" 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	die "the etcd witness in c did not start (LAB_DIR/c/etcd.log)"
}

launch_libvirtd() {
	local h=$1
	hexec "$h" env -i PATH=$DAEMON_PATH LC_ALL=C HOME=/root \
		libvirtd --daemon --pid-file /run/libvirt/libvirtd.pid \
		</dev/null >>"$LAB_DIR/$h/libvirtd.out" 2>&1
}

wait_libvirtd() {
	local h=$1 pf=$LAB_DIR/$1/root/run-libvirt/libvirtd.pid pid t0=$SECONDS
	while ((SECONDS - t0 < 90)); do
		if hexec "$h" virsh -c qemu:///system version >/dev/null 2>&1; then
			return 0
		fi
		pid=$(pidfile_pid "$pf")
		if [ -n "$pid" ] && ! alive "$pid"; then
			break # it died
		fi
		sleep 0.2
	done
	log "libvirtd in host $h did not become ready; its log:"
	tail -n 20 "$LAB_DIR/$h/root/log-libvirt/libvirtd.log" "$LAB_DIR/$h/libvirtd.out" >&2 2>/dev/null || true
	return 1
}

# LAB_CAPS_CACHE (optional): a directory that keeps libvirt's QEMU
# capabilities cache between labs (libvirt itself discards stale entries).
seed_caps() {
	[ -n "${LAB_CAPS_CACHE:-}" ] && [ -d "$LAB_CAPS_CACHE" ] || return 0
	local h d
	for h in a b; do
		d=$LAB_DIR/$h/root/cache-libvirt/qemu/capabilities
		mkdir -p "$d"
		cp -p "$LAB_CAPS_CACHE"/*.xml "$d/" 2>/dev/null || true
	done
}

save_caps() {
	[ -n "${LAB_CAPS_CACHE:-}" ] || return 0
	mkdir -p "$LAB_CAPS_CACHE"
	cp -p "$LAB_DIR"/a/root/cache-libvirt/qemu/capabilities/*.xml "$LAB_CAPS_CACHE/" 2>/dev/null || true
}

cmd_up() {
	need_root
	local nss
	nss=$(ip netns list)
	if [ -e "$LAB_DIR/up" ] || grep -q '^ftlab-' <<<"$nss"; then
		die "the lab is already (partly) up; run '$0 down' first"
	fi
	if [ -n "${HOOK_BIN:-}" ] && [ ! -f "$HOOK_BIN" ]; then die "HOOK_BIN=$HOOK_BIN is not a file"; fi
	local t0=$SECONDS
	UP_OK=0
	trap '[ "$UP_OK" = 1 ] || { log "up failed; tearing down"; cmd_down >&2 || true; }' EXIT
	mkdir -p "$LAB_DIR" "$NSDIR"
	touch "$LAB_DIR/up"
	# Namespace handles must sit on a private mount.
	mountpoint -q "$NSDIR" || mount --bind "$NSDIR" "$NSDIR"
	mount --make-private "$NSDIR"
	setup_net
	ensure_mountpoints
	local h
	for h in a b; do
		setup_host_dirs "$h"
		setup_mntns "$h"
	done
	# libvirtd --daemon returns once its drivers are up; the first start
	# probes QEMU's capabilities (several seconds), so start both at once.
	seed_caps
	local pids=()
	for h in a b; do
		launch_daemons "$h" &
		pids+=($!)
	done
	for h in "${pids[@]}"; do wait "$h"; done
	launch_witness
	for h in a b; do
		wait_libvirtd "$h"
	done
	save_caps
	UP_OK=1
	trap - EXIT
	log "up in $((SECONDS - t0)) s: a=${HOST_IP[a]} b=${HOST_IP[b]} c=${HOST_IP[c]}, LAB_DIR=$LAB_DIR"
}

# ---------------------------------------------------------------- down

cmd_down() {
	need_root
	local h f pid
	# Everything running in our namespaces (QEMU, libvirtd, virtlogd, bg
	# commands, shells): TERM, then KILL.
	local all=()
	for h in a b c lan; do
		mapfile -t -O ${#all[@]} all < <(host_pids "$h")
	done
	# (Pid files need no pass of their own: a pid from one of our pid files
	# that is in none of these namespaces is not ours any more.)
	if [ ${#all[@]} -gt 0 ]; then
		mapfile -t all < <(printf '%s\n' "${all[@]}" | sort -un)
		kill_procs TERM 5 "${all[@]}"
	fi
	for h in a b c lan; do kill_host_procs "$h" KILL 2; done
	# Daemonized processes are reaped by PID 1, sometimes seconds later;
	# wait (bounded) so that nothing, not even a zombie, is left.
	local p i any
	for ((i = 0; i < 100; i++)); do
		any=0
		for p in "${all[@]}"; do
			if [ -d "/proc/$p" ]; then any=1; fi
		done
		[ $any = 1 ] || break
		sleep 0.1
	done
	# Namespace handles.
	for f in "$NSDIR"/*.mnt "$NSDIR"/*.uts; do
		[ -e "$f" ] || continue
		mountpoint -q "$f" && umount "$f" 2>/dev/null || umount -l "$f" 2>/dev/null || true
	done
	if mountpoint -q "$NSDIR" 2>/dev/null; then umount "$NSDIR" || umount -l "$NSDIR"; fi
	# Network namespaces (their veths and bridges go with them).
	for h in a b c; do
		ip -n ftlab-lan link del "veth-$h" 2>/dev/null || true
	done
	for h in a b c lan; do
		ip netns del "ftlab-$h" 2>/dev/null || true
	done
	# Mount targets this lab created on the machine.
	if [ -f "$LAB_DIR/created-dirs" ]; then
		sort -ru "$LAB_DIR/created-dirs" | while read -r f; do rmdir "$f" 2>/dev/null || true; done
	fi
	if [ -d "$LAB_DIR" ]; then
		if awk -v d="$LAB_DIR" 'index($5, d) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
			die "something is still mounted under $LAB_DIR; not removing it"
		fi
		rm -rf "$LAB_DIR"
	fi
	log "down"
}

# ---------------------------------------------------------------- others

cmd_status() {
	local h pid n
	echo "LAB_DIR=$LAB_DIR"
	for h in lan a b c; do
		if ns_exists "$h"; then
			printf 'ftlab-%-4s up   %s\n' "$h" "$(ip -n "ftlab-$h" -br addr show 2>/dev/null | awk '$3 != "" && $1 != "lo" { printf "%s=%s ", $1, $3 }')"
		else
			printf 'ftlab-%-4s down\n' "$h"
		fi
	done
	for h in a b; do
		ns_exists "$h" && mnt_ready "$h" || continue
		for n in virtlogd libvirtd; do
			pid=$(pidfile_pid "$LAB_DIR/$h/root/run-libvirt/$n.pid")
			if alive "$pid"; then echo "$h: $n pid $pid"; else echo "$h: $n not running"; fi
		done
		for f in "$LAB_DIR/$h"/*.pid; do
			[ -f "$f" ] || continue
			pid=$(pidfile_pid "$f")
			if alive "$pid"; then echo "$h: bg $(basename "$f" .pid) pid $pid"; fi
		done
		hexec "$h" virsh -c qemu:///system list --all 2>/dev/null | sed "s/^/$h: /" || true
	done
	echo "processes: $(for h in lan a b c; do host_pids "$h"; done | wc -l)"
}

cmd_bg() {
	local h=$1 name=$2
	shift 2
	[ $# -gt 0 ] || die "usage: lab.sh bg a|b NAME CMD..."
	case $name in */* | "") die "bad name '$name'" ;; esac
	local pf=$LAB_DIR/$h/$name.pid pid
	pid=$(pidfile_pid "$pf")
	if [ -n "$pid" ] && in_host "$pid" "$h"; then die "$name is already running in $h (pid $pid)"; fi
	local HCMD
	host_cmd "$h"
	"${HCMD[@]}" "$@" </dev/null >"$LAB_DIR/$h/$name.log" 2>&1 &
	echo $! >"$pf"
	echo $!
}

cmd_stop() {
	local h=$1 name=$2 pf=$LAB_DIR/$1/$2.pid pid
	pid=$(pidfile_pid "$pf")
	[ -n "$pid" ] || die "no pid file $pf"
	if [ -d "/proc/$pid" ] && in_host "$pid" "$h"; then
		kill_procs TERM 5 "$pid"
	fi
	rm -f "$pf"
}

cmd_restart_libvirtd() {
	local h=$1 pid
	pid=$(pidfile_pid "$LAB_DIR/$h/root/run-libvirt/libvirtd.pid")
	if [ -n "$pid" ] && in_host "$pid" "$h"; then
		kill_procs TERM 15 "$pid"
	fi
	launch_libvirtd "$h"
	wait_libvirtd "$h"
	log "libvirtd restarted in $h (pid $(pidfile_pid "$LAB_DIR/$h/root/run-libvirt/libvirtd.pid"))"
}

cmd_kill_host() {
	local h=$1
	ns_exists "$h" || die "host $h is not up"
	kill_host_procs "$h" KILL 2
	ip -n ftlab-lan link del "veth-$h" 2>/dev/null || true
	log "host $h killed: no processes, network cut"
}

cmd_cut_host() {
	local h=$1
	ns_exists "$h" || die "host $h is not up"
	ip -n ftlab-lan link del "veth-$h" 2>/dev/null || true
	log "host $h cut off the LAN (its processes keep running)"
}

cmd_revive_host() {
	local h=$1
	ns_exists "$h" && mnt_ready "$h" || die "host $h is not up"
	[ -z "$(host_pids "$h")" ] || die "host $h still has processes; kill-host it first"
	ip -n ftlab-lan link show "veth-$h" >/dev/null 2>&1 || connect_host "$h"
	launch_daemons "$h"
	wait_libvirtd "$h"
	log "host $h revived"
}

usage() {
	sed -n '2,/^set -euo/p' "$SELF" | sed -e '$d' -e 's/^# \{0,1\}//'
	exit 2
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case $cmd in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
pids) for h in lan a b c; do host_pids "$h"; done | sort -un ;;
exec)
	[ $# -ge 2 ] || usage
	check_host "$1" a b c lan
	hexec "$@"
	;;
bg)
	[ $# -ge 3 ] || usage
	check_host "$1" a b
	need_root
	cmd_bg "$@"
	;;
stop)
	[ $# -eq 2 ] || usage
	check_host "$1" a b
	cmd_stop "$@"
	;;
restart-libvirtd)
	[ $# -eq 1 ] || usage
	check_host "$1" a b
	cmd_restart_libvirtd "$1"
	;;
kill-host)
	[ $# -eq 1 ] || usage
	check_host "$1" a b
	cmd_kill_host "$1"
	;;
cut-host)
	[ $# -eq 1 ] || usage
	check_host "$1" a b
	cmd_cut_host "$1"
	;;
revive-host)
	[ $# -eq 1 ] || usage
	check_host "$1" a b
	cmd_revive_host "$1"
	;;
_nsinit) nsinit "$1" ;;
-h | --help | help) usage ;;
*) usage ;;
esac
