// bf16 x bf16 matmul on the AVX512-BF16 k-pair kernel (csrc/gemm_bf16.cc) and on the forced
// widening fallback, against the reference backend. Same tolerance as test/gemm.test.ts: products of
// two bf16 values are exact in f32, so only the f32 summation order differs from the reference.
import { afterAll, describe, expect, test } from "vitest";
import { loadNative } from "../src/load";
import { randomF32, referenceMatmul, worstRatio } from "./oracle";

interface Bf16GemmNative {
  matmul(
    a: Uint16Array,
    b: Uint16Array,
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
  gemmIsa(isa?: string): string;
  gemmBf16Kernel(): string;
  isaInfo(): { avx512f: boolean; avx512bf16: boolean; avx512HalfRate: boolean };
}
const native = loadNative() as unknown as Bf16GemmNative;
const hasBf16 = native.isaInfo().avx512bf16;
afterAll(() => void native.gemmIsa(""));

/** Random bf16 bit patterns in [-1, 1) (truncated f32; the oracle reads the same bits). */
function randomBf16(length: number, seed: number): Uint16Array {
  return Uint16Array.from(new Uint32Array(randomF32(length, seed).buffer), (v) => v >>> 16);
}

function check(
  m: number,
  k: number,
  n: number,
  o: { batch?: number; transA?: boolean; transB?: boolean; sa?: number; sb?: number },
  seed: number,
) {
  const { batch = 1, transA = false, transB = false, sa = m * k, sb = k * n } = o;
  const a = randomBf16(sa * (batch - 1) + m * k, seed),
    b = randomBf16(sb * (batch - 1) + k * n, seed + 1);
  const out = new Float32Array(batch * m * n).fill(Number.NaN);
  native.matmul(a, b, out, batch, m, k, n, transA, transB, sa, sb);
  const want = referenceMatmul(a, b, { batch, m, k, n, transA, transB, aBatchStride: sa, bBatchStride: sb });
  return { out, ratio: worstRatio(out, want, k) };
}

// every size in every position (1, 3, 17, 63, 65, 129: odd k exercises the zero-padded last pair)
const sizes = [1, 3, 17, 63, 65, 129];
const shapes = sizes.flatMap(
  (s, i) =>
    [
      [s, sizes[(i + 1) % 6]!, sizes[(i + 3) % 6]!],
      [sizes[(i + 2) % 6]!, s, sizes[(i + 5) % 6]!],
    ] as [number, number, number][],
);

test.skipIf(!hasBf16)("the AVX512-BF16 kernel is selected by default and by name, and a forced ISA falls back", () => {
  native.gemmIsa("");
  expect(native.gemmBf16Kernel()).toBe("avx512bf16");
  native.gemmIsa("avx512");
  expect(native.gemmBf16Kernel()).toBe("avx512"); // widening while packing, f32 micro-kernel
  native.gemmIsa("avx512bf16");
  expect(native.gemmBf16Kernel()).toBe("avx512bf16");
  // f32 products keep the default f32 kernel (the AVX2 tile where AVX-512 runs at half rate: Zen 4)
  expect(native.gemmIsa()).toBe(native.isaInfo().avx512HalfRate ? "avx2" : "avx512");
});

test.skipIf(hasBf16)("without AVX512_BF16 bf16 products widen onto the f32 kernel", () => {
  native.gemmIsa("");
  expect(native.gemmBf16Kernel()).toBe(native.gemmIsa());
});

describe.each(hasBf16 ? ["avx512bf16", "avx512"] : [""])("bf16 x bf16 matmul (forced isa %s)", (isa) => {
  test("odd shapes, all transposes", () => {
    native.gemmIsa(isa);
    if (isa) expect(native.gemmBf16Kernel()).toBe(isa);
    let seed = 100;
    for (const [m, k, n] of shapes)
      for (const transA of [false, true])
        for (const transB of [false, true]) {
          seed += 2;
          const { ratio } = check(m, k, n, { transA, transB }, seed);
          expect(ratio, `${m}x${k}x${n} tA=${transA} tB=${transB}`).toBeLessThanOrEqual(1);
        }
  });

  test("batched with broadcast strides", () => {
    native.gemmIsa(isa);
    const [batch, m, k, n] = [3, 19, 71, 45];
    for (const [sa, sb] of [
      [m * k, k * n],
      [0, k * n],
      [m * k, 0],
    ] as const)
      for (const transB of [false, true])
        expect(
          check(m, k, n, { batch, transB, sa, sb }, 7).ratio,
          `strides ${sa},${sb} tB=${transB}`,
        ).toBeLessThanOrEqual(1);
  });

  test("multi-threaded, crossing the MC/KC blocks with an odd final k block", () => {
    native.gemmIsa(isa);
    // k = 777 = 2 x 384 + 9: two full kc blocks (accumulated in C) and a short odd one
    for (const [m, k, n, transA] of [
      [301, 777, 290, true],
      [37, 777, 900, false],
    ] as const)
      expect(check(m, k, n, { transA }, 11).ratio, `${m}x${k}x${n}`).toBeLessThanOrEqual(1);
  });
});

test.skipIf(!hasBf16)("the k-pair kernel and the widening fallback agree", () => {
  const [m, k, n] = [65, 129, 63];
  native.gemmIsa("");
  const fast = check(m, k, n, { transB: true }, 3).out;
  native.gemmIsa("avx512");
  const slow = check(m, k, n, { transB: true }, 3).out;
  expect(worstRatio(fast, slow, k)).toBeLessThanOrEqual(1);
});
