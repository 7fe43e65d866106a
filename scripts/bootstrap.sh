#!/usr/bin/env bash
# Installs everything the repo needs on a fresh machine with only Node 20, npm, python3, make and g++:
# pnpm (exact pin, into ./.tools), the workspace dependencies, and the native builds.
# Idempotent; sourced by demo.sh and test.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
pnpm_version="$(node -p "require('./package.json').packageManager.split('@')[1]")"
export PATH="$root/.tools/node_modules/.bin:$PATH"
if ! command -v pnpm >/dev/null 2>&1 || [ "$(pnpm --version 2>/dev/null)" != "$pnpm_version" ]; then
  echo "bootstrap: installing pnpm@$pnpm_version into .tools/"
  npm install --silent --no-save --no-package-lock --prefix "$root/.tools" "pnpm@$pnpm_version" >/dev/null
fi
# node-gyp must build against the local Node headers, never download them (toolchain notes §2).
export npm_config_nodedir="${npm_config_nodedir:-$(node -p "require('path').resolve(process.execPath, '../..')")}"
export TURBO_TELEMETRY_DISABLED=1
# The root postinstall builds the native addons (turbo run build:native): tests run TypeScript from
# sources, but the .node binaries must exist.
pnpm install --frozen-lockfile --reporter=silent
