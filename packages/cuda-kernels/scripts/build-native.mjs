// Builds the CUDA addon with node-gyp against the local Node headers (never downloads them).
// Finds nvcc in $CUDA_HOME, $CUDA_PATH, /usr/local/cuda, then PATH; without nvcc it prints one
// "skipped" line and exits 0 (the package then reports "not built" at run time, and the tensor
// runtime falls back to the CPU backend).
//   QLORA_CUDA_ARCHS  comma list of SASS targets, default "80,86,89,90" (+ compute_90 PTX);
//                     use QLORA_CUDA_ARCHS=80 while iterating.
//   JOBS              parallel compile jobs (default 1, or all cores when $CI is set).
//   QLORA_CUDA_CLEAN=1 forces a full rebuild (otherwise unchanged configurations build incrementally).
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync, realpathSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { availableParallelism } from "node:os";
import { delimiter, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..");

function findCudaHome() {
  // QLORA_CUDA_DEFAULT_HOME overrides the /usr/local/cuda guess ("" disables it; used by the tests).
  const fallback = process.env.QLORA_CUDA_DEFAULT_HOME ?? "/usr/local/cuda";
  const candidates = [process.env.CUDA_HOME, process.env.CUDA_PATH, fallback].filter(Boolean);
  for (const home of candidates) if (existsSync(join(home, "bin", "nvcc"))) return { home, nvcc: join(home, "bin", "nvcc") };
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

const cuda = findCudaHome();
if (!cuda) {
  console.log(
    "cuda-kernels: skipped: nvcc not found (looked in $CUDA_HOME, $CUDA_PATH, /usr/local/cuda and PATH); " +
      "the CUDA backend will report itself unavailable",
  );
  process.exit(0);
}
if (!existsSync(join(cuda.home, "lib64", "libcudart_static.a"))) {
  console.log(`cuda-kernels: skipped: ${cuda.home}/lib64/libcudart_static.a not found (incomplete CUDA toolkit)`);
  process.exit(0);
}

const archs = (process.env.QLORA_CUDA_ARCHS ?? "80,86,89,90").split(",").map((a) => a.trim()).filter(Boolean);
for (const a of archs) {
  if (!/^\d{2,3}a?$/.test(a)) {
    console.error(`cuda-kernels: QLORA_CUDA_ARCHS entry "${a}" is not an SM number like 80 or 90`);
    process.exit(1);
  }
}
const last = archs[archs.length - 1];
const gencode = [
  ...archs.map((a) => `-gencode=arch=compute_${a},code=sm_${a}`),
  `-gencode=arch=compute_${last},code=compute_${last}`, // PTX of the newest target, JIT-compiled on newer GPUs
].join(" ");

const require = createRequire(import.meta.url);
const nodeGyp = require.resolve("node-gyp/bin/node-gyp.js");
const nodedir = process.env.npm_config_nodedir || resolve(process.execPath, "../..");
// One nvcc at a time by default (shared 2-core dev machines); CI machines use every core.
const jobs = process.env.JOBS ?? (process.env.CI ? String(availableParallelism()) : "1");
const started = Date.now();
// Incremental when nothing that configure bakes in changed (toolkit, gencode list, file list):
// make then recompiles only what changed (the nvcc rule lists the headers as inputs).
const sources = ["csrc/kernels", "csrc/napi", "csrc/runtime"].flatMap((d) => readdirSync(join(packageRoot, d)).map((f) => `${d}/${f}`));
const stamp = JSON.stringify({ nvcc: cuda.nvcc, gencode, sources: sources.sort(), node: process.version });
const stampFile = join(packageRoot, "build", "qlora-build-stamp.json");
const incremental =
  process.env.QLORA_CUDA_CLEAN !== "1" && existsSync(join(packageRoot, "build", "Makefile")) && existsSync(stampFile) &&
  readFileSync(stampFile, "utf8") === stamp;
console.log(
  `cuda-kernels: ${incremental ? "incremental build" : "building"} with ${cuda.nvcc} for sm_${archs.join(", sm_")} + compute_${last} PTX (jobs ${jobs})`,
);
const args = incremental
  ? [nodeGyp, "build", `--jobs=${jobs}`]
  : [nodeGyp, "rebuild", `--nodedir=${nodedir}`, `--jobs=${jobs}`, `--cuda_home=${cuda.home}`, `--nvcc=${cuda.nvcc}`, `--cuda_gencode=${gencode}`];
const result = spawnSync(process.execPath, args, { cwd: packageRoot, stdio: "inherit" });
if (result.status !== 0) {
  console.error(`cuda-kernels: native build failed (node-gyp exited ${result.status}); see the log above`);
  process.exit(result.status ?? 1);
}
writeFileSync(stampFile, stamp);
console.log(`cuda-kernels: built build/Release/qlora_cuda.node in ${((Date.now() - started) / 1000).toFixed(1)} s`);
