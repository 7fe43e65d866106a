// Fused/elementwise kernels on sizes the parity harness does not reach (long rows that exercise the
// vector bodies and their tails, many-thread splits), cast edge cases, and argument errors.
// Oracle: the reference backend. Tolerances: exact for copies/casts/fill/embedding/max-reduce;
// 1e-6 + 1e-5·|want| for single-rounding elementwise math (our f32 exp polynomial is ≤ 2 ulp);
// 1e-6 + 1e-4·|want| (+ 1e-5·max|want|) for long f32 accumulations (softmax sums over 1000+ terms).
import {
  type Backend,
  type Buffer,
  type DType,
  type HostArray,
  type HostBuffer,
  referenceBackend,
  type StridedView,
} from "@qlora/tensor";
import { afterAll, describe, expect, it } from "vitest";
import { isaAccountingTest, isaSuite } from "../test/isa-paths";
import { createFusedOps, type FusedNative } from "./fused";
import { loadNative } from "./load";
import { rand } from "./rand.test-util";

const native = loadNative() as unknown as FusedNative;
const fused = createFusedOps(() => native) as Backend;
const ref = referenceBackend;
// Every ISA level this host cannot run is reported as a skipped test (test/isa-paths.ts).
const levels = isaSuite("fused", "elementwise long-row tests").map((c) => c.level);
isaAccountingTest("fused");
afterAll(() => native.setFusedIsaLevel(2));

const f = (a: ArrayLike<number>) => ref.fromHost(Float32Array.from(a), "f32");
const host = (b: Buffer): HostArray => (b as HostBuffer).data;

function close(got: Buffer, want: Buffer, atol: number, rtol: number, stol = 0): void {
  const g = host(got);
  const w = host(want);
  expect(got.dtype).toBe(want.dtype);
  expect(g.length).toBe(w.length);
  let max = 0;
  for (let i = 0; i < w.length; i++) if (Number.isFinite(w[i])) max = Math.max(max, Math.abs(w[i]));
  for (let i = 0; i < w.length; i++) {
    const tol = atol + rtol * Math.abs(w[i]) + stol * max;
    if (g[i] !== w[i] && !(Math.abs(g[i] - w[i]) <= tol) && !(Number.isNaN(g[i]) && Number.isNaN(w[i])))
      throw new Error(`element ${i}: got ${g[i]}, want ${w[i]}`);
  }
}
const exact = (got: Buffer, want: Buffer) => expect([...host(got)]).toEqual([...host(want)]);

describe.each(levels)("ISA level %i: long rows", (level) => {
  it("softmax + backward, rows of 1000–1037 (vector bodies + tails)", () => {
    native.setFusedIsaLevel(level);
    for (const n of [1000, 1037]) {
      const rows = 7;
      const x = f(rand(rows * n, n, -20, 20));
      const dy = f(rand(rows * n, n + 1));
      const y = fused.softmax(x, rows, n);
      close(y, ref.softmax(x, rows, n), 1e-6, 1e-4, 1e-5);
      close(fused.softmaxBackward(dy, y, rows, n), ref.softmaxBackward(dy, y, rows, n), 1e-6, 1e-4, 1e-5);
    }
  });

  it("cross-entropy + backward, vocab 3001, with ignored rows", () => {
    native.setFusedIsaLevel(level);
    const rows = 9;
    const vocab = 3001;
    const logits = f(rand(rows * vocab, 3, -30, 30));
    const labels = ref.fromHost(Int32Array.from([0, 3000, -100, 17, 2999, -100, 5, 1234, 42]), "i32");
    const dloss = f(rand(rows, 4));
    const a = fused.crossEntropy(logits, labels, rows, vocab, -100);
    const b = ref.crossEntropy(logits, labels, rows, vocab, -100);
    close(a.loss, b.loss, 1e-5, 1e-5);
    close(a.lse, b.lse, 1e-5, 1e-6);
    expect(host(a.loss)[2]).toBe(0);
    close(
      fused.crossEntropyBackward(dloss, logits, labels, a.lse, rows, vocab, -100),
      ref.crossEntropyBackward(dloss, logits, labels, b.lse, rows, vocab, -100),
      1e-7,
      1e-4,
    );
  });

  it("swiglu + backward on 100003 elements (several threads, odd tail)", () => {
    native.setFusedIsaLevel(level);
    const n = 100003;
    const g = f(rand(n, 5, -12, 12));
    const u = f(rand(n, 6));
    const dy = f(rand(n, 7));
    close(fused.swiglu(g, u, n), ref.swiglu(g, u, n), 1e-6, 1e-5);
    const a = fused.swigluBackward(dy, g, u, n);
    const b = ref.swigluBackward(dy, g, u, n);
    close(a.dgate, b.dgate, 1e-6, 1e-5);
    close(a.dup, b.dup, 1e-6, 1e-5);
  });
});

