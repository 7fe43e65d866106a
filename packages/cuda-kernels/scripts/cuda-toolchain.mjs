// What scripts/build-native.mjs and scripts/prebuildify.mjs both need: where nvcc is, and the -gencode list
// for QLORA_CUDA_ARCHS (default "80,86,89,90": SASS for each, plus PTX of the newest for later GPUs).
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

/** Parses QLORA_CUDA_ARCHS; { archs, last, gencode } or { error } naming the malformed entry. */
export function gencodeFromEnv() {
  const archs = (process.env.QLORA_CUDA_ARCHS ?? "80,86,89,90")
    .split(",")
    .map((a) => a.trim())
    .filter(Boolean);
  const bad = archs.find((a) => !/^\d{2,3}a?$/.test(a));
  if (bad !== undefined)
    return { error: `cuda-kernels: QLORA_CUDA_ARCHS entry "${bad}" is not an SM number like 80 or 90` };
  const last = archs[archs.length - 1];
  const gencode = [
    ...archs.map((a) => `-gencode=arch=compute_${a},code=sm_${a}`),
    `-gencode=arch=compute_${last},code=compute_${last}`, // PTX of the newest target, JIT-compiled on newer GPUs
  ].join(" ");
  return { archs, last, gencode };
}
