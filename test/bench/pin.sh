# Pinned lab runs for the benches (test/bench/cpu.sh, net.sh): the
# two-host estimate on the lab's one machine, the primary's QEMU on CPU 0
# and the backup's on CPU 1. Sourced after test/e2e/lib.sh.
#
# LAB_PIN=qemu (the default): each host's libvirtd and virtlogd are put in
# a cpuset cgroup of its CPU (host a: CPU 0, host b: CPU 1) before the
# domain starts, so every QEMU libvirtd starts is on its host's CPU from
# its exec (libvirt sets a QEMU's affinity to all CPUs when the definition
# has no cputune, and the cpuset narrows that). The libvirt-ftd daemons
# run where the scheduler puts them, as a daemon on a host with more
# cores would run beside its QEMU rather than on its CPU.
# LAB_PIN=hosts: libvirt-ftd and its supervisor too: two hosts of one CPU
# each, where each host's daemon takes its CPU from its own QEMU.
# LAB_PIN=cputune: the QEMUs pinned by cputune (PIN_EDIT), the benches'
# "pinned" until session 40. The backup's definition is the primary's,
# cputune included, so libvirt started the backup's QEMU on CPU 0 beside
# the primary and pin_backup moved it to CPU 1 only once it ran: its start
# took CPU 0 from the primary (the primary's vCPU waited 0.8-0.9 s for a
# CPU in a protected boot of 4.3-4.7 s), which two hosts would not.
LAB_PIN=${LAB_PIN:-qemu}
case $LAB_PIN in
qemu | hosts | cputune) ;;
*) die "LAB_PIN=$LAB_PIN: use qemu (each host's libvirtd, and so its QEMU, on a CPU of its own), hosts (its libvirt-ftd too) or cputune (the QEMUs pinned by their definition)" ;;
esac
PIN_EDIT="s|</devices>|</devices><cputune><vcpupin vcpu='0' cpuset='0'/><emulatorpin cpuset='0'/></cputune>|;"

# pin_edit: the domain edit (sed) of a pinned run: PIN_EDIT for
# LAB_PIN=cputune, none otherwise.
pin_edit() { [ "$LAB_PIN" != cputune ] || echo "$PIN_EDIT"; }

# pin_hosts: after lab_start, the hosts' cpusets (not for cputune).
pin_hosts() { [ "$LAB_PIN" = cputune ] || host_cpusets; }

# pin_backup: for LAB_PIN=cputune, once the backup's QEMU runs on host b:
# move it to CPU 1.
pin_backup() {
	[ "$LAB_PIN" = cputune ] || return 0
	virsh_on b emulatorpin "$DOMAIN" 1 --live >/dev/null &&
		virsh_on b vcpupin "$DOMAIN" 0 1 --live >/dev/null
}

# cpuset_dir H [PID]: host H's cpuset for the benchmark script PID
# (default: this one; cgroup v1's cpuset hierarchy, or v2 with the cpuset
# controller); fails if the machine has neither.
CPUSET_V1=/sys/fs/cgroup/cpuset
cpuset_dir() {
	if [ -f $CPUSET_V1/cpuset.cpus ]; then
		echo "$CPUSET_V1/ftbench-${2:-$$}-$1"
	elif grep -qw cpuset /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
		echo "/sys/fs/cgroup/ftbench-${2:-$$}-$1"
	else
		return 1
	fi
}

# host_cpusets: host a's libvirtd and virtlogd (with LAB_PIN=hosts its
# libvirt-ftd and supervisor too) into a cpuset of CPU 0, host b's into one
# of CPU 1 (made on first use; the cpusets of benchmark runs that died are
# removed first). Each process moved is checked to be on its CPU alone.
# The names, not a list, tell cpusets_remove what to remove: callers run
# this in subshells.
host_cpusets() {
	local h cpu cg f pid files mems
	cpusets_remove_dead
	for h in a b; do
		cpu=0
		[ $h = b ] && cpu=1
		cg=$(cpuset_dir $h) || die "pinned lab runs need a cpuset cgroup (cgroup v1's cpuset hierarchy or v2's cpuset controller); LAB_PIN=cputune pins by the definition instead"
		if [ ! -d "$cg" ]; then
			case $cg in
			"$CPUSET_V1"/*) mems=$(cat $CPUSET_V1/cpuset.mems) ;;
			*)
				grep -qw cpuset /sys/fs/cgroup/cgroup.subtree_control ||
					echo +cpuset >/sys/fs/cgroup/cgroup.subtree_control || die "cannot enable the cpuset controller in /sys/fs/cgroup"
				mems="" # v2: inherited
				;;
			esac
			mkdir "$cg" || die "cannot make $cg"
			echo "$cpu" >"$cg/cpuset.cpus" || die "cannot set $cg/cpuset.cpus"
			[ -z "$mems" ] || echo "$mems" >"$cg/cpuset.mems" || die "cannot set $cg/cpuset.mems"
		fi
		files=("$LAB_DIR/$h/root/run-libvirt/libvirtd.pid" "$LAB_DIR/$h/root/run-libvirt/virtlogd.pid")
		[ "$LAB_PIN" = hosts ] && files+=("$LAB_DIR/$h/ftd-supervisor.pid" "$LAB_DIR/$h/ftd-daemon.pid")
		for f in "${files[@]}"; do
			pid=$(tr -dc 0-9 2>/dev/null <"$f" || true)
			if [ -z "$pid" ] || [ ! -d "/proc/$pid" ]; then
				# libvirtd starts every QEMU: without it in the cpuset
				# the run would not be pinned at all.
				case $f in *libvirtd.pid) die "host $h: no running libvirtd in $f: cannot pin its QEMUs" ;; esac
				continue
			fi
			echo "$pid" >"$cg/cgroup.procs" || die "could not move host $h's pid $pid into $cg"
			[ "$(awk '/^Cpus_allowed_list:/ { print $2 }' "/proc/$pid/status")" = "$cpu" ] ||
				die "host $h's pid $pid is not on CPU $cpu alone after the move into $cg ($(grep Cpus_allowed_list "/proc/$pid/status"))"
		done
	done
}

# cpusets_remove [PID]: the cpusets host_cpusets made for benchmark script
# PID (default: this one); call it once the lab is down (a process still in
# one, as with KEEP_LAB=1, goes to the parent cpuset, the root, not back to
# where it was). On cgroup v2 the cpuset controller host_cpusets enabled
# in the root's subtree_control stays enabled.
cpusets_remove() {
	local h cg p
	for h in a b; do
		cg=$(cpuset_dir $h "${1:-}") || return 0
		[ -d "$cg" ] || continue
		while read -r p; do echo "$p" >"$(dirname "$cg")/cgroup.procs" 2>/dev/null || true; done <"$cg/cgroup.procs"
		rmdir "$cg" 2>/dev/null || echo "$(basename "$0"): could not remove $cg" >&2
	done
}

# cpusets_remove_dead: the cpusets of benchmark runs whose script is gone
# (killed before its cleanup).
cpusets_remove_dead() {
	local d pid
	for d in $CPUSET_V1/ftbench-*-a /sys/fs/cgroup/ftbench-*-a; do
		[ -d "$d" ] || continue
		pid=${d##*/ftbench-}
		pid=${pid%-a}
		[ -d "/proc/$pid" ] || cpusets_remove "$pid"
	done
}
