/**
 * Before/after timing of one kernel call on two builds of the addon, in one process, interleaved call by call
 * (so both builds see the same machine load); prints both medians and the median of the per-pair ratios.
 *   cp build/Release/qlora_cpu.node /tmp/before.node   # then change csrc/ and rebuild
 *   A=/tmp/before.node B=build/Release/qlora_cpu.node \
 *     node --import tsx --conditions=@qlora/source bench/ab-builds.ts nf4|grad|f32|acc m k n [rounds] [threads]
 * nf4: x[m,k]·dequant(W[n,k])ᵀ (m ≤ 4 takes the GEMV); grad: dy[m,n]·dequant(W[n,k]); f32: a[m,k]·b[k,n];
 * acc: c[m,n] += a[m,k]·b[n,k]ᵀ (LoRA's up-projection into the base output: k is the rank).
 */
import { createRequire } from "node:module";
import { resolve } from "node:path";
import { quantize4bit } from "@qlora/nf4";
import type { GemmNative, NativeQuantWeight } from "../src/gemm";
import { nativeQuant } from "../test/quant";

type Build = GemmNative & { setThreads(n: number): void };

const [kind = "nf4", ...dims] = process.argv.slice(2);
const [m = 2048, k = 4096, n = 4096, rounds = 9, threads = 2] = dims.map(Number);
const paths = [process.env.A, process.env.B];
if (!paths[0] || !paths[1]) throw new Error("set A and B to the two addon files (.node) to compare");
const require = createRequire(import.meta.url);
const builds = paths.map((p) => require(resolve(p!)) as Build);
for (const b of builds) b.setThreads(threads);

function random(length: number): Float32Array {
  const a = new Float32Array(length);
  for (let i = 0; i < length; i++) a[i] = Math.random() * 2 - 1;
  return a;
}

function quantWeight(): NativeQuantWeight {
  return nativeQuant(
    quantize4bit(random(n * k), { quantType: "nf4", blocksize: 64, doubleQuant: true, shape: [n, k] }),
  );
}

function makeCall(): (b: Build) => void {
  if (kind === "f32") {
    const a = random(m * k),
      bm = random(k * n),
      c = new Float32Array(m * n);
    return (b) => b.matmul(a, bm, c, 1, m, k, n, false, false, m * k, k * n);
  }
  if (kind === "acc") {
    const a = random(m * k),
      bm = random(n * k),
      c = random(m * n);
    return (b) => b.matmul(a, bm, c, 1, m, k, n, false, true, m * k, k * n, false, false, true);
  }
  const w = quantWeight();
  if (kind === "grad") {
    const dy = random(m * n),
      dx = new Float32Array(m * k);
    return (b) => b.matmul4bitInputGrad(dy, m, dx, w);
  }
  const x = random(m * k),
    y = new Float32Array(m * n);
  return (b) => b.matmul4bit(x, m, y, w);
}

const call = makeCall();
const short = m <= 4; // ~1 ms calls: warm each sample up and time 50 calls (the vCPU ramps up after idling)
const times: number[][] = [[], []];
for (let r = 0; r <= rounds; r++)
  builds.forEach((b, i) => {
    for (let w = 0; w < (short ? 20 : 0); w++) call(b);
    const t0 = performance.now();
    for (let j = 0; j < (short ? 50 : 1); j++) call(b);
    if (r > 0) times[i]!.push((performance.now() - t0) / (short ? 50 : 1)); // round 0 warms up
  });
const median = (t: number[]) => [...t].sort((p, q) => p - q)[t.length >> 1]!;
const ratios = times[0]!.map((t, i) => t / times[1]![i]!);
console.log(
  `${kind} m=${m} k=${k} n=${n}, ${threads} thread(s): A ${median(times[0]!).toFixed(3)} ms, B ${median(times[1]!).toFixed(3)} ms, ` +
    `A/B (median of ${rounds} pair ratios) ${median(ratios).toFixed(3)}`,
);
