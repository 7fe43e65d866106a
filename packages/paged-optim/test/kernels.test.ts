// The native cpu kernels (packages/cpu-kernels/csrc/optim.cc) against the TypeScript references, bit
// for bit, on odd sizes (vector tails, partial 256-blocks, several threads' chunks), over several steps
// so that the states evolve; and the building blocks (fmaf, the exact 8-bit code search).
import { loadNative } from "@qlora/cpu-kernels";
import { DYNAMIC_MAP_SIGNED, DYNAMIC_MAP_UNSIGNED, quantize8bitValue } from "@qlora/nf4";
import { type Backend, type Buffer, referenceBackend } from "@qlora/tensor";
import { describe, expect, it } from "vitest";
import { fmaf, kernelsFor, type OptimizerKernels, referenceKernels } from "../src/index";
import { CPU_NATIVE, normals } from "./helpers";

const SIZES = [1, 7, 8, 255, 256, 257, 1000, 4097, 70_001];

function bufs(be: Backend, arrays: Record<string, Float32Array | Uint8Array>): Record<string, Buffer> {
  const out: Record<string, Buffer> = {};
  for (const [k, a] of Object.entries(arrays)) out[k] = be.fromHost(a.slice(), a instanceof Uint8Array ? "u8" : "f32");
  return out;
}

function expectSame(be: Backend, a: Record<string, Buffer>, b: Record<string, Buffer>, what: string): void {
  for (const k of Object.keys(a)) {
    const x = be.toHost(a[k]);
    const y = referenceBackend.toHost(b[k]);
    let bad = -1;
    for (let i = 0; i < x.length; i++)
      if (!Object.is(x[i], y[i])) {
        bad = i;
        break;
      }
    if (bad >= 0) expect.fail(`${what}: ${k}[${bad}] native ${x[bad]} vs reference ${y[bad]}`);
  }
}

type Run = (k: OptimizerKernels, b: Record<string, Buffer>, n: number, step: number) => void;

const OPS: [string, (n: number) => Record<string, Float32Array | Uint8Array>, Run][] = [
  [
    "adamw32",
    (n) => ({ p: normals(n, 1), m: new Float32Array(n), v: new Float32Array(n) }),
    (k, b, n, t) =>
      k.adamw32(b.p, b.g, b.m, b.v, n, { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: t }),
  ],
  [
    "adamw8bit",
    (n) => ({
      p: normals(n, 2, 0.1),
      s1: new Uint8Array(n).fill(127),
      s2: new Uint8Array(n),
      a1: new Float32Array(Math.ceil(n / 256)),
      a2: new Float32Array(Math.ceil(n / 256)),
      q1: DYNAMIC_MAP_SIGNED,
      q2: DYNAMIC_MAP_UNSIGNED,
    }),
    (k, b, n, t) =>
      k.adamw8bit(b.p, b.g, { state1: b.s1, state2: b.s2, absmax1: b.a1, absmax2: b.a2, qmap1: b.q1, qmap2: b.q2 }, n, {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weightDecay: t % 2 ? 0.01 : 0,
        step: t,
      }),
  ],
  [
    "lion32",
    (n) => ({ p: normals(n, 3), m: new Float32Array(n) }),
    (k, b, n) => k.lion32(b.p, b.g, b.m, n, { lr: 1e-4, beta1: 0.9, beta2: 0.99, weightDecay: 0.1 }),
  ],
  [
    "lion8bit",
    (n) => ({
      p: normals(n, 4),
      s1: new Uint8Array(n).fill(127),
      a1: new Float32Array(Math.ceil(n / 256)),
      q1: DYNAMIC_MAP_SIGNED,
    }),
    (k, b, n) =>
      k.lion8bit(b.p, b.g, { state1: b.s1, absmax1: b.a1, qmap1: b.q1 }, n, {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.99,
        weightDecay: 0.1,
      }),
  ],
  [
    "sgd (momentum, dampening, decay)",
    (n) => ({ p: normals(n, 5), buf: new Float32Array(n) }),
    (k, b, n, t) =>
      k.sgd(
        b.p,
        b.g,
        b.buf,
        n,
        { lr: 0.01, momentum: 0.9, dampening: 0.1, nesterov: false, weightDecay: 0.01 },
        t === 1,
      ),
  ],
  [
    "sgd (nesterov)",
    (n) => ({ p: normals(n, 6), buf: new Float32Array(n) }),
    (k, b, n, t) =>
      k.sgd(b.p, b.g, b.buf, n, { lr: 0.02, momentum: 0.8, dampening: 0, nesterov: true, weightDecay: 0 }, t === 1),
  ],
  [
    "sgd (no momentum)",
    (n) => ({ p: normals(n, 7) }),
    (k, b, n) =>
      k.sgd(b.p, b.g, null, n, { lr: 0.1, momentum: 0, dampening: 0, nesterov: false, weightDecay: 0.001 }, true),
  ],
];