describe("large and strided primitives", () => {
  it("rmsNorm + backward, 33 rows × 4099", () => {
    const [rows, dim] = [33, 4099];
    const x = f(rand(rows * dim, 8, -3, 3));
    const w = f(rand(dim, 9));
    const dy = f(rand(rows * dim, 10));
    const a = fused.rmsNorm(x, w, rows, dim, 1e-6);
    const b = ref.rmsNorm(x, w, rows, dim, 1e-6);
    close(a.y, b.y, 1e-6, 1e-5);
    close(a.rstd, b.rstd, 0, 1e-6);
    const ga = fused.rmsNormBackward(dy, x, w, b.rstd, rows, dim);
    const gb = ref.rmsNormBackward(dy, x, w, b.rstd, rows, dim);
    close(ga.dx, gb.dx, 1e-6, 1e-4, 1e-5);
    close(ga.dweight, gb.dweight, 1e-6, 1e-4, 1e-5);
  });

  it("rope forward and inverse (inverse undoes forward)", () => {
    const o = { batch: 2, seq: 37, heads: 3, headDim: 64, theta: 10000 };
    const n = o.batch * o.seq * o.heads * o.headDim;
    const x = f(rand(n, 11));
    const pos = ref.fromHost(
      Int32Array.from({ length: o.batch * o.seq }, (_, i) => (i * 37) % 4096),
      "i32",
    );
    const y = fused.rope(x, pos, o);
    close(y, ref.rope(x, pos, o), 1e-5, 1e-4);
    close(fused.rope(y, pos, { ...o, inverse: true }), x, 1e-5, 1e-4);
  });

  it("binary with broadcast (0-stride) and transposed views, every op", () => {
    const shape = [5, 7, 33];
    const a = f(rand(7 * 5 * 33 + 3, 12, -3, 3));
    const b = f(rand(33, 13, 0.5, 2));
    const aView = { shape, strides: [33, 5 * 33, 1], offset: 3 }; // [5,7,...] read as a transpose of [7,5,33]
    const bView = { shape, strides: [0, 0, 1], offset: 0 };
    for (const op of ["add", "sub", "mul", "div", "max", "min", "pow", "eq", "gt", "lt"] as const) {
      close(fused.binary(op, a, aView, b, bView, shape), ref.binary(op, a, aView, b, bView, shape), 1e-6, 1e-5);
    }
  });

  it("reduce sum/max/min over the middle axis, 70000 elements", () => {
    const [outer, size, inner] = [7, 1000, 10];
    const x = f(rand(outer * size * inner, 14, -5, 5));
    close(fused.reduce("sum", x, outer, size, inner), ref.reduce("sum", x, outer, size, inner), 1e-5, 1e-6);
    exact(fused.reduce("max", x, outer, size, inner), ref.reduce("max", x, outer, size, inner));
    exact(fused.reduce("min", x, 1, outer * size * inner, 1), ref.reduce("min", x, 1, outer * size * inner, 1));
  });

  it("unary ops on a long array with special values", () => {
    const vals = rand(50001, 15, -10, 10);
    vals.set([0, -0, NaN, Infinity, -Infinity, 1e-30, -1e-30, 88, -88, 100]);
    const x = f(vals);
    for (const op of [
      "neg",
      "exp",
      "log",
      "sqrt",
      "rsqrt",
      "abs",
      "sigmoid",
      "silu",
      "relu",
      "tanh",
      "recip",
      "square",
      "sign",
    ] as const)
      close(fused.unary(op, x, vals.length), ref.unary(op, x, vals.length), 1e-6, 1e-5);
  });
});

