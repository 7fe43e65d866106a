/**
 * The caching host allocator on a decoder layer's forward+backward (QLoRA-like: frozen f32 base weights,
 * r=16 LoRA on all 7 linears), repeated. Runs the same steps in child processes with the cache on and off
 * (QLORA_HOST_CACHE_BYTES=0: every freed buffer is left to the garbage collector, as before the allocator),
 * interleaved A B A B, and prints per-step time and process RSS growth per step next to the runtime's own
 * peak (memoryStats). Uses the native cpu backend when @qlora/cpu-kernels is built next door, else reference.
 *
 *   pnpm --filter @qlora/tensor exec tsx bench/allocator.ts [--tokens 512] [--steps 8] [--rounds 2]
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const arg = (name: string, def: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
};

interface StepReport {
  backend: string;
  stepMs: number[];
  rssMB: number[];
  /** Minor page faults of the process during each step (first touches of fresh memory). */
  faults: number[];
  peakMB: number;
  freshAfterStep1: number;
  freshAtEnd: number;
}

async function child(): Promise<void> {
  const t = await import("../src/index");
  const cpuEntry = join(here, "../../cpu-kernels/src/index.ts");
  if (existsSync(join(here, "../../cpu-kernels/build/Release/qlora_cpu.node"))) {
    const cpu = await import(pathToFileURL(cpuEntry).href);
    cpu.registerCpuBackend();
  }
  const be = t.getBackend();
  const tokens = arg("tokens", 512);
  const steps = arg("steps", 8);
  const [B, S, HID, H, KVH, FFN, R] = [2, tokens, 1024, 16, 4, 2816, 16];
  const D = HID / H;
  t.manualSeed(0);
  const frozen = (o: number, i: number) => t.tidy(() => t.randn([o, i], { backend: be }).mul(1 / Math.sqrt(i)));
  const lora = (o: number, i: number) => {
    const a = t.tidy(() => t.randn([R, i], { backend: be }).mul(0.01));
    const b = t.tidy(() => t.randn([o, R], { backend: be }).mul(0.01));
    a.requiresGrad = true;
    b.requiresGrad = true;
    return { a, b };
  };
  const shapes: Record<string, [number, number]> = {
    q: [HID, HID],
    k: [KVH * D, HID],
    v: [KVH * D, HID],
    o: [HID, HID],
    g: [FFN, HID],
    u: [FFN, HID],
    d: [HID, FFN],
  };
  const W = Object.fromEntries(Object.entries(shapes).map(([k, [o, i]]) => [k, frozen(o, i)]));
  const L = Object.fromEntries(Object.entries(shapes).map(([k, [o, i]]) => [k, lora(o, i)]));
  const n1 = t.ones([HID], { backend: be });
  const n2 = t.ones([HID], { backend: be });
  const pos = t.tensor(
    Int32Array.from({ length: B * S }, (_, i) => i % S),
    { shape: [B, S], backend: be },
  );
  const lin = (x: InstanceType<typeof t.Tensor>, k: string) =>
    t.matmul(x, W[k].T).add(t.matmul(t.matmul(x, L[k].a.T), L[k].b.T).mul(2));
  const step = () => {
    const loss = t.tidy(() => {
      const x = t.randn([B, S, HID], { backend: be });
      const hn = t.rmsNorm(x, n1);
      const q = t.rope(lin(hn, "q").reshape([B, S, H, D]), pos).transpose(1, 2);
      const k = t.rope(lin(hn, "k").reshape([B, S, KVH, D]), pos).transpose(1, 2);
      const v = lin(hn, "v").reshape([B, S, KVH, D]).transpose(1, 2);
      const a = t.attention(q, k, v).transpose(1, 2).reshape([B, S, HID]);
      const h = x.add(lin(a, "o"));
      const hn2 = t.rmsNorm(h, n2);
      const out = h.add(lin(t.swiglu(lin(hn2, "g"), lin(hn2, "u")), "d"));
      return out.square().mean();
    });
    loss.backward();
    loss.dispose();
    for (const { a, b } of Object.values(L))
      for (const p of [a, b]) {
        p.grad?.dispose();
        p.grad = null;
      }
  };
  const rep: StepReport = {
    backend: be.name,
    stepMs: [],
    rssMB: [],
    faults: [],
    peakMB: 0,
    freshAfterStep1: 0,
    freshAtEnd: 0,
  };
  t.resetPeakMemory("cpu");
  for (let i = 0; i < steps; i++) {
    const f0 = process.resourceUsage().minorPageFault;
    const t0 = performance.now();
    step();
    rep.stepMs.push(performance.now() - t0);
    rep.faults.push(process.resourceUsage().minorPageFault - f0);
    rep.rssMB.push(process.memoryUsage().rss / 2 ** 20);
    if (i === 0) rep.freshAfterStep1 = t.sharedHostAllocator.stats().fresh;
  }
  rep.freshAtEnd = t.sharedHostAllocator.stats().fresh;
  rep.peakMB = t.memoryStats("cpu").peakBytes / 2 ** 20;
  console.log(JSON.stringify(rep));
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function parent(): void {
  const rounds = arg("rounds", 2);
  const runs: Record<string, StepReport[]> = { on: [], off: [] };
  for (let r = 0; r < rounds; r++)
    for (const mode of ["on", "off"] as const) {
      const env = {
        ...process.env,
        ALLOC_BENCH_CHILD: "1",
        ...(mode === "off" ? { QLORA_HOST_CACHE_BYTES: "0" } : {}),
      };
      const res = spawnSync(
        process.execPath,
        ["--conditions=@qlora/source", "--import", "tsx", fileURLToPath(import.meta.url), ...process.argv.slice(2)],
        {
          env,
          encoding: "utf8",
          maxBuffer: 1 << 24,
        },
      );
      if (res.status !== 0) throw new Error(`bench child (${mode}) failed: ${res.stderr}`);
      runs[mode].push(JSON.parse(res.stdout.trim().split("\n").pop()!));
    }
  const tokens = arg("tokens", 512);
  console.log(
    `decoder layer fwd+bwd, hidden 1024, 16/4 heads, ffn 2816, 2x${tokens} tokens, r=16 LoRA on 7 frozen f32 linears; backend ${runs.on[0].backend}; ${rounds} rounds A B interleaved`,
  );
  console.log(
    "| cache | step 1 (ms) | steps 2..N median (ms) | minor page faults step 1 / steps 2..N median | RSS growth / step after step 2 (MB) | final RSS (MB) | runtime peak (MB) | fresh host buffers after step 1 → end |",
  );
  console.log("|---|---:|---:|---:|---:|---:|---:|---|");
  for (const mode of ["on", "off"] as const)
    for (const r of runs[mode]) {
      const growth = r.rssMB.slice(2).map((v, i) => v - r.rssMB[i + 1]);
      console.log(
        `| ${mode} | ${r.stepMs[0].toFixed(0)} | ${median(r.stepMs.slice(1)).toFixed(0)} | ${r.faults[0]} / ${median(r.faults.slice(1))} | ${median(growth).toFixed(1)} (max ${Math.max(...growth).toFixed(0)}) | ${r.rssMB[r.rssMB.length - 1].toFixed(0)} | ${r.peakMB.toFixed(0)} | ${r.freshAfterStep1} → ${r.freshAtEnd} |`,
      );
    }
  const on = median(runs.on.map((r) => median(r.stepMs.slice(1))));
  const off = median(runs.off.map((r) => median(r.stepMs.slice(1))));
  console.log(`step time (steps 2..N) cache on / cache off: ${(on / off).toFixed(2)}`);
}

if (process.env.ALLOC_BENCH_CHILD) await child();
else parent();
