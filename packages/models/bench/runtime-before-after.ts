/**
 * Runtime issue (10) before/after: one decoder layer with NF4+DQ frozen weights and r=16 LoRA on all 7 linears,
 * forward + backward (dX, dA, dB), repeated, in fresh child processes, against PyTorch's same layer (dense f32
 * frozen weights + LoRA, bench/layer_lora_torch.py) in the same run. Variants:
 *   before      the layer composed by hand from the public API of @qlora/tensor + @qlora/cpu-kernels, run from
 *               a checkout of the tree before the runtime issue (--before <root>, e.g. a worktree of 17d8d99);
 *   after       the same file's same hand-composed layer, run from this tree (--after <root>, default this repo);
 *   after-models  @qlora/models' DecoderLayer with LoraModel.inject (all-linear, r=16, α=32) from this tree;
 *   torch       the peer.
 * The tree is a path, not a package name: the child imports <root>/packages/<pkg>/src/index.ts directly, so one
 * file runs against either tree (the hand-composed layer only uses API both trees have). Rounds are interleaved
 * (before, after, after-models, torch, before, …); every row is a median over rounds of per-process medians.
 * Each child prints per step: time, minor page faults (process.resourceUsage), RSS after the step, the step's
 * RSS high-water mark above the RSS it started from (Linux: VmHWM reset through /proc/self/clear_refs), bytes of
 * tensor storage created (every Storage, counted as bytes released in the step + growth of live bytes: what
 * memoryStats tracks), and on the after tree the bytes the caching host allocator had to allocate afresh.
 *
 *   node --conditions=@qlora/source --import tsx packages/models/bench/runtime-before-after.ts --setup-before \
 *     [--before /tmp/qlora-before] [--rounds 3] [--steps 6] [--size issue|models] [--only before,after,...]
 * --setup-before makes the before tree when it is missing (kept out of the repo; pnpm and npm_config_nodedir as
 * for a normal build): git worktree add --detach <before> 17d8d99 (--before-commit), pnpm install --offline
 * --ignore-scripts there, and the cpu addon only (pnpm run build:native in packages/cpu-kernels). Remove it
 * afterwards with git worktree remove --force <before>.
 */
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const argv = process.argv.slice(2);
const opt = (name: string, def: string): string => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : def;
};

const SIZES = {
  /** The issue's own baseline layer. */
  issue: { hidden: 1024, heads: 16, kvHeads: 4, ffn: 2816 },
  /** The @qlora/models benchmark's layer (bench/layer-ours.ts). */
  models: { hidden: 2048, heads: 16, kvHeads: 4, ffn: 5632 },
} as const;
type SizeName = keyof typeof SIZES;
const BATCH = 2;
const RANK = 16;
const SCALING = 2; // lora_alpha 32 / r 16
const VARIANTS = ["before", "after", "after-models", "torch"] as const;
type Variant = (typeof VARIANTS)[number];

interface StepReport {
  variant: string;
  threads?: number;
  step_ms: number[];
  faults: number[];
  rss_bytes: number[];
  /** Per step: peak RSS during the step minus RSS at its start (null where VmHWM cannot be reset). */
  step_rss_peak_growth_bytes: (number | null)[];
  rss_start_bytes: number;
  peak_rss_growth_bytes: number;
  steps_peak_rss_growth_bytes: number;
  /** Tensor storage bytes created per step (ours only). */
  alloc_bytes?: number[];
  /** Bytes the caching host allocator allocated afresh per step (after tree only; before: no cache). */
  fresh_bytes?: number[] | null;
  runtime_peak_bytes?: number;
  runtime_start_bytes?: number;
}

// ---------------------------------------------------------------- child: one variant, one process

/**
 * The process's RSS high-water mark (VmHWM), which `reset` lowers to the current RSS (clear_refs 5), so each
 * step's own peak is seen. ru_maxrss follows the same counter, so the whole run's peak is kept here.
 */
function rssHighWater() {
  const hwm = () => {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
    return m ? Number(m[1]) * 1024 : Number.NaN;
  };
  let runPeak = hwm();
  return {
    /** Lower the mark to the current RSS; false where the kernel does not allow it. */
    reset(): boolean {
      runPeak = Math.max(runPeak, hwm());
      try {
        writeFileSync("/proc/self/clear_refs", "5");
        return true;
      } catch {
        return false;
      }
    },
    current: hwm,
    runPeak: () => Math.max(runPeak, hwm()),
  };
}

