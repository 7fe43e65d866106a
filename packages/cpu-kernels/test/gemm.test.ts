// Dense matmul kernels (every ISA path) against the reference backend (f64-accumulated). Tolerance: each output is a
// k-term f32 dot product; blocked f32 summation has a random-walk error of about eps*sqrt(k)*|terms|
// with eps = 1.19e-7, and our inputs are in [-1, 1], so |d| <= 1e-5*(1+|ref|)*sqrt(k) (~80 eps of
// headroom per sqrt(k)) catches any indexing/packing bug (those produce O(1) errors) without
// flagging legitimate reassociation.
import fc from "fast-check";
import { afterAll, describe, expect, test } from "vitest";
import { loadNative } from "../src/load";
import { isaAccountingTest, isaSuite } from "./isa-paths";
import { randomF32, referenceMatmul, worstRatio } from "./oracle";

interface GemmNative {
  matmul(
    a: Float32Array | Uint16Array,
    b: Float32Array | Uint16Array,
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
  gemvIsa(): string;
  isaInfo(): { avx2: boolean; avx512f: boolean; avx512HalfRate: boolean };
  isaPaths(): { arch: string };
}
const native = loadNative() as unknown as GemmNative;
const isas = isaSuite("gemm", "matmul micro-kernel tests").map((c) => c.name);
isaAccountingTest("gemm");
afterAll(() => void native.gemmIsa(""));

function toBf16(x: Float32Array): Uint16Array {
  // truncation is fine here: the oracle reads the same bf16 bit patterns
  const u = new Uint32Array(x.buffer.slice(0));
  return Uint16Array.from(u, (v) => v >>> 16);
}

const shapes: [number, number, number][] = [
  [1, 1, 1],
  [1, 17, 3],
  [3, 1, 65],
  [17, 63, 129],
  [65, 129, 63],
  [13, 300, 33],
  [129, 65, 97],
  [6, 513, 200],
];

describe.each(isas)("matmul on the %s micro-kernel", (isa) => {
  test("all transpose combinations, odd shapes", () => {
    expect(native.gemmIsa(isa)).toBe(isa);
    let seed = 1;
    for (const [m, k, n] of shapes)
      for (const transA of [false, true])
        for (const transB of [false, true]) {
          const a = randomF32(m * k, seed++),
            b = randomF32(k * n, seed++);
          const out = new Float32Array(m * n).fill(NaN);
          native.matmul(a, b, out, 1, m, k, n, transA, transB, m * k, k * n);
          const want = referenceMatmul(a, b, { batch: 1, m, k, n, transA, transB });
          expect(worstRatio(out, want, k), `${m}x${k}x${n} tA=${transA} tB=${transB}`).toBeLessThanOrEqual(1);
        }
  });

  test("batched with broadcast strides and bf16 inputs", () => {
    native.gemmIsa(isa);
    const [batch, m, k, n] = [3, 19, 70, 45];
    for (const [sa, sb] of [
      [m * k, k * n],
      [0, k * n],
      [m * k, 0],
    ] as const) {
      const a = randomF32(Math.max(sa * (batch - 1), 0) + m * k, 7),
        b = randomF32(Math.max(sb * (batch - 1), 0) + k * n, 8);
      for (const [a16, b16] of [
        [false, false],
        [true, false],
        [false, true],
        [true, true],
      ]) {
        const ai = a16 ? toBf16(a) : a,
          bi = b16 ? toBf16(b) : b;
        const out = new Float32Array(batch * m * n);
        native.matmul(ai, bi, out, batch, m, k, n, false, true, sa, sb);
        const want = referenceMatmul(ai, bi, { batch, m, k, n, transB: true, aBatchStride: sa, bBatchStride: sb });
        expect(worstRatio(out, want, k), `strides ${sa},${sb} bf16 ${a16},${b16}`).toBeLessThanOrEqual(1);
      }
    }
  });

  test("a large multi-threaded, multi-block product (crosses MC/KC/NC)", () => {
    native.gemmIsa(isa);
    // the first shape is split over M tasks, the second over N tasks (gemm_driver.cc)
    for (const [m, k, n] of [
      [301, 700, 290],
      [37, 300, 900],
      [301, 40, 290], // one short k panel: tiles in the A-sliver-major order (gemm_driver.cc kShortPanel)
    ] as const) {
      const a = randomF32(m * k, 11),
        b = randomF32(k * n, 12);
      const out = new Float32Array(m * n);
      native.matmul(a, b, out, 1, m, k, n, true, false, m * k, k * n);
      expect(worstRatio(out, referenceMatmul(a, b, { batch: 1, m, k, n, transA: true }), k)).toBeLessThanOrEqual(1);
    }
  });
});

test("k = 0 gives zeros; validation names the bad argument", () => {
  const out = new Float32Array(6).fill(5);
  native.matmul(new Float32Array(0), new Float32Array(0), out, 1, 2, 0, 3, false, false, 0, 0);
  expect([...out]).toEqual([0, 0, 0, 0, 0, 0]);
  const a = new Float32Array(6),
    b = new Float32Array(6);
  expect(() => native.matmul(a, b, new Float32Array(3), 1, 2, 3, 2, false, false, 6, 6)).toThrow(
    /out: expected at least 4/,
  );
  expect(() => native.matmul(a, b, new Float32Array(4), 2, 2, 3, 2, false, false, 6, 6)).toThrow(/out/);
  expect(() => native.matmul(a, new Float32Array(5), new Float32Array(4), 1, 2, 3, 2, false, false, 6, 6)).toThrow(
    /b: expected at least 6/,
  );
  expect(() =>
    native.matmul(a, new Int32Array(6) as never, new Float32Array(4), 1, 2, 3, 2, false, false, 6, 6),
  ).toThrow(TypeError);
  expect(() => native.matmul(a, b, new Float32Array(4), 1, -2, 3, 2, false, false, 6, 6)).toThrow(
    /m: expected a non-negative integer/,
  );
  expect(() => (native.matmul as (...x: unknown[]) => void)(a, b)).toThrow(/11 arguments/);
  // products past 2^53 are rejected instead of wrapping into a small (passing) length check
  expect(() => native.matmul(a, b, new Float32Array(4), 2 ** 40, 2 ** 20, 3, 2 ** 20, false, false, 6, 6)).toThrow(
    /overflows/,
  );
});

test("default kernel choice: the widest tile, but the AVX2 tile where AVX-512 runs at half rate (Zen 4)", () => {
  const info = native.isaInfo();
  const arm = native.isaPaths().arch === "arm64";
  const widest = arm ? "neon" : info.avx512f ? "avx512" : info.avx2 ? "avx2" : "scalar";
  native.gemmIsa("");
  expect(native.gemmIsa()).toBe(info.avx512HalfRate ? "avx2" : widest);
  expect(native.gemvIsa()).toBe(widest); // the 4-bit GEMV keeps the widest decode
  if (info.avx512f) {
    native.gemmIsa("avx512"); // by name, AVX-512 runs even at half rate
    expect([native.gemmIsa(), native.gemvIsa()]).toEqual(["avx512", "avx512"]);
  }
  if (info.avx2) {
    native.gemmIsa("avx2");
    expect([native.gemmIsa(), native.gemvIsa()]).toEqual(["avx2", "avx2"]);
  }
  native.gemmIsa("scalar");
  expect([native.gemmIsa(), native.gemvIsa()]).toEqual(["scalar", "scalar"]);
  native.gemmIsa("");
});

test("property: random shapes, transposes, batch broadcast and dtypes agree with the reference", () => {
  native.gemmIsa("");
  const dim = fc.integer({ min: 1, max: 70 });
  fc.assert(
    fc.property(
      fc.record({
        batch: fc.integer({ min: 1, max: 3 }),
        m: dim,
        k: dim,
        n: dim,
        transA: fc.boolean(),
        transB: fc.boolean(),
        bcastA: fc.boolean(),
        bcastB: fc.boolean(),
        a16: fc.boolean(),
        b16: fc.boolean(),
        seed: fc.integer({ min: 1, max: 1e6 }),
      }),
      ({ batch, m, k, n, transA, transB, bcastA, bcastB, a16, b16, seed }) => {
        const sa = bcastA ? 0 : m * k,
          sb = bcastB ? 0 : k * n;
        const af = randomF32((bcastA ? 1 : batch) * m * k, seed),
          bf = randomF32((bcastB ? 1 : batch) * k * n, seed + 1);
        const a = a16 ? toBf16(af) : af,
          b = b16 ? toBf16(bf) : bf;
        const out = new Float32Array(batch * m * n).fill(NaN);
        native.matmul(a, b, out, batch, m, k, n, transA, transB, sa, sb);
        const want = referenceMatmul(a, b, { batch, m, k, n, transA, transB, aBatchStride: sa, bBatchStride: sb });
        return worstRatio(out, want, k) <= 1;
      },
    ),
    { numRuns: 60, seed: 20261130 },
  );
});
