// The skinny half-weight matmul (csrc/gemv_bf16.cc, src/gemv-half.ts): f32 x[m ≤ 4, k] · a bf16/f16 weight,
// both weight layouts, on every runnable path (AVX2 and scalar; the others reported skipped), against the
// TypeScript reference `referenceGemvHalf` and the reference backend's matmul; bit-identical across thread
// counts; and the cpu backend's matmul routing (which calls reach it, which stay on the GEMM).
import {
  type Buffer,
  type MatmulOptions,
  matmul,
  matmulAccumulate,
  noGrad,
  referenceBackend,
  tensor,
} from "@qlora/tensor";
import { afterAll, describe, expect, it, vi } from "vitest";
import { cpuBackend } from "../src/backend";
import { type GemvHalfNative, referenceGemvHalf, routeHalfGemv } from "../src/gemv-half";
import { loadNative } from "../src/load";
import { getThreads, setThreads } from "../src/threads";
import { isaAccountingTest, isaSuite } from "./isa-paths";
import { randomF32, referenceMatmul, worstRatio } from "./oracle";

interface Native {
  gemvHalf: GemvHalfNative;
  gemmIsa(isa?: string): string;
  isaPaths(): { arch: string };
}
const native = loadNative() as unknown as Native;
const arm64 = native.isaPaths().arch === "arm64";
const threadsBefore = getThreads();
afterAll(() => {
  native.gemmIsa("");
  setThreads(threadsBefore);
});

/** Random bf16 bits in [-1, 1) (f32 truncated). */
function randomBf16(length: number, seed: number): Uint16Array {
  return Uint16Array.from(new Uint32Array(randomF32(length, seed).buffer), (v) => v >>> 16);
}

/** Random f16 bits: normals in ±[2^-14, 2) plus every 7th value a subnormal (exercises vcvtph2ps's edge). */
function randomF16(length: number, seed: number): Uint16Array {
  const r = randomF32(length, seed);
  return Uint16Array.from(r, (v, i) => {
    const sign = v < 0 ? 0x8000 : 0;
    const bits = Math.floor(Math.abs(v) * 2 ** 24) >>> 0;
    if (i % 7 === 0) return sign | (bits & 0x3ff); // exponent 0: subnormal
    return sign | ((1 + (bits % 15)) << 10) | (bits & 0x3ff); // exponents 1..15: |w| < 2
  });
}

function run(m: number, k: number, n: number, transB: boolean, f16: boolean, seed: number) {
  const x = randomF32(m * k, seed);
  const w = f16 ? randomF16(k * n, seed + 1) : randomBf16(k * n, seed + 1);
  const out = new Float32Array(m * n).fill(Number.NaN);
  const path = native.gemvHalf(x, w, out, m, k, n, transB, f16, false);
  return { x, w, out, path };
}

// odd sizes around the 8/16-wide vector steps and the 64-column chunks, both layouts, both half types
const KS = [1, 3, 8, 9, 15, 16, 17, 33, 63, 65, 129, 1027];
const NS = [1, 3, 17, 63, 65, 129, 301];

describe("gemvHalf vs the reference", () => {
  isaSuite("gemm", "gemvHalf", (c) => {
    const expectedPath = c.name === "scalar" || arm64 ? "scalar" : "avx2";
    for (const f16 of [false, true])
      for (const transB of [true, false])
        it(`${c.name}: ${f16 ? "f16" : "bf16"} weight, ${transB ? "[n, k]" : "[k, n]"}, m 1..4, odd k and n`, () => {
          native.gemmIsa(c.name);
          let seed = 1;
          for (let m = 1; m <= 4; m++)
            for (const k of KS)
              for (const n of NS) {
                if (k * n > 40_000 && m > 1) continue; // keep the reference loop small
                const { x, w, out, path } = run(m, k, n, transB, f16, seed++);
                expect(path).toBe(expectedPath);
                const want = referenceGemvHalf(x, w, { m, k, n, transB, f16 });
                expect(worstRatio(out, want, k), `m ${m} k ${k} n ${n}`).toBeLessThanOrEqual(1);
              }
        });
    it(`${c.name}: the reference backend's bf16 matmul agrees with referenceGemvHalf`, () => {
      native.gemmIsa(c.name);
      const [m, k, n] = [3, 65, 63];
      const { x, w, out } = run(m, k, n, true, false, 99);
      const want = referenceMatmul(x, w, { batch: 1, m, k, n, transB: true });
      expect(worstRatio(out, want, k)).toBeLessThanOrEqual(1);
    });
    it(`${c.name}: accumulate adds to out`, () => {
      native.gemmIsa(c.name);
      const [m, k, n] = [2, 129, 301];
      for (const transB of [true, false]) {
        const x = randomF32(m * k, 5);
        const w = randomBf16(k * n, 6);
        const base = randomF32(m * n, 7);
        const out = base.slice();
        native.gemvHalf(x, w, out, m, k, n, transB, false, true);
        const prod = referenceGemvHalf(x, w, { m, k, n, transB, f16: false });
        expect(
          worstRatio(
            out,
            prod.map((v, i) => v + base[i]!),
            k,
          ),
        ).toBeLessThanOrEqual(1);
      }
    });
  });
  isaAccountingTest("gemm");
});

describe("gemvHalf across thread counts", () => {
  it("1, 2, 3 and 5 threads give bit-identical results (many column chunks, both layouts)", () => {
    native.gemmIsa("");
    const [k, n] = [300, 1031]; // 128 columns per chunk → 9 chunks, a ragged last one
    for (const transB of [true, false])
      for (let m = 1; m <= 4; m += 3) {
        const outs = [1, 2, 3, 5].map((t) => {
          setThreads(t);
          return run(m, k, n, transB, false, 11).out;
        });
        for (const o of outs.slice(1)) expect(bitEqual(o, outs[0]!)).toBe(true);
      }
  });
});

