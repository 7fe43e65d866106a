// linearCrossEntropy (chunked lm-head + cross-entropy, forward + backward with dHidden and dWeight) on the
// cpu backend against torch 1.13's full-logits formulation (bench/lce_peer.py), same thread count, medians,
// ratio = torch ms / our ms (> 1: we are faster). Memory: ours = peak bytes the step allocates through the
// shared host allocator (the chunk's logits, dHidden, dWeight and temporaries) and the process's peak-RSS
// growth; torch's = its peak-RSS growth (the full [tokens, vocab] logits and their gradient).
// --frozen-head: the head does not train (the usual QLoRA case): no dWeight on either side.
//   args: --threads 2 --reps 3 --tokens 1024 --hidden 512 --vocab 16384 --chunks 256,1024 [--frozen-head]
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Generator, linearCrossEntropy, randn, tensor } from "@qlora/tensor";
import { cpuBackend } from "../src/backend";
import { getThreads, setThreads } from "../src/threads";

const here = dirname(fileURLToPath(import.meta.url));
const arg = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : fallback;
};
const threads = Number(arg("threads", String(getThreads())));
const reps = Number(arg("reps", "3"));
const [N, H, V] = [Number(arg("tokens", "1024")), Number(arg("hidden", "512")), Number(arg("vocab", "16384"))];
const chunks = arg("chunks", "256,1024").split(",").map(Number);
const frozenHead = process.argv.includes("--frozen-head");
const be = cpuBackend;

function statusKb(key: string): number {
  const m = new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(readFileSync("/proc/self/status", "utf8"));
  return m ? Number(m[1]) : Number.NaN;
}
const median = (t: number[]) => [...t].sort((a, b) => a - b)[t.length >> 1]!;
const mb = (b: number) => (b / 2 ** 20).toFixed(1);

function measure(chunkSize: number) {
  const h = randn([N, H], { backend: be, generator: new Generator(1), requiresGrad: true });
  const w0 = randn([V, H], { backend: be, generator: new Generator(2) });
  const w = w0.mul(0.02);
  w.requiresGrad = !frozenHead;
  const labels = tensor(
    Array.from({ length: N }, (_, i) => (i % 7 === 0 ? -100 : (i * 7919) % V)),
    { dtype: "i32", backend: be },
  );
  const step = () => {
    const { loss, tokens } = linearCrossEntropy(h, w, labels, { chunkSize });
    loss.backward();
    for (const t of [loss, tokens, h.grad!, w.grad]) t?.dispose();
    h.grad = null;
    w.grad = null;
  };
  step(); // warm-up
  const before = be.memoryStats().currentBytes;
  be.resetPeak();
  const rssBefore = statusKb("VmRSS");
  try {
    writeFileSync("/proc/self/clear_refs", "5");
  } catch {}
  step();
  const rss = (statusKb("VmHWM") - rssBefore) * 1024;
  const alloc = be.memoryStats().peakBytes - before;
  const t: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    step();
    t.push(performance.now() - t0);
  }
  for (const x of [h, w0, w, labels]) x.dispose();
  return { ms: median(t), alloc, rss };
}

setThreads(threads);
const ours = chunks.map((c) => ({ chunk: c, ...measure(c) }));
const r = spawnSync(
  "/usr/bin/python3",
  [
    join(here, "lce_peer.py"),
    "--threads",
    String(threads),
    "--reps",
    String(reps),
    "--tokens",
    String(N),
    "--hidden",
    String(H),
    "--vocab",
    String(V),
    ...(frozenHead ? ["--frozen-head"] : []),
  ],
  {
    encoding: "utf8",
    env: { ...process.env, OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads) },
  },
);
if (r.status !== 0) throw new Error(`lce_peer.py failed: ${r.stderr}`);
const peer = JSON.parse(r.stdout) as { torch: string; ms: number; peak_bytes: number };
console.log(
  `linearCrossEntropy fwd+bwd, tokens ${N}, hidden ${H}, vocab ${V}, ${frozenHead ? "frozen" : "trained"} head, ${threads} threads (torch ${peer.torch})`,
);
console.log(`full logits would be ${mb(N * V * 4)} MiB (and as much again for their gradient)`);
console.log(
  "| impl | chunk | ms (median) | torch ms | ratio (torch/ours) | allocated peak MiB | RSS growth MiB | torch RSS growth MiB |",
);
console.log("|---|---|---|---|---|---|---|---|");
for (const o of ours)
  console.log(
    `| ours | ${o.chunk} | ${o.ms.toFixed(1)} | ${peer.ms.toFixed(1)} | ${(peer.ms / o.ms).toFixed(2)} | ${mb(o.alloc)} | ${mb(o.rss)} | ${mb(peer.peak_bytes)} |`,
  );
