# Pinned lab runs for the benches (test/bench/cpu.sh, net.sh): the
# two-host estimate on the lab's one machine. Sourced after
# test/e2e/lib.sh.
#
# LAB_PIN=hosts (the default): the lab as two hosts of one CPU each. Every
# process of host a (libvirtd, virtlogd, libvirt-ftd and its supervisor,
# and so each QEMU libvirtd starts) is confined to CPU 0 by a cpuset
# cgroup, host b's to CPU 1, from before the domain starts; libvirt sets a
# QEMU's affinity to all CPUs when the definition has no cputune, and the
# cpuset narrows that to its host's CPU.
# LAB_PIN=qemu: only the QEMUs, by cputune (PIN_EDIT): host a's QEMU on
# CPU 0; the backup's definition is the primary's, cputune included, so
# libvirt starts the backup's QEMU on CPU 0 too and pin_backup moves it to
# CPU 1 once it runs. This was the benches' "pinned" until session 40: the
# backup's start and both hosts' daemons, wherever the scheduler put them,
# took CPU 0 from the primary (its vCPU waited 0.8-0.9 s for a CPU in a
# 4.3-4.7 s protected boot), which two hosts would not.
LAB_PIN=${LAB_PIN:-hosts}
case $LAB_PIN in
hosts | qemu) ;;
*) die "LAB_PIN=$LAB_PIN: use hosts (each lab host on a CPU of its own) or qemu (the QEMUs pinned by cputune)" ;;
esac
PIN_EDIT="s|</devices>|</devices><cputune><vcpupin vcpu='0' cpuset='0'/><emulatorpin cpuset='0'/></cputune>|;"

# pin_edit: the domain edit (sed) of a pinned run: PIN_EDIT for
# LAB_PIN=qemu, none for hosts.
pin_edit() { [ "$LAB_PIN" = qemu ] && echo "$PIN_EDIT" || true; }

# pin_hosts: after lab_start, for LAB_PIN=hosts: the hosts' cpusets.
pin_hosts() { [ "$LAB_PIN" = hosts ] && host_cpusets || true; }

# pin_backup: for LAB_PIN=qemu, once the backup's QEMU runs on host b:
# move it to CPU 1.
pin_backup() {
	[ "$LAB_PIN" = qemu ] || return 0
	virsh_on b emulatorpin "$DOMAIN" 1 --live >/dev/null &&
		virsh_on b vcpupin "$DOMAIN" 0 1 --live >/dev/null
}

# cpuset_dir H: host H's cpuset (cgroup v1's cpuset hierarchy, or v2 with
# the cpuset controller), named after the sourcing script's pid; fails if
# the machine has neither.
CPUSET_V1=/sys/fs/cgroup/cpuset
cpuset_dir() {
	if [ -f $CPUSET_V1/cpuset.cpus ]; then
		echo "$CPUSET_V1/ftbench-$$-$1"
	elif grep -qw cpuset /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
		echo "/sys/fs/cgroup/ftbench-$$-$1"
	else
		return 1
	fi
}

# host_cpusets: host a's processes into a cpuset of CPU 0, host b's into
# one of CPU 1 (made on first use). The names, not a list, tell
# cpusets_remove what to remove: callers run this in subshells.
host_cpusets() {
	local h cpu cg f pid
	for h in a b; do
		cpu=0
		[ $h = b ] && cpu=1
		cg=$(cpuset_dir $h) || die "LAB_PIN=hosts needs a cpuset cgroup (cgroup v1's cpuset hierarchy or v2's cpuset controller); LAB_PIN=qemu pins the QEMUs only"
		if [ ! -d "$cg" ]; then
			case $cg in
			"$CPUSET_V1"/*) ;;
			*) grep -qw cpuset /sys/fs/cgroup/cgroup.subtree_control || echo +cpuset >/sys/fs/cgroup/cgroup.subtree_control ;;
			esac
			mkdir "$cg"
			echo "$cpu" >"$cg/cpuset.cpus"
			echo 0 >"$cg/cpuset.mems"
		fi
		for f in "$LAB_DIR/$h/root/run-libvirt/libvirtd.pid" "$LAB_DIR/$h/root/run-libvirt/virtlogd.pid" "$LAB_DIR/$h/ftd-supervisor.pid" "$LAB_DIR/$h/ftd-daemon.pid" "$LAB_DIR/$h/ftd.pid"; do
			pid=$(tr -dc 0-9 <"$f" 2>/dev/null || true)
			[ -n "$pid" ] && [ -d "/proc/$pid" ] || continue
			echo "$pid" >"$cg/cgroup.procs" || die "could not move host $h's pid $pid into $cg"
		done
	done
}

# cpusets_remove: the cpusets host_cpusets made; call it once the lab is
# down (a process still in one goes back to the root cpuset first).
cpusets_remove() {
	local h cg p
	for h in a b; do
		cg=$(cpuset_dir $h) || return 0
		[ -d "$cg" ] || continue
		while read -r p; do echo "$p" >"$(dirname "$cg")/cgroup.procs" 2>/dev/null || true; done <"$cg/cgroup.procs"
		rmdir "$cg" 2>/dev/null || echo "$(basename "$0"): could not remove $cg" >&2
	done
}
