#!/usr/bin/env bash
# GPU check for @qlora/cuda-kernels: builds the standalone harness (dev/gpu_check.cu + every kernel
# source) with nvcc for the GPU that is present, validates every kernel against its CPU reference,
# runs the benchmarks and prints a table last. Needs an NVIDIA GPU, its driver (r580+ for CUDA 13)
# and nvcc; needs neither Node.js nor network. Target: < 5 minutes.
#   usage: bash packages/cuda-kernels/scripts/gpu-check.sh [--check-only|--bench-only]
#   env:   CUDA_HOME / CUDA_PATH (nvcc), QLORA_GPU_CHECK_DIR (build dir, default /tmp/qlora-gpu-check; the log is
#          also copied to $OUT when set), QLORA_GPU_CHECK_ARCH (e.g. 90; default: the GPU's compute capability),
#          QLORA_CUDA_NO_CUBLAS=1 (force our own GEMM everywhere), JOBS (parallel nvcc, default: all files at once)
set -uo pipefail
pkg="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${QLORA_GPU_CHECK_DIR:-/tmp/qlora-gpu-check}"
mkdir -p "$build"
log="$build/gpu_check.log"
started=$(date +%s)

nvcc=""
for home in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
  if [ -n "$home" ] && [ -x "$home/bin/nvcc" ]; then nvcc="$home/bin/nvcc"; break; fi
done
[ -z "$nvcc" ] && nvcc="$(command -v nvcc || true)"
if [ -z "$nvcc" ]; then echo "gpu-check: nvcc not found (set CUDA_HOME)"; exit 2; fi

echo "== gpu-check $(date -u +%FT%TZ) commit $(git -C "$pkg" rev-parse --short HEAD 2>/dev/null || echo unknown)"
cc="${QLORA_GPU_CHECK_ARCH:-}"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader
  [ -z "$cc" ] && cc="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')"
else
  echo "gpu-check: nvidia-smi not found"
fi
"$nvcc" --version | tail -2
if [ -n "$cc" ]; then
  if [ "$cc" -lt 80 ] 2>/dev/null; then echo "gpu-check: compute capability $cc < 8.0: the kernels need bf16 tensor cores (sm_80+)"; exit 2; fi
  arch=(-gencode "arch=compute_${cc},code=sm_${cc}")
else
  # Unknown GPU: never -arch=native (without a visible GPU nvcc falls back to an arch without bf16 WMMA).
  arch=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)
fi

# Compile every translation unit in parallel (one nvcc per file), then link with static cudart.
flags=(-std=c++17 -O3 -Xcompiler -fPIC "${arch[@]}" -I"$pkg/csrc")
pids=()
objs=()
for src in "$pkg"/csrc/kernels/*.cu "$pkg"/csrc/runtime/*.cc "$pkg"/dev/*.cu; do
  obj="$build/$(basename "$src").o"
  objs+=("$obj")
  if [ -n "${JOBS:-}" ]; then  # bounded parallelism (shared machines)
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 0.5; done
  fi
  "$nvcc" "${flags[@]}" -c "$src" -o "$obj" >"$obj.log" 2>&1 &
  pids+=($!)
done
fail=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then fail=1; echo "gpu-check: compile failed: ${objs[$i]%.o}"; cat "${objs[$i]}.log"; fi
done
[ $fail -ne 0 ] && exit 2
"$nvcc" "${arch[@]}" -o "$build/gpu_check" "${objs[@]}" -ldl -lrt -lpthread || { echo "gpu-check: link failed"; exit 2; }
echo "gpu-check: built in $(( $(date +%s) - started )) s"

timeout 270 "$build/gpu_check" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
[ "$status" -eq 124 ] && echo "gpu-check: TIMED OUT after 270 s (partial log in $log)"
[ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] && cp "$log" "$OUT/gpu_check.log"
echo "gpu-check: finished in $(( $(date +%s) - started )) s, exit $status (0 = all checks passed)"
exit "$status"
