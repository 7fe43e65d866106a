#!/usr/bin/env node
// Packaging check: what a user gets from `npm i @qlora/cli` / `npm i @qlora/nf4`, without the workspace.
//   1. builds every shipped package with tsup and @qlora/cpu-kernels' linux-x64 prebuild (prebuildify, in a
//      scratch copy of the package so the shared build/Release is never wiped under running tests);
//   2. `pnpm -r pack` (workspace:* becomes the real version) into a temp dir;
//   3. an empty project in the system temp dir depends on every tarball (file:, plus `overrides` so transitive
//      @qlora/* resolve to the tarballs too) and runs plain `npm install` with a PATH holding only node/npm/npx
//      (no g++/cc/make/python/nvcc), third-party packages coming from the npm registry;
//   4. checks there: the addon loads from prebuilds/ (no build/ dir), `import { quantize4bit } from "@qlora/nf4"`,
//      `npx qlora --help`, `qlora estimate`, `qlora inspect` (and a bad path), `qlora demo` when the CLI has it.
// Prints one PASS/FAIL line per check and exits 1 if any failed. Usage:
//   node scripts/pack-check.mjs [--rebuild] [--prebuildify] [--keep]
//     --rebuild      run tsup for every package (default: only where dist/ is missing or older than src/)
//     --prebuildify  compile the prebuild with prebuildify even if an up-to-date one or build/Release exists
//     --keep         keep the temp dir (always kept when a check fails)
// @qlora/cuda-kernels (and any package @qlora/cli and @qlora/nf4 do not depend on) is left out.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const args = new Set(process.argv.slice(2));
// What a user installs: these two and every workspace package they depend on (so @qlora/cuda-kernels and
// @qlora/distributed are in only once something installed depends on them), dependencies first.
const ENTRY_PACKAGES = ["@qlora/cli", "@qlora/nf4"];
const PACKAGES = installedWorkspacePackages();
// the workspace's pins (root package.json), for the TypeScript consumer check
const TYPESCRIPT = "5.9.3";
const TYPES_NODE = "20.19.43";
const COMPILERS = ["g++", "gcc", "cc", "c++", "clang", "make", "python", "python3", "nvcc"];
const work = mkdtempSync(join(tmpdir(), "qlora-pack-check-"));
const results = [];
const started = Date.now();

/** Directory names under packages/ of ENTRY_PACKAGES and their workspace dependencies, in dependency order. */
function installedWorkspacePackages() {
  const manifests = new Map();
  for (const dir of readdirSync(join(root, "packages"))) {
    const file = join(root, "packages", dir, "package.json");
    if (existsSync(file))
      manifests.set(JSON.parse(readFileSync(file, "utf8")).name, { dir, ...JSON.parse(readFileSync(file, "utf8")) });
  }
  const ordered = [];
  const visit = (name, path) => {
    const manifest = manifests.get(name);
    if (!manifest) throw new Error(`pack-check: ${path.join(" -> ")} needs ${name}, which is not in packages/`);
    if (ordered.includes(manifest.dir)) return;
    // Optional peers (the cli's @qlora/cuda-kernels) are what a user adds by choice: not part of the install.
    const optionalPeer = (d) => manifest.peerDependenciesMeta?.[d]?.optional === true;
    const peers = Object.fromEntries(Object.entries(manifest.peerDependencies ?? {}).filter(([d]) => !optionalPeer(d)));
    const deps = { ...manifest.dependencies, ...manifest.optionalDependencies, ...peers };
    for (const dep of Object.keys(deps).filter((d) => manifests.has(d))) {
      if (path.includes(dep)) throw new Error(`pack-check: dependency cycle ${[...path, dep].join(" -> ")}`);
      visit(dep, [...path, dep]);
    }
    ordered.push(manifest.dir);
  };
  for (const name of ENTRY_PACKAGES) visit(name, [name]);
  return ordered;
}

function log(message) {
  console.log(`pack-check [${((Date.now() - started) / 1000).toFixed(0).padStart(3)} s]: ${message}`);
}

/** Runs a command; throws with its output when it fails (for the setup steps, which must all succeed). */
function must(command, argv, options = {}) {
  const r = run(command, argv, options);
  if (r.status !== 0) {
    throw new Error(`${command} ${argv.join(" ")} exited ${r.status ?? r.signal}\n${r.stdout}\n${r.stderr}`);
  }
  return r;
}

