#!/usr/bin/env bash
# GPU check for @qlora/cuda-kernels, one call on a machine with an NVIDIA GPU, its driver (r580+ for CUDA 13)
# and nvcc, without Node.js or network. Target: < 5 minutes. In order:
#   1. Node-level parity (when gpu-bundle/ travelled with the tree, see scripts/gpu-bundle.mjs): the bundled Node
#      runs src/cuda.test.ts & co. on the prebuilt addon, in the background while nvcc builds the harness.
#   2. builds the standalone harness (dev/gpu_check.cu + dev/check_*.cu + every kernel source) for the GPU present.
#   3. PyTorch peers (dev/peer_torch.py) when python3 imports torch: copy, bf16 GEMM, SDPA, decoder layer.
#   4. the harness: validates every kernel against its CPU reference, benchmarks, prints its table last.
# Then a short summary, and summary.md (run record + both tables, for BENCHMARKS.md). The logs (≤ 7 files) are
# written to $OUT when it is set, else to the build dir.
#   usage: bash packages/cuda-kernels/scripts/gpu-check.sh [--check-only|--bench-only]   (passed to the harness;
#          --bench-only skips the Node tests, --check-only the torch peers)
#   env:   CUDA_HOME / CUDA_PATH (nvcc), QLORA_GPU_CHECK_DIR (build dir, default /tmp/qlora-gpu-check),
#          QLORA_GPU_CHECK_ARCH (e.g. 90; default: the GPU's compute capability), QLORA_CUDA_NO_CUBLAS=1 (force our
#          own GEMM everywhere), JOBS (parallel nvcc, default: all files at once), PYTHON (default python3),
#          QLORA_GPU_CHECK_NODE=0 / QLORA_GPU_CHECK_PEER=0 (skip a step), time limits in seconds:
#          QLORA_GPU_CHECK_NODE_S (120), QLORA_GPU_CHECK_PEER_S (90), QLORA_GPU_CHECK_HARNESS_S (180)
set -uo pipefail
pkg="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${QLORA_GPU_CHECK_DIR:-/tmp/qlora-gpu-check}"
bundle="$pkg/gpu-bundle"
python="${PYTHON:-python3}"
mkdir -p "$build"
# Logs go straight to $OUT when it is set (they survive a run killed from outside), else to the build dir.
logs="$build"
[ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] && logs="$OUT"
log="$logs/gpu_check.log"
node_log="$logs/gpu_tests.log"
peer_log="$logs/peer_torch.log"
peer_json="$logs/peer_torch.jsonl"
errors_log="$logs/build_errors.log"
summary="$logs/summary.md"
rm -f "$log" "$node_log" "$peer_log" "$peer_json" "$errors_log" "$summary"
[ "$logs" != "$build" ] && [ -f "$bundle/MANIFEST.txt" ] && cp "$bundle/MANIFEST.txt" "$logs/"
started=$(date +%s)
mode="${1:-}"
node_s="${QLORA_GPU_CHECK_NODE_S:-120}"
peer_s="${QLORA_GPU_CHECK_PEER_S:-90}"
harness_s="${QLORA_GPU_CHECK_HARNESS_S:-180}"

nvcc=""
for home in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
  if [ -n "$home" ] && [ -x "$home/bin/nvcc" ]; then nvcc="$home/bin/nvcc"; break; fi
done
[ -z "$nvcc" ] && nvcc="$(command -v nvcc || true)"
if [ -z "$nvcc" ]; then echo "gpu-check: nvcc not found (set CUDA_HOME)"; exit 2; fi

commit="$(git -C "$pkg" rev-parse --short HEAD 2>/dev/null || echo unknown)"
date_utc="$(date -u +%FT%TZ)"
echo "== gpu-check $date_utc commit $commit"
smi="nvidia-smi not found"
cc="${QLORA_GPU_CHECK_ARCH:-}"
if command -v nvidia-smi >/dev/null; then
  smi="$(nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader | head -1)"
  echo "$smi"
  [ -z "$cc" ] && cc="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')"
else
  echo "gpu-check: nvidia-smi not found"
