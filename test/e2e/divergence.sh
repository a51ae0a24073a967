#!/usr/bin/env bash
# End-to-end divergence detection (issue 13, item 3): typing into the
# primary's serial console makes its backup diverge, because console input
# is not in the replay log (docs/replay.md §9). The guest answers each line
# typed there ("console: ..."), as a distribution's getty would.
#
# The domain's serial console is a pty here (logged to the usual console
# file), so that the test can type into it. With an echo client and a
# stream client connected, the test checks that the backup compares the
# primary's frame digests while the two agree, then types a line into the
# primary's console. Within DETECT_S seconds the backup must be declared
# lost for divergence: either its replayed frames' digests differ from the
# primary's (docs/replay.md §10, "Divergence") or its replay stops with log
# unread (a stall). Then: host A's status says unprotected and why, the
# backup's VM is gone from host B (it never goes live), the primary's guest
# printed the answer, its ticks go on, and both TCP clients pass. Until the
# verdict the primary is held by the window and its output gate holds its
# frames, so the clients may stall for as long as the stall bound
# (xml.DefaultReplayStall, 5 s) plus the time it takes to notice: they
# allow CLIENT_STALL.
# With REPLACE=1 (the default) the domain keeps its automatic re-protection
# (<ft:reprotect auto="yes">): the diverged backup is replaced by a fresh
# one on host B without a reboot, and a failover to it (kill -9 of the
# primary's QEMU) must then work with the same TCP clients connected.
# REPLACE=0 turns re-protection off and checks that the VM stays alone.
#   [REPLACE=0|1] test/e2e/divergence.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
REPLACE=${REPLACE:-1}
DETECT_S=${DETECT_S:-10}
DURATION=${DURATION:-$((30 + 30 * REPLACE))}
[ "$REPLACE" = 1 ] && export FT_REPROTECT=yes
CLIENT_STALL=${CLIENT_STALL:-8s}
export DOMAIN_XML_EDIT="/<serial type='file'>/,/<\/console>/c\\    <serial type='pty'><log file='$CONSOLE_DIR/$DOMAIN-console.log' append='off'/><target port='0'/></serial><console type='pty'><target type='serial' port='0'/></console>"
[ -x "$BIN/tcpcheck" ] || die "run make build first (bin/tcpcheck)"
pids=()
kill_clients() { local p; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap '_rc=$?; kill_clients; lab_stop $_rc' EXIT
fresh_protected_lab 8

# gate_json HOST KEY: KEY of the domain's first output gate on HOST.
gate_json() {
	ft_on "$1" status --json "$DOMAIN" 2>/dev/null | jq -r ".[0].output_gates[0].$2 // empty" 2>/dev/null || true
}
state_a() { ft_on a status --json "$DOMAIN" 2>/dev/null | jq -r '.[0].state // empty' 2>/dev/null || true; }
state_of() { ft_on "$1" status --json "$DOMAIN" 2>/dev/null | jq -r '.[0].state // empty' 2>/dev/null || true; }
compared_at_least() { local n; n=$(gate_json b verified); [ "${n:-0}" -ge "$1" ]; }
a_unprotected() { [ "$(state_a)" = unprotected ]; }
ticks_past() { local t; t=$(last_tick a "$DOMAIN"); [ "${t:-0}" -ge "$1" ]; }

out_echo=$(mktemp) out_stream=$(mktemp) stop_clients=$(mktemp -u /tmp/ft-divergence-stop.XXXXXX)
SCRATCH+=("$out_echo" "$out_stream" "$stop_clients")
client "$BIN/tcpcheck" echo -addr $GUEST_IP:7002 -duration ${DURATION}s -stall-limit $CLIENT_STALL -stop-file "$stop_clients" >"$out_echo" 2>&1 &
pids=($!)
client "$BIN/tcpcheck" stream -addr $GUEST_IP:7001 -duration ${DURATION}s -stall-limit $CLIENT_STALL -stop-file "$stop_clients" >"$out_stream" 2>&1 &
pids+=($!)

say "while the two agree, the backup compares the primary's frame digests"
wait_for 20 "the backup to compare 5 frame digests" compared_at_least 5
log "compared so far: $(gate_json b verified), no divergence: '$(gate_json b diverged)'"
[ -z "$(gate_json b diverged)" ] || die "a divergence before anything was typed: $(gate_json b diverged)"

bpid=$(qemu_pid b "$DOMAIN")
say "typing into the primary's serial console"
pty=$(virsh_on a dumpxml "$DOMAIN" | sed -n "s|.*<source path='\(/dev/pts/[0-9]*\)'.*|\1|p" | head -n 1)
[ -n "$pty" ] || die "no pty in the primary's live definition"
log "the primary's console: $pty (host A)"
# Keep the pty open a while: QEMU's pty chardev reads only while the other
# side is connected.
on a sh -c "(sleep 1; printf 'hello from the console\n'; sleep 4) > $pty" &
typer=$!
t0=$(date +%s%N)
# (With re-protection on, the backup's replacement may follow at once:
# the first state other than replicating tells.)
a_lost() { local s; s=$(state_a); [ -n "$s" ] && [ "$s" != replicating ]; }
wait_for $((DETECT_S + 2)) "host A to see its backup lost" a_lost
detect_ms=$((($(date +%s%N) - t0) / 1000000 - 1000))
wait "$typer" || true
why=$({ ft_on a status --json "$DOMAIN" || true; } | jq -r '.[0] | [.detail, (.stall.report // ""), (.loss.cause // "")] | join(" / ")')
log "backup lost $detect_ms ms after the line was typed (as this test polls): $why"
[ $detect_ms -le $((DETECT_S * 1000)) ] || die "divergence detected after $detect_ms ms (bound ${DETECT_S} s)"
case $why in
*"diverged from the primary"*) log "detected by the frame digests" ;;
*"replay stalled"*) log "detected as a stalled replay" ;;
*) die "host A lost its backup, but not for divergence: $why" ;;
esac

