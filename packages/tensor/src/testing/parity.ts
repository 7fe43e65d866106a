/**
 * Backend parity harness: every op of the Backend interface, on random shapes (odd sizes, strided and
 * broadcast views), compared with the reference backend within dtype tolerance. Framework-free: each
 * case throws a ParityError describing the first mismatch. `backendParitySuite` (./suite) wraps it for vitest.
 *
 * Tolerance: |got − want| ≤ atol + rtol·|want| + stol·max|want| per element (stol absorbs accumulation-order
 * differences in long sums); "exact" compares bit patterns. Output dtype and length must match exactly.
 */
import { createReferenceBackend } from "../backend/reference";
import type { Backend, Buffer, DType, HostArray, QuantizedWeightBuffers, StridedView } from "../backend/types";
import { bf16BitsToF32, f16BitsToF32, f32ToBf16, f32ToF16 } from "../internal/half";
import { Generator } from "../random";

export class ParityError extends Error {
  readonly code = "PARITY_MISMATCH";
  constructor(message: string) {
    super(message);
    this.name = "ParityError";
  }
}

export interface Tolerance {
  readonly atol: number;
  readonly rtol: number;
  readonly stol?: number;
}
export const EXACT = "exact" as const;
/** Elementwise f32 math (libm differences only). */
export const TOL_F32: Tolerance = { atol: 1e-6, rtol: 1e-5 };
/** Accumulating f32 ops (matmul, reductions, attention, norms). */
export const TOL_ACC: Tolerance = { atol: 1e-6, rtol: 1e-4, stol: 1e-5 };

export interface ParityCase {
  readonly op: string;
  readonly name: string;
  run(target: Backend, reference: Backend): void;
}

// ---------------------------------------------------------------- helpers

class Rng {
  private readonly g: Generator;
  constructor(seed: number) {
    this.g = new Generator(seed);
  }
  uniform(n: number, lo = -1, hi = 1): Float32Array {
    const u = this.g.uniform(n);
    for (let i = 0; i < n; i++) u[i] = lo + (hi - lo) * u[i];
    return u;
  }
  normal(n: number, scale = 1): Float32Array {
    const z = this.g.normal(n);
    if (scale !== 1) for (let i = 0; i < n; i++) z[i] *= scale;
    return z;
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.g.uniform(1)[0] * (hi - lo + 1));
  }
  ints(n: number, lo: number, hi: number): Int32Array {
    const u = this.g.uniform(n);
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) out[i] = lo + Math.floor(u[i] * (hi - lo + 1));
    return out;
  }
  bytes(n: number): Uint8Array {
    const u = this.g.uniform(n);
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = Math.floor(u[i] * 256);
    return out;
  }
}

function hostData(dtype: DType, values: ArrayLike<number>): HostArray {
  switch (dtype) {
    case "f32":
      return Float32Array.from(values);
    case "bf16":
      return f32ToBf16(values);
    case "f16":
      return f32ToF16(values);
    case "i32":
      return Int32Array.from(values, (v) => Math.trunc(v));
    case "u8":
      return Uint8Array.from(values, (v) => Math.trunc(v) & 0xff);
    case "bool":
      return Uint8Array.from(values, (v) => (v !== 0 ? 1 : 0));
  }
}

function decode(dtype: DType, data: HostArray): Float64Array {
  const out = new Float64Array(data.length);
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    out[i] = dtype === "bf16" ? bf16BitsToF32(v) : dtype === "f16" ? f16BitsToF32(v) : v;
  }
  return out;
}

