#!/usr/bin/env bash
# Runs end-to-end scenarios in the two-host lab, one after another, each in
# its own lab (brought up and torn down by the scenario).
#   test/e2e/run.sh replication refusals
# Prints "N passed, N failed" last; exits 1 when any scenario failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pass=0 fail=0 failed=()
for s in "$@"; do
	[ -f "$here/$s.sh" ] || { echo "no scenario $s"; fail=$((fail + 1)); continue; }
	echo "=== RUN   e2e/$s"
	start=$SECONDS
	if bash "$here/$s.sh"; then
		echo "--- PASS: e2e/$s ($((SECONDS - start))s)"
		pass=$((pass + 1))
	else
		echo "--- FAIL: e2e/$s ($((SECONDS - start))s)"
		fail=$((fail + 1))
		failed+=("$s")
	fi
done
[ ${#failed[@]} -eq 0 ] || echo "failed: ${failed[*]}"
echo "e2e: $pass passed, $fail failed"
[ $fail -eq 0 ]
