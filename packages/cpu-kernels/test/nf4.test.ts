// Fused 4-bit kernels against the reference backend's matmul4bit / matmul4bitInputGrad (weights
// from @qlora/nf4's quantize4bit, an independent implementation of the bitsandbytes layout). Same tolerance argument as gemm.test.ts:
// the dequantized weights are bit-identical (one f32 multiply each); only the k-term f32
// summation differs, bounded by 1e-5*(1+|ref|)*sqrt(k) (|W| <= max|w| ~ 1 and |x| <= 1 here).
import { quantize4bit, type QuantType } from "@qlora/nf4";
import { referenceBackend } from "@qlora/tensor";
import { afterAll, describe, expect, test } from "vitest";
import { loadNative } from "../src/load";
import { isaAccountingTest, isaSuite } from "./isa-paths";
import { quantBuffers, randomF32, referenceMatmul4bit, worstRatio } from "./oracle";
import { nativeQuant, type NativeQuant } from "./quant";

interface Nf4Native {
  matmul4bit(x: Float32Array, m: number, out: Float32Array, w: NativeQuant): void;
  matmul4bitTiled(x: Float32Array, m: number, out: Float32Array, w: NativeQuant): void;
  matmul4bitInputGrad(dy: Float32Array, m: number, out: Float32Array, w: NativeQuant): void;
  gemmIsa(isa?: string): string;
  isaInfo(): { avx2: boolean; avx512f: boolean };
}
const native = loadNative() as unknown as Nf4Native;
const isas = isaSuite("gemm", "4-bit GEMM/GEMV tests").map((c) => c.name);
isaAccountingTest("gemm");
afterAll(() => void native.gemmIsa(""));

interface Case {
  quantType: QuantType;
  blocksize: number;
  nested: boolean;
  n: number;
  k: number;
}
const cases: Case[] = [
  { quantType: "nf4", blocksize: 64, nested: false, n: 37, k: 128 },
  { quantType: "nf4", blocksize: 64, nested: true, n: 65, k: 192 },
  { quantType: "fp4", blocksize: 128, nested: false, n: 33, k: 256 },
  { quantType: "fp4", blocksize: 128, nested: true, n: 40, k: 384 },
  { quantType: "nf4", blocksize: 64, nested: true, n: 29, k: 100 }, // k % blocksize != 0: blocks straddle rows
  { quantType: "fp4", blocksize: 64, nested: false, n: 17, k: 63 }, // odd k: rows start on low nibbles
  { quantType: "nf4", blocksize: 32, nested: false, n: 70, k: 96 },
  { quantType: "nf4", blocksize: 128, nested: true, n: 3, k: 1 },
];

function weight(c: Case, seed: number) {
  // scale the rows differently so per-block absmax matters
  const w = randomF32(c.n * c.k, seed).map((v, i) => v * (1 + (Math.floor(i / c.k) % 5)));
  const state = quantize4bit(w, {
    quantType: c.quantType,
    blocksize: c.blocksize,
    doubleQuant: c.nested,
    shape: [c.n, c.k],
  });
  return { q: nativeQuant(state), ref: quantBuffers(referenceBackend, state) };
}

const label = (c: Case) => `${c.quantType} bs${c.blocksize} ${c.nested ? "nested" : "f32"} n${c.n} k${c.k}`;

describe.each(isas)("4-bit kernels on the %s path", (isa) => {
  test.each(cases.map((c) => [label(c), c] as const))("matmul4bit and input grad, %s", (_, c) => {
    native.gemmIsa(isa);
    const { q, ref } = weight(c, c.n * 31 + c.k);
    for (const m of [1, 2, 3, 4, 5, 13]) {
      const x = randomF32(m * c.k, m + 100);
      const want = referenceMatmul4bit(x, ref, m, false);
      const y = new Float32Array(m * c.n).fill(NaN);
      native.matmul4bit(x, m, y, q);
      expect(worstRatio(y, want, c.k), `matmul4bit m=${m}`).toBeLessThanOrEqual(1);
      const yt = new Float32Array(m * c.n).fill(NaN);
      native.matmul4bitTiled(x, m, yt, q);
      expect(worstRatio(yt, want, c.k), `tiled m=${m}`).toBeLessThanOrEqual(1);

      const dy = randomF32(m * c.n, m + 200);
      const dx = new Float32Array(m * c.k).fill(NaN);
      native.matmul4bitInputGrad(dy, m, dx, q);
      const wantDx = referenceMatmul4bit(dy, ref, m, true);
      expect(worstRatio(dx, wantDx, c.n), `input grad m=${m}`).toBeLessThanOrEqual(1);
    }
  });
});

