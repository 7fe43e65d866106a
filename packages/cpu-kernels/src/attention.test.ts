// Causal flash attention (csrc/attention*.cc) against the reference backend (the oracle), for every
// ISA variant this machine can run: seq 1/5/64/129 (one partial tile, exactly one tile, a tile plus
// one row), head dim 8 (vector tails only) and 64 (the benchmark case), GQA ratios 1/2/4, with and
// without segment ids; out, lse, dq, dk, dv compared.
//
// Tolerance: |got − want| ≤ 1e-5 + 1e-4·|want|. The reference accumulates in double; we accumulate in
// f32 in a different order (tiles of 64 keys, online rescaling), so each output carries a few hundred
// f32 roundings (≤ 129 keys × 64 dims): ~1e-5 relative in the worst case, and an absolute floor for
// gradients that cancel to ~0. Observed errors are reported by the "largest error" test below.
import { type AttentionOptions, type Backend, type Buffer, type HostBuffer, referenceBackend } from "@qlora/tensor";
import { afterAll, describe, expect, it } from "vitest";
import { createFusedOps, type FusedNative } from "./fused";
import { isaAccountingTest, isaSuite } from "../test/isa-paths";
import { loadNative } from "./load";
import { rand } from "./rand.test-util";
import { getThreads, setThreads } from "./threads";

const native = loadNative() as unknown as FusedNative;
const fused = createFusedOps(() => native, referenceBackend) as Backend;
const ref = referenceBackend;
// Every ISA level this host cannot run is reported as a skipped test (test/isa-paths.ts).
const levels = isaSuite("fused", "attention forward + backward").map((c) => c.level);
isaAccountingTest("fused");
afterAll(() => native.setFusedIsaLevel(2));

const data = (b: Buffer) => (b as HostBuffer).data as Float32Array;
const ATOL = 1e-5;
const RTOL = 1e-4;
let worst = 0;

function expectClose(name: string, got: Float32Array, want: Float32Array): void {
  expect(got.length, `${name} length`).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    worst = Math.max(worst, err / (ATOL + RTOL * Math.abs(want[i])));
    if (!(err <= ATOL + RTOL * Math.abs(want[i]))) {
      throw new Error(`${name}[${i}]: got ${got[i]}, want ${want[i]} (|diff| ${err})`);
    }
  }
}

interface Case {
  seq: number;
  headDim: number;
  ratio: number;
  segments: boolean;
  window?: number; // sliding window (Mistral); with segment ids both masks apply
}
const cases: Case[] = [];
for (const seq of [1, 5, 64, 129])
  for (const headDim of [8, 64])
    for (const ratio of [1, 2, 4]) for (const segments of [false, true]) cases.push({ seq, headDim, ratio, segments });
cases.push({ seq: 129, headDim: 8, ratio: 2, segments: true, window: 37 });
cases.push({ seq: 200, headDim: 64, ratio: 4, segments: false, window: 64 });

const run = (be: Backend, c: Case, seed: number) => runWith(be, c, seed, 2, c.ratio === 4 ? 1 : 2);
const runOne = (be: Backend, c: Case, seed: number) => runWith(be, c, seed, 1, 1);

function runWith(be: Backend, c: Case, seed: number, batch: number, kvHeads: number) {
  const heads = kvHeads * c.ratio;
  const nq = batch * heads * c.seq * c.headDim;
  const nkv = batch * kvHeads * c.seq * c.headDim;
  const seg = new Int32Array(batch * c.seq);
  for (let i = 0; i < seg.length; i++) seg[i] = Math.floor((i % c.seq) / 23) + (i % c.seq > 70 ? 5 : 0);
  const q = ref.fromHost(rand(nq, seed, -2, 2), "f32");
  const k = ref.fromHost(rand(nkv, seed + 1, -2, 2), "f32");
  const v = ref.fromHost(rand(nkv, seed + 2), "f32");
  const dout = ref.fromHost(rand(nq, seed + 3), "f32");
  const o: AttentionOptions = {
    batch,
    heads,
    kvHeads,
    seq: c.seq,
    headDim: c.headDim,
    scale: 1 / Math.sqrt(c.headDim),
    segmentIds: c.segments ? ref.fromHost(seg, "i32") : undefined,
    ...(c.window ? { window: c.window } : {}),
  };
  const { out, lse } = be.attention(q, k, v, o);
  const { dq, dk, dv } = be.attentionBackward(dout, q, k, v, out, lse, o);
  return { out: data(out), lse: data(lse), dq: data(dq), dk: data(dk), dv: data(dv) };
}

describe("attention forward + backward vs the reference", () => {
  cases.forEach((c, n) => {
    const label = `seq ${c.seq}, headDim ${c.headDim}, GQA ${c.ratio}:1, segmentIds ${c.segments}${c.window ? `, window ${c.window}` : ""}`;
    it(label, () => {
      const want = run(ref, c, 100 + n);
      for (const level of levels) {
        native.setFusedIsaLevel(level);
        const got = run(fused, c, 100 + n);
        for (const key of ["out", "lse", "dq", "dk", "dv"] as const)
          expectClose(`isa ${level} ${key}`, got[key], want[key]);
      }
    });
  });

  it("largest error stays well inside the tolerance (reported)", () => {
    console.log(
      `attention: worst |diff| / (atol + rtol·|want|) = ${worst.toFixed(3)} over ${levels.length} ISA levels`,
    );
    expect(worst).toBeLessThanOrEqual(1);
  });
});

describe("attention backward split over key tiles (fewer batch × kv-head pairs than threads)", () => {
  it("batch 1, one kv head, 3 threads: matches the reference, every ISA level", () => {
    const threads = getThreads();
    setThreads(3);
    try {
      for (const c of [
        { seq: 200, headDim: 64, ratio: 4, segments: true },
        { seq: 129, headDim: 8, ratio: 2, segments: false },
      ]) {
        const want = runOne(ref, c, 7);
        for (const level of levels) {
          native.setFusedIsaLevel(level);
          const got = runOne(fused, c, 7);
          for (const key of ["out", "lse", "dq", "dk", "dv"] as const)
            expectClose(`split isa ${level} ${key}`, got[key], want[key]);
        }
      }
    } finally {
      setThreads(threads);
    }
  });
});

describe("attention argument checks", () => {
  const q = new Float32Array(2 * 4 * 3);
  const o = new Float32Array(2 * 4 * 3);
  const l = new Float32Array(2 * 3);
  it("rejects heads that are not a multiple of kvHeads", () => {
    expect(() => native.attentionForward(q, q, q, null, o, l, 1, 3, 2, 3, 4, 0.5)).toThrow(/kvHeads/);
  });
  it("rejects a typed array shorter than its shape says", () => {
    expect(() => native.attentionForward(q.subarray(1), q, q, null, o, l, 1, 2, 2, 3, 4, 0.5)).toThrow(RangeError);
    expect(() => native.attentionForward(q, q, q, new Int32Array(1), o, l, 1, 2, 2, 3, 4, 0.5)).toThrow(/segmentIds/);
  });
  it("rejects a wrong array type, naming the argument", () => {
    expect(() => native.attentionForward(q, q, new Int32Array(24) as never, null, o, l, 1, 2, 2, 3, 4, 0.5)).toThrow(
      /argument v must be a Float32Array/,
    );
  });
});
