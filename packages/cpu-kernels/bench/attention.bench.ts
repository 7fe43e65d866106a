// Causal GQA attention forward+backward (batch 2, 16 heads, 4 kv heads, head dim 64) against torch
// 1.13's fastest plain formulation with autograd (bench/attention_peer.py: baddbmm(mask, q·scale, kᵀ) →
// softmax → bmm over the stacked query heads of each kv head, or repeat_interleave + matmul if that is
// faster; the chosen form is printed), same thread count, medians.
// Ratio = torch time / our time (> 1: we are faster). Memory at each seq: ours = bytes the step
// allocates through the shared host allocator (out + lse saved for backward, dq/dk/dv) plus the
// kernels' per-thread scratch; also our process's peak-RSS growth over the step (VmHWM reset via
// /proc/self/clear_refs), the same measure the peer reports for torch.
//   args: --threads 2,1   --reps 5   --seqs 512,2048   --peer-reps 3   --markdown
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { type AttentionOptions, type Backend, referenceBackend } from "@qlora/tensor";
import { createFusedOps } from "../src/fused";
import { getThreads, setThreads } from "../src/threads";

const here = dirname(fileURLToPath(import.meta.url));
const arg = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : fallback;
};
const threadCounts = arg("threads", String(getThreads())).split(",").map(Number);
const reps = Number(arg("reps", "5"));
const peerReps = Number(arg("peer-reps", "3"));
const seqs = arg("seqs", "512,2048").split(",").map(Number);
const markdown = process.argv.includes("--markdown");
const [batch, heads, kvHeads, headDim] = [2, 16, 4, 64];

const host = referenceBackend;
const ops = createFusedOps(undefined, host) as Backend;

function random(n: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.random() * 2 - 1;
  return a;
}

function statusKb(key: string): number {
  const m = new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(readFileSync("/proc/self/status", "utf8"));
  return m ? Number(m[1]) : NaN;
}

function setup(seq: number) {
  const q = host.fromHost(random(batch * heads * seq * headDim), "f32");
  const k = host.fromHost(random(batch * kvHeads * seq * headDim), "f32");
  const v = host.fromHost(random(batch * kvHeads * seq * headDim), "f32");
  const dout = host.fromHost(random(batch * heads * seq * headDim), "f32");
  const o: AttentionOptions = { batch, heads, kvHeads, seq, headDim, scale: 1 / Math.sqrt(headDim) };
  return () => {
    const { out, lse } = ops.attention(q, k, v, o);
    const { dq, dk, dv } = ops.attentionBackward(dout, q, k, v, out, lse, o);
    for (const b of [out, lse, dq, dk, dv]) host.free(b);
  };
}

function median(t: number[]): number {
  const s = [...t].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

function measure(seq: number): { ms: number; allocBytes: number; rssBytes: number } {
  const step = setup(seq);
  step(); // warm-up: pool start, page faults
  const before = host.memoryStats().currentBytes;
  host.resetPeak();
  const rssBefore = statusKb("VmRSS");
  try {
    writeFileSync("/proc/self/clear_refs", "5");
  } catch {
    // not permitted: the RSS figure then includes earlier peaks
  }
  step();
  const rssBytes = (statusKb("VmHWM") - rssBefore) * 1024;
  const allocBytes = host.memoryStats().peakBytes - before;
  const t: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = process.hrtime.bigint();
    step();
    t.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return { ms: median(t), allocBytes, rssBytes };
}

interface PeerResult {
  torch: string;
  ms: Record<string, number>;
  form: Record<string, string>;
  all_ms: Record<string, Record<string, number>>;
  peak_bytes: Record<string, number>;
}
function peer(threads: number): PeerResult {
  const r = spawnSync(
    "/usr/bin/python3",
    [
      join(here, "attention_peer.py"),
      "--threads",
      String(threads),
      "--reps",
      String(peerReps),
      "--seqs",
      seqs.join(","),
    ],
    {
      encoding: "utf8",
      maxBuffer: 1 << 20,
      // One thread pool size for torch's OpenMP and OpenBLAS's own pool (no oversubscription).
      env: { ...process.env, OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads) },
    },
  );
  if (r.status !== 0) throw new Error(`attention_peer.py failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

// Native scratch outside the host allocator: K transposed tile-major for the forward (one copy of k)
// plus each thread's tile buffers (forward and backward; the larger counts).
const scratchBytes = (threads: number, seq: number) =>
  4 * batch * kvHeads * Math.ceil(seq / 64) * 64 * headDim +
  threads * 4 * Math.max(64 * 64 + 2 * 64 + 64 * headDim, 4 * headDim * 64 + 2 * 64 * 64 + (heads / kvHeads) * seq);
const mb = (b: number) => (b / 2 ** 20).toFixed(1);
const rows: string[][] = [];
const peerNotes: string[] = [];
let torchVersion = "";
for (const threads of threadCounts) {
  setThreads(threads);
  const ours = new Map(seqs.map((s) => [s, measure(s)]));
  const p = peer(threads);
  torchVersion = p.torch;
  for (const seq of seqs)
    peerNotes.push(
      `torch forms at seq ${seq}, ${threads} thread(s): ${Object.entries(p.all_ms[String(seq)]!)
        .map(([f, ms]) => `${f} ${ms.toFixed(1)} ms`)
        .join(", ")}`,
    );
  for (const seq of seqs) {
    const o = ours.get(seq)!;
    const t = p.ms[String(seq)]!;
    const ratio = t / o.ms;
    rows.push([
      String(seq),
      String(threads),
      o.ms.toFixed(1),
      `${t.toFixed(1)} (${p.form[String(seq)]})`,
      ratio.toFixed(2),
      ratio >= 1 ? "met (≥ 1.0)" : "MISSED (≥ 1.0)",
      `${mb(o.allocBytes + scratchBytes(threads, seq))} alloc+scratch / ${mb(o.rssBytes)} RSS`,
      mb(p.peak_bytes[String(seq)]!),
    ]);
  }
}

const header = [
  "seq",
  "threads",
  "ours ms (median)",
  "torch ms (median)",
  "torch/ours",
  "target",
  "ours MiB",
  "torch MiB (RSS)",
];
if (markdown) {
  console.log(`| ${header.join(" | ")} |\n|${header.map(() => "---").join("|")}|`);
  for (const r of rows) console.log(`| ${r.join(" | ")} |`);
} else {
  const w = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(w[i]!)).join("  ");
  console.log(line(header));
  for (const r of rows) console.log(line(r));
}
for (const n of peerNotes) console.log(n);
console.log(
  `(causal attention fwd+bwd, batch ${batch}, heads ${heads}, kv heads ${kvHeads}, head dim ${headDim}, f32; ours ${reps} reps, torch ${torchVersion} ${peerReps} reps; medians)`,
);