type AnyTensor = {
  shape: number[];
  grad: AnyTensor | null;
  requiresGrad: boolean;
  T: AnyTensor;
  dispose(): void;
  add(o: AnyTensor): AnyTensor;
  mul(s: number): AnyTensor;
  reshape(s: number[]): AnyTensor;
  transpose(a: number, b: number): AnyTensor;
  backward(g: AnyTensor): void;
  sum(): AnyTensor;
  item(): number;
};

async function child(variant: Exclude<Variant, "torch">, root: string): Promise<void> {
  const src = (pkg: string, file = "index.ts") => pathToFileURL(join(root, "packages", pkg, "src", file)).href;
  // biome-ignore lint/suspicious/noExplicitAny: the two trees' APIs differ in types; only common calls are used
  const t: any = await import(src("tensor"));
  const mem = await import(src("tensor", "memory.ts"));
  const cpu = await import(src("cpu-kernels"));
  if (!cpu.registerCpuBackend()) throw new Error(`the native cpu backend of ${root} did not load`);
  const highWater = rssHighWater();
  const rss0 = highWater.current();
  const size = SIZES[opt("size", "issue") as SizeName];
  const [B, S, HID] = [BATCH, Number(opt("seq", "512")), size.hidden];

  // Bytes of tensor storage created: every Storage release adds its bytes once (the step's live bytes are
  // flat in steady state, and the growth of live bytes is added for the rest).
  let releasedBytes = 0;
  const release = mem.Storage.prototype.release;
  mem.Storage.prototype.release = function (this: { freed: boolean; bytes: number }) {
    const was = this.freed;
    release.call(this);
    if (!was && this.freed) releasedBytes += this.bytes;
  };
  // After the runtime issue: buffers the caching allocator could not serve from its free lists.
  let freshBytes = 0;
  const pool = t.sharedHostAllocator;
  if (pool) {
    const take = pool.take.bind(pool);
    pool.take = (bytes: number) => {
      const r = take(bytes);
      if (!r.recycled) freshBytes += r.buffer.byteLength;
      return r;
    };
  }

  const positions = t.tensor(
    Int32Array.from({ length: B * S }, (_, i) => i % S),
    { shape: [B, S], dtype: "i32" },
  );
  const forward = variant === "after-models" ? await modelsLayer(root, size, positions) : handLayer(t, size, positions);

  t.manualSeed(2);
  const x: AnyTensor = t.randn([B, S, HID]);
  x.requiresGrad = true;
  const gradOut: AnyTensor = t.ones([B, S, HID]);
  const rep: StepReport = {
    variant,
    threads: cpu.getThreads(),
    step_ms: [],
    faults: [],
    rss_bytes: [],
    step_rss_peak_growth_bytes: [],
    rss_start_bytes: process.memoryUsage().rss,
    peak_rss_growth_bytes: 0,
    steps_peak_rss_growth_bytes: 0,
    alloc_bytes: [],
    fresh_bytes: pool ? [] : null,
    runtime_start_bytes: t.memoryStats("cpu").currentBytes,
  };
  t.resetPeakMemory("cpu");
  const steps = Number(opt("steps", "6"));
  let stepsPeak = 0; // highest VmHWM seen at the end of a step (the build's own peak excluded)
  for (let i = 0; i < steps; i++) {
    const live0 = t.memoryStats("cpu").currentBytes;
    const [rel0, fresh0] = [releasedBytes, freshBytes];
    const canReset = highWater.reset();
    const r0 = process.memoryUsage().rss;
    const f0 = process.resourceUsage().minorPageFault;
    const t0 = performance.now();
    const { out, trainable } = forward(x);
    out.backward(gradOut);
    out.dispose();
    const ms = performance.now() - t0;
    const dx = x.grad;
    if (!dx || !Number.isFinite(dx.sum().item())) throw new Error("no finite dX");
    for (const p of [x, ...trainable]) {
      if (!p.grad) throw new Error("a LoRA factor got no gradient");
      p.grad.dispose();
      p.grad = null;
    }
    rep.step_ms.push(ms);
    rep.faults.push(process.resourceUsage().minorPageFault - f0);
    rep.rss_bytes.push(process.memoryUsage().rss);
    rep.step_rss_peak_growth_bytes.push(canReset ? highWater.current() - r0 : null);
    stepsPeak = Math.max(stepsPeak, canReset ? highWater.current() : highWater.runPeak());
    rep.alloc_bytes?.push(releasedBytes - rel0 + t.memoryStats("cpu").currentBytes - live0);
    rep.fresh_bytes?.push(freshBytes - fresh0);
  }
  const maxRss = highWater.runPeak();
  rep.peak_rss_growth_bytes = maxRss - rss0;
  rep.steps_peak_rss_growth_bytes = stepsPeak - rep.rss_start_bytes;
  rep.runtime_peak_bytes = t.memoryStats("cpu").peakBytes;
  console.log(JSON.stringify(rep));
}