fi
toolkit="$("$nvcc" --version | grep -m1 -o 'release .*')"
"$nvcc" --version | tail -2
if [ -n "$cc" ]; then
  if [ "$cc" -lt 80 ] 2>/dev/null; then echo "gpu-check: compute capability $cc < 8.0: the kernels need bf16 tensor cores (sm_80+)"; exit 2; fi
  arch=(-gencode "arch=compute_${cc},code=sm_${cc}")
else
  # Unknown GPU: never -arch=native (without a visible GPU nvcc falls back to an arch without bf16 WMMA).
  # shellcheck disable=SC2054  # the commas belong to nvcc's -gencode syntax
  arch=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)
fi

# cuBLAS is dlopen'ed (libcublas.so.13, then .12): prefer the library the torch peer uses (pip's nvidia-cublas in
# python3's environment, so both sides of the GEMM comparison run the same cuBLAS), then the toolkit, then a search.
cublas_dir() {
  local d
  d="$("$python" -c 'import os, nvidia.cublas as m; print(os.path.join(list(m.__path__)[0], "lib"))' 2>/dev/null)"
  [ -n "$d" ] && [ -e "$d/libcublas.so.13" ] && { echo "$d"; return; }
  for d in "$(dirname "$(dirname "$nvcc")")/lib64" "$(dirname "$(dirname "$nvcc")")/targets/x86_64-linux/lib"; do
    [ -e "$d/libcublas.so.13" ] && { echo "$d"; return; }
  done
  d="$(find /opt /usr/local -name 'libcublas.so.13*' -print -quit 2>/dev/null)"
  [ -n "$d" ] && dirname "$d"
}
cublas="$(cublas_dir)"
cublas_from="${cublas:-loader path}"
if [ -n "$cublas" ]; then
  export LD_LIBRARY_PATH="$cublas${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "gpu-check: cuBLAS from $cublas ($(basename "$(readlink -f "$cublas/libcublas.so.13")"))"
elif ldconfig -p 2>/dev/null | grep -q 'libcublas\.so\.1[23] '; then
  echo "gpu-check: cuBLAS from the loader path ($(ldconfig -p | awk '/libcublas\.so\.1[23] /{print $NF; exit}'))"
else
  echo "gpu-check: no libcublas.so.13 found (python3 nvidia.cublas, toolkit lib64, /opt, /usr/local): GEMMs use our kernels"
fi

# NCCL is dlopen'ed too (src/nccl.ts: libnccl.so.2): pip's nvidia-nccl-cu* in python3's environment (what torch
# uses), else the loader path, else a search. The Node step's NCCL tests (world of one) skip with the reason without it.
nccl_dir() {
  local d
  d="$("$python" -c 'import os, nvidia.nccl as m; print(os.path.join(list(m.__path__)[0], "lib"))' 2>/dev/null)"
  [ -n "$d" ] && [ -e "$d/libnccl.so.2" ] && { echo "$d"; return; }
  ldconfig -p 2>/dev/null | grep -q 'libnccl\.so\.2 ' && return
  d="$(find /opt /usr/local /usr/lib -name 'libnccl.so.2*' -print -quit 2>/dev/null)"
  [ -n "$d" ] && dirname "$d"
}
nccl="$(nccl_dir)"
if [ -n "$nccl" ]; then
  export LD_LIBRARY_PATH="$nccl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nccl_from="from $nccl ($(basename "$(readlink -f "$nccl/libnccl.so.2")"))"
elif ldconfig -p 2>/dev/null | grep -q 'libnccl\.so\.2 '; then
  nccl_from="from the loader path ($(ldconfig -p | awk '/libnccl\.so\.2 /{print $NF; exit}'))"
else
  nccl_from="no libnccl.so.2 found (python3 nvidia.nccl, loader path, /opt, /usr/local, /usr/lib): the NCCL GPU tests skip"
fi
echo "gpu-check: NCCL: $nccl_from"

bundled="$(sed -n 's/^commit: \([0-9a-f]\{7\}\).*/\1/p' "$bundle/MANIFEST.txt" 2>/dev/null)"
if [ "$commit" = unknown ] && [ -n "$bundled" ]; then
  commit="$bundled (no .git here: the bundle's commit)"  # the device machine gets the tree without .git
elif [ -n "$bundled" ] && [ "$bundled" != "$commit" ]; then
  echo "gpu-check: WARNING: gpu-bundle/ was made at $bundled, the tree is at $commit"
fi