function bitEqual(a: Float32Array, b: Float32Array): boolean {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  return ua.length === ub.length && ua.every((v, i) => v === ub[i]);
}

describe("gemvHalf arguments", () => {
  const x = new Float32Array(4);
  const w = new Uint16Array(8);
  const out = new Float32Array(2);
  it("a wrong array type names the argument", () => {
    expect(() => native.gemvHalf(x, new Float32Array(8) as never, out, 1, 4, 2, true, false, false)).toThrow(
      /gemvHalf: w: expected a Uint16Array/,
    );
  });
  it("too short arrays are refused before any read", () => {
    expect(() => native.gemvHalf(x, w, out, 1, 4, 3, true, false, false)).toThrow(/gemvHalf: w: expected at least 12/);
    expect(() => native.gemvHalf(x, w, out, 2, 4, 2, true, false, false)).toThrow(/gemvHalf: x: expected at least 8/);
  });
  it("m outside 1..4 is a RangeError", () => {
    expect(() => native.gemvHalf(x, w, out, 5, 4, 2, true, false, false)).toThrow(RangeError);
    expect(() => native.gemvHalf(x, w, out, 0, 4, 2, true, false, false)).toThrow(/m must be 1..4/);
  });
});

describe("cpu backend routing", () => {
  const spyNative = () => vi.fn<GemvHalfNative>(() => "spy");
  const gemm = vi.fn((_a: Buffer, _b: Buffer, _o: MatmulOptions, c?: Buffer) => c ?? referenceBackend.alloc("f32", 1));
  const host = (data: Float32Array | Uint16Array, dtype: "f32" | "bf16" | "f16") =>
    referenceBackend.fromHost(data, dtype);
  const o = (m: number, extra: Partial<MatmulOptions> = {}): MatmulOptions => ({
    batch: 1,
    m,
    k: 4,
    n: 2,
    transB: true,
    ...extra,
  });

  it("f32 rows m ≤ 4 times a bf16/f16 weight go to the skinny kernel, other calls to the GEMM", () => {
    const g = spyNative();
    gemm.mockClear();
    const mm = routeHalfGemv(g, gemm, referenceBackend);
    const w16 = host(new Uint16Array(8), "bf16");
    const wf16 = host(new Uint16Array(8), "f16");
    const x = (m: number) => host(new Float32Array(4 * m), "f32");
    mm(x(1), w16, o(1));
    mm(x(4), wf16, o(4, { transB: false }));
    expect(g).toHaveBeenCalledTimes(2);
    expect(g.mock.calls[1]!.slice(3)).toEqual([4, 4, 2, false, true, false]);
    mm(x(5), w16, o(5)); // too many rows
    mm(x(1), host(new Float32Array(8), "f32"), o(1)); // f32 weight
    mm(x(1), w16, o(1, { transA: true }));
    mm(x(1), w16, o(1, { batch: 2 }));
    mm(x(1), w16, o(1, { alpha: 0.5 }));
    mm(x(1), w16, o(1, { beta: 0.5 }), host(new Float32Array(2), "f32"));
    expect(g).toHaveBeenCalledTimes(2);
    expect(gemm).toHaveBeenCalledTimes(6);
    mm(x(1), w16, o(1, { beta: 1 }), host(new Float32Array(2), "f32")); // C += A·B: accumulate flag
    expect(g.mock.calls[2]!.at(-1)).toBe(true);
  });

  it("nn.Linear-style x · Wᵀ with a bf16 W on the cpu backend equals the reference backend (m = 1..5)", () => {
    native.gemmIsa("");
    const [k, n] = [67, 131];
    const wBits = randomBf16(n * k, 3);
    for (let m = 1; m <= 5; m++) {
      const xs = randomF32(m * k, 40 + m);
      const got = noGrad(() => {
        const W = tensor(wBits, { dtype: "bf16", shape: [n, k], backend: cpuBackend });
        const X = tensor(xs, { shape: [m, k], backend: cpuBackend });
        const Wt = W.transpose(0, 1);
        const y = matmul(X, Wt);
        const r = y.toTypedArray() as Float32Array;
        for (const t of [W, X, Wt, y]) t.dispose();
        return r;
      });
      const want = referenceMatmul(xs, wBits, { batch: 1, m, k, n, transB: true });
      expect(worstRatio(got, want, k), `m ${m}`).toBeLessThanOrEqual(1);
    }
  });

  it("matmulAccumulate (C += x · W) with a bf16 W on the cpu backend", () => {
    const [m, k, n] = [2, 40, 33];
    const xs = randomF32(m * k, 8);
    const wBits = randomBf16(k * n, 9);
    const cs = randomF32(m * n, 10);
    const got = noGrad(() => {
      const C = tensor(cs, { shape: [m, n], backend: cpuBackend });
      const X = tensor(xs, { shape: [m, k], backend: cpuBackend });
      const W = tensor(wBits, { dtype: "bf16", shape: [k, n], backend: cpuBackend });
      matmulAccumulate(C, X, W);
      const r = C.toTypedArray() as Float32Array;
      for (const t of [C, X, W]) t.dispose();
      return r;
    });
    const prod = referenceMatmul(xs, wBits, { batch: 1, m, k, n });
    expect(
      worstRatio(
        got,
        prod.map((v, i) => v + cs[i]!),
        k,
      ),
    ).toBeLessThanOrEqual(1);
  });
});