type Forward = (x: AnyTensor) => { out: AnyTensor; trainable: AnyTensor[] };

/** The layer composed by hand from the public API both trees have (as the issue's baseline was). */
// biome-ignore lint/suspicious/noExplicitAny: see child()
function handLayer(t: any, size: (typeof SIZES)[SizeName], positions: AnyTensor): Forward {
  const [B, HID, H, KVH, FFN] = [BATCH, size.hidden, size.heads, size.kvHeads, size.ffn];
  const D = HID / H;
  t.manualSeed(1);
  const nf4 = (o: number, i: number) => {
    const w = t.randn([o, i]);
    const values = (w.toTypedArray() as Float32Array).map((v) => v * 0.02);
    w.dispose();
    return t.Linear4bit.fromWeight({ values, shape: [o, i] }, { doubleQuant: true }).quantizedWeight;
  };
  const factor = (shape: number[]) => {
    const z = t.randn(shape);
    const p: AnyTensor = z.mul(0.01);
    z.dispose();
    p.requiresGrad = true;
    return p;
  };
  const shapes: Record<string, [number, number]> = {
    q: [H * D, HID],
    k: [KVH * D, HID],
    v: [KVH * D, HID],
    o: [HID, H * D],
    g: [FFN, HID],
    u: [FFN, HID],
    d: [HID, FFN],
  };
  const W = Object.fromEntries(Object.entries(shapes).map(([k, [o, i]]) => [k, nf4(o, i)]));
  const A = Object.fromEntries(Object.entries(shapes).map(([k, [, i]]) => [k, factor([RANK, i])]));
  const Bf = Object.fromEntries(Object.entries(shapes).map(([k, [o]]) => [k, factor([o, RANK])]));
  const n1 = t.ones([HID]);
  const n2 = t.ones([HID]);
  const lin = (x: AnyTensor, k: string): AnyTensor =>
    t.matmul4bit(x, W[k]).add(t.matmul(t.matmul(x, A[k].T), Bf[k].T).mul(SCALING));
  const trainable = [...Object.values(A), ...Object.values(Bf)];
  return (x) => {
    const S = x.shape[1];
    const out = t.tidy(() => {
      const hn = t.rmsNorm(x, n1, 1e-5);
      const q = t.rope(lin(hn, "q").reshape([B, S, H, D]), positions).transpose(1, 2);
      const k = t.rope(lin(hn, "k").reshape([B, S, KVH, D]), positions).transpose(1, 2);
      const v = lin(hn, "v").reshape([B, S, KVH, D]).transpose(1, 2);
      const a = t.attention(q, k, v).transpose(1, 2).reshape([B, S, HID]);
      const h = x.add(lin(a, "o"));
      const hn2 = t.rmsNorm(h, n2, 1e-5);
      return h.add(lin(t.swiglu(lin(hn2, "g"), lin(hn2, "u")), "d"));
    });
    return { out, trainable };
  };
}

/** @qlora/models' DecoderLayer (NF4+DQ frozen) with @qlora/lora injected on all 7 linears. */
async function modelsLayer(root: string, size: (typeof SIZES)[SizeName], positions: AnyTensor): Promise<Forward> {
  const src = (pkg: string) => pathToFileURL(join(root, "packages", pkg, "src", "index.ts")).href;
  const m = await import(src("models"));
  const lora = await import(src("lora"));
  const config = m.parseConfig({
    architectures: ["LlamaForCausalLM"],
    hidden_size: size.hidden,
    num_attention_heads: size.heads,
    num_key_value_heads: size.kvHeads,
    intermediate_size: size.ffn,
    num_hidden_layers: 1,
    vocab_size: 32000,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
  });
  const layer = new m.DecoderLayer(
    config,
    new m.RotaryEmbedding(config),
    "model.layers.0",
    m.randomLayers({ seed: 1, quantize: { doubleQuant: true } }),
  );
  const lm = lora.LoraModel.inject(layer, { r: RANK, lora_alpha: RANK * SCALING, target_modules: "all-linear" });
  const trainable = (lm.trainableParameters() as [string, AnyTensor][]).map(([, p]) => p);
  if (trainable.length !== 14) throw new Error(`expected 14 LoRA factors, got ${trainable.length}`);
  return (x) => ({ out: layer.forward(x, { positions }), trainable });
}

// ---------------------------------------------------------------- parent: interleaved rounds, table

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const MiB = (b: number) => b / 2 ** 20;