# 1. Node-level parity in the background: needs the GPU and one core, while nvcc below needs the CPUs.
node_status="skipped"
node_pid=""
run_node_tests() {
  local node="$build/node"
  if [ -f "$bundle/node.xz" ]; then
    if command -v xz >/dev/null; then xz -dc "$bundle/node.xz" >"$node"
    else "$python" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$bundle/node.xz" "$node"; fi
  else
    gzip -dc "$bundle/node.gz" >"$node"
  fi || { echo "gpu-check: could not unpack the bundled node"; return 2; }
  chmod +x "$node"
  timeout "$node_s" "$node" --enable-source-maps "$bundle/gpu-tests.mjs"
}
if [ "$mode" = "--bench-only" ] || [ "${QLORA_GPU_CHECK_NODE:-1}" = "0" ]; then
  node_status="skipped (--bench-only or QLORA_GPU_CHECK_NODE=0)"
elif [ -f "$bundle/gpu-tests.mjs" ]; then
  echo "gpu-check: bundle $(head -1 "$bundle/MANIFEST.txt" 2>/dev/null) — node tests start now, log $node_log"
  echo "gpu-check: bundle $(grep -m1 '^glibc needed' "$bundle/MANIFEST.txt" 2>/dev/null); this machine: $(getconf GNU_LIBC_VERSION 2>/dev/null)"
  if [ -n "$cc" ] && ! grep -q "^qlora_cuda.node: .*elf_${cc}\b" "$bundle/MANIFEST.txt" 2>/dev/null; then
    echo "gpu-check: WARNING: the bundled addon has no sm_${cc} code ($(grep -m1 -o 'code for [^,]*' "$bundle/MANIFEST.txt")): expect 'no kernel image' failures"
  fi
  run_node_tests >"$node_log" 2>&1 &
  node_pid=$!
else
  node_status="skipped: no gpu-bundle/ (make it before the call: pnpm --filter @qlora/cuda-kernels gpu-bundle, then carry packages/cuda-kernels/gpu-bundle)"
fi