function compare(what: string, target: Backend, got: Buffer, want: Buffer, tol: Tolerance | typeof EXACT): void {
  if (got.dtype !== want.dtype)
    throw new ParityError(`${what}: ${target.name} returned dtype ${got.dtype}, reference ${want.dtype}`);
  if (got.length !== want.length)
    throw new ParityError(`${what}: ${target.name} returned length ${got.length}, reference ${want.length}`);
  const g = target.toHost(got);
  const w = (want as unknown as { data: HostArray }).data;
  if (tol === EXACT) {
    for (let i = 0; i < w.length; i++) {
      const same = g[i] === w[i] || (Number.isNaN(g[i]) && Number.isNaN(w[i]));
      if (!same)
        throw new ParityError(
          `${what}: element ${i} is ${g[i]} on ${target.name}, reference ${w[i]} (exact match required)`,
        );
    }
    return;
  }
  const gd = decode(got.dtype, g);
  const wd = decode(want.dtype, w);
  let maxAbs = 0;
  for (const v of wd) if (Number.isFinite(v)) maxAbs = Math.max(maxAbs, Math.abs(v));
  const halfTol = got.dtype === "bf16" ? 2 ** -8 : got.dtype === "f16" ? 2 ** -11 : 0;
  for (let i = 0; i < wd.length; i++) {
    const a = gd[i];
    const b = wd[i];
    if (Number.isNaN(b) || !Number.isFinite(b)) {
      if (!(Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b))))
        throw new ParityError(`${what}: element ${i} is ${a} on ${target.name}, reference ${b}`);
      continue;
    }
    const bound = tol.atol + (tol.rtol + halfTol) * Math.abs(b) + (tol.stol ?? 0) * maxAbs;
    if (!(Math.abs(a - b) <= bound)) {
      throw new ParityError(
        `${what}: element ${i} is ${a} on ${target.name}, reference ${b} (|diff| ${Math.abs(a - b)} > ${bound})`,
      );
    }
  }
}

/** Upload the same host arrays to both backends; run; compare named outputs; free everything. */
function both<T extends Record<string, Buffer>>(
  what: string,
  target: Backend,
  reference: Backend,
  inputs: Record<string, { dtype: DType; values: ArrayLike<number> }>,
  call: (be: Backend, inp: Record<string, Buffer>) => T,
  tol: Partial<Record<keyof T, Tolerance | typeof EXACT>> & { default: Tolerance | typeof EXACT },
): void {
  const up = (be: Backend) => {
    const r: Record<string, Buffer> = {};
    for (const [k, v] of Object.entries(inputs)) r[k] = be.fromHost(hostData(v.dtype, v.values), v.dtype);
    return r;
  };
  const ti = up(target);
  const ri = up(reference);
  try {
    const to = call(target, ti);
    const ro = call(reference, ri);
    try {
      for (const key of Object.keys(ro))
        compare(`${what} [${key}]`, target, to[key], ro[key], tol[key as keyof T] ?? tol.default);
    } finally {
      for (const b of Object.values(to)) target.free(b);
      for (const b of Object.values(ro)) reference.free(b);
    }
  } finally {
    for (const b of Object.values(ti)) target.free(b);
    for (const b of Object.values(ri)) reference.free(b);
  }
}

function contiguousStrides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/** A random non-trivial view into a buffer of `length`: permuted, offset, sometimes broadcast. */
function randomView(rng: Rng, shape: number[], allowBroadcast: boolean): { view: StridedView; length: number } {
  // base tensor with one extra padding element per dim, permuted
  const rank = shape.length;
  const perm = [...Array(rank).keys()];
  for (let i = rank - 1; i > 0; i--) {
    const j = rng.int(0, i);
    [perm[i], perm[j]] = [perm[j], perm[i]];
  }
  const baseShape = perm.map((p) => shape[p] + rng.int(0, 1));
  const baseStrides = contiguousStrides(baseShape);
  const strides = new Array<number>(rank);
  for (let i = 0; i < rank; i++) strides[perm[i]] = baseStrides[i];
  let offset = 0;
  for (let i = 0; i < rank; i++) {
    const slack = baseShape[i] - shape[perm[i]];
    if (slack > 0) offset += rng.int(0, slack) * baseStrides[i];
  }
  if (allowBroadcast) for (let i = 0; i < rank; i++) if (shape[i] > 1 && rng.int(0, 3) === 0) strides[i] = 0;
  const length = baseShape.reduce((a, b) => a * b, 1);
  return { view: { shape, strides, offset }, length };
}

