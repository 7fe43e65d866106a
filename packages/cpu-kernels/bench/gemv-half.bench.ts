// The skinny half-weight matmul (csrc/gemv_bf16.cc) against what the same product cost before it (the packed
// GEMM, which widens every bf16 weight panel into an f32 buffer) and against memcpy of the weight's bytes (the
// memory floor: a copy reads and writes them, the GEMV only reads). Samples alternate kernel by kernel, so all
// three see the same machine load; medians. Shapes: the lm_head of the decode benchmark's 290M model (vocab
// 32000 x 1024) and of a Llama-3.2-1B-sized model (128256 x 2048), m = 1 and 4.
//   node --import tsx --conditions=@qlora/source bench/gemv-half.bench.ts [--threads 2,1] [--reps 9]
import type { GemmNative } from "../src/gemm";
import type { GemvHalfNative } from "../src/gemv-half";
import { loadNative } from "../src/load";
import { getThreads, setThreads } from "../src/threads";

const arg = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : fallback;
};
const threadCounts = arg("threads", String(getThreads())).split(",").map(Number);
const reps = Number(arg("reps", "9"));
const native = loadNative() as unknown as GemmNative & { gemvHalf: GemvHalfNative };

const SHAPES = [
  { m: 1, k: 1024, n: 32000 },
  { m: 4, k: 1024, n: 32000 },
  { m: 1, k: 2048, n: 128256 },
];

function randomBf16(length: number): Uint16Array {
  const w = new Uint16Array(length);
  for (let i = 0; i < length; i++) w[i] = 0x3c00 + ((i * 2654435761) >>> 20); // ~|w| < 0.03, varied mantissas
  return w;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const time = (fn: () => void) => {
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
};

console.log(
  "| threads | m×k→n | skinny ms | GEMM path ms | memcpy of W ms | GEMM/skinny | skinny GB/s of W | memcpy GB/s |",
);
console.log("|---:|---|---:|---:|---:|---:|---:|---:|");
for (const threads of threadCounts) {
  setThreads(threads);
  for (const { m, k, n } of SHAPES) {
    const x = new Float32Array(m * k).map(() => Math.random() * 2 - 1);
    const w = randomBf16(n * k);
    const copy = new Uint16Array(n * k);
    const y = new Float32Array(m * n);
    const skinny = () => void native.gemvHalf(x, w, y, m, k, n, true, false, false);
    const gemm = () => native.matmul(x, w, y, 1, m, k, n, false, true, m * k, n * k);
    const memcpy = () => copy.set(w);
    const kernels = [skinny, gemm, memcpy];
    for (let i = 0; i < 3; i++) for (const f of kernels) f(); // warm-up, pages touched
    const t: number[][] = [[], [], []];
    for (let r = 0; r < reps; r++) for (const [i, f] of kernels.entries()) t[i]!.push(time(f));
    const [s, g, c] = t.map(median) as [number, number, number];
    const gb = (2 * n * k) / 1e9;
    console.log(
      `| ${threads} | ${m}×${k}→${n} | ${s.toFixed(2)} | ${g.toFixed(2)} | ${c.toFixed(2)} | ${(g / s).toFixed(1)}× | ${(gb / (s / 1e3)).toFixed(1)} | ${(gb / (c / 1e3)).toFixed(1)} |`,
    );
  }
}
