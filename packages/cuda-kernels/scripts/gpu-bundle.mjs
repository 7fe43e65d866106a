#!/usr/bin/env node
// Packs what Node-level GPU tests need on a machine with a GPU but no Node.js, no node_modules and no
// network (scripts/gpu-check.sh runs it there): writes the git-ignored folder gpu-bundle/ with
//   node.xz          xz -9 of this Node binary (gzip when xz is missing: node.gz); reused while the binary is unchanged
//   gpu-tests.mjs    esbuild bundle of dev/gpu-tests/gpu-tests.ts: src/cuda.test.ts, src/no-device.test.ts and
//                    test/fixtures.test.ts, with `vitest` aliased to dev/vitest-shim.ts (real @vitest/expect)
//   self-tests.mjs   the same bundling of tensor's parity suite on a second reference backend: a self-check runnable here
//   addons/          qlora_cuda.node (static cudart; must contain sm_90 code); nothing of @qlora/cpu-kernels
//   fixtures/        the decoder-block golden fixture read by test/fixtures.test.ts
//   MANIFEST.txt     commit, date, Node/esbuild versions, addon archs, sizes
// Usage: pnpm --filter @qlora/cuda-kernels gpu-bundle
// Env: QLORA_GPU_BUNDLE_SM (SM the addon must hold SASS for, default 90), QLORA_GPU_BUNDLE_STALE_OK=1 (accept an addon older
// than csrc/). Fails when the folder would exceed 40 MiB.
import { execFileSync, spawnSync } from "node:child_process";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { bundleTests, esbuild } from "./bundle-tests.mjs";

const pkg = join(dirname(fileURLToPath(import.meta.url)), "..");
const repo = join(pkg, "..", "..");
const out = join(pkg, "gpu-bundle");
const LIMIT = 40 * 2 ** 20;
const started = Date.now();

function fail(message) {
  console.error(`gpu-bundle: ${message}`);
  process.exit(1);
}

/** The SMs an addon can run on: "elf_90" cubins and "ptx_90" PTX, read from its fatbin headers. */
function fatbinArchs(file) {
  const b = readFileSync(file);
  const magic = Buffer.from([0x50, 0xed, 0x55, 0xba]); // 0xBA55ED50, little-endian
  const archs = new Set();
  for (let i = b.indexOf(magic); i >= 0; i = b.indexOf(magic, i + 4)) {
    let p = i + b.readUInt16LE(i + 6);
    const end = p + Number(b.readBigUInt64LE(i + 8));
    while (p + 32 <= end && p + 32 <= b.length) {
      const kind = b.readUInt16LE(p);
      if (kind !== 1 && kind !== 2) break; // not an entry header: stop this fatbin
      archs.add(`${kind === 1 ? "ptx" : "elf"}_${b.readUInt32LE(p + 28)}`);
      p += b.readUInt32LE(p + 4) + Number(b.readBigUInt64LE(p + 8));
    }
  }
  return [...archs].sort();
}

function checkCudaAddon(file) {
  if (!existsSync(file))
    fail(`${relative(repo, file)} is missing: QLORA_CUDA_ARCHS=90 pnpm --filter @qlora/cuda-kernels build:native`);
  const sm = Number(process.env.QLORA_GPU_BUNDLE_SM ?? "90");
  const archs = fatbinArchs(file);
  // SASS for the GPU itself: PTX of an older arch would run, but only after a JIT of every kernel at load time.
  if (!archs.includes(`elf_${sm}`)) {
    fail(
      `${relative(repo, file)} has code for [${archs.join(", ")}], no sm_${sm} SASS: QLORA_CUDA_ARCHS=${sm} pnpm --filter @qlora/cuda-kernels build:native`,
    );
  }
  // An addon older than its sources would test yesterday's kernels and record them in BENCHMARKS.md.
  const built = statSync(file).mtimeMs;
  const newer = ["csrc/kernels", "csrc/runtime", "csrc/napi"]
    .flatMap((d) => readdirSync(join(pkg, d)).map((f) => join(d, f)))
    .filter((f) => statSync(join(pkg, f)).mtimeMs > built);
  if (newer.length > 0 && process.env.QLORA_GPU_BUNDLE_STALE_OK !== "1") {
    fail(
      `the addon is older than ${newer.join(", ")}: rebuild it (QLORA_CUDA_ARCHS=${sm} pnpm --filter @qlora/cuda-kernels build:native) or set QLORA_GPU_BUNDLE_STALE_OK=1`,
    );
  }
  return { archs, stale: newer };
}

async function bundle(name, entry, sourcemap) {
  const r = await bundleTests(join(pkg, "dev", "gpu-tests", entry), join(out, `${name}.mjs`), { sourcemap });
  if (r.errors.length > 0 || r.warnings.length > 0)
    fail(`esbuild reported ${r.errors.length} errors, ${r.warnings.length} warnings`);
}

