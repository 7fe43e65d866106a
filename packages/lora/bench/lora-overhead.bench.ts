/**
 * LoRA overhead (issue 13): a frozen NF4 linear 4096→4096 (blocksize 64, double quant) with an r = 16 LoRA
 * adapter, batch 2 × 512 tokens, forward + backward (dX, dA, dB) through the fused lora.linear op, against
 * the same frozen NF4 linear's forward + input gradient alone (matmul4bit through autograd). Target ≤ 1.15×.
 * Runs A and B interleaved (A B A B …) on the native cpu backend and prints medians and their ratio; the
 * PyTorch peer (bench/lora_peer.py, dense f32 nn.Linear + LoRA, same threads) gives the same ratio for
 * context: PyTorch has no CPU NF4.
 *   pnpm --filter @qlora/lora bench [-- --reps 7 --threads 2 --no-peer]
 */
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { cpuBackend, cpuBackendInfo, setThreads } from "@qlora/cpu-kernels";
import { Generator, Linear4bit, type Tensor, matmul4bit, randn, tidy } from "@qlora/tensor";
import { loraLinearOp } from "../src";

const arg = (name: string, def: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
};
const REPS = Number(arg("reps", "7"));
const THREADS = Number(arg("threads", "2"));
const IN = 4096;
const OUT = 4096;
const R = 16;
const ROWS = 2 * 512;

const info = cpuBackendInfo(cpuBackend);
if (!info?.native) {
  console.error(
    `native cpu backend unavailable (${info?.reason ?? "?"}): build it with pnpm --filter @qlora/cpu-kernels build:native`,
  );
  process.exit(1);
}
setThreads(THREADS);
const be = cpuBackend;
const gen = new Generator(1);
const W = randn([OUT, IN], { generator: gen, backend: be }).mul(1 / Math.sqrt(IN));
const lin = Linear4bit.fromWeight(W, { backend: be, doubleQuant: true });
W.dispose();
const x = randn([2, 512, IN], { generator: gen, backend: be });
x.requiresGrad = true;
const A = randn([R, IN], { generator: gen, backend: be }).mul(1 / Math.sqrt(IN));
const B = randn([OUT, R], { generator: gen, backend: be }).mul(0.01);
A.requiresGrad = true;
B.requiresGrad = true;
const g = randn([2, 512, OUT], { generator: gen, backend: be });
const base = { kind: "4bit" as const, weight: lin.quantizedWeight };

function clearGrads(...ts: Tensor[]) {
  for (const t of ts) {
    t.grad?.dispose();
    t.grad = null;
  }
}
const baseline = () => {
  const y = matmul4bit(x, lin.quantizedWeight);
  y.backward(g);
  y.dispose();
  clearGrads(x);
};
const WITH_REFERENCE = process.argv.includes("--with-reference");
const withLora = (impl: "auto" | "reference" = "auto") => {
  const y = loraLinearOp.run([x, A, B], { base, scaling: 2 }, impl);
  y.backward(g);
  y.dispose();
  clearGrads(x, A, B);
};

function ms(fn: () => void): number {
  const t0 = performance.now();
  tidy(fn);
  return performance.now() - t0;
}
baseline();
withLora();
const ta: number[] = [];
const tb: number[] = [];
const tc: number[] = [];
for (let i = 0; i < REPS; i++) {
  ta.push(ms(baseline));
  tb.push(ms(() => withLora()));
  if (WITH_REFERENCE) tc.push(ms(() => withLora("reference")));
}
const median = (v: number[]) => [...v].sort((p, q) => p - q)[Math.floor(v.length / 2)];
const a = median(ta);
const b = median(tb);
const flop = 2 * 2 * ROWS * IN * OUT;
console.log(
  `machine: ${process.arch}, threads ${THREADS}, native ops: ${info.nativeOps.length}, reps ${REPS} interleaved (A B A B …)`,
);
console.log(
  `A  NF4 linear ${IN}→${OUT}, x [2, 512, ${IN}]: forward + dX           median ${a.toFixed(1)} ms (${(flop / a / 1e6).toFixed(1)} GFLOP/s)`,
);
console.log(`B  the same + LoRA r=${R} (lora.linear op): forward + dX, dA, dB      median ${b.toFixed(1)} ms`);
console.log(
  `B / A = ${(b / a).toFixed(3)}  (target ≤ 1.15); median of per-pair ratios ${median(tb.map((t, i) => t / ta[i])).toFixed(3)}`,
);
console.log(`   runs A: ${ta.map((t) => t.toFixed(0)).join(" ")}  B: ${tb.map((t) => t.toFixed(0)).join(" ")}`);
if (WITH_REFERENCE) {
  const c = median(tc);
  console.log(
    `C  the same through the op's reference forms (no accumulating GEMM): median ${c.toFixed(1)} ms, C / A = ${(c / a).toFixed(3)}`,
  );
}

if (!process.argv.includes("--no-peer")) {
  const peer = join(dirname(fileURLToPath(import.meta.url)), "lora_peer.py");
  const r = spawnSync("/usr/bin/python3", [peer, String(REPS), String(THREADS)], { encoding: "utf8" });
  if (r.status === 0) process.stdout.write(r.stdout);
  else console.log(`PyTorch peer unavailable: ${(r.stderr || r.error?.message || "").trim().split("\n").pop()}`);
}
