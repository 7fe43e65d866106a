#!/usr/bin/env bash
# The main job on the embedded default: `qlora demo` — QLoRA-fine-tune the embedded base model (NF4 + double
# quant, LoRA on every linear layer, paged AdamW) and show held-out accuracy and loss before and after.
# Extra arguments go to `qlora demo` (e.g. --steps 60, --out DIR).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/bootstrap.sh"
cd "$root"
pnpm run --silent demo "$@"