describe("copy / cast / fill", () => {
  const special = [
    0,
    -0,
    1,
    -1,
    0.5,
    1.5,
    2.5,
    -2.5,
    65504,
    65520,
    1e-8,
    6e-8,
    -3e38,
    3e38,
    4.2e9,
    -4.2e9,
    255.9,
    256,
    -1.5,
    NaN,
    Infinity,
    -Infinity,
    1.00390625,
    1.01171875,
  ];
  const dtypes: DType[] = ["f32", "f16", "bf16", "i32", "u8", "bool"];
  it("every dtype pair on special values matches the reference bit for bit", () => {
    const src = f(special);
    for (const from of dtypes) {
      const x = ref.copy(src, { shape: [special.length], strides: [1], offset: 0 }, from);
      for (const to of dtypes) {
        const view = { shape: [special.length], strides: [1], offset: 0 };
        exact(fused.copy(x, view, to), ref.copy(x, view, to));
      }
    }
  });

  it("strided gather from a 4-d view with negative-free permuted strides, f32→bf16", () => {
    const x = f(rand(3 * 4 * 5 * 6, 16, -100, 100));
    const view = { shape: [6, 5, 4, 3], strides: [1, 6, 30, 120], offset: 0 };
    exact(fused.copy(x, view, "bf16"), ref.copy(x, view, "bf16"));
    const bcast = { shape: [4, 3, 100], strides: [0, 1, 0], offset: 7 };
    exact(fused.copy(x, bcast, "f32"), ref.copy(x, bcast, "f32"));
  });

  it("copyInPlace into a strided slice, with a cast", () => {
    const dst = ref.alloc("bf16", 4 * 10);
    const dst2 = ref.alloc("bf16", 4 * 10);
    const src = f(rand(12, 17, -4, 4));
    const dv = { shape: [4, 3], strides: [10, 2], offset: 1 };
    const sv = { shape: [4, 3], strides: [1, 4], offset: 0 };
    fused.copyInPlace!(dst, dv, src, sv);
    ref.copyInPlace!(dst2, dv, src, sv);
    exact(dst, dst2);
  });

  it("a large f32→bf16→f32 round trip across threads matches the reference bit for bit", () => {
    const n = 300007;
    const x = f(rand(n, 24, -1e4, 1e4));
    const view = { shape: [n], strides: [1], offset: 0 };
    const a = fused.copy(x, view, "bf16");
    exact(a, ref.copy(x, view, "bf16"));
    exact(fused.copy(a, view, "f32"), ref.copy(a, view, "f32"));
  });

  it("copyInPlace within one buffer (overlapping views) and unary on bf16 are delegated, with the reference's result", () => {
    const vals = rand(20, 25, -3, 3);
    const d1 = f(vals);
    const d2 = f(vals);
    const dv = { shape: [10], strides: [1], offset: 5 };
    const sv = { shape: [10], strides: [1], offset: 0 };
    fused.copyInPlace!(d1, dv, d1, sv);
    ref.copyInPlace!(d2, dv, d2, sv);
    exact(d1, d2);
    const xb = ref.copy(f(vals), { shape: [20], strides: [1], offset: 0 }, "bf16");
    exact(fused.unary("exp", xb, 20), ref.unary("exp", xb, 20));
  });

  // The fused ops over the addon with axpyF32 counted: shows which addInPlace calls ran natively.
  function countingAxpy(): { ops: Backend; calls: () => number } {
    let calls = 0;
    const ops = createFusedOps(() => ({
      ...native,
      axpyF32: (...a) => {
        calls++;
        return native.axpyF32(...a);
      },
    })) as Backend;
    return { ops, calls: () => calls };
  }

  it("addInPlace: dense f32 runs natively across threads and matches the reference bit for bit (alpha 1, -0.37, 1e-3)", () => {
    const n = 300007;
    const src = f(rand(n, 26, -1e3, 1e3));
    const { ops, calls } = countingAxpy();
    for (const alpha of [1, -0.37, 1e-3]) {
      const d1 = f(rand(n + 5, 27, -1e3, 1e3));
      const d2 = f(host(d1));
      const dv = { shape: [n], strides: [1], offset: 5 };
      const sv = { shape: [n], strides: [1], offset: 0 };
      ops.addInPlace!(d1, dv, src, sv, alpha);
      ref.addInPlace!(d2, dv, src, sv, alpha);
      exact(d1, d2);
    }
    const matrix = { shape: [4, 6], strides: [6, 1], offset: 0 };
    ops.addInPlace!(f(rand(24, 28)), matrix, f(rand(24, 29)), matrix, 1);
    expect(calls()).toBe(4);
  });

  it("addInPlace: broadcast, strided, bf16 and overlapping views are delegated, with the reference's result", () => {
    const vals = rand(40, 30, -3, 3);
    const { ops, calls } = countingAxpy();
    const dense = { shape: [4, 6], strides: [6, 1], offset: 0 };
    const all = { shape: [40], strides: [1], offset: 0 };
    const cases: [Buffer, StridedView, Buffer, StridedView][] = [
      [f(vals), dense, f(rand(6, 31)), { shape: [4, 6], strides: [0, 1], offset: 0 }], // broadcast row
      [f(vals), { shape: [4, 6], strides: [1, 4], offset: 0 }, f(rand(24, 32)), dense], // transposed dst
      [ref.copy(f(vals), all, "bf16"), dense, f(rand(24, 33)), dense], // bf16 dst
    ];
    const shared = f(vals); // src and dst overlap: elements 3..22 += elements 0..19
    cases.push([shared, { shape: [20], strides: [1], offset: 3 }, shared, { shape: [20], strides: [1], offset: 0 }]);
    for (const [dst, dv, src, sv] of cases) {
      const want = ref.copy(dst, all, dst.dtype);
      ref.addInPlace!(want, dv, dst === src ? want : src, sv, 0.5);
      ops.addInPlace!(dst, dv, src, sv, 0.5);
      exact(dst, want);
    }
    expect(calls()).toBe(0);
    // Two views of one buffer that do not overlap run natively, with the reference's result.
    const b1 = f(vals);
    const b2 = f(vals);
    const lower = { shape: [20], strides: [1], offset: 0 };
    const upper = { shape: [20], strides: [1], offset: 20 };
    ops.addInPlace!(b1, lower, b1, upper, -0.37);
    ref.addInPlace!(b2, lower, b2, upper, -0.37);
    exact(b1, b2);
    expect(calls()).toBe(1);
  });

  it("fill every dtype", () => {
    for (const dt of dtypes)
      for (const v of [0, -2.7, 1.5, 300, NaN]) exact(fused.fill(dt, 37, v), ref.fill(dt, 37, v));
  });
});