say "the backup never goes live; the primary's guest runs on"
# (Its replacement, with REPLACE=1, is another QEMU: this one's pid must go.)
wait_for 20 "the diverged backup's QEMU (pid $bpid) to end on host B" sh -c "! '$LAB' exec b kill -0 $bpid 2>/dev/null"
replay_mode_is a "$DOMAIN" record none || die "the primary's QEMU does not run on host A"
on a grep -q "console: hello from the console" "$CONSOLE_DIR/$DOMAIN-console.log" ||
	die "the primary's guest did not answer the line typed into its console"
base=$(last_tick a "$DOMAIN")
wait_for 20 "3 more ticks on host A" ticks_past $((base + 3))
ticks_consecutive a "$DOMAIN" || die "the primary's guest rebooted or skipped ticks"

if [ "$REPLACE" = 1 ]; then
	say "the diverged backup is replaced on host B without a reboot; then a failover to it"
	t0=$(date +%s%N)
	wait_for 60 "host A to replicate again" sh -c "[ \"\$('$LAB' exec a '$VIRT_FT' status --json $DOMAIN 2>/dev/null | jq -r '.[0].state')\" = replicating ]"
	wait_replay_mode 30 "the new backup to replay on host B" b "$DOMAIN" play
	rp=$({ ft_on a status --json "$DOMAIN" || true; } | jq -r '.[0].reprotect | "pause \(.pause_ms) ms, \(.memory_bytes / 1048576 | floor) MiB of memory and \(.disk_bytes / 1048576 | floor) MiB of disk copied"')
	log "replaced $((($(date +%s%N) - t0) / 1000000)) ms after the old backup's end: $rp"
	base=$(last_tick a "$DOMAIN")
	wait_for 20 "3 more ticks on host A" ticks_past $((base + 3))
	on a kill -9 "$(qemu_pid a "$DOMAIN")"
	wait_replay_mode 60 "the new backup to go live on host B" b "$DOMAIN" none
	ticks_b() { local t; t=$(last_tick b "$DOMAIN"); [ "${t:-0}" -ge "$1" ]; }
	wait_for 30 "ticks on host B past $((base + 5))" ticks_b $((base + 5))
	ticks_consecutive b "$DOMAIN" || die "the guest rebooted or skipped ticks on host B"
	log "live on host B with the ticks running on (last $(last_tick b "$DOMAIN"))"
fi
# Done: the clients end (-stop-file; at -duration at the latest).
touch "$stop_clients"
rc_echo=0 rc_stream=0
wait "${pids[0]}" || rc_echo=$?
wait "${pids[1]}" || rc_stream=$?
pids=()
log "echo:   $(tail -n 1 "$out_echo")"
log "stream: $(tail -n 1 "$out_stream")"
[ $rc_echo -eq 0 ] && [ $rc_stream -eq 0 ] || die "a TCP client failed"
if [ "$REPLACE" = 1 ]; then
	say "divergence: detected in $detect_ms ms; the diverged backup stopped, never live, and was replaced; a failover to the new one kept the TCP clients"
else
	say "divergence: detected in $detect_ms ms; backup stopped, never live; the primary and its TCP clients went on"
fi
