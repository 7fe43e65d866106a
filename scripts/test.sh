#!/usr/bin/env bash
# The whole test suite on a fresh clone: installs what it needs, runs every package's tests
# against sources, and ends with a line "N passed, N failed".
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/bootstrap.sh" || exit 1
cd "$root"
results="$root/.vitest-results.json"
rm -f "$results"
pnpm exec vitest run --reporter=default --reporter=json --outputFile="$results" "$@"
status=$?
node "$root/scripts/summarize-tests.mjs" "$results" || status=1
exit $status