// A one-hot x makes every GEMV output one product fl32(LUT[code] * absmax) (all other terms are exact zeros),
// so it must equal the reference's dequantized weight bit for bit. With double quantization this pins the
// nested absmax's two roundings (spec §5.4): an FMA-contracted fl32(code * nested + offset) differs in the
// last bit for many blocks, which the summation tolerance of the tests above cannot see. The tiled path's
// micro-kernel adds exact zeros too, so it is held to the same bit-for-bit standard.
describe.each(isas)("4-bit GEMV on the %s path", (isa) => {
  test.each([32, 64, 128])(
    "a one-hot x returns the dequantized weight bit for bit (GEMV and tiled), nested absmax, blocksize %i",
    (bs) => {
      native.gemmIsa(isa);
      // 300 rows of 3 blocks: 900 blocks cross nested-absmax blocks (256) mid-row, and the GEMV's second
      // 128-row chunk starts in the middle of one (the AVX2 GEMV keeps a per-nested-block scale table).
      const c: Case = { quantType: "nf4", blocksize: bs, nested: true, n: 300, k: 3 * bs };
      const { q, ref } = weight(c, bs + 7);
      for (const col of [0, 1, bs - 1, bs, c.k - 1]) {
        const x = new Float32Array(c.k);
        x[col] = 1;
        const y = new Float32Array(c.n).fill(NaN);
        native.matmul4bit(x, 1, y, q);
        const want = referenceMatmul4bit(x, ref, 1, false);
        const differing = Array.from(y).filter((v, j) => v !== want[j]).length;
        expect(differing, `column ${col}`).toBe(0);
        // The tiled GEMM too: its B packer decodes the weight (AVX2: 64 weights per vpshufb chunk).
        const yt = new Float32Array(c.n).fill(NaN);
        native.matmul4bitTiled(x, 1, yt, q);
        expect(Array.from(yt).filter((v, j) => v !== want[j]).length, `tiled, column ${col}`).toBe(0);
      }
    },
  );
});

test("a multi-threaded 4-bit GEMM and GEMV at a realistic width", () => {
  native.gemmIsa("");
  const c: Case = { quantType: "nf4", blocksize: 64, nested: true, n: 300, k: 512 };
  const { q, ref } = weight(c, 5);
  for (const m of [1, 4, 40]) {
    const x = randomF32(m * c.k, 9);
    const y = new Float32Array(m * c.n);
    native.matmul4bit(x, m, y, q);
    expect(worstRatio(y, referenceMatmul4bit(x, ref, m, false), c.k)).toBeLessThanOrEqual(1);
  }
});

test("4-bit argument validation names the argument", () => {
  const { q } = weight({ quantType: "nf4", blocksize: 64, nested: false, n: 4, k: 64 }, 1);
  const x = new Float32Array(64),
    y = new Float32Array(4);
  expect(() => native.matmul4bit(x, 1, y, { ...q, codes: new Uint8Array(10) })).toThrow(
    /w\.codes: expected at least 128/,
  );
  expect(() => native.matmul4bit(x, 1, y, { ...q, absmax: new Float32Array(1) })).toThrow(/w\.absmax/);
  expect(() => native.matmul4bit(x, 1, y, { ...q, quantType: "int4" as never })).toThrow(/w\.quantType/);
  expect(() => native.matmul4bit(x, 2, y, q)).toThrow(/x: expected at least 128/);
  expect(() => native.matmul4bit(x, 1, new Float32Array(3), q)).toThrow(/out/);
  expect(() => native.matmul4bitInputGrad(new Float32Array(3), 1, x, q)).toThrow(/dy: expected at least 4/);
  const { absmax: _, ...noAbsmax } = q;
  expect(() => native.matmul4bit(x, 1, y, noAbsmax)).toThrow(/w\.qabsmax/);
});
