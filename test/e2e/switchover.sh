#!/usr/bin/env bash
# End-to-end planned switchover: `virt-ft failover` on host A moves the
# running guest to host B (the backup goes live at the end of the log, then
# the primary is stopped), with the same checks as the failover trials.
#   TRIALS=N test/e2e/switchover.sh
MODES=switchover exec "$(dirname "$0")/failover.sh"