function randomQuantWeight(
  rng: Rng,
  be: Backend,
  n: number,
  k: number,
  quantType: "nf4" | "fp4",
  nested: boolean,
  blocksize: number,
  data: ReturnType<typeof quantData>,
): QuantizedWeightBuffers {
  void rng;
  return {
    quantType,
    blocksize,
    shape: [n, k],
    codes: be.fromHost(data.codes, "u8"),
    absmax: nested
      ? {
          kind: "nested",
          qabsmax: be.fromHost(data.qabsmax, "u8"),
          code: be.fromHost(data.code, "f32"),
          nestedAbsmax: be.fromHost(data.nestedAbsmax, "f32"),
          nestedBlocksize: 256,
          offset: data.offset,
        }
      : { kind: "f32", values: be.fromHost(data.absmax, "f32") },
  };
}
function quantData(rng: Rng, n: number, k: number, blocksize: number) {
  const nBlocks = Math.ceil((n * k) / blocksize);
  const code = new Float32Array(256);
  for (let i = 0; i < 256; i++) code[i] = Math.fround(-1 + (2 * i) / 255);
  return {
    codes: rng.bytes(Math.ceil((n * k) / 2)),
    absmax: rng.uniform(nBlocks, 0.1, 2),
    qabsmax: rng.bytes(nBlocks),
    code,
    nestedAbsmax: rng.uniform(Math.ceil(nBlocks / 256), 0.5, 1.5),
    offset: Math.fround(1.1),
  };
}
function freeQuant(be: Backend, w: QuantizedWeightBuffers): void {
  be.free(w.codes);
  if (w.absmax.kind === "f32") be.free(w.absmax.values);
  else {
    be.free(w.absmax.qabsmax);
    be.free(w.absmax.code);
    be.free(w.absmax.nestedAbsmax);
  }
}

const f = (values: ArrayLike<number>) => ({ dtype: "f32" as DType, values });
const i32 = (values: ArrayLike<number>) => ({ dtype: "i32" as DType, values });

// ---------------------------------------------------------------- cases

const UNARY = [
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
] as const;
const BINARY = ["add", "sub", "mul", "div", "max", "min", "pow", "eq", "gt", "lt"] as const;
const DTYPES: DType[] = ["f32", "bf16", "f16", "i32", "u8", "bool"];

