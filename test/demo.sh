#!/usr/bin/env bash
# `make demo`: the main job on the built-in two-host lab. A Linux guest defined
# with plain `virsh define` (plus our <ft:ft> element) runs as the primary on
# host A while its backup replays the log live on host B; the two consoles
# print the same tick lines; then the guest shuts down cleanly and both disks
# hold the same verified records. Everything is torn down at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/e2e/replication.sh"
