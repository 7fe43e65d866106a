// What scripts/build-native.mjs and scripts/prebuildify.mjs both need: where nvcc is, and the -gencode list
// (gencodeFromEnv: the installed GPU's architecture, one architecture without a driver, every shipped one
// for prebuilds or QLORA_CUDA_ARCHS=all; SASS for each plus PTX of the newest for later GPUs).
import { spawnSync } from "node:child_process";
import { existsSync, realpathSync } from "node:fs";
import { delimiter, dirname, join, resolve } from "node:path";

/** { home, nvcc } from $CUDA_HOME, $CUDA_PATH, /usr/local/cuda, then PATH; undefined without nvcc. */
export function findCudaHome() {
  // QLORA_CUDA_DEFAULT_HOME overrides the /usr/local/cuda guess ("" disables it; used by the tests).
  const fallback = process.env.QLORA_CUDA_DEFAULT_HOME ?? "/usr/local/cuda";
  const candidates = [process.env.CUDA_HOME, process.env.CUDA_PATH, fallback].filter(Boolean);
  for (const home of candidates)
    if (existsSync(join(home, "bin", "nvcc"))) return { home, nvcc: join(home, "bin", "nvcc") };
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    const nvcc = join(dir, "nvcc");
    if (!dir || !existsSync(nvcc)) continue;
    // /usr/local/bin/nvcc may be a wrapper script: prefer the real toolkit directory when we can find it.
    const real = realpathSync(nvcc);
    const home = resolve(dirname(real), "..");
    return { home: existsSync(join(home, "include", "cuda_runtime_api.h")) ? home : "/usr/local/cuda", nvcc: real };
  }
  return undefined;
}

/** Every architecture a shipped binary carries: SASS for each, plus PTX of the newest for later GPUs. */
export const ALL_ARCHS = ["80", "86", "89", "90"];
/** The one architecture a build without a GPU compiles for: the oldest the kernels support (cp.async, bf16 mma). */
export const PROOF_ARCH = "80";

/**
 * The compute capabilities of the GPUs the NVIDIA driver sees ("90" for an H100), or [] without a driver.
 * nvidia-smi first; the toolkit's __nvcc_device_query where only libcuda is present. Never throws.
 */
export function detectGpuArchs(cudaHome) {
  const run = (cmd, args) => {
    const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 20_000 });
    return r.status === 0 ? r.stdout : "";
  };
  const fromSmi = run("nvidia-smi", ["--query-gpu=compute_cap", "--format=csv,noheader"])
    .split("\n")
    .map((l) => l.trim().replace(".", ""))
    .filter((a) => /^\d{2,3}$/.test(a));
  if (fromSmi.length > 0) return [...new Set(fromSmi)].sort();
  const query = cudaHome ? join(cudaHome, "bin", "__nvcc_device_query") : "";
  if (!query || !existsSync(query) || !hasDriverLibrary()) return [];
  return [
    ...new Set(
      run(query, [])
        .split(/[\s,]+/)
        .filter((a) => /^\d{2,3}$/.test(a)),
    ),
  ].sort();
}

/** libcuda.so.1 (the driver's user-space library) is loadable from a standard location. */
function hasDriverLibrary() {
  const dirs = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/lib/wsl/lib",
  ];
  const extra = (process.env.LD_LIBRARY_PATH ?? "").split(delimiter).filter(Boolean);
  return [...extra, ...dirs].some((d) => existsSync(join(d, "libcuda.so.1")));
}

/**
 * Which architectures to compile for, and why:
 *   QLORA_CUDA_ARCHS=80,90   exactly those (comma list);
 *   QLORA_CUDA_ARCHS=all     every shipped architecture (ALL_ARCHS; what prebuildify uses by default);
 *   unset, with a driver     the installed GPUs' architectures (older than sm_80 is not supported: PROOF_ARCH);
 *   unset, without a driver  PROOF_ARCH only: enough to prove the kernels compile, at a fifth of the time.
 * Returns { archs, last, gencode, reason } or { error } naming the malformed entry.
 */
export function gencodeFromEnv({ cudaHome, defaultAll = false, detect = detectGpuArchs } = {}) {
  const requested = process.env.QLORA_CUDA_ARCHS?.trim();
  let archs;
  let reason;
  if (requested === "all" || (!requested && defaultAll)) {
    archs = ALL_ARCHS;
    reason = requested ? "QLORA_CUDA_ARCHS=all" : "every shipped architecture (prebuild)";
  } else if (requested) {
    archs = requested
      .split(",")
      .map((a) => a.trim())
      .filter(Boolean);
    reason = "QLORA_CUDA_ARCHS";
  } else {
    const gpus = detect(cudaHome);
    const usable = gpus.filter((a) => Number.parseInt(a, 10) >= Number.parseInt(PROOF_ARCH, 10));
    archs = usable.length > 0 ? usable : [PROOF_ARCH];
    reason =
      gpus.length === 0
        ? "no NVIDIA driver found: one architecture, to prove the kernels compile (QLORA_CUDA_ARCHS=all for every one)"
        : usable.length > 0
          ? `the installed GPU${usable.length > 1 ? "s" : ""} (QLORA_CUDA_ARCHS=all for every architecture)`
          : `installed GPU sm_${gpus.join(", sm_")} is older than sm_${PROOF_ARCH}, which the kernels need`;
  }
  const bad = archs.find((a) => !/^\d{2,3}a?$/.test(a));
  if (bad !== undefined)
    return { error: `cuda-kernels: QLORA_CUDA_ARCHS entry "${bad}" is not an SM number like 80 or 90, or "all"` };
  const last = archs[archs.length - 1];
  const gencode = [
    ...archs.map((a) => `-gencode=arch=compute_${a},code=sm_${a}`),
    `-gencode=arch=compute_${last},code=compute_${last}`, // PTX of the newest target, JIT-compiled on newer GPUs
  ].join(" ");
  return { archs, last, gencode, reason };
}