describe.skipIf(!CPU_NATIVE)("cpu optimizer kernels equal the TypeScript references bit for bit", async () => {
  const { cpuBackend } = await import("@qlora/cpu-kernels");
  /** The same start state on both backends, four steps of `run` with gradient(step) each, compared bit for bit. */
  function stepBothFourTimes(
    init: (n: number) => Record<string, Float32Array | Uint8Array>,
    run: Run,
    n: number,
    gradient: (step: number) => Float32Array,
  ): void {
    const start = init(n);
    const nat = bufs(cpuBackend, start);
    const ref = bufs(referenceBackend, start);
    for (let step = 1; step <= 4; step++) {
      const g = gradient(step);
      nat.g = cpuBackend.fromHost(g, "f32");
      ref.g = referenceBackend.fromHost(g, "f32");
      run(kernelsFor(cpuBackend), nat, n, step);
      run(referenceKernels, ref, n, step);
      expectSame(cpuBackend, nat, ref, `n=${n} step ${step}`);
    }
  }
  it("the cpu backend serves every update op natively", () => {
    expect(kernelsFor(cpuBackend).source).toBe("native");
    expect(kernelsFor(referenceBackend).source).toBe("reference");
  });
  it.each(OPS)("%s on sizes 1 … 70001 over 4 steps", (_name, init, run) => {
    for (const n of SIZES)
      stepBothFourTimes(init, run, n, (step) => {
        const g = normals(n, 100 + step, 0.01 * step);
        if (n > 300) {
          g[3] = Number.NaN; // non-finite gradients: 8-bit kernels reset the state, 32-bit ones propagate
          g[299] = Number.POSITIVE_INFINITY;
        }
        return g;
      });
  });
  it.each(OPS.filter(([name]) => name.includes("8bit")))(
    "%s after a finite gradient near float32's maximum (v overflows to inf, then NaN blocks)",
    (_name, init, run) => {
      // g² overflows v to inf, so the block's absmax becomes inf and the next dequantization 0·inf = NaN:
      // a NaN must never become a block maximum (bitsandbytes' fmaxf; the native max_ps / `x > acc` rule).
      const n = 600;
      stepBothFourTimes(init, run, n, (step) => {
        const g = normals(n, 200 + step, 0.01);
        if (step === 1) g[5] = 3e38;
        return g;
      });
    },
  );
  it("sum of squares (f64) and in-place scale", () => {
    const k = kernelsFor(cpuBackend);
    for (const n of SIZES) {
      const x = normals(n, 9, 3);
      const want = referenceKernels.sumSquares(referenceBackend.fromHost(x, "f32"), n);
      const got = k.sumSquares(cpuBackend.fromHost(x, "f32"), n);
      expect(Math.abs(got - want)).toBeLessThanOrEqual(1e-13 * want);
      const a = cpuBackend.fromHost(x, "f32");
      const b = referenceBackend.fromHost(x, "f32");
      k.scale?.(a, n, 0.3);
      referenceKernels.scale?.(b, n, 0.3);
      expect(cpuBackend.toHost(a)).toEqual(referenceBackend.toHost(b));
    }
  });
  it("the native 8-bit code search (scalar and AVX2) equals bitsandbytes' literal binary search", () => {
    const native = loadNative() as unknown as {
      optimQuantize8bit(q: Float32Array, y: Float32Array, o: Uint8Array, scalarOnly: boolean): void;
    };
    for (const qmap of [DYNAMIC_MAP_SIGNED, DYNAMIC_MAP_UNSIGNED]) {
      // every decision boundary ±3 floats, exact code values, ±0, ±1, ±inf, NaN, and 200k random values
      const ys: number[] = [0, -0, 1, -1, 2, -2, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, Number.NaN];
      const bits = new Float32Array(1);
      const ints = new Int32Array(bits.buffer);
      for (let c = 0; c < 256; c++) {
        ys.push(qmap[c]);
        if (c < 255) {
          bits[0] = Math.fround((qmap[c] + qmap[c + 1]) / 2);
          const base = ints[0];
          for (let d = -3; d <= 3; d++) {
            ints[0] = base + d;
            ys.push(bits[0]);
          }
        }
      }
      const rnd = normals(200_000, 11, 0.5);
      for (let i = 0; i < rnd.length; i++) ys.push(i % 3 === 0 ? rnd[i] * 1e-4 : rnd[i]);
      const y = Float32Array.from(ys);
      for (const scalarOnly of [true, false]) {
        const out = new Uint8Array(y.length);
        native.optimQuantize8bit(qmap, y, out, scalarOnly);
        for (let i = 0; i < y.length; i++)
          if (out[i] !== quantize8bitValue(qmap, y[i]))
            expect.fail(
              `y=${y[i]} (scalarOnly ${scalarOnly}): native ${out[i]}, literal ${quantize8bitValue(qmap, y[i])}`,
            );
      }
    }
  });
});

describe("fmaf (one rounding, as C fmaf / AVX2 vfmadd)", () => {
  // a·b + c lands exactly between two floats in double, but the exact value is just below: the naive
  // double-then-float rounding would round up (ties to even), fmaf must not.
  const a = Math.fround(2 ** -24 * (1 + 2 ** -18));
  const b = Math.fround(1 - 2 ** -18);
  const c = Math.fround(1 + 2 ** -23);
  it("rounds once where double-then-float rounding would round twice", () => {
    expect(Math.fround(a * b + c)).toBe(1 + 2 ** -22);
    expect(fmaf(a, b, c)).toBe(1 + 2 ** -23);
    expect(fmaf(-a, b, -c)).toBe(-(1 + 2 ** -23));
    expect(fmaf(2, 3, 1)).toBe(7);
    expect(fmaf(0, 5, -0)).toBe(0);
  });
  it.skipIf(!CPU_NATIVE)("agrees with the native kernels' FMA on that case (scalar and AVX2 lanes)", async () => {
    const { cpuBackend } = await import("@qlora/cpu-kernels");
    for (const n of [1, 9]) {
      const p = cpuBackend.fromHost(new Float32Array(n).fill(c), "f32");
      const g = cpuBackend.fromHost(new Float32Array(n).fill(-b), "f32");
      // SGD without momentum or decay: p = fma(−lr, g, p) = fma(a, b, c)
      kernelsFor(cpuBackend).sgd(
        p,
        g,
        null,
        n,
        { lr: a, momentum: 0, dampening: 0, nesterov: false, weightDecay: 0 },
        true,
      );
      expect([...cpuBackend.toHost(p)]).toEqual(new Array(n).fill(1 + 2 ** -23));
    }
  });
});