/** All parity cases; `seed` varies the random shapes. */
export function parityCases(seed = 1): ParityCase[] {
  const cases: ParityCase[] = [];
  const add = (op: string, name: string, run: (t: Backend, r: Backend, rng: Rng) => void) =>
    cases.push({ op, name, run: (t, r) => run(t, r, new Rng(seed * 1000 + cases.length)) });

  add("memory", "alloc/fromHost/toHost/free round trip and byte counters", (t) => {
    const before = t.memoryStats().currentBytes;
    for (const dt of DTYPES) {
      const z = t.alloc(dt, 13);
      const zh = t.toHost(z);
      if (zh.length !== 13 || [...zh].some((v) => v !== 0))
        throw new ParityError(`alloc(${dt}, 13) is not 13 zeros on ${t.name}`);
      const src = hostData(dt, [0, 1, 2, 3, 250, 7, 1]);
      const b = t.fromHost(src, dt);
      if (b.dtype !== dt || b.length !== 7)
        throw new ParityError(`fromHost(${dt}) returned dtype ${b.dtype} length ${b.length}`);
      const back = t.toHost(b);
      for (let i = 0; i < 7; i++)
        if (back[i] !== src[i]) throw new ParityError(`fromHost/toHost(${dt}) element ${i}: ${back[i]} ≠ ${src[i]}`);
      t.free(z);
      t.free(b);
    }
    const after = t.memoryStats().currentBytes;
    if (after !== before)
      throw new ParityError(`memoryStats().currentBytes is ${after} after freeing everything, was ${before}`);
  });

  const castPairs: [DType, DType][] = [
    ["f32", "f32"],
    ["f32", "bf16"],
    ["f32", "f16"],
    ["bf16", "f32"],
    ["f16", "f32"],
    ["bf16", "bf16"],
    ["f32", "i32"],
    ["i32", "f32"],
    ["i32", "i32"],
    ["u8", "u8"],
    ["f32", "bool"],
    ["bool", "f32"],
    ["u8", "i32"],
  ];
  for (const [from, to] of castPairs) {
    add("copy", `copy ${from}→${to}, strided/broadcast views`, (t, r, rng) => {
      const rank = rng.int(1, 4);
      const shape = Array.from({ length: rank }, () => rng.int(1, 5));
      const { view, length } = randomView(rng, shape, true);
      const vals =
        from === "u8"
          ? rng.ints(length, 0, 255)
          : from === "bool"
            ? rng.ints(length, 0, 1)
            : from === "i32"
              ? rng.ints(length, -1000, 1000)
              : rng.uniform(length, -300, 300);
      both(
        `copy ${from}→${to} view ${JSON.stringify(view)}`,
        t,
        r,
        { x: { dtype: from, values: vals } },
        (be, i) => ({ y: be.copy(i.x, view, to) }),
        { default: EXACT },
      );
    });
  }

  add("copyInPlace", "copyInPlace f32 into a strided slice (optional op)", (t, r, rng) => {
    if (!t.copyInPlace) return;
    const shape = [rng.int(1, 4), rng.int(2, 6), rng.int(1, 5)];
    const dstLen = shape[0] * (shape[1] + 3) * shape[2];
    const dstView: StridedView = { shape, strides: [(shape[1] + 3) * shape[2], shape[2], 1], offset: 2 * shape[2] };
    const src = randomView(rng, shape, true);
    const dstVals = rng.uniform(dstLen);
    const srcVals = rng.uniform(src.length);
    both(
      "copyInPlace",
      t,
      r,
      { d: f(dstVals), s: f(srcVals) },
      (be, i) => {
        be.copyInPlace!(i.d, dstView, i.s, src.view);
        return { d: be.copy(i.d, { shape: [dstLen], strides: [1], offset: 0 }, "f32") };
      },
      { default: EXACT },
    );
  });

  for (const dt of DTYPES) {
    add("fill", `fill ${dt}`, (t, r, rng) => {
      const n = rng.int(1, 40);
      const v = dt === "bool" ? 1 : dt === "u8" ? 7 : dt === "i32" ? -5 : 0.1;
      both(`fill ${dt}`, t, r, {}, (be) => ({ y: be.fill(dt, n, v) }), { default: EXACT });
    });
  }

  for (const op of UNARY) {
    add("unary", `unary ${op}`, (t, r, rng) => {
      const n = rng.int(1, 77);
      const positive = op === "log" || op === "sqrt" || op === "rsqrt" || op === "recip";
      const x = positive ? rng.uniform(n, 0.05, 4) : rng.uniform(n, -4, 4);
      both(`unary ${op} n=${n}`, t, r, { x: f(x) }, (be, i) => ({ y: be.unary(op, i.x, n) }), { default: TOL_F32 });
    });
  }

  for (const op of BINARY) {
    add("binary", `binary ${op}, strided + broadcasting`, (t, r, rng) => {
      const rank = rng.int(1, 4);
      const shape = Array.from({ length: rank }, () => rng.int(1, 6));
      const a = randomView(rng, shape, true);
      const b = randomView(rng, shape, true);
      const av = op === "pow" ? rng.uniform(a.length, 0.1, 3) : rng.uniform(a.length, -3, 3);
      const bv =
        op === "pow"
          ? rng.uniform(b.length, -2, 2)
          : op === "div"
            ? rng.uniform(b.length, 0.5, 3)
            : rng.uniform(b.length, -3, 3);
      if (op === "eq" || op === "max" || op === "min")
        for (let i = 0; i < Math.min(av.length, bv.length); i += 3) bv[i] = av[i];
      both(
        `binary ${op} shape ${shape}`,
        t,
        r,
        { a: f(av), b: f(bv) },
        (be, i) => ({ y: be.binary(op, i.a, a.view, i.b, b.view, shape) }),
        { default: TOL_F32 },
      );
    });
  }

  for (const op of ["sum", "max", "min"] as const) {
    add("reduce", `reduce ${op}`, (t, r, rng) => {
      const [outer, size, inner] = [rng.int(1, 5), rng.int(1, 33), rng.int(1, 4)];
      both(
        `reduce ${op} [${outer},${size},${inner}]`,
        t,
        r,
        { x: f(rng.uniform(outer * size * inner)) },
        (be, i) => ({ y: be.reduce(op, i.x, outer, size, inner) }),
        {
          default: op === "sum" ? TOL_ACC : EXACT,
        },
      );
    });
  }

  for (const [transA, transB] of [
    [false, false],
    [false, true],
    [true, false],
    [true, true],
  ] as const) {
    for (const dt of ["f32", "bf16"] as DType[]) {
      add("matmul", `matmul transA=${transA} transB=${transB} ${dt}`, (t, r, rng) => {
        const [batch, m, k, n] = [rng.int(1, 3), rng.int(1, 9), rng.int(1, 17), rng.int(1, 11)];
        const bcastB = rng.int(0, 1) === 1;
        const opts = { batch, m, k, n, transA, transB, bBatchStride: bcastB ? 0 : k * n };
        both(
          `matmul ${JSON.stringify(opts)} ${dt}`,
          t,
          r,
          {
            a: { dtype: dt, values: rng.uniform(batch * m * k) },
            b: { dtype: dt, values: rng.uniform((bcastB ? 1 : batch) * k * n) },
          },
          (be, i) => ({ y: be.matmul(i.a, i.b, opts) }),
          { default: TOL_ACC },
        );
      });
    }
  }

  for (const quantType of ["nf4", "fp4"] as const) {
    for (const nested of [false, true]) {
      add("matmul4bit", `matmul4bit + inputGrad ${quantType} nested=${nested}`, (t, r, rng) => {
        const blocksize = [32, 64, 128][rng.int(0, 2)];
        const [m, n, k] = [rng.int(1, 5), rng.int(1, 9), 2 * rng.int(1, 40) + 1];
        const data = quantData(rng, n, k, blocksize);
        const x = rng.uniform(m * k);
        const dy = rng.uniform(m * n);
        const wt = randomQuantWeight(rng, t, n, k, quantType, nested, blocksize, data);
        const wr = randomQuantWeight(rng, r, n, k, quantType, nested, blocksize, data);
        try {
          both(
            `matmul4bit m=${m} n=${n} k=${k} bs=${blocksize}`,
            t,
            r,
            { x: f(x), dy: f(dy) },
            (be, i) => {
              const w = be === t ? wt : wr;
              return { y: be.matmul4bit(i.x, w, m), dx: be.matmul4bitInputGrad(i.dy, w, m) };
            },
            { default: TOL_ACC },
          );
        } finally {
          freeQuant(t, wt);
          freeQuant(r, wr);
        }
      });
    }
  }

  add("rmsNorm", "rmsNorm + backward", (t, r, rng) => {
    const [rows, dim] = [rng.int(1, 7), rng.int(1, 37)];
    const eps = 1e-5;
    both(
      `rmsNorm rows=${rows} dim=${dim}`,
      t,
      r,
      { x: f(rng.uniform(rows * dim)), w: f(rng.uniform(dim, 0.5, 1.5)), dy: f(rng.uniform(rows * dim)) },
      (be, i) => {
        const { y, rstd } = be.rmsNorm(i.x, i.w, rows, dim, eps);
        const { dx, dweight } = be.rmsNormBackward(i.dy, i.x, i.w, rstd, rows, dim);
        return { y, rstd, dx, dweight };
      },
      { default: TOL_ACC },
    );
  });

  for (const inverse of [false, true]) {
    add("rope", `rope inverse=${inverse}`, (t, r, rng) => {
      const o = {
        batch: rng.int(1, 2),
        seq: rng.int(1, 9),
        heads: rng.int(1, 3),
        headDim: 2 * rng.int(1, 6),
        theta: 10000,
        inverse,
      };
      const n = o.batch * o.seq * o.heads * o.headDim;
      both(
        `rope ${JSON.stringify(o)}`,
        t,
        r,
        { x: f(rng.uniform(n)), p: i32(rng.ints(o.batch * o.seq, 0, 4000)) },
        (be, i) => ({ y: be.rope(i.x, i.p, o) }),
        { default: { atol: 1e-5, rtol: 1e-4 } },
      );
    });
  }

  for (const segments of [false, true]) {
    add("attention", `attention + backward, GQA, segmentIds=${segments}`, (t, r, rng) => {
      const kvHeads = rng.int(1, 2);
      const o0 = {
        batch: rng.int(1, 2),
        heads: kvHeads * rng.int(1, 3),
        kvHeads,
        seq: rng.int(1, 11),
        headDim: rng.int(1, 9),
      };
      const qn = o0.batch * o0.heads * o0.seq * o0.headDim;
      const kn = o0.batch * o0.kvHeads * o0.seq * o0.headDim;
      const seg = new Int32Array(o0.batch * o0.seq);
      for (let b = 0; b < o0.batch; b++) {
        let s = 0;
        for (let j = 0; j < o0.seq; j++) {
          if (j > 0 && rng.int(0, 3) === 0) s++;
          seg[b * o0.seq + j] = s;
        }
      }
      const inputs: Record<string, { dtype: DType; values: ArrayLike<number> }> = {
        q: f(rng.uniform(qn, -2, 2)),
        k: f(rng.uniform(kn, -2, 2)),
        v: f(rng.uniform(kn)),
        dout: f(rng.uniform(qn)),
      };
      if (segments) inputs.seg = i32(seg);
      both(
        `attention ${JSON.stringify(o0)}`,
        t,
        r,
        inputs,
        (be, i) => {
          const o = { ...o0, scale: 1 / Math.sqrt(o0.headDim), segmentIds: segments ? i.seg : undefined };
          const { out, lse } = be.attention(i.q, i.k, i.v, o);
          const { dq, dk, dv } = be.attentionBackward(i.dout, i.q, i.k, i.v, out, lse, o);
          return { out, lse, dq, dk, dv };
        },
        { default: TOL_ACC },
      );
    });
  }

  add("softmax", "softmax + backward", (t, r, rng) => {
    const [rows, n] = [rng.int(1, 6), rng.int(1, 50)];
    both(
      `softmax ${rows}x${n}`,
      t,
      r,
      { x: f(rng.uniform(rows * n, -5, 5)), dy: f(rng.uniform(rows * n)) },
      (be, i) => {
        const y = be.softmax(i.x, rows, n);
        return { y, dx: be.softmaxBackward(i.dy, y, rows, n) };
      },
      { default: TOL_ACC },
    );
  });

  add("crossEntropy", "crossEntropy + backward with ignoreIndex", (t, r, rng) => {
    const [rows, vocab] = [rng.int(1, 9), rng.int(2, 40)];
    const labels = rng.ints(rows, 0, vocab - 1);
    for (let i = 0; i < rows; i += 3) labels[i] = -100;
    both(
      `crossEntropy ${rows}x${vocab}`,
      t,
      r,
      { x: f(rng.uniform(rows * vocab, -4, 4)), l: i32(labels), g: f(rng.uniform(rows)) },
      (be, i) => {
        const { loss, lse } = be.crossEntropy(i.x, i.l, rows, vocab, -100);
        return { loss, lse, dx: be.crossEntropyBackward(i.g, i.x, i.l, lse, rows, vocab, -100) };
      },
      { default: TOL_ACC },
    );
  });

  add("swiglu", "swiglu + backward", (t, r, rng) => {
    const n = rng.int(1, 99);
    both(
      `swiglu n=${n}`,
      t,
      r,
      { g: f(rng.uniform(n, -5, 5)), u: f(rng.uniform(n)), dy: f(rng.uniform(n)) },
      (be, i) => {
        const { dgate, dup } = be.swigluBackward(i.dy, i.g, i.u, n);
        return { y: be.swiglu(i.g, i.u, n), dgate, dup };
      },
      { default: TOL_F32 },
    );
  });

  add("dropoutMask", "dropoutMask: Philox stream at large seeds and offsets, odd lengths (bit-exact)", (t, r, rng) => {
    if (!t.dropoutMask) return; // optional: tensor's dropoutMask draws on the host for a backend without it
    const cases: [number, number, number, number][] = [
      [rng.int(0, 1000), 0, rng.int(1, 99), 0.1],
      [2 ** 53 - 1, 4 * rng.int(0, 1000), rng.int(1, 4099), 0.5],
      [rng.int(0, 2 ** 31), 4 * (2 ** 32 - 2), 4 * 5 + rng.int(1, 3), 0.05], // the block counter's low word wraps
      [7, 4 * 2 ** 40, 37, 0],
      [9, 8, 33, 0.999],
    ];
    for (const [seed, offset, n, p] of cases) {
      const scale = Math.fround(1 / (1 - p));
      both(
        `dropoutMask seed=${seed} offset=${offset} n=${n} p=${p}`,
        t,
        r,
        {},
        (be) => ({
          m: be.dropoutMask!(seed, offset, n, p, scale),
        }),
        { default: EXACT },
      );
    }
  });

  add("embedding", "embedding + backward (repeated ids)", (t, r, rng) => {
    const [vocab, dim, count] = [rng.int(1, 20), rng.int(1, 9), rng.int(1, 30)];
    both(
      `embedding vocab=${vocab} dim=${dim} count=${count}`,
      t,
      r,
      { w: f(rng.uniform(vocab * dim)), ids: i32(rng.ints(count, 0, vocab - 1)), dy: f(rng.uniform(count * dim)) },
      (be, i) => ({
        y: be.embedding(i.w, i.ids, count, dim),
        dw: be.embeddingBackward(i.dy, i.ids, count, dim, vocab),
      }),
      { default: TOL_ACC, y: EXACT },
    );
  });

  add("adamwStepInPlace", "adamwStepInPlace, 3 steps", (t, r, rng) => {
    const n = rng.int(1, 70);
    const inputs = {
      p: f(rng.uniform(n)),
      m: f(rng.uniform(n, -0.1, 0.1)),
      v: f(rng.uniform(n, 0, 0.01)),
      g: f(rng.uniform(n)),
    };
    both(
      `adamw n=${n}`,
      t,
      r,
      inputs,
      (be, i) => {
        for (let step = 1; step <= 3; step++)
          be.adamwStepInPlace(i.p, i.g, i.m, i.v, n, {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weightDecay: 0.01,
            step,
          });
        const all = { shape: [n], strides: [1], offset: 0 };
        return { p: be.copy(i.p, all, "f32"), m: be.copy(i.m, all, "f32"), v: be.copy(i.v, all, "f32") };
      },
      { default: TOL_F32 },
    );
  });

  return cases;
}

export interface ParityResult {
  readonly op: string;
  readonly name: string;
  readonly ok: boolean;
  readonly error?: string;
}

/** Run every case (optionally for several seeds) against the reference; never throws. */
export function runParity(target: Backend, options: { seeds?: number[]; reference?: Backend } = {}): ParityResult[] {
  const reference = options.reference ?? createReferenceBackend({ name: "reference(parity)" });
  const out: ParityResult[] = [];
  for (const seed of options.seeds ?? [1, 2, 3]) {
    for (const c of parityCases(seed)) {
      try {
        c.run(target, reference);
        out.push({ op: c.op, name: `${c.name} (seed ${seed})`, ok: true });
      } catch (e) {
        out.push({
          op: c.op,
          name: `${c.name} (seed ${seed})`,
          ok: false,
          error: e instanceof Error ? e.message : String(e),
        });
      }
    }
  }
  return out;
}
