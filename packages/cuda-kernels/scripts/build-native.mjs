// Builds the CUDA addon with node-gyp against the local Node headers (never downloads them).
// Finds nvcc in $CUDA_HOME, $CUDA_PATH, /usr/local/cuda, then PATH; without nvcc it prints one
// "skipped" line and exits 0 (the package then reports "not built" at run time, and the tensor
// runtime falls back to the CPU backend).
//   QLORA_CUDA_ARCHS  comma list of SASS targets (+ PTX of the last), or "all" (80,86,89,90). Default:
//                     the installed GPU's architecture; without an NVIDIA driver only sm_80, which is
//                     enough to prove the kernels compile (a fresh clone's install stays short).
//   JOBS              parallel compile jobs (default 1, or all cores when $CI is set).
//   QLORA_CUDA_CLEAN=1 forces a full rebuild (otherwise unchanged configurations build incrementally).
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { availableParallelism } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { findCudaHome, gencodeFromEnv } from "./cuda-toolchain.mjs";

const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..");

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

const arch = gencodeFromEnv({ cudaHome: cuda.home });
if (arch.error) {
  console.error(arch.error);
  process.exit(1);
}
const { archs, last, gencode } = arch;

const require = createRequire(import.meta.url);
const nodeGyp = require.resolve("node-gyp/bin/node-gyp.js");
const nodedir = process.env.npm_config_nodedir || resolve(process.execPath, "../..");
// One nvcc at a time by default (shared 2-core dev machines); CI machines use every core.
const jobs = process.env.JOBS ?? (process.env.CI ? String(availableParallelism()) : "1");
const started = Date.now();
// Incremental when nothing that configure bakes in changed (toolkit, gencode list, file list):
// make then recompiles only what changed (the nvcc rule lists the headers as inputs).
const sources = ["csrc/kernels", "csrc/napi", "csrc/runtime"].flatMap((d) =>
  readdirSync(join(packageRoot, d)).map((f) => `${d}/${f}`),
);
const stamp = JSON.stringify({ nvcc: cuda.nvcc, gencode, sources: sources.sort(), node: process.version });
const stampFile = join(packageRoot, "build", "qlora-build-stamp.json");
const incremental =
  process.env.QLORA_CUDA_CLEAN !== "1" &&
  existsSync(join(packageRoot, "build", "Makefile")) &&
  existsSync(stampFile) &&
  readFileSync(stampFile, "utf8") === stamp;
console.log(
  `cuda-kernels: ${incremental ? "incremental build" : "building"} with ${cuda.nvcc} for sm_${archs.join(", sm_")} + compute_${last} PTX (${arch.reason}; jobs ${jobs})`,
);
const args = incremental
  ? [nodeGyp, "build", `--jobs=${jobs}`]
  : [
      nodeGyp,
      "rebuild",
      `--nodedir=${nodedir}`,
      `--jobs=${jobs}`,
      `--cuda_home=${cuda.home}`,
      `--nvcc=${cuda.nvcc}`,
      `--cuda_gencode=${gencode}`,
    ];
const result = spawnSync(process.execPath, args, { cwd: packageRoot, stdio: "inherit" });
if (result.status !== 0) {
  console.error(`cuda-kernels: native build failed (node-gyp exited ${result.status}); see the log above`);
  process.exit(result.status ?? 1);
}
writeFileSync(stampFile, stamp);
console.log(`cuda-kernels: built build/Release/qlora_cuda.node in ${((Date.now() - started) / 1000).toFixed(1)} s`);