/** xz -9 is ~80 s for a 100 MB binary on a small machine: redo it only when the binary changed. */
function packNode() {
  const st = statSync(process.execPath);
  const stamp = JSON.stringify({ path: process.execPath, size: st.size, mtime: st.mtimeMs, version: process.version });
  const stampFile = join(out, "node.stamp");
  const hasXz = spawnSync("xz", ["--version"]).status === 0;
  const file = join(out, hasXz ? "node.xz" : "node.gz");
  if (existsSync(file) && existsSync(stampFile) && readFileSync(stampFile, "utf8") === stamp) return `${file} (reused)`;
  rmSync(join(out, "node.xz"), { force: true });
  rmSync(join(out, "node.gz"), { force: true });
  const [tool, args] = hasXz ? ["xz", ["-9", "-T0", "-c"]] : ["gzip", ["-9", "-c"]];
  console.log(`gpu-bundle: compressing ${process.execPath} (${(st.size / 2 ** 20).toFixed(0)} MiB) with ${tool}…`);
  execFileSync("sh", ["-c", `${tool} ${args.join(" ")} "$1" > "$2"`, "sh", process.execPath, file], {
    stdio: "inherit",
  });
  writeFileSync(stampFile, stamp);
  return file;
}

/** The newest GLIBC_2.x symbol version the binaries reference: the GPU machine's glibc must be at least that. */
function glibcNeeded(files) {
  let best = 0;
  for (const f of files) {
    for (const m of readFileSync(f)
      .toString("latin1")
      .matchAll(/GLIBC_2\.(\d+)/g))
      best = Math.max(best, Number(m[1]));
  }
  return `2.${best}`;
}

function gitDescribe() {
  const git = (...a) => spawnSync("git", ["-C", repo, ...a], { encoding: "utf8" }).stdout.trim();
  const dirty = git("status", "--porcelain", "--", "packages") !== "";
  return `${git("rev-parse", "HEAD") || "unknown"}${dirty ? " (+ uncommitted changes under packages/)" : ""}`;
}

function sizes() {
  const rows = [];
  const walk = (dir) => {
    for (const f of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, f.name);
      if (f.isDirectory()) walk(p);
      else rows.push([relative(out, p), statSync(p).size]);
    }
  };
  walk(out);
  return rows.sort((a, b) => b[1] - a[1]);
}

mkdirSync(out, { recursive: true });
for (const f of [
  "gpu-tests.mjs",
  "gpu-tests.mjs.map",
  "cpu-tests.mjs", // written by older versions of this script
  "cpu-tests.mjs.map",
  "self-tests.mjs",
  "self-tests.mjs.map",
  "addons",
  "fixtures",
  "MANIFEST.txt",
]) {
  rmSync(join(out, f), { recursive: true, force: true });
}
const cudaAddon = join(pkg, "build", "Release", "qlora_cuda.node");
const addon = checkCudaAddon(cudaAddon);
mkdirSync(join(out, "addons"));
copyFileSync(cudaAddon, join(out, "addons", "qlora_cuda.node"));
mkdirSync(join(out, "fixtures"));
copyFileSync(
  join(repo, "packages", "tensor", "test", "fixtures", "decoder_block.bin"),
  join(out, "fixtures", "decoder_block.bin"),
);
await bundle("gpu-tests", "gpu-tests.ts", true);
await bundle("self-tests", "self-tests.ts", false);
const nodeFile = packNode();

const rows = sizes();
const total = rows.reduce((s, [, n]) => s + n, 0);
const manifest = [
  `commit: ${gitDescribe()}`,
  `bundled: ${new Date().toISOString()}`,
  `node: ${process.version} (${process.platform}-${process.arch}, ${relative(out, nodeFile.split(" ")[0])})`,
  `esbuild: ${esbuild.version}`,
  `glibc needed: ${glibcNeeded([process.execPath, cudaAddon])} (node and addons)`,
  `qlora_cuda.node: built ${statSync(cudaAddon).mtime.toISOString()}, code for ${addon.archs.join(" ")}${addon.stale.length ? `, OLDER THAN ${addon.stale.join(" ")}` : ""}`,
  ...rows.map(([f, n]) => `${(n / 2 ** 20).toFixed(2).padStart(7)} MiB  ${f}`),
  `${(total / 2 ** 20).toFixed(2).padStart(7)} MiB  total (limit ${LIMIT / 2 ** 20} MiB)`,
].join("\n");
writeFileSync(join(out, "MANIFEST.txt"), `${manifest}\n`);
console.log(manifest);
if (total > LIMIT) fail(`${(total / 2 ** 20).toFixed(1)} MiB exceeds the ${LIMIT / 2 ** 20} MiB budget`);
console.log(`gpu-bundle: wrote ${relative(repo, out)}/ in ${((Date.now() - started) / 1000).toFixed(1)} s`);
console.log(
  `  check here: node ${relative(process.cwd(), join(out, "self-tests.mjs"))} && node ${relative(process.cwd(), join(out, "gpu-tests.mjs"))}`,
);
