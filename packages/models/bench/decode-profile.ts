/**
 * Where the time of one greedy decode step goes (batch 1, the ~290M model of bench/decode.ts): every op of the
 * cpu backend is wrapped with a timer (a backend registered above the plain one, so the loaded model's tensors
 * live on it), decode steps after the first are summed per op, and what no backend op accounts for is JS:
 * op dispatch, tensor objects, tidy/dispose, sampling. GEMM-family calls are split by shape
 * (e.g. matmul4bit 1×1024→2816 = gate/up, matmul 1×1024→32000 = lm_head).
 *   node --import tsx --conditions=@qlora/source bench/decode-profile.ts [--threads 2] [--tokens 32] [--lm-head-nf4]
 */
import { cpuBackend, registerCpuBackend, setThreads } from "@qlora/cpu-kernels";
import { type Backend, type MatmulOptions, type QuantizedWeightBuffers, registerBackend } from "@qlora/tensor";
import { generate } from "../src/generate";
import { loadModel } from "../src/load";
import { ensureDecodeModel, PROMPT } from "./decode-common";

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
};
const threads = arg("--threads", 2);
const tokens = arg("--tokens", 32);
const headNf4 = process.argv.includes("--lm-head-nf4");

if (!registerCpuBackend()) throw new Error("the cpu backend did not load");
setThreads(threads);

const totals = new Map<string, { ms: number; calls: number }>();
let recording = false;
const add = (key: string, ms: number) => {
  if (!recording) return;
  const t = totals.get(key) ?? { ms: 0, calls: 0 };
  t.ms += ms;
  t.calls++;
  totals.set(key, t);
};
const label = (op: string, args: unknown[]): string => {
  if (op === "matmul") {
    const o = args[2] as MatmulOptions;
    return `matmul ${o.m}x${o.k}->${o.n} ${(args[1] as { dtype: string }).dtype}${o.batch > 1 ? ` batch ${o.batch}` : ""}`;
  }
  if (op === "matmul4bit") {
    const w = args[1] as QuantizedWeightBuffers;
    return `matmul4bit ${args[2]}x${w.shape[1]}->${w.shape[0]}`;
  }
  return op;
};
const timed = {} as Record<string, unknown>;
for (const [name, value] of Object.entries(cpuBackend))
  timed[name] =
    typeof value === "function"
      ? (...args: unknown[]) => {
          const t0 = performance.now();
          try {
            return (value as (...a: unknown[]) => unknown).apply(cpuBackend, args);
          } finally {
            add(label(name, args), performance.now() - t0);
          }
        }
      : value;
registerBackend(timed as unknown as Backend, 15);

const { dir } = await ensureDecodeModel();
const { model } = await loadModel(dir, headNf4 ? { quantize: { skipModules: [] } } : {});
const stamps: number[] = [];
await generate(model, [PROMPT], {
  maxNewTokens: tokens + 1,
  onToken: () => {
    stamps.push(performance.now());
    recording = stamps.length <= tokens; // record steps 2 … tokens+1 (the first token is the prefill's)
  },
});
const steps = tokens;
const stepMs = (stamps.at(-1)! - stamps[0]) / steps;
let opMs = 0;
for (const t of totals.values()) opMs += t.ms;
const rows = [...totals.entries()].sort((a, b) => b[1].ms - a[1].ms);
console.log(
  `decode step, batch 1, ${threads} threads, lm_head ${headNf4 ? "NF4" : "bf16"}: ${stepMs.toFixed(2)} ms/token (${(1000 / stepMs).toFixed(2)} tokens/s), ${steps} steps`,
);
console.log("| op (shape) | ms/token | calls/token | share |");
console.log("|---|---:|---:|---:|");
for (const [key, t] of rows)
  if (t.ms / steps >= 0.005)
    console.log(
      `| ${key} | ${(t.ms / steps).toFixed(3)} | ${(t.calls / steps).toFixed(0)} | ${((100 * t.ms) / steps / stepMs).toFixed(1)}% |`,
    );
const js = stepMs - opMs / steps;
console.log(
  `| (outside backend ops: JS dispatch, tensors, sampling) | ${js.toFixed(3)} | | ${((100 * js) / stepMs).toFixed(1)}% |`,
);