function runChild(variant: Variant, roots: Record<string, string>, addons: Record<string, string>): StepReport {
  const size = SIZES[opt("size", "issue") as SizeName];
  const steps = opt("steps", "6");
  const env = { ...process.env, OMP_NUM_THREADS: "2", OPENBLAS_NUM_THREADS: "2" };
  const res =
    variant === "torch"
      ? spawnSync(
          "/usr/bin/python3",
          [
            join(here, "layer_lora_torch.py"),
            ...["--hidden", `${size.hidden}`, "--heads", `${size.heads}`, "--kv-heads", `${size.kvHeads}`],
            ...["--ffn", `${size.ffn}`, "--seq", opt("seq", "512"), "--rank", `${RANK}`, "--steps", steps],
          ],
          { env, encoding: "utf8", maxBuffer: 1 << 24 },
        )
      : spawnSync(
          process.execPath,
          [
            "--conditions=@qlora/source",
            "--import",
            "tsx",
            fileURLToPath(import.meta.url),
            ...argv,
            "--child",
            variant,
            "--root",
            variant === "before" ? roots.before : roots.after,
          ],
          {
            env: { ...env, QLORA_CPU_KERNELS_PATH: variant === "before" ? addons.before : addons.after },
            encoding: "utf8",
            maxBuffer: 1 << 24,
            cwd: variant === "before" ? roots.before : roots.after,
          },
        );
  if (res.status !== 0) throw new Error(`bench child ${variant} failed:\n${res.stderr}`);
  return JSON.parse(res.stdout.trim().split("\n").pop()!);
}

interface Summary {
  tokensPerS: number;
  step1: number;
  stepMs: number;
  faults1: number;
  faults: number;
  rssGrowth: number;
  stepRssPeak: number | null;
  peakRss: number;
  stepsPeakRss: number;
  runtimePeak?: number;
  alloc?: number;
  fresh?: number | null;
}

function summarise(r: StepReport, tokens: number): Summary {
  const later = <T>(xs: T[]) => xs.slice(1);
  const stepMs = median(later(r.step_ms));
  const growth = r.rss_bytes.slice(1).map((v, i) => v - r.rss_bytes[i]);
  return {
    tokensPerS: tokens / (stepMs / 1000),
    step1: r.step_ms[0],
    stepMs,
    faults1: r.faults[0],
    faults: median(later(r.faults)),
    rssGrowth: median(growth),
    stepRssPeak: r.step_rss_peak_growth_bytes.some((x) => x === null)
      ? null
      : median(later(r.step_rss_peak_growth_bytes as number[])),
    peakRss: r.peak_rss_growth_bytes,
    stepsPeakRss: r.steps_peak_rss_growth_bytes,
    runtimePeak: r.runtime_peak_bytes === undefined ? undefined : r.runtime_peak_bytes - (r.runtime_start_bytes ?? 0),
    alloc: r.alloc_bytes ? median(later(r.alloc_bytes)) : undefined,
    fresh: r.fresh_bytes === undefined ? undefined : r.fresh_bytes === null ? null : median(later(r.fresh_bytes)),
  };
}

/** A checkout of `commit` at `root` with its cpu addon built (the tree before the runtime issue). */
function setupBefore(root: string, commit: string): void {
  const run = (cmd: string, args: string[], cwd: string) => {
    const r = spawnSync(cmd, args, { cwd, stdio: "inherit" });
    if (r.status !== 0) throw new Error(`setup of ${root}: ${cmd} ${args.join(" ")} failed in ${cwd}`);
  };
  run("git", ["worktree", "add", "--detach", root, commit], here);
  run("pnpm", ["install", "--offline", "--ignore-scripts"], root);
  run("pnpm", ["run", "build:native"], join(root, "packages/cpu-kernels"));
}

