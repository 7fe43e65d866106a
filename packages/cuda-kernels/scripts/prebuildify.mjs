// Builds the shipped binary: `prebuildify --napi --strip` for the full arch list (QLORA_CUDA_ARCHS, default
// sm_80/86/89/90 + compute_90 PTX) into prebuilds/<platform>-<arch>/, against the local Node headers (as in
// @qlora/cpu-kernels: prebuildify --napi would otherwise fetch the newest Node's headers; N-API is ABI-stable).
// node-gyp runs in a staged copy (.prebuild/: package.json, binding.gyp, csrc/) because prebuildify's
// `node-gyp rebuild` wipes build/, which holds the development addon that tests and other builds use.
// Not run by CI or install (a full-arch build takes many minutes); node-gyp-build loads the result when
// build/Release is absent.
import { spawnSync } from "node:child_process";
import { cpSync, mkdirSync, readdirSync, rmSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { availableParallelism } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { findCudaHome, gencodeFromEnv } from "./cuda-toolchain.mjs";

const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..");
const cuda = findCudaHome();
if (!cuda) {
  console.error(
    "cuda-kernels prebuildify: nvcc not found (looked in $CUDA_HOME, $CUDA_PATH, /usr/local/cuda and PATH)",
  );
  process.exit(1);
}
const arch = gencodeFromEnv({ cudaHome: cuda.home, defaultAll: true }); // a shipped binary carries every arch
if (arch.error) {
  console.error(arch.error);
  process.exit(1);
}

const stage = join(packageRoot, ".prebuild");
rmSync(stage, { recursive: true, force: true });
mkdirSync(join(stage, "tmp"), { recursive: true });
for (const entry of ["package.json", "binding.gyp", "csrc"])
  cpSync(join(packageRoot, entry), join(stage, entry), { recursive: true });

const require = createRequire(import.meta.url);
const prebuildify = join(dirname(require.resolve("prebuildify/package.json")), "bin.js");
const jobs = process.env.JOBS ?? (process.env.CI ? String(availableParallelism()) : "1");
console.log(
  `cuda-kernels prebuildify: sm_${arch.archs.join(", sm_")} + compute_${arch.last} PTX with ${cuda.nvcc} (jobs ${jobs})`,
);
const started = Date.now();
const result = spawnSync(
  process.execPath,
  [prebuildify, "--napi", "--strip", `--target=${process.versions.node}`, `--cwd=${stage}`, `--out=${packageRoot}`],
  {
    cwd: stage,
    stdio: "inherit",
    env: {
      ...process.env,
      // node-gyp turns npm_config_<name> into the gyp variable <name> (binding.gyp's cuda_home, nvcc, cuda_gencode).
      npm_config_nodedir: process.env.npm_config_nodedir || resolve(process.execPath, "../.."),
      npm_config_cuda_home: cuda.home,
      npm_config_nvcc: cuda.nvcc,
      npm_config_cuda_gencode: arch.gencode,
      npm_config_jobs: jobs,
      TMPDIR: join(stage, "tmp"), // prebuildify's devdir stays out of the shared /tmp
      PREBUILD_NODE_GYP: require.resolve("node-gyp/bin/node-gyp.js"),
    },
  },
);
if (result.status !== 0) {
  console.error(`cuda-kernels prebuildify: failed (exit ${result.status}); the staged build is kept in ${stage}`);
  process.exit(result.status ?? 1);
}
rmSync(stage, { recursive: true, force: true });
const dir = join(packageRoot, "prebuilds", `${process.platform}-${process.arch}`);
for (const f of readdirSync(dir)) {
  console.log(`cuda-kernels prebuildify: ${join(dir, f)} ${(statSync(join(dir, f)).size / 2 ** 20).toFixed(1)} MiB`);
}
console.log(`cuda-kernels prebuildify: done in ${((Date.now() - started) / 1000).toFixed(0)} s`);
