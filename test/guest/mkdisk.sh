#!/usr/bin/env bash
# Creates an empty qcow2 disk for the test guest (no backing file).
#   test/guest/mkdisk.sh PATH [SIZE]     (SIZE defaults to 64M)
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
	echo "usage: $0 PATH [SIZE]" >&2
	exit 2
fi
mkdir -p "$(dirname "$1")"
qemu-img create -q -f qcow2 "$1" "${2:-64M}"
