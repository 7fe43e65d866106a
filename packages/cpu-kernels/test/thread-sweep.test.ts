// Thread sweep: the same product on 1, 2, 3 and 5 pool threads gives bit-identical results, so a
// training run does not change with the machine's core count. Why this holds:
//   - GEMM / 4-bit GEMM: tasks split M or N only (multiples of the register tile), never K, so every
//     output element is the same chain of FMAs over the same kc blocks whatever the split.
//   - 4-bit GEMV: one output row per (row, chunk) with a fixed in-row order.
//   - attention: forward tasks are (batch, head, query tile); the backward's dq of a GQA group is
//     summed over a fixed number of key-tile parts chosen from the shape alone (csrc/attention.cc),
//     so the thread count only decides who computes a part, not how the sums are grouped.
//   - dropout masks: Philox is counter based, each block a function of (seed, block) alone.
// Shapes are odd and exceed full SIMD tiles (6x16 AVX2, 12x32 AVX-512, 64-key attention tiles) with
// remainders, every runnable GEMM ISA path is swept (the others are reported skipped, isa-paths.ts).
import { quantize4bit } from "@qlora/nf4";
import { type AttentionOptions, type Buffer, type HostBuffer, referenceBackend } from "@qlora/tensor";
import { afterAll, describe, expect, it } from "vitest";
import { createFusedOps, type FusedNative } from "../src/fused";
import { loadNative } from "../src/load";
import { getThreads, setThreads } from "../src/threads";
import { isaAccountingTest, isaSuite } from "./isa-paths";
import { randomF32 } from "./oracle";
import { type NativeQuant, nativeQuant } from "./quant";

interface SweepNative {
  matmul(
    a: Float32Array,
    b: Float32Array,
    out: Float32Array,
    batch: number,
    m: number,
    k: number,
    n: number,
    transA: boolean,
    transB: boolean,
    aBatchStride: number,
    bBatchStride: number,
  ): void;
  matmul4bit(x: Float32Array, m: number, out: Float32Array, w: NativeQuant): void;
  matmul4bitInputGrad(dy: Float32Array, m: number, out: Float32Array, w: NativeQuant): void;
  gemmIsa(isa?: string): string;
}
const native = loadNative() as unknown as SweepNative;
const THREADS = [1, 2, 3, 5];
const initialThreads = getThreads();
afterAll(() => {
  setThreads(initialThreads);
  native.gemmIsa("");
});

/** Runs `fn` at each thread count; every result must equal the 1-thread one bit for bit. */
function sweep(what: string, fn: () => Float32Array[]): void {
  let first: Float32Array[] | undefined;
  for (const t of THREADS) {
    setThreads(t);
    const got = fn();
    if (!first) {
      first = got;
      continue;
    }
    got.forEach((g, i) => {
      const want = first![i];
      const bad = g.findIndex((v, j) => !Object.is(v, want[j]));
      expect(bad, `${what}: output ${i} at ${t} threads differs at ${bad} (${g[bad]} vs ${want[bad]})`).toBe(-1);
    });
  }
}

const gemmShapes: [number, number, number][] = [
  [297, 301, 283], // M split on every thread count, tile remainders in m and n
  [37, 257, 299], // small m: N split
  [131, 77, 1031], // wide n: N tasks
];

describe.each(isaSuite("gemm", "thread sweep").map((c) => c.name))("thread sweep on the %s path", (isa) => {
  it("f32 GEMM, all transposes, bit-identical across 1/2/3/5 threads", () => {
    native.gemmIsa(isa);
    let seed = 40;
    for (const [m, k, n] of gemmShapes)
      for (const [tA, tB] of [
        [false, false],
        [true, true],
      ] as const) {
        const a = randomF32(m * k, seed++),
          b = randomF32(k * n, seed++);
        sweep(`${isa} ${m}x${k}x${n} tA=${tA} tB=${tB}`, () => {
          const out = new Float32Array(m * n);
          native.matmul(a, b, out, 1, m, k, n, tA, tB, m * k, k * n);
          return [out];
        });
      }
  });

  it("NF4 GEMM, GEMV and input grad (nested absmax), bit-identical across 1/2/3/5 threads", () => {
    native.gemmIsa(isa);
    const [n, k] = [299, 320];
    const state = quantize4bit(randomF32(n * k, 3), {
      quantType: "nf4",
      blocksize: 64,
      doubleQuant: true,
      shape: [n, k],
    });
    const q = nativeQuant(state);
    for (const m of [1, 3, 37]) {
      const x = randomF32(m * k, m),
        dy = randomF32(m * n, m + 1);
      sweep(`${isa} nf4 m=${m}`, () => {
        const y = new Float32Array(m * n),
          dx = new Float32Array(m * k);
        native.matmul4bit(x, m, y, q);
        native.matmul4bitInputGrad(dy, m, dx, q);
        return [y, dx];
      });
    }
  });
});
isaAccountingTest("gemm");

describe("thread sweep: attention", () => {
  const fused = createFusedOps(() => loadNative() as unknown as FusedNative, referenceBackend);
  const ref = referenceBackend;
  const data = (b: Buffer) => (b as HostBuffer).data as Float32Array;

  it.each([
    { batch: 1, heads: 4, kvHeads: 1, seq: 203, headDim: 64 }, // fewer (batch, kv head) pairs than threads
    { batch: 2, heads: 6, kvHeads: 3, seq: 129, headDim: 24 }, // more pairs than threads; head-dim tails
    { batch: 1, heads: 2, kvHeads: 1, seq: 203, headDim: 16, window: 70 }, // sliding window, split-keys backward
  ])("forward and backward bit-identical across 1/2/3/5 threads: %o", (shape) => {
    const nq = shape.batch * shape.heads * shape.seq * shape.headDim;
    const nkv = shape.batch * shape.kvHeads * shape.seq * shape.headDim;
    const q = ref.fromHost(randomF32(nq, 1), "f32"),
      k = ref.fromHost(randomF32(nkv, 2), "f32"),
      v = ref.fromHost(randomF32(nkv, 3), "f32"),
      dout = ref.fromHost(randomF32(nq, 4), "f32");
    const o: AttentionOptions = { ...shape, scale: 1 / Math.sqrt(shape.headDim) };
    sweep(`attention ${JSON.stringify(shape)}`, () => {
      const { out, lse } = fused.attention!(q, k, v, o);
      const { dq, dk, dv } = fused.attentionBackward!(dout, q, k, v, out, lse, o);
      return [data(out), data(lse), data(dq), data(dk), data(dv)];
    });
  });
});

describe("thread sweep: dropout masks", () => {
  // counter based: each block's words depend on (seed, block) alone, so the split over threads cannot change them
  const fused = createFusedOps(() => loadNative() as unknown as FusedNative, referenceBackend);
  it("the Philox mask is bit-identical across 1/2/3/5 threads (and equals the reference)", () => {
    const n = (1 << 16) * 3 + 7; // blocks split over the pool, a partial last block
    const want = (referenceBackend.dropoutMask!(5, 4 * 1001, n, 0.1, Math.fround(1 / 0.9)) as HostBuffer)
      .data as Float32Array;
    sweep("dropoutMask", () => {
      const got = (fused.dropoutMask!(5, 4 * 1001, n, 0.1, Math.fround(1 / 0.9)) as HostBuffer).data as Float32Array;
      expect(got.findIndex((v, i) => !Object.is(v, want[i]))).toBe(-1);
      return [got];
    });
  });
});