function run(command, argv, { cwd = root, env = process.env, timeoutMs = 300_000 } = {}) {
  const r = spawnSync(command, argv, { cwd, env, encoding: "utf8", timeout: timeoutMs, maxBuffer: 64 << 20 });
  if (r.error && r.error.code !== "ETIMEDOUT") throw r.error;
  return { status: r.status, signal: r.signal, stdout: r.stdout ?? "", stderr: r.stderr ?? "" };
}

/** A check: `fn` returns a short detail or throws; the outcome is recorded, never aborts the run. */
function check(name, fn) {
  try {
    const detail = fn();
    results.push({ name, ok: true });
    log(`PASS ${name}${detail ? ` (${detail})` : ""}`);
  } catch (error) {
    results.push({ name, ok: false });
    log(`FAIL ${name}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

function oldestMtime(path) {
  const s = statSync(path);
  if (!s.isDirectory()) return s.mtimeMs;
  return Math.min(Infinity, ...readdirSync(path).map((f) => oldestMtime(join(path, f))));
}

function newestMtime(path) {
  const s = statSync(path);
  if (!s.isDirectory()) return s.mtimeMs;
  return Math.max(s.mtimeMs, ...readdirSync(path).map((f) => newestMtime(join(path, f))));
}

/** tsup for every package whose dist/ is missing or older than its sources (all of them with --rebuild). */
function buildJs() {
  for (const name of PACKAGES) {
    const pkg = join(root, "packages", name);
    const dist = join(pkg, "dist");
    const inputs = Math.max(...["src", "tsup.config.ts", "package.json"].map((p) => newestMtime(join(pkg, p))));
    if (!args.has("--rebuild") && existsSync(dist) && oldestMtime(dist) > inputs) continue;
    log(`tsup @qlora/${name}`);
    must(join(root, "node_modules", ".bin", "tsup"), ["--silent"], { cwd: pkg });
  }
}

/**
 * prebuilds/<platform>-<arch>/@qlora+cpu-kernels.node, the file `prebuildify --napi --strip` writes. When the
 * workspace's build/Release binary is newer than the sources it is the same compilation (same binding.gyp), so it
 * is copied and stripped; otherwise (or with --prebuildify) prebuildify runs in a scratch copy of the package,
 * because it runs `node-gyp rebuild`, which would wipe the package's own build/ under running tests.
 */
function buildPrebuild() {
  const pkg = join(root, "packages", "cpu-kernels");
  const target = join(pkg, "prebuilds", `${process.platform}-${process.arch}`);
  const file = join(target, "@qlora+cpu-kernels.node");
  const sources = Math.max(...["binding.gyp", "csrc", "scripts"].map((p) => newestMtime(join(pkg, p))));
  const forced = args.has("--prebuildify");
  if (!forced && existsSync(file) && statSync(file).mtimeMs > sources) {
    log(`cpu-kernels prebuild is up to date (${file})`);
    return;
  }
  const built = join(pkg, "build", "Release", "qlora_cpu.node");
  if (!forced && existsSync(built) && statSync(built).mtimeMs > sources) {
    mkdirSync(target, { recursive: true });
    const tmp = join(target, `.tmp-${process.pid}.node`);
    cpSync(built, tmp);
    must("strip", ["--strip-all", tmp]);
    renameSync(tmp, file);
    log(`cpu-kernels prebuild: stripped copy of ${built}`);
    return;
  }
  const scratch = join(work, "cpu-kernels-prebuild");
  for (const p of ["binding.gyp", "csrc", "scripts", "package.json"])
    cpSync(join(pkg, p), join(scratch, p), { recursive: true });
  symlinkSync(join(pkg, "node_modules"), join(scratch, "node_modules"));
  log("cpu-kernels prebuild: prebuildify --napi --strip (compiles the addon)");
  must(process.execPath, [join(scratch, "scripts", "prebuildify.mjs")], {
    cwd: scratch,
    env: { ...process.env, npm_config_jobs: "max", JOBS: "max" },
    timeoutMs: 900_000,
  });
  rmSync(target, { recursive: true, force: true });
  cpSync(join(scratch, "prebuilds", `${process.platform}-${process.arch}`), target, { recursive: true });
  log(`cpu-kernels prebuild built: ${readdirSync(target).join(", ")}`);
}

function pack() {
  const out = join(work, "tarballs");
  mkdirSync(out);
  const pnpm = join(root, ".tools", "node_modules", ".bin", "pnpm");
  const filters = PACKAGES.map((dir) => `--filter=./packages/${dir}`);
  must(existsSync(pnpm) ? pnpm : "pnpm", ["-r", ...filters, "pack", "--pack-destination", out]);
  const tarballs = {};
  for (const dir of PACKAGES) {
    const { name, version } = JSON.parse(readFileSync(join(root, "packages", dir, "package.json"), "utf8"));
    const file = join(out, `${name.replace("@", "").replace("/", "-")}-${version}.tgz`);
    if (!existsSync(file)) throw new Error(`pnpm pack produced no ${file} for ${name}`);
    tarballs[name] = `file:${file}`;
  }
  return tarballs;
}

/** A bin directory with node, npm, npx and sh only (npm runs package scripts with `sh`): a PATH without compilers. */
function compilerFreePath() {
  const bin = join(work, "node-only-bin");
  mkdirSync(bin);
  const npmCli = join(dirname(process.execPath), "..", "lib", "node_modules", "npm", "bin");
  symlinkSync(process.execPath, join(bin, "node"));
  symlinkSync(join(npmCli, "npm-cli.js"), join(bin, "npm"));
  symlinkSync(join(npmCli, "npx-cli.js"), join(bin, "npx"));
  symlinkSync("/bin/sh", join(bin, "sh"));
  return bin;
}

/** A tiny Llama checkpoint + tokenizer in real Hugging Face files, written by the workspace's own generator. */
function writeTinyModel(dir) {
  const script = `
    import { writeTinyTokenizer } from "@qlora/models";
    import { TINY_MODELS, writeTinyModel } from "./packages/models/scripts/make-tiny-models.ts";
    const dir = ${JSON.stringify(dir)};
    const info = await writeTinyTokenizer(dir, "llama3");
    await writeTinyModel(dir, TINY_MODELS.find((s) => s.name === "llama"), {
      configOverrides: { vocab_size: info.vocabSize, bos_token_id: info.bosTokenId, eos_token_id: info.eosTokenId },
    });`;
  const file = join(root, "packages", "cli", "node_modules", `.pack-check-tiny-${process.pid}.mts`);
  writeFileSync(file, script.replaceAll("./packages/", `${root}/packages/`));
  try {
    must(process.execPath, ["--conditions=@qlora/source", "--import", "tsx", file], {
      cwd: join(root, "packages", "cli"),
    });
  } finally {
    rmSync(file, { force: true });
  }
}

/** Two runs at once (parallel test runs) would clean each other's dist/ mid-pack: one at a time per checkout. */
function withBuildLock(fn) {
  const lock = join(tmpdir(), `qlora-pack-check-${createHash("sha1").update(root).digest("hex").slice(0, 12)}.lock`);
  for (let waited = 0; ; waited += 1000) {
    try {
      mkdirSync(lock);
      writeFileSync(join(lock, "pid"), String(process.pid));
      break;
    } catch (error) {
      if (error.code !== "EEXIST") throw error;
      if (!lockOwnerAlive(lock)) rmSync(lock, { recursive: true, force: true });
      else if (waited === 0) log("another pack-check is building in this checkout; waiting for it");
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1000);
    }
  }
  try {
    return fn();
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

function lockOwnerAlive(lock) {
  try {
    process.kill(Number(readFileSync(join(lock, "pid"), "utf8")), 0);
    return true;
  } catch (error) {
    // no pid file yet: the owner is between mkdir and write unless the lock is old
    if (error.code !== "ENOENT") return error.code === "EPERM";
    try {
      return Date.now() - statSync(lock).mtimeMs < 5000;
    } catch {
      return false;
    }
  }
}

function main() {
  log(`working in ${work}`);
  const tarballs = withBuildLock(() => {
    buildJs();
    buildPrebuild();
    log("pnpm -r pack");
    return pack();
  });
  const model = join(work, "tiny-llama");
  writeTinyModel(model);

  const app = join(work, "app");
  mkdirSync(app);
  writeFileSync(
    join(app, "package.json"),
    `${JSON.stringify({ name: "pack-check-app", private: true, type: "module", dependencies: tarballs, overrides: tarballs }, null, 2)}\n`,
  );
  const bin = compilerFreePath();
  const env = { HOME: process.env.HOME ?? work, PATH: bin, npm_config_update_notifier: "false" };
  const inApp = (command, argv, timeoutMs = 120_000) => run(command, argv, { cwd: app, env, timeoutMs });
  const qlora = (...argv) => inApp(join(bin, "npx"), ["--no-install", "qlora", ...argv]);

  check("no compiler on the install PATH", () => {
    const found = COMPILERS.filter((c) => inApp(join(bin, "sh"), ["-c", `command -v ${c}`]).status === 0);
    expect(found.length === 0, `reachable: ${found.join(", ")}`);
    return `PATH=${bin}`;
  });
  check("npm install of the tarballs", () => {
    const r = inApp(join(bin, "npm"), ["install", "--no-audit", "--no-fund"], 300_000);
    expect(r.status === 0, `npm install exited ${r.status}\n${r.stdout}\n${r.stderr}`);
    return r.stdout.trim().split("\n").at(-1);
  });
  check(`every installed package with a binding.gyp ships prebuilds/${process.platform}-${process.arch}/*.node`, () => {
    const native = Object.keys(tarballs).filter((name) => existsSync(join(app, "node_modules", name, "binding.gyp")));
    const missing = native.filter((name) => {
      const dir = join(app, "node_modules", name, "prebuilds", `${process.platform}-${process.arch}`);
      return !existsSync(dir) || !readdirSync(dir).some((f) => f.endsWith(".node"));
    });
    expect(missing.length === 0, `no prebuild in ${missing.join(", ")} (pack-check builds only @qlora/cpu-kernels')`);
    return native.join(", ");
  });
  const cpu = join(app, "node_modules", "@qlora", "cpu-kernels");
  check("@qlora/cpu-kernels loads its prebuilt binary (no build/ dir)", () => {
    expect(!existsSync(join(cpu, "build")), `${cpu}/build exists: the check would not prove the prebuild loads`);
    const code = `
      import { createRequire } from "node:module";
      import { loadNative, cpuBackendInfo } from "@qlora/cpu-kernels";
      loadNative();
      const info = cpuBackendInfo();
      if (!info?.native) throw new Error("cpu backend fell back to the reference: " + info?.reason);
      const req = createRequire(import.meta.resolve("@qlora/cpu-kernels"));
      console.log(req("node-gyp-build").resolve(${JSON.stringify(cpu)}));`;
    const r = runModule(app, code, env);
    expect(r.status === 0, r.stderr || r.stdout);
    const loaded = r.stdout.trim();
    expect(loaded.includes(`${join("prebuilds", `${process.platform}-${process.arch}`)}`), `loaded ${loaded}`);
    return loaded.slice(app.length + 1);
  });
  check(
    'import { quantize4bit } from "@qlora/nf4" round-trips in a project that installs only @qlora/nf4 (and @qlora/nf4/node workers agree, also under node --input-type=module -e)',
    () => {
      const nf4App = join(work, "nf4-app");
      mkdirSync(nf4App);
      const dependencies = { "@qlora/nf4": tarballs["@qlora/nf4"] };
      writeFileSync(
        join(nf4App, "package.json"),
        JSON.stringify({ name: "nf4-app", private: true, type: "module", dependencies }),
      );
      const install = run(join(bin, "npm"), ["install", "--no-audit", "--no-fund"], { cwd: nf4App, env });
      expect(install.status === 0, `npm install exited ${install.status}\n${install.stderr}`);
      // |x| <= 1, so every block's absmax is <= 1 and each value is off by at most half the widest gap of the
      // NF4 code (plus float32 slack); a zero error would mean nothing was quantized
      const code = `
      import { NF4_CODE, quantize4bit, dequantize4bit } from "@qlora/nf4";
      import { quantize4bitParallel } from "@qlora/nf4/node";
      const x = Float32Array.from({ length: 4096 }, (_, i) => Math.sin(i * 0.37));
      const y = dequantize4bit(quantize4bit(x));
      // the worker-thread quantizer (dist/node-worker.js) must give the same result
      const z = dequantize4bit(await quantize4bitParallel(x, { threads: 2, minParallelElements: 1 }));
      if (!y.every((v, i) => Object.is(v, z[i]))) throw new Error("quantize4bitParallel differs from quantize4bit");
      let err = 0;
      for (let i = 0; i < x.length; i++) err = Math.max(err, Math.abs(x[i] - y[i]));
      let gap = 0;
      for (let i = 1; i < NF4_CODE.length; i++) gap = Math.max(gap, NF4_CODE[i] - NF4_CODE[i - 1]);
      console.log(JSON.stringify({ err, bound: gap / 2 + 1e-6 }));`;
      const r = runModule(nf4App, code, env);
      expect(r.status === 0, r.stderr || r.stdout);
      // workers inherit the parent's Node flags, and Node refuses a worker file under --input-type
      const node = env.PATH ? join(env.PATH, "node") : process.execPath;
      const evaluated = run(node, ["--input-type=module", "-e", code], { cwd: nf4App, env });
      expect(evaluated.status === 0, `node --input-type=module -e: ${evaluated.stderr || evaluated.stdout}`);
      const { err, bound } = JSON.parse(r.stdout);
      expect(err > 0 && err <= bound, `max |x - dequant(quant(x))| = ${err}, bound ${bound}`);
      return `max abs error ${err.toFixed(4)} <= ${bound.toFixed(4)}`;
    },
  );
  check(
    "TypeScript: every package's types resolve from the installed tarballs (tsc --noEmit, strict, nodenext)",
    () => {
      const tsApp = join(work, "ts-app");
      mkdirSync(tsApp);
      const dependencies = { ...tarballs, typescript: TYPESCRIPT, "@types/node": TYPES_NODE };
      writeFileSync(
        join(tsApp, "package.json"),
        JSON.stringify({ name: "ts-app", private: true, type: "module", dependencies, overrides: tarballs }),
      );
      const install = run(join(bin, "npm"), ["install", "--no-audit", "--no-fund"], { cwd: tsApp, env });
      expect(install.status === 0, `npm install exited ${install.status}\n${install.stderr}`);
      const imports = Object.keys(tarballs).map((name, i) => `import * as m${i} from "${name}";`);
      const uses = `export const loaded = [${PACKAGES.map((_, i) => `m${i}`).join(", ")}].length;`;
      const typed =
        'import { quantize4bit } from "@qlora/nf4";\nexport const bytes: Uint8Array = quantize4bit(new Float32Array(64)).packed;';
      writeFileSync(join(tsApp, "index.ts"), `${imports.join("\n")}\n${uses}\n${typed}\n`);
      const tsc = join(tsApp, "node_modules", "typescript", "bin", "tsc");
      const flags = [
        "--noEmit",
        "--strict",
        "--module",
        "nodenext",
        "--moduleResolution",
        "nodenext",
        "--target",
        "es2022",
      ];
      const r = run(join(bin, "node"), [tsc, ...flags, "--types", "node", "index.ts"], { cwd: tsApp, env });
      expect(r.status === 0, `tsc exited ${r.status}\n${r.stdout}\n${r.stderr}`);
      return `${PACKAGES.length} packages`;
    },
  );
  let help = "";
  check("npx qlora --help", () => {
    const r = qlora("--help");
    help = r.stdout;
    expect(r.status === 0, `exit ${r.status}\n${r.stderr}`);
    for (const c of ["estimate", "inspect", "train"]) expect(help.includes(c), `help does not list ${c}:\n${help}`);
    return `${help.split("\n").length} lines`;
  });
  check("qlora estimate --model <tiny llama>", () => {
    const r = qlora("--json", "estimate", "--model", model);
    expect(r.status === 0, `exit ${r.status}\n${r.stderr}`);
    const estimate = JSON.parse(r.stdout);
    const { elements } = safetensorsCounts(join(model, "model.safetensors"));
    const counted = estimate.quantizedParams + estimate.otherParams;
    expect(counted === elements && estimate.totalBytes > 0, `counts ${counted} parameters, the file has ${elements}`);
    return `${elements} parameters, ${estimate.totalBytes} bytes estimated`;
  });
  check("qlora inspect <model.safetensors> and <checkpoint dir>", () => {
    const file = join(model, "model.safetensors");
    const r = qlora("--json", "inspect", file);
    expect(r.status === 0, `exit ${r.status}\n${r.stderr}`);
    const { tensors } = safetensorsCounts(file);
    const report = JSON.parse(r.stdout);
    expect(
      report.kind === "safetensors" && report.details?.tensors === tensors,
      `expected ${tensors} tensors:\n${r.stdout}`,
    );
    const dir = qlora("inspect", model);
    expect(
      dir.status === 0 && dir.stdout.includes("LlamaForCausalLM"),
      `exit ${dir.status}\n${dir.stdout}\n${dir.stderr}`,
    );
    return `${tensors} tensors, LlamaForCausalLM`;
  });
  check("qlora generate (NF4 load, cpu backend) prints what the workspace sources print", () => {
    const argv = ["generate", "--model", model, "--prompt", "colour 3:", "--max-new-tokens", "6"];
    const installed = qlora(...argv);
    expect(installed.status === 0, `exit ${installed.status}\n${installed.stderr}`);
    expect(
      !installed.stderr.includes("QLORA_CPU_KERNELS_FALLBACK"),
      `the CLI fell back to the reference backend:\n${installed.stderr}`,
    );
    const cli = join(root, "packages", "cli");
    const fromSources = run(
      process.execPath,
      ["--conditions=@qlora/source", "--import", "tsx", "src/bin.ts", ...argv],
      {
        cwd: cli,
      },
    );
    expect(fromSources.status === 0, `from sources: exit ${fromSources.status}\n${fromSources.stderr}`);
    expect(
      installed.stdout.length > 0 && installed.stdout === fromSources.stdout,
      `installed printed:\n${installed.stdout}\nsources printed:\n${fromSources.stdout}`,
    );
    return JSON.stringify(installed.stdout.trim().slice(0, 60));
  });
  check("qlora inspect <missing path> fails with a message", () => {
    const missing = join(work, "no-such-model");
    const r = qlora("inspect", missing);
    expect(r.status !== 0, "exit 0 for a missing path");
    expect(r.stderr.includes("no-such-model"), `stderr does not name the path:\n${r.stderr}`);
    return `exit ${r.status}`;
  });
  if (/^\s+demo\b/m.test(help)) {
    check("qlora demo", () => {
      const out = join(work, "demo-output");
      const r = inApp(join(bin, "npx"), ["--no-install", "qlora", "demo", "--out", out, "--steps", "2"], 600_000);
      expect(r.status === 0, `exit ${r.status}\n${r.stdout}\n${r.stderr}`);
      return r.stdout.trim().split("\n").at(-1);
    });
  } else {
    log("SKIP qlora demo: this CLI has no demo command (not in --help)");
  }
}

/**
 * Runs `code` as a module file in `dir`, the way a user's script runs (not `node --input-type=module -e`:
 * worker threads inherit that flag and refuse to start with it).
 */
function runModule(dir, code, env) {
  const file = join(dir, `check-${results.length}.mjs`);
  writeFileSync(file, code);
  return run(env.PATH ? join(env.PATH, "node") : process.execPath, [file], { cwd: dir, env });
}

/** Tensor and element counts of a safetensors file, read from its header (u64 LE length, then JSON). */
function safetensorsCounts(file) {
  const bytes = readFileSync(file);
  const length = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + length).toString("utf8"));
  const entries = Object.entries(header).filter(([k]) => k !== "__metadata__");
  const elements = entries.reduce((sum, [, t]) => sum + t.shape.reduce((a, b) => a * b, 1), 0);
  return { tensors: entries.length, elements };
}

let fatal;
try {
  main();
} catch (error) {
  fatal = error;
  log(`FAIL setup: ${error instanceof Error ? error.message : String(error)}`);
}
const failed = results.filter((r) => !r.ok).length + (fatal ? 1 : 0);
const seconds = ((Date.now() - started) / 1000).toFixed(0);
log(`${results.length - (failed - (fatal ? 1 : 0))} passed, ${failed} failed in ${seconds} s`);
if (failed === 0 && !args.has("--keep")) rmSync(work, { recursive: true, force: true });
else log(`kept ${work}`);
console.log(failed === 0 ? "pack-check: PASS" : "pack-check: FAIL");
process.exit(failed === 0 ? 0 : 1);
