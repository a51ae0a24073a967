#!/usr/bin/env bash
# `make demo`: the main job on the built-in two-host lab.
#  1. Replication: a Linux guest defined with plain `virsh define` (plus our
#     <ft:ft> element) runs as the primary on host A while its backup replays
#     the log live on host B; the two consoles print the same tick lines;
#     the guest shuts down cleanly and both disks hold the same records.
#  2. Failover: a fresh protected guest; its primary QEMU on host A is
#     killed (kill -9); the backup on host B goes live from exactly where
#     the log ended and the guest's tick counter continues there without a
#     gap or a reboot; RARP with the guest's MAC is seen on the LAN.
# EMULATOR names the QEMU (make demo uses the patched one from make qemu-ft,
# which failover needs). Everything is torn down at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
printf '\n\033[1m#### part 1: live replication\033[0m\n'
"$here/e2e/replication.sh"
printf '\n\033[1m#### part 2: failover (kill -9 of the primary QEMU on host A)\033[0m\n'
TRIALS=1 MODES=qemu "$here/e2e/failover.sh"
