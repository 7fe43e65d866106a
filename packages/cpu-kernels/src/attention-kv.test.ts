// Native attention (csrc/attention*.cc) over a KV cache (kvSeq > seq: causal with offset kvSeq − seq)
// and in the "bshd" layout ([batch, seq, heads, d], rope's layout: no transposed copies), against the
// reference backend, for every ISA level this machine can run. Shapes are odd and up to a few hundred
// keys; both backward schedules are covered (few (batch, kv head) pairs: key tiles split into parts with
// private dq; many pairs: one task per pair), and so is the sliding window (Mistral: the query at
// position P sees keys P − window < j ≤ P) with and without a cache, windows narrower than, equal to and
// wider than a 64-key tile. Tolerance as in attention.test.ts: 1e-5 + 1e-4·|want|.
import { type AttentionOptions, type Backend, type Buffer, type HostBuffer, referenceBackend } from "@qlora/tensor";
import { afterAll, describe, expect, it } from "vitest";
import { createFusedOps, type FusedNative } from "./fused";
import { loadNative } from "./load";
import { rand } from "./rand.test-util";

const native = loadNative() as unknown as FusedNative;
const fused = createFusedOps(() => native, referenceBackend) as Backend;
const ref = referenceBackend;
const LEVELS = [2, 1, 0];
const runnable = LEVELS.filter((l) => native.setFusedIsaLevel(l) === l);
native.setFusedIsaLevel(2);
afterAll(() => native.setFusedIsaLevel(2));

const data = (b: Buffer) => (b as HostBuffer).data as Float32Array;
const f32 = (x: Float32Array) => ref.fromHost(x, "f32");

function expectClose(name: string, got: Float32Array, want: Float32Array): void {
  expect(got.length, `${name} length`).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    if (!(err <= 1e-5 + 1e-4 * Math.abs(want[i]))) throw new Error(`${name}[${i}]: got ${got[i]}, want ${want[i]}`);
  }
}

// [batch, heads, kvHeads, seq, kvSeq, headDim, layout, window (0 = none)]
const SHAPES: [number, number, number, number, number, number, "bhsd" | "bshd", number?][] = [
  [1, 4, 2, 37, 150, 24, "bhsd"], // prefill of 37 after 113 cached, GQA 2, split-keys backward
  [2, 3, 1, 1, 129, 8, "bhsd"], // one decode step over 2 key tiles + 1
  [1, 2, 2, 70, 70, 16, "bshd"], // no cache, rope's layout
  [1, 4, 2, 65, 200, 64, "bshd"], // cache and layout together, a tile plus one query row
  [2, 8, 4, 9, 33, 5, "bshd"], // 8 (batch, kv head) pairs: one backward task per pair; head dim 5 (tails)
  [1, 4, 2, 129, 129, 16, "bhsd", 37], // window inside a tile, split-keys backward
  [2, 4, 2, 300, 300, 8, "bshd", 64], // window of exactly one tile, key tiles skipped
  [1, 2, 1, 65, 200, 24, "bshd", 65], // cache and window: a tile plus one
  [1, 2, 2, 130, 130, 5, "bhsd", 1], // each query sees only itself
  [2, 3, 1, 1, 129, 8, "bhsd", 100], // one decode step with a window
  [2, 8, 4, 9, 33, 5, "bshd", 300], // window wider than every sequence: plain causal
];

describe("native attention with a KV cache and the bshd layout vs the reference", () => {
  for (const level of LEVELS) {
    const skip = !runnable.includes(level);
    for (const [batch, heads, kvHeads, seq, kvSeq, headDim, layout, window = 0] of SHAPES) {
      const name = `ISA level ${level}: b${batch} h${heads}/${kvHeads} seq ${seq} kvSeq ${kvSeq} d${headDim} ${layout}${window ? ` window ${window}` : ""}`;
      it.skipIf(skip)(skip ? `${name} (skipped: this CPU cannot run ISA level ${level})` : name, () => {
        native.setFusedIsaLevel(level);
        const o: AttentionOptions = {
          batch,
          heads,
          kvHeads,
          seq,
          kvSeq,
          headDim,
          scale: 1 / Math.sqrt(headDim),
          layout,
          ...(window ? { window } : {}),
        };
        const nq = batch * heads * seq * headDim;
        const nkv = batch * kvHeads * kvSeq * headDim;
        const [q, k, v, dout] = [f32(rand(nq, 1)), f32(rand(nkv, 2)), f32(rand(nkv, 3)), f32(rand(nq, 4))];
        const want = ref.attention(q, k, v, o);
        const got = fused.attention(q, k, v, o);
        expectClose("out", data(got.out), data(want.out));
        expectClose("lse", data(got.lse), data(want.lse));
        const gw = ref.attentionBackward(dout, q, k, v, want.out, want.lse, o);
        const gg = fused.attentionBackward(dout, q, k, v, got.out, got.lse, o);
        expectClose("dq", data(gg.dq), data(gw.dq));
        expectClose("dk", data(gg.dk), data(gw.dk));
        expectClose("dv", data(gg.dv), data(gw.dv));
      });
    }
  }

  it("kvSeq < seq and segment ids with a cache are RangeErrors naming the argument", () => {
    const o = { batch: 1, heads: 1, kvHeads: 1, seq: 4, headDim: 2, scale: 1 };
    const q = f32(rand(8, 1));
    expect(() => fused.attention(q, f32(rand(6, 2)), f32(rand(6, 3)), { ...o, kvSeq: 3 })).toThrow(/kvSeq/);
    const seg = ref.fromHost(Int32Array.from([0, 0, 1, 1]), "i32");
    expect(() => fused.attention(q, f32(rand(12, 2)), f32(rand(12, 3)), { ...o, kvSeq: 6, segmentIds: seg })).toThrow(
      /segmentIds/,
    );
  });
});