describe("embedding and adamw", () => {
  it("embedding gather and scatter-add backward with repeated ids", () => {
    const [vocab, dim, count] = [50, 67, 300];
    const w = f(rand(vocab * dim, 18));
    const ids = ref.fromHost(
      Int32Array.from({ length: count }, (_, i) => (i * 7) % vocab),
      "i32",
    );
    const dy = f(rand(count * dim, 19));
    exact(fused.embedding(w, ids, count, dim), ref.embedding(w, ids, count, dim));
    close(
      fused.embeddingBackward(dy, ids, count, dim, vocab),
      ref.embeddingBackward(dy, ids, count, dim, vocab),
      1e-6,
      1e-5,
    );
  });

  it("an id outside [0, vocab) is a RangeError naming its index", () => {
    const w = f(rand(10 * 4, 20));
    const ids = ref.fromHost(Int32Array.from([1, 2, 10, 3]), "i32");
    expect(() => fused.embedding(w, ids, 4, 4)).toThrow(RangeError);
    expect(() => fused.embedding(w, ids, 4, 4)).toThrow(/ids\[2\] = 10/);
    expect(() =>
      fused.embeddingBackward(f(new Float32Array(16)), ref.fromHost(Int32Array.from([0, -1, 0, 0]), "i32"), 4, 4, 10),
    ).toThrow(/ids\[1\] = -1/);
  });

  it("a label outside [0, vocab) is a RangeError naming its row", () => {
    const labels = ref.fromHost(Int32Array.from([1, 7]), "i32");
    expect(() => fused.crossEntropy(f(new Float32Array(10)), labels, 2, 5, -100)).toThrow(/labels\[1\] = 7/);
  });

  it("adamw (f32 and bf16 grads) matches the reference step for step", () => {
    const n = 40003;
    for (const gradDtype of ["f32", "bf16"] as const) {
      const p = [rand(n, 21), rand(n, 21)].map((a) => f(a));
      const m = [ref.alloc("f32", n), ref.alloc("f32", n)];
      const v = [ref.alloc("f32", n), ref.alloc("f32", n)];
      for (let step = 1; step <= 3; step++) {
        const g = ref.copy(f(rand(n, 22 + step)), { shape: [n], strides: [1], offset: 0 }, gradDtype);
        const o = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step };
        fused.adamwStepInPlace(p[0], g, m[0], v[0], n, o);
        ref.adamwStepInPlace(p[1], g, m[1], v[1], n, o);
      }
      close(p[0], p[1], 1e-7, 1e-6);
      close(m[0], m[1], 1e-9, 1e-6);
      close(v[0], v[1], 1e-12, 1e-6);
    }
  });
});

