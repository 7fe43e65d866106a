#!/usr/bin/env bash
# Unpacks Debian's arm64 Node (nodejs:arm64 and the libraries libnode links) into .tools/arm64-root without
# installing it, so that @qlora/cpu-kernels' test/arm64-node.test.ts can load the cross-built addon into a real
# arm64 Node under qemu-user-static. Needs root for `dpkg --add-architecture arm64` + `apt-get update`, and the
# Debian mirror. Idempotent; .ci/run calls it. Where it fails, that test reports itself skipped with the reason.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${QLORA_ARM64_ROOT:-$root/.tools/arm64-root}"
if [ -x "$dest/usr/bin/node" ]; then exit 0; fi

# Debian 12's nodejs:arm64, libnode108's Depends, and what those need beyond libc (apt-cache depends --important).
# The node-* packages are arch-independent: Debian's Node loads acorn, cjs-module-lexer and undici from
# /usr/share/nodejs at startup.
arm64_packages=(nodejs libnode108 libc6 libgcc-s1 gcc-12-base libstdc++6 libbrotli1 libc-ares2 libicu72
  libnghttp2-14 libssl3 libuv1 zlib1g)
all_packages=(node-acorn node-cjs-module-lexer node-undici node-busboy)

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get update -qq
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chown _apt "$work" 2>/dev/null || true # apt downloads as its _apt user where that user exists
(
  cd "$work"
  apt-get download -qq "${arm64_packages[@]/%/:arm64}" "${all_packages[@]}"
)
mkdir -p "$work/root"
for deb in "$work"/*.deb; do dpkg -x "$deb" "$work/root"; done
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.tmp"
mv "$work/root" "$dest.tmp"
mv "$dest.tmp" "$dest" # whole or absent: the test never sees a half-unpacked root
echo "arm64-node: Debian's nodejs:arm64 unpacked in $dest"
