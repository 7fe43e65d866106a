#!/usr/bin/env bash
# The main job on the embedded default (until the CLI lands): the NF4 codec demo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/bootstrap.sh"
cd "$root"
pnpm run --silent demo "$@"