# 2. Compile every translation unit in parallel (one nvcc per file), then link with static cudart.
flags=(-std=c++17 -O3 -Xcompiler -fPIC "${arch[@]}" -I"$pkg/csrc")
pids=()
objs=()
for src in "$pkg"/csrc/kernels/*.cu "$pkg"/csrc/runtime/*.cc "$pkg"/dev/*.cu; do
  obj="$build/$(basename "$src").o"
  objs+=("$obj")
  if [ -n "${JOBS:-}" ]; then  # bounded parallelism (shared machines); the node tests are not nvcc jobs
    while [ "$(jobs -rp | grep -cvx "${node_pid:-none}")" -ge "$JOBS" ]; do sleep 0.5; done
  fi
  "$nvcc" "${flags[@]}" -c "$src" -o "$obj" >"$obj.log" 2>&1 &
  pids+=($!)
done
built=1
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    built=0
    echo "gpu-check: compile failed: ${objs[$i]%.o}"
    tee -a "$errors_log" <"${objs[$i]}.log"
  fi
done
if [ $built -eq 1 ]; then
  "$nvcc" "${arch[@]}" -o "$build/gpu_check" "${objs[@]}" -ldl -lrt -lpthread 2>&1 | tee -a "$errors_log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { built=0; echo "gpu-check: link failed"; }
fi
[ $built -eq 1 ] && rm -f "$errors_log" && echo "gpu-check: built in $(( $(date +%s) - started )) s"

if [ -n "$node_pid" ]; then
  wait "$node_pid"
  code=$?
  # The full log (one line per test) is in $node_log; here: device, failures, skips, the count line.
  grep -v '^ok   ' "$node_log" | cut -c1-400
  result="$(sed -n 's/^gpu-tests: \([0-9]* passed.*\)/\1/p' "$node_log" | tail -1)"
  case $code in
    0) node_status="${result:-exit 0 without a result line}" ;;
    124) node_status="TIMED OUT after $node_s s (${result:-no result line}; partial log in gpu_tests.log)" ;;
    *) node_status="FAILED, exit $code: ${result:-no result line, see gpu_tests.log}" ;;
  esac
fi

# 3. PyTorch peers, alone on the GPU (before the harness, whose table stays last).
peer_status="skipped"
if [ "$mode" = "--check-only" ] || [ "${QLORA_GPU_CHECK_PEER:-1}" = "0" ]; then
  peer_status="skipped (--check-only or QLORA_GPU_CHECK_PEER=0)"
elif [ $built -eq 1 ]; then
  echo "gpu-check: torch peers (dev/peer_torch.py, log $peer_log)"
  timeout "$peer_s" "$python" "$pkg/dev/peer_torch.py" >"$peer_log" 2>&1
  code=$?
  grep '^{' "$peer_log" >"$peer_json"
  grep -v '^{' "$peer_log"
  rows=$(grep -c '"value"' "$peer_json")
  errors=$(grep -c '"error"' "$peer_json")
  case $code in
    0) peer_status="$(sed -n 's/^peer_torch: \(skipped.*\)/\1/p' "$peer_log" | head -1)"
       [ -z "$peer_status" ] && peer_status="$rows measurements, $errors errors (peer_torch.jsonl)" ;;
    124) peer_status="TIMED OUT after $peer_s s ($rows measurements before that)" ;;
    *) peer_status="FAILED, exit $code ($rows measurements, $errors errors; see peer_torch.log)" ;;
  esac
fi

# 4. The harness: checks, benchmarks, its table last.
status=2
if [ $built -eq 1 ]; then
  timeout "$harness_s" "$build/gpu_check" "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  harness_status="exit $status: $(grep -E '^checks: |^no CUDA device|^FATAL' "$log" | tail -1)"
  if [ "$status" -eq 124 ]; then
    echo "gpu-check: TIMED OUT after $harness_s s (partial log in $log)"
    harness_status="TIMED OUT after $harness_s s: no table (raise QLORA_GPU_CHECK_HARNESS_S)"
  fi
else
  harness_status="not built (compile or link failed; build_errors.log)"
fi

# Exit: the harness's status first (2 = no device / not built), then the Node tests' failure.
exit_code=$status
case $node_status in FAILED*|TIMED*) [ "$exit_code" -eq 0 ] && exit_code=1 ;; esac
{
  echo
  echo "== gpu-check summary (commit $commit)"
  echo "node parity (gpu-tests.mjs): $node_status"
  echo "torch peers:                 $peer_status"
  echo "harness (gpu_check):         $harness_status"
  echo "gpu-check: finished in $(( $(date +%s) - started )) s, exit $exit_code (0 = all checks passed)"
}
field() {  # field N of the nvidia-smi csv line
  local f v
  IFS=, read -ra f <<<"$smi"
  v="${f[$1]:-?}"
  echo "${v# }"
}
write_summary() {  # summary.md: the run record and both tables, ready for BENCHMARKS.md
  echo "## GPU run $date_utc — $(field 0)"
  echo
  echo "| field | value |"
  echo "|---|---|"
  echo "| GPU | $(field 0), $(field 3), cc $(field 2) |"
  echo "| driver | $(field 1) |"
  echo "| CUDA toolkit | nvcc $toolkit |"
  echo "| cuBLAS | $(grep -m1 '^cuBLAS: ' "$log" 2>/dev/null | cut -c9-) (from $cublas_from) |"
  echo "| NCCL | $nccl_from |"
  echo "| date (UTC) | $date_utc |"
  echo "| commit | $commit; bundle: $(sed -n 's/^commit: //p' "$bundle/MANIFEST.txt" 2>/dev/null | head -1) |"
  echo "| checks | $harness_status |"
  echo "| node parity | $node_status |"
  local peer
  peer="$(grep -m1 '^peer: ' "$peer_log" 2>/dev/null | cut -c7-)"
  echo "| torch peers | ${peer:+$peer: }$peer_status |"
  echo
  echo "Harness (dev/gpu_check.cu):"
  echo
  grep '^|' "$log" 2>/dev/null
  grep -E '^  failed: ' "$log" 2>/dev/null
  grep -E '^FAIL ' "$node_log" 2>/dev/null | sed 's/^/node: /'
  echo
  echo "PyTorch peers (dev/peer_torch.py):"
  echo
  grep '^|' "$peer_log" 2>/dev/null
  echo
  echo "gpu-check finished in $(( $(date +%s) - started )) s, exit $exit_code."
}
write_summary >"$summary"
echo "gpu-check: run record + tables for BENCHMARKS.md in $summary"
exit "$exit_code"