describe("argument checks in the native layer", () => {
  it("a view reaching outside its buffer is a RangeError, not a read out of bounds", () => {
    const x = new Float32Array(10);
    const y = new Float32Array(20);
    expect(() => native.copy(x, 0, 5, [1], [20], y, 0, 0, [1])).toThrow(/srcView/);
    expect(() => native.binaryF32(0, x, 0, [1], x, 0, [2], [10], y)).toThrow(/bView/);
    expect(() => native.axpyF32(y, 15, x, 0, 10, 1)).toThrow(/argument dst must be at least 25/);
    expect(() => native.axpyF32(y, 0, x, 2, 10, 1)).toThrow(/argument src must be at least 12/);
  });
  it("wrong types and short outputs name the argument", () => {
    expect(() => native.softmax(new Float32Array(6), new Float32Array(5), 2, 3)).toThrow(
      /argument y must be at least 6/,
    );
    expect(() =>
      native.rmsNorm(
        new Float32Array(6),
        new Int32Array(3) as never,
        new Float32Array(6),
        new Float32Array(2),
        2,
        3,
        1e-6,
      ),
    ).toThrow(TypeError);
    expect(() =>
      native.rope(new Float32Array(6), new Int32Array(1), new Float32Array(6), 1, 1, 1, 3, 1e4, false),
    ).toThrow(/headDim/);
  });
  it("the fused ops use the shared allocator (one set of memory counters)", () => {
    const before = ref.memoryStats().currentBytes;
    const y = fused.softmax(f(rand(64, 23)), 8, 8);
    expect(ref.memoryStats().currentBytes).toBeGreaterThanOrEqual(before + 64 * 4);
    ref.free(y);
  });
});