function parent(): void {
  const roots = {
    before: resolve(opt("before", "/tmp/qlora-before")),
    after: resolve(opt("after", join(here, "../../.."))),
  };
  const only = opt("only", VARIANTS.join(",")).split(",") as Variant[];
  if (argv.includes("--setup-before") && only.includes("before") && !existsSync(roots.before))
    setupBefore(roots.before, opt("before-commit", "17d8d99"));
  // The addons are copied aside: other work may rebuild build/Release in the middle of a run.
  const scratch = mkdtempSync(join(tmpdir(), "qlora-rtbench-"));
  const addons: Record<string, string> = {};
  for (const [name, root] of Object.entries(roots)) {
    const built = join(root, "packages/cpu-kernels/build/Release/qlora_cpu.node");
    if (!existsSync(built)) {
      if (only.some((v) => v.startsWith(name))) throw new Error(`${built} is missing: build the cpu addon there`);
      continue;
    }
    addons[name] = join(scratch, `${name}.node`);
    copyFileSync(built, addons[name]);
  }
  const sizeName = opt("size", "issue") as SizeName;
  const size = SIZES[sizeName];
  const rounds = Number(opt("rounds", "3"));
  const tokens = BATCH * Number(opt("seq", "512"));
  const runs: Record<string, StepReport[]> = {};
  for (let r = 0; r < rounds; r++)
    for (const v of only) {
      const rep = runChild(v, roots, addons);
      runs[v] = [...(runs[v] ?? []), rep];
      const s = summarise(rep, tokens);
      console.error(
        `round ${r + 1} ${v}: ${s.tokensPerS.toFixed(1)} tok/s, step1 ${s.step1.toFixed(0)} ms, later ${s.stepMs.toFixed(0)} ms, faults ${s.faults1}/${s.faults}`,
      );
    }
  const sums = Object.fromEntries(
    Object.entries(runs).map(([v, reps]) => [v, reps.map((rep) => summarise(rep, tokens))]),
  );
  const med = (v: string, f: (s: Summary) => number | null | undefined) => {
    const xs = (sums[v] ?? []).map(f).filter((x): x is number => typeof x === "number");
    return xs.length ? median(xs) : Number.NaN;
  };
  console.log(
    `\n## decoder layer fwd+bwd, NF4+DQ frozen + r=${RANK} LoRA on all 7 linears (torch: dense f32 + LoRA): hidden ${size.hidden}, ${size.heads}/${size.kvHeads} heads, ffn ${size.ffn}, ${BATCH}×${tokens / BATCH} tokens; ${rounds} rounds × ${opt("steps", "6")} steps, interleaved; medians of per-process medians (steps 2..N)`,
  );
  console.log(
    "| variant | tokens/s | × torch (same rounds) | step 1 ms | steps 2..N ms | minor faults step 1 / later | RSS peak growth within a step MiB | RSS after step − after previous MiB | peak RSS growth MiB (from before build / during steps) | runtime peak above resident tensors MiB | tensor bytes created/step MiB | fresh host bytes/step MiB |",
  );
  console.log("|---|---:|---:|---:|---:|---|---:|---:|---|---:|---:|---:|");
  const torchRatios = (v: string) =>
    (sums[v] ?? []).map((s, i) => (sums.torch?.[i] ? s.tokensPerS / sums.torch[i].tokensPerS : Number.NaN));
  for (const v of only) {
    const ratio = v === "torch" || !sums.torch ? "" : `${median(torchRatios(v)).toFixed(2)}×`;
    const fresh = v === "torch" ? "" : v === "before" ? "= created (no cache)" : MiB(med(v, (s) => s.fresh)).toFixed(1);
    console.log(
      `| ${v} | ${med(v, (s) => s.tokensPerS).toFixed(1)} | ${ratio} | ${med(v, (s) => s.step1).toFixed(0)} | ${med(v, (s) => s.stepMs).toFixed(0)} | ${med(v, (s) => s.faults1)} / ${med(v, (s) => s.faults)} | ${MiB(med(v, (s) => s.stepRssPeak)).toFixed(0)} | ${MiB(med(v, (s) => s.rssGrowth)).toFixed(1)} | ${MiB(med(v, (s) => s.peakRss)).toFixed(0)} / ${MiB(med(v, (s) => s.stepsPeakRss)).toFixed(0)} | ${v === "torch" ? "" : MiB(med(v, (s) => s.runtimePeak)).toFixed(0)} | ${v === "torch" ? "" : MiB(med(v, (s) => s.alloc)).toFixed(0)} | ${fresh} |`,
    );
  }
  if (sums.before && sums.after) {
    const ratio = (f: (s: Summary) => number | undefined) => (med("after", f) / med("before", f)).toFixed(2);
    console.log(
      `after / before: tokens/s ${ratio((s) => s.tokensPerS)}, step time ${ratio((s) => s.stepMs)}, minor faults/step ${ratio((s) => s.faults)}, tensor bytes created/step ${ratio((s) => s.alloc)} (${MiB(med("before", (s) => s.alloc)).toFixed(0)} → ${MiB(med("after", (s) => s.alloc)).toFixed(0)} MiB), RSS peak growth within a step ${ratio((s) => s.stepRssPeak ?? Number.NaN)}, peak RSS growth ${ratio((s) => s.peakRss)}`,
    );
  }
  console.log(`raw: ${JSON.stringify(runs)}`);
}

if (argv.includes("--child"))
  await child(opt("child", "after") as Exclude<Variant, "torch">, resolve(opt("root", ".")));
else parent();
