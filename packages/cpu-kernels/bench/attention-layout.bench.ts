// One decoder layer's attention block on the cpu backend, forward + backward, in the two ways a model can
// call it: rope → transpose(1, 2) views → attention → transpose back → reshape (the [b, s, h, d] layout read
// in place: no copies), against the same with the views made contiguous first (what attention did before
// it read strided q/k/v: copies of q, k, v and of the output, and their gradients), measured in the same
// run, interleaved A B A B, medians. Also: one decode step over a KV cache (attention with kv length > 1).
//   args: --threads 2 --reps 5 --seq 512
import { Generator, type Tensor, attention, randn, rope, tensor } from "@qlora/tensor";
import { cpuBackend } from "../src/backend";
import { getThreads, setThreads } from "../src/threads";

const arg = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : fallback;
};
setThreads(Number(arg("threads", String(getThreads()))));
const reps = Number(arg("reps", "5"));
const [B, S, H, KVH, D] = [2, Number(arg("seq", "512")), 16, 4, 64];
const be = cpuBackend;
const gen = (seed: number) => ({ backend: be, generator: new Generator(seed), requiresGrad: true });
const q = randn([B, S, H, D], gen(1));
const k = randn([B, S, KVH, D], gen(2));
const v = randn([B, S, KVH, D], gen(3));
const pos = tensor(
  Array.from({ length: B * S }, (_, i) => i % S),
  { shape: [B, S], dtype: "i32", backend: be },
);

function step(copyLayout: boolean): void {
  const prep = (t: Tensor) => (copyLayout ? t.transpose(1, 2).contiguous() : t.transpose(1, 2));
  const qr = rope(q, pos);
  const kr = rope(k, pos);
  const out = attention(prep(qr), prep(kr), prep(v));
  const merged = (copyLayout ? out.transpose(1, 2).contiguous() : out.transpose(1, 2)).reshape([B, S, H * D]);
  merged.sum().backward();
  for (const t of [q, k, v]) {
    t.grad?.dispose();
    t.grad = null;
  }
}

function timeOnce(fn: () => void): number {
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
}
const median = (t: number[]) => [...t].sort((a, b) => a - b)[t.length >> 1]!;
/** Bytes the step allocates at its peak through the shared host allocator (every buffer, freed or not). */
function peakBytes(copyLayout: boolean): number {
  const before = be.memoryStats().currentBytes;
  be.resetPeak();
  step(copyLayout);
  return be.memoryStats().peakBytes - before;
}
const mib = (b: number) => (b / 2 ** 20).toFixed(1);
const [peakViews, peakCopies] = [peakBytes(false), peakBytes(true)];
const views: number[] = [];
const copies: number[] = [];
for (let i = 0; i < reps; i++) {
  views.push(timeOnce(() => step(false)));
  copies.push(timeOnce(() => step(true)));
}
console.log(`attention block fwd+bwd, batch ${B}, seq ${S}, heads ${H}/${KVH}, head dim ${D}, ${getThreads()} threads`);
console.log("| path | ms (median) | ratio (copies / views) | allocated peak MiB |");
console.log("|---|---|---|---|");
console.log(
  `| [b, s, h, d] views read in place | ${median(views).toFixed(1)} | ${(median(copies) / median(views)).toFixed(2)} | ${mib(peakViews)} |`,
);
console.log(`| contiguous [b, h, s, d] copies | ${median(copies).toFixed(1)} | 1.00 | ${mib(peakCopies)} |`);

// one decode step: 1 new query over S cached keys, in place vs the composed matmul/softmax formula
const qd = randn([B, 1, H, D], { backend: be, generator: new Generator(4) });
const kc = randn([B, S, KVH, D], { backend: be, generator: new Generator(5) });
const decode = () => attention(qd.transpose(1, 2), kc.transpose(1, 2), kc.transpose(1, 2)).dispose();
decode();
const dt: number[] = [];
for (let i = 0; i < reps; i++) dt.push(timeOnce(decode));
console.log(`decode step (1 query over ${S} cached keys, GQA ${H}/${KVH}): ${median(dt).toFixed(2)} ms median`);
