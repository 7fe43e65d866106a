/**
 * The `reference` backend: pure TypeScript, written to be read. It is the oracle of every parity test
 * and the fallback when no native backend is present. Storage is HostBuffer (a typed array).
 *
 * f64 test mode (`createReferenceBackend({ f64: true })`): buffers of dtype "f32" are held in a
 * Float64Array, so every op computes and stores in double precision. Only the finite-difference
 * gradient tests use it; it is never registered.
 */
import { TensorError } from "../errors";
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from "../internal/half";
import { type HostAllocator, sharedHostAllocator } from "./host-allocator";
import { Generator } from "../random";
import { quantizeWeightOnHost } from "./quantize-weight";
import type {
  CrossEntropyGradOptions,
  AdamWOptions,
  AttentionOptions,
  Backend,
  BinaryOp,
  Buffer,
  DType,
  HostArray,
  HostBuffer,
  MatmulOptions,
  MemoryStats,
  QuantizedWeightBuffers,
  RopeOptions,
  UnaryOp,
} from "./types";

export const NF4_LUT = new Float32Array([
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
  -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
  0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]);
export const FP4_LUT = new Float32Array(
  [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, -0.0625, -8, -12, -4, -6, -2, -3].map((v) => v / 12),
);

export function dtypeBytes(dtype: DType): number {
  switch (dtype) {
    case "f32":
    case "i32":
      return 4;
    case "f16":
    case "bf16":
      return 2;
    case "u8":
    case "bool":
      return 1;
  }
}

export interface ReferenceBackendOptions {
  /** f64 test mode: f32 buffers are Float64Array (double-precision math throughout). */
  readonly f64?: boolean;
  readonly name?: string;
  /** The caching allocator to draw buffers from (default: the process-wide sharedHostAllocator). */
  readonly allocator?: HostAllocator;
}

type F = Float32Array | Float64Array;

const f64Backends = new WeakSet<Backend>();
/** True for a reference backend in f64 test mode (its f32 host arrays are Float64Array). */
export function isF64Backend(be: Backend): boolean {
  return f64Backends.has(be);
}

export function createReferenceBackend(options: ReferenceBackendOptions = {}): Backend {
  const f64 = options.f64 === true;
  const name = options.name ?? (f64 ? "reference-f64" : "reference");
  let current = 0;
  let peak = 0;
  const pool = options.allocator ?? sharedHostAllocator;

  function arrayType(dtype: DType) {
    switch (dtype) {
      case "f32":
        return f64 ? Float64Array : Float32Array;
      case "f16":
      case "bf16":
        return Uint16Array;
      case "i32":
        return Int32Array;
      case "u8":
      case "bool":
        return Uint8Array;
    }
  }
  /** A typed array from the caching allocator; zeroed unless `zero` is false (outputs written in full). */
  function newArray(dtype: DType, length: number, zero = true): HostArray {
    const Ctor = arrayType(dtype);
    const { buffer, recycled } = pool.take(length * Ctor.BYTES_PER_ELEMENT);
    const a = new Ctor(buffer, 0, length);
    if (zero && recycled) a.fill(0);
    return a as unknown as HostArray;
  }
  function wrap(dtype: DType, data: HostArray): HostBuffer {
    current += data.length * dtypeBytes(dtype);
    if (current > peak) peak = current;
    return { device: "cpu", dtype, length: data.length, data };
  }
  function mk(dtype: DType, length: number): HostBuffer {
    return wrap(dtype, newArray(dtype, length));
  }
  function mkF(length: number): { buf: HostBuffer; data: F } {
    const buf = mk("f32", length);
    return { buf, data: buf.data as unknown as F };
  }
  /** Uninitialised (recycled) output for ops that write every element. */
  function mkU(dtype: DType, length: number): HostBuffer {
    return wrap(dtype, newArray(dtype, length, false));
  }
  function mkFU(length: number): { buf: HostBuffer; data: F } {
    const buf = mkU("f32", length);
    return { buf, data: buf.data as unknown as F };
  }
  function host(b: Buffer, op: string): HostBuffer {
    const h = b as HostBuffer;
    if (h.device !== "cpu" || h.data === undefined)
      throw new TensorError("BAD_BUFFER", `${name}.${op}: expected a host buffer, got device "${b.device}"`);
    return h;
  }
  /** Values of a buffer as numbers (bf16/f16 decoded); f32 buffers returned as is. */
  function asF(b: Buffer, op: string): F {
    const h = host(b, op);
    if (h.dtype === "f32") return h.data as unknown as F;
    const out = f64 ? new Float64Array(h.length) : new Float32Array(h.length);
    const d = h.data;
    if (h.dtype === "bf16") for (let i = 0; i < h.length; i++) out[i] = bf16BitsToF32(d[i]);
    else if (h.dtype === "f16") for (let i = 0; i < h.length; i++) out[i] = f16BitsToF32(d[i]);
    else for (let i = 0; i < h.length; i++) out[i] = d[i];
    return out;
  }
  /** An f32 output buffer passed in for in-place accumulation, checked against the expected length. */
  function accumulator(b: Buffer, length: number, op: string): { buf: HostBuffer; data: F } {
    const h = host(b, op);
    if (h.dtype !== "f32" || h.length !== length)
      throw new TensorError(
        "BAD_BUFFER",
        `${name}.${op}: the output buffer must be f32 of length ${length}, got ${h.dtype} of length ${h.length}`,
      );
    return { buf: h, data: h.data as unknown as F };
  }
  /** Element offsets of query row (b, h, i) and of key/value row (b, query head h's kv head, j) in the
   * options' layout, the causal offset kvSeq − seq and each query's first visible key; checks the options. */
  function attentionIndex(o: AttentionOptions, op: string) {
    const { heads, kvHeads, seq, headDim: D } = o;
    const kvSeq = o.kvSeq ?? seq;
    if (heads % kvHeads !== 0)
      throw new TensorError("BAD_SHAPE", `${name}.${op}: heads (${heads}) must be a multiple of kvHeads (${kvHeads})`);
    if (!(kvSeq >= seq))
      throw new TensorError("BAD_SHAPE", `${name}.${op}: kvSeq (${kvSeq}) must be at least seq (${seq})`);
    if (o.segmentIds && kvSeq !== seq)
      throw new TensorError("BAD_ARGUMENT", `${name}.${op}: segmentIds need kvSeq = seq (got ${kvSeq} and ${seq})`);
    const group = heads / kvHeads;
    const bshd = o.layout === "bshd";
    const index = (b: number, h: number, i: number, H: number, S: number) =>
      (bshd ? (b * S + i) * H + h : (b * H + h) * S + i) * D;
    const window = o.window ?? 0;
    if (!Number.isInteger(window) || window < 0)
      throw new TensorError("BAD_ARGUMENT", `${name}.${op}: window must be a non-negative integer, got ${window}`);
    const offset = kvSeq - seq;
    return {
      kvSeq,
      offset,
      /** First key query i sees: 0, or the start of its sliding window. */
      firstKey: (i: number) => (window > 0 ? Math.max(0, i + offset - window + 1) : 0),
      q: (b: number, h: number, i: number) => index(b, h, i, heads, seq),
      k: (b: number, h: number, j: number) => index(b, Math.floor(h / group), j, kvHeads, kvSeq),
    };
  }
  function ints(b: Buffer, op: string): Int32Array {
    const h = host(b, op);
    if (h.dtype !== "i32") throw new TensorError("BAD_DTYPE", `${name}.${op}: index input must be i32, got ${h.dtype}`);
    return h.data as Int32Array;
  }
  function read(h: HostBuffer, i: number): number {
    const v = h.data[i];
    if (h.dtype === "bf16") return bf16BitsToF32(v);
    if (h.dtype === "f16") return f16BitsToF32(v);
    return v;
  }
  function encoder(dtype: DType): (v: number) => number {
    switch (dtype) {
      case "f32":
        return (v) => v;
      case "bf16":
        return f32ToBf16Bits;
      case "f16":
        return f32ToF16Bits;
      case "i32":
        return (v) => (Number.isFinite(v) ? Math.trunc(v) : 0);
      case "u8":
        return (v) => (Number.isFinite(v) ? Math.trunc(v) & 0xff : 0);
      case "bool":
        return (v) => (v !== 0 ? 1 : 0);
    }
  }
  /** True when a view reads n consecutive elements (row-major contiguous, any offset). */
  function isDenseView(v: { shape: readonly number[]; strides: readonly number[] }, n: number): boolean {
    let expect = 1;
    for (let i = v.shape.length - 1; i >= 0; i--) {
      if (v.shape[i] !== 1 && v.strides[i] !== expect) return false;
      expect *= v.shape[i];
    }
    return expect === n;
  }
  /** Calls fn(outIndex, srcIndex) for every element of a strided view, row-major. */
  function forEachStrided(
    shape: readonly number[],
    strides: readonly number[],
    offset: number,
    fn: (o: number, s: number) => void,
  ): void {
    const rank = shape.length;
    const n = shape.reduce((a, b) => a * b, 1);
    if (n === 0) return;
    if (rank === 0) {
      fn(0, offset);
      return;
    }
    const idx = new Array<number>(rank).fill(0);
    const last = rank - 1;
    const lastSize = shape[last];
    const lastStride = strides[last];
    let src = offset;
    for (let o = 0; o < n; ) {
      for (let j = 0; j < lastSize; j++) fn(o++, src + j * lastStride);
      // carry into outer dims
      let d = last - 1;
      while (d >= 0) {
        idx[d]++;
        src += strides[d];
        if (idx[d] < shape[d]) break;
        src -= strides[d] * shape[d];
        idx[d] = 0;
        d--;
      }
    }
  }

  function unaryFn(op: UnaryOp): (x: number) => number {
    switch (op) {
      case "neg":
        return (x) => -x;
      case "exp":
        return Math.exp;
      case "log":
        return Math.log;
      case "sqrt":
        return Math.sqrt;
      case "rsqrt":
        return (x) => 1 / Math.sqrt(x);
      case "abs":
        return Math.abs;
      case "sigmoid":
        return (x) => 1 / (1 + Math.exp(-x));
      case "silu":
        return (x) => x / (1 + Math.exp(-x));
      case "relu":
        // biome-ignore lint/complexity/useMathMinMax: relu maps NaN to 0 (as the CUDA kernel does); Math.max(x, 0) would return NaN
        return (x) => (x > 0 ? x : 0);
      case "tanh":
        return Math.tanh;
      case "recip":
        return (x) => 1 / x;
      case "square":
        return (x) => x * x;
      case "sign":
        return (x) => (x > 0 ? 1 : x < 0 ? -1 : x === 0 ? 0 : NaN);
    }
  }
  function binaryFn(op: BinaryOp): (a: number, b: number) => number {
    switch (op) {
      case "add":
        return (a, b) => a + b;
      case "sub":
        return (a, b) => a - b;
      case "mul":
        return (a, b) => a * b;
      case "div":
        return (a, b) => a / b;
      case "max":
        // biome-ignore lint/complexity/useMathMinMax: max(+0, -0) returns b (-0) here; Math.max would return +0, a behaviour change
        return (a, b) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : a > b ? a : b);
      case "min":
        // biome-ignore lint/complexity/useMathMinMax: min(-0, +0) returns b (+0) here; Math.min would return -0, a behaviour change
        return (a, b) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : a < b ? a : b);
      case "pow":
        return Math.pow;
      case "eq":
        return (a, b) => (a === b ? 1 : 0);
      case "gt":
        return (a, b) => (a > b ? 1 : 0);
      case "lt":
        return (a, b) => (a < b ? 1 : 0);
    }
  }

  /** The f32 absmax of block `blk` (two-rounding recovery when double-quantized, @qlora/nf4 spec §5.4). */
  function absmaxOf(w: QuantizedWeightBuffers, blk: number): number {
    if (w.absmax.kind === "f32") return host(w.absmax.values, "matmul4bit").data[blk];
    const q = host(w.absmax.qabsmax, "matmul4bit").data as Uint8Array;
    const code = host(w.absmax.code, "matmul4bit").data;
    const nested = host(w.absmax.nestedAbsmax, "matmul4bit").data;
    return Math.fround(
      Math.fround(code[q[blk]] * nested[Math.floor(blk / w.absmax.nestedBlocksize)]) + Math.fround(w.absmax.offset),
    );
  }

  /** Dequantize row `o` of a 4-bit weight (k elements) into `row`: one tile, never the whole matrix. */
  function dequantRow(w: QuantizedWeightBuffers, o: number, row: F | Float64Array): void {
    const k = w.shape[1];
    const codes = host(w.codes, "matmul4bit").data as Uint8Array;
    const lut = w.quantType === "nf4" ? NF4_LUT : FP4_LUT;
    const bs = w.blocksize;
    let blk = -1;
    let scale = 0;
    for (let j = 0; j < k; j++) {
      const e = o * k + j;
      if (Math.floor(e / bs) !== blk) {
        blk = Math.floor(e / bs);
        scale = absmaxOf(w, blk);
      }
      const byte = codes[e >> 1];
      const c = (e & 1) === 0 ? byte >> 4 : byte & 15;
      row[j] = Math.fround(lut[c] * scale);
    }
  }

  const backend: Backend = {
    name,
    device: "cpu",

    alloc(dtype, length) {
      return mk(dtype, length);
    },
    allocUninit(dtype, length) {
      return mkU(dtype, length);
    },
    free(buffer) {
      const h = host(buffer, "free");
      if ((h as { freed?: boolean }).freed) return;
      (h as { freed?: boolean }).freed = true;
      current -= h.length * dtypeBytes(h.dtype);
      pool.give(h.data.buffer as ArrayBuffer);
    },
    emptyCache() {
      pool.emptyCache();
    },
    fromHost(data, dtype) {
      const out = newArray(dtype, data.length, false);
      (out as unknown as { set(a: ArrayLike<number>): void }).set(data as ArrayLike<number>);
      return wrap(dtype, out);
    },
    toHost(buffer) {
      return host(buffer, "toHost").data.slice();
    },
    memoryStats(): MemoryStats {
      return { currentBytes: current, peakBytes: peak, cachedBytes: pool.stats().cachedBytes };
    },
    resetPeak() {
      peak = current;
    },

    copy(src, view, dtype) {
      const s = host(src, "copy");
      const n = view.shape.reduce((a, b) => a * b, 1);
      const out = mkU(dtype, n);
      const o = out.data;
      const enc = encoder(dtype);
      if (s.dtype === dtype) {
        const d = s.data;
        forEachStrided(view.shape, view.strides, view.offset, (i, j) => (o[i] = d[j]));
      } else {
        forEachStrided(view.shape, view.strides, view.offset, (i, j) => (o[i] = enc(read(s, j))));
      }
      return out;
    },
    copyInPlace(dst, dstView, src, srcView) {
      const d = host(dst, "copyInPlace");
      const s = host(src, "copyInPlace");
      const n = srcView.shape.reduce((a, b) => a * b, 1);
      const tmp = new Array<number>(n);
      forEachStrided(srcView.shape, srcView.strides, srcView.offset, (i, j) => (tmp[i] = read(s, j)));
      const enc = encoder(d.dtype);
      const o = d.data;
      forEachStrided(dstView.shape, dstView.strides, dstView.offset, (i, j) => (o[j] = enc(tmp[i])));
    },
    addInPlace(dst, dstView, src, srcView, alpha) {
      const d = host(dst, "addInPlace");
      const sv = host(src, "addInPlace");
      if (d.dtype !== "f32" && d.dtype !== "bf16" && d.dtype !== "f16")
        throw new TensorError("BAD_DTYPE", `${name}.addInPlace: dst must be a float buffer, got ${d.dtype}`);
      const n = srcView.shape.reduce((p, q) => p * q, 1);
      const o = d.data;
      if (d.dtype === "f32" && sv.dtype === "f32" && isDenseView(dstView, n) && isDenseView(srcView, n)) {
        // the hot case (gradient accumulation): one pass, no index bookkeeping
        const x = sv.data;
        const d0 = dstView.offset;
        const s0 = srcView.offset;
        for (let i = 0; i < n; i++) o[d0 + i] += alpha * x[s0 + i];
        return;
      }
      const vals = new Float64Array(n);
      forEachStrided(srcView.shape, srcView.strides, srcView.offset, (i, j) => (vals[i] = read(sv, j)));
      const enc = encoder(d.dtype);
      forEachStrided(
        dstView.shape,
        dstView.strides,
        dstView.offset,
        (i, j) => (o[j] = enc(read(d, j) + alpha * vals[i])),
      );
    },
    fill(dtype, length, value) {
      const out = mkU(dtype, length);
      out.data.fill(encoder(dtype)(value));
      return out;
    },
    unary(op, x, length) {
      const xs = asF(x, "unary");
      const { buf, data } = mkFU(length);
      const fn = unaryFn(op);
      for (let i = 0; i < length; i++) data[i] = fn(xs[i]);
      return buf;
    },
    binary(op, a, aView, b, bView, shape) {
      const ha = host(a, "binary");
      const hb = host(b, "binary");
      const n = shape.reduce((p, q) => p * q, 1);
      const av = newArray("f32", n, false) as unknown as F; // scratch from the cache, given back below
      forEachStrided(shape, aView.strides, aView.offset, (i, j) => (av[i] = read(ha, j)));
      const { buf, data } = mkFU(n);
      const fn = binaryFn(op);
      forEachStrided(shape, bView.strides, bView.offset, (i, j) => (data[i] = fn(av[i], read(hb, j))));
      pool.give(av.buffer as ArrayBuffer);
      return buf;
    },
    reduce(op, x, outer, size, inner) {
      const xs = asF(x, "reduce");
      const { buf, data } = mkFU(outer * inner);
      for (let o = 0; o < outer; o++) {
        for (let i = 0; i < inner; i++) {
          let acc = op === "sum" ? 0 : op === "max" ? -Infinity : Infinity;
          for (let s = 0; s < size; s++) {
            const v = xs[(o * size + s) * inner + i];
            if (op === "sum") acc += v;
            else if (Number.isNaN(v)) acc = NaN;
            else if (op === "max" ? v > acc : v < acc) acc = v;
          }
          data[o * inner + i] = acc;
        }
      }
      return buf;
    },
    matmul(a, b, opts: MatmulOptions, out?: Buffer) {
      const { batch, m, k, n } = opts;
      const A = asF(a, "matmul");
      const B = asF(b, "matmul");
      const aStride = opts.aBatchStride ?? m * k;
      const bStride = opts.bBatchStride ?? k * n;
      const { buf, data } = out ? accumulator(out, batch * m * n, "matmul") : mkFU(batch * m * n);
      const alpha = opts.alpha ?? 1;
      const beta = out ? (opts.beta ?? 0) : 0; // beta 0: C is never read (garbage/NaN must not leak in)
      // Per batch: A as row-major [m, k], B as row-major [k, n]; each output row accumulates a·B[p, :].
      const Ar = new Float64Array(m * k);
      const Br = new Float64Array(k * n);
      const row = new Float64Array(n);
      for (let bt = 0; bt < batch; bt++) {
        const ao = bt * aStride;
        const bo = bt * bStride;
        for (let i = 0; i < m; i++)
          for (let p = 0; p < k; p++) Ar[i * k + p] = opts.transA ? A[ao + p * m + i] : A[ao + i * k + p];
        for (let p = 0; p < k; p++)
          for (let j = 0; j < n; j++) Br[p * n + j] = opts.transB ? B[bo + j * k + p] : B[bo + p * n + j];
        for (let i = 0; i < m; i++) {
          row.fill(0);
          for (let p = 0; p < k; p++) {
            const av = Ar[i * k + p];
            const base = p * n;
            for (let j = 0; j < n; j++) row[j] += av * Br[base + j];
          }
          const oo = (bt * m + i) * n;
          if (beta === 0) for (let j = 0; j < n; j++) data[oo + j] = alpha * row[j];
          else for (let j = 0; j < n; j++) data[oo + j] = alpha * row[j] + beta * data[oo + j];
        }
      }
      return buf;
    },

    matmul4bit(x, w, m) {
      const [n, k] = w.shape;
      const X = asF(x, "matmul4bit");
      const { buf, data } = mkF(m * n);
      const row = new Float64Array(k);
      for (let o = 0; o < n; o++) {
        dequantRow(w, o, row);
        for (let i = 0; i < m; i++) {
          let acc = 0;
          const xo = i * k;
          for (let j = 0; j < k; j++) acc += X[xo + j] * row[j];
          data[i * n + o] = acc;
        }
      }
      return buf;
    },
    matmul4bitInputGrad(dy, w, m) {
      const [n, k] = w.shape;
      const DY = asF(dy, "matmul4bitInputGrad");
      const acc = new Float64Array(m * k);
      const row = new Float64Array(k);
      for (let o = 0; o < n; o++) {
        dequantRow(w, o, row);
        for (let i = 0; i < m; i++) {
          const g = DY[i * n + o]; // no skip on g === 0: 0·Inf must give NaN, as in BLAS
          const xo = i * k;
          for (let j = 0; j < k; j++) acc[xo + j] += g * row[j];
        }
      }
      const { buf, data } = mkF(m * k);
      data.set(acc);
      return buf;
    },
    quantize4bit(input, options) {
      return quantizeWeightOnHost(backend, input, options);
    },
    rmsNorm(x, weight, rows, dim, eps) {
      const X = asF(x, "rmsNorm");
      const W = asF(weight, "rmsNorm");
      const y = mkF(rows * dim);
      const r = mkF(rows);
      for (let i = 0; i < rows; i++) {
        let ss = 0;
        for (let j = 0; j < dim; j++) ss += X[i * dim + j] * X[i * dim + j];
        const rstd = 1 / Math.sqrt(ss / dim + eps);
        r.data[i] = rstd;
        for (let j = 0; j < dim; j++) y.data[i * dim + j] = X[i * dim + j] * rstd * W[j];
      }
      return { y: y.buf, rstd: r.buf };
    },
    rmsNormBackward(dy, x, weight, rstd, rows, dim, options?: { readonly weightGrad: boolean }) {
      const weightGrad = options?.weightGrad !== false;
      const DY = asF(dy, "rmsNormBackward");
      const X = asF(x, "rmsNormBackward");
      const W = asF(weight, "rmsNormBackward");
      const R = asF(rstd, "rmsNormBackward");
      const dx = mkF(rows * dim);
      const dwAcc = new Float64Array(dim);
      for (let i = 0; i < rows; i++) {
        const r = R[i];
        let dot = 0;
        for (let j = 0; j < dim; j++) dot += DY[i * dim + j] * W[j] * X[i * dim + j];
        const c = (r * r * r * dot) / dim;
        for (let j = 0; j < dim; j++) {
          const e = i * dim + j;
          dx.data[e] = r * DY[e] * W[j] - c * X[e];
          if (weightGrad) dwAcc[j] += DY[e] * X[e] * r;
        }
      }
      if (!weightGrad) return { dx: dx.buf, dweight: null as unknown as Buffer };
      const dw = mkF(dim);
      dw.data.set(dwAcc);
      return { dx: dx.buf, dweight: dw.buf };
    },
    rope(x, positions, o: RopeOptions) {
      const X = asF(x, "rope");
      const P = ints(positions, "rope");
      const { batch, seq, heads, headDim, theta } = o;
      if (headDim % 2 !== 0) throw new TensorError("BAD_SHAPE", `${name}.rope: headDim must be even, got ${headDim}`);
      const half = headDim / 2;
      const sgn = o.inverse ? -1 : 1;
      const invFreq = new Float64Array(half);
      for (let i = 0; i < half; i++) invFreq[i] = 1 / theta ** ((2 * i) / headDim);
      const { buf, data } = mkF(batch * seq * heads * headDim);
      for (let b = 0; b < batch; b++)
        for (let s = 0; s < seq; s++) {
          const pos = P[b * seq + s];
          for (let i = 0; i < half; i++) {
            const ang = pos * invFreq[i];
            const c = Math.cos(ang);
            const sn = sgn * Math.sin(ang);
            for (let h = 0; h < heads; h++) {
              const base = ((b * seq + s) * heads + h) * headDim;
              const x1 = X[base + i];
              const x2 = X[base + i + half];
              data[base + i] = x1 * c - x2 * sn;
              data[base + i + half] = x2 * c + x1 * sn;
            }
          }
        }
      return buf;
    },
    attention(q, k, v, o: AttentionOptions) {
      const Q = asF(q, "attention");
      const K = asF(k, "attention");
      const V = asF(v, "attention");
      const { batch, heads, seq, headDim: D, scale } = o;
      const at = attentionIndex(o, "attention");
      const seg = o.segmentIds ? ints(o.segmentIds, "attention") : undefined;
      const out = mkF(batch * heads * seq * D);
      const lse = mkF(batch * heads * seq);
      const acc = new Float64Array(D);
      for (let b = 0; b < batch; b++)
        for (let h = 0; h < heads; h++)
          for (let i = 0; i < seq; i++) {
            // one query row at a time, online softmax: no seq×kvSeq matrix
            const qi = at.q(b, h, i);
            let mx = -Infinity;
            let l = 0;
            acc.fill(0);
            for (let j = at.firstKey(i); j <= i + at.offset; j++) {
              if (seg && seg[b * seq + j] !== seg[b * seq + i]) continue;
              const kj = at.k(b, h, j);
              let s = 0;
              for (let d = 0; d < D; d++) s += Q[qi + d] * K[kj + d];
              s *= scale;
              if (s > mx) {
                const c = Math.exp(mx - s);
                l *= c;
                for (let d = 0; d < D; d++) acc[d] *= c;
                mx = s;
              }
              const p = Math.exp(s - mx);
              l += p;
              for (let d = 0; d < D; d++) acc[d] += p * V[kj + d];
            }
            for (let d = 0; d < D; d++) out.data[qi + d] = acc[d] / l;
            lse.data[(b * heads + h) * seq + i] = mx + Math.log(l);
          }
      return { out: out.buf, lse: lse.buf };
    },
    attentionBackward(dout, q, k, v, out, lse, o: AttentionOptions) {
      const dO = asF(dout, "attentionBackward");
      const Q = asF(q, "attentionBackward");
      const K = asF(k, "attentionBackward");
      const V = asF(v, "attentionBackward");
      const O = asF(out, "attentionBackward");
      const L = asF(lse, "attentionBackward");
      const { batch, heads, kvHeads, seq, headDim: D, scale } = o;
      const at = attentionIndex(o, "attentionBackward");
      const seg = o.segmentIds ? ints(o.segmentIds, "attentionBackward") : undefined;
      const dq = mkF(batch * heads * seq * D);
      const dkAcc = new Float64Array(batch * kvHeads * at.kvSeq * D);
      const dvAcc = new Float64Array(batch * kvHeads * at.kvSeq * D);
      const dqRow = new Float64Array(D);
      for (let b = 0; b < batch; b++)
        for (let h = 0; h < heads; h++)
          for (let i = 0; i < seq; i++) {
            const qi = at.q(b, h, i);
            const lseI = L[(b * heads + h) * seq + i];
            let Di = 0;
            for (let d = 0; d < D; d++) Di += dO[qi + d] * O[qi + d];
            dqRow.fill(0);
            for (let j = at.firstKey(i); j <= i + at.offset; j++) {
              if (seg && seg[b * seq + j] !== seg[b * seq + i]) continue;
              const kj = at.k(b, h, j);
              let s = 0;
              let dp = 0;
              for (let d = 0; d < D; d++) {
                s += Q[qi + d] * K[kj + d];
                dp += dO[qi + d] * V[kj + d];
              }
              const p = Math.exp(s * scale - lseI);
              const ds = p * (dp - Di) * scale;
              for (let d = 0; d < D; d++) {
                dqRow[d] += ds * K[kj + d];
                dkAcc[kj + d] += ds * Q[qi + d];
                dvAcc[kj + d] += p * dO[qi + d];
              }
            }
            for (let d = 0; d < D; d++) dq.data[qi + d] = dqRow[d];
          }
      const dk = mkF(dkAcc.length);
      dk.data.set(dkAcc);
      const dv = mkF(dvAcc.length);
      dv.data.set(dvAcc);
      return { dq: dq.buf, dk: dk.buf, dv: dv.buf };
    },
    softmax(x, rows, n) {
      const X = asF(x, "softmax");
      const { buf, data } = mkF(rows * n);
      for (let r = 0; r < rows; r++) {
        let mx = -Infinity;
        for (let j = 0; j < n; j++) mx = Math.max(mx, X[r * n + j]);
        let s = 0;
        for (let j = 0; j < n; j++) s += Math.exp(X[r * n + j] - mx);
        for (let j = 0; j < n; j++) data[r * n + j] = Math.exp(X[r * n + j] - mx) / s;
      }
      return buf;
    },
    softmaxBackward(dy, y, rows, n) {
      const DY = asF(dy, "softmaxBackward");
      const Y = asF(y, "softmaxBackward");
      const { buf, data } = mkF(rows * n);
      for (let r = 0; r < rows; r++) {
        let dot = 0;
        for (let j = 0; j < n; j++) dot += DY[r * n + j] * Y[r * n + j];
        for (let j = 0; j < n; j++) data[r * n + j] = Y[r * n + j] * (DY[r * n + j] - dot);
      }
      return buf;
    },
    crossEntropy(logits, labels, rows, vocab, ignoreIndex) {
      const X = asF(logits, "crossEntropy");
      const Lb = ints(labels, "crossEntropy");
      const loss = mkF(rows);
      const lse = mkF(rows);
      for (let r = 0; r < rows; r++) {
        let mx = -Infinity;
        for (let j = 0; j < vocab; j++) mx = Math.max(mx, X[r * vocab + j]);
        let s = 0;
        for (let j = 0; j < vocab; j++) s += Math.exp(X[r * vocab + j] - mx);
        const l = mx + Math.log(s);
        lse.data[r] = l;
        const lab = Lb[r];
        if (lab === ignoreIndex) loss.data[r] = 0;
        else {
          if (lab < 0 || lab >= vocab)
            throw new TensorError(
              "LABEL_OUT_OF_RANGE",
              `${name}.crossEntropy: label ${lab} at row ${r} is outside [0, ${vocab}) and is not ignoreIndex ${ignoreIndex}`,
            );
          loss.data[r] = l - X[r * vocab + lab];
        }
      }
      return { loss: loss.buf, lse: lse.buf };
    },
    crossEntropyBackward(dloss, logits, labels, lse, rows, vocab, ignoreIndex) {
      const G = asF(dloss, "crossEntropyBackward");
      const X = asF(logits, "crossEntropyBackward");
      const Lb = ints(labels, "crossEntropyBackward");
      const L = asF(lse, "crossEntropyBackward");
      const { buf, data } = mkF(rows * vocab);
      for (let r = 0; r < rows; r++) {
        const lab = Lb[r];
        if (lab === ignoreIndex) continue;
        const g = G[r];
        for (let j = 0; j < vocab; j++) data[r * vocab + j] = g * Math.exp(X[r * vocab + j] - L[r]);
        data[r * vocab + lab] -= g;
      }
      return buf;
    },
    crossEntropyGradInPlace(logits, labels, rows, vocab, o: CrossEntropyGradOptions) {
      const X = host(logits, "crossEntropyGradInPlace");
      if (X.dtype !== "f32")
        throw new TensorError("BAD_DTYPE", `${name}.crossEntropyGradInPlace: logits must be f32, got ${X.dtype}`);
      const x = X.data as unknown as F;
      const Lb = ints(labels, "crossEntropyGradInPlace");
      for (let r = 0; r < rows; r++) {
        const lab = Lb[r];
        if (lab !== o.ignoreIndex && (lab < 0 || lab >= vocab))
          throw new TensorError(
            "LABEL_OUT_OF_RANGE",
            `${name}.crossEntropyGradInPlace: label ${lab} at row ${r} is outside [0, ${vocab}) and is not ignoreIndex ${o.ignoreIndex}`,
          );
      }
      const loss = mkF(rows); // after the checks: a bad label allocates nothing and leaves the logits as they were
      for (let r = 0; r < rows; r++) {
        const row = r * vocab;
        const lab = Lb[r];
        let mx = -Infinity;
        for (let j = 0; j < vocab; j++) mx = Math.max(mx, x[row + j]);
        let s = 0;
        for (let j = 0; j < vocab; j++) s += Math.exp(x[row + j] - mx);
        const lse = mx + Math.log(s);
        if (lab === o.ignoreIndex) {
          if (o.grad) for (let j = 0; j < vocab; j++) x[row + j] = 0;
          continue;
        }
        loss.data[r] = lse - x[row + lab] + o.zLoss * lse * lse;
        if (!o.grad) continue;
        const k = 1 + 2 * o.zLoss * lse; // d(zLoss·lse²)/d(logit_j) = 2·zLoss·lse·softmax_j
        for (let j = 0; j < vocab; j++) x[row + j] = k * Math.exp(x[row + j] - lse);
        x[row + lab] -= 1;
      }
      return loss.buf;
    },
    dropoutMask(seed, offset, length, p, scale) {
      if (offset % 4 !== 0)
        throw new TensorError("BAD_ARGUMENT", `dropoutMask: offset must be a multiple of 4, got ${offset}`);
      const u = new Generator(seed, offset).uniform(length);
      const { buf, data } = mkF(length);
      for (let i = 0; i < length; i++) data[i] = u[i] >= p ? scale : 0;
      return buf;
    },
    swiglu(gate, up, length) {
      const G = asF(gate, "swiglu");
      const U = asF(up, "swiglu");
      const { buf, data } = mkF(length);
      for (let i = 0; i < length; i++) data[i] = (G[i] / (1 + Math.exp(-G[i]))) * U[i];
      return buf;
    },
    swigluBackward(dy, gate, up, length) {
      const DY = asF(dy, "swigluBackward");
      const G = asF(gate, "swigluBackward");
      const U = asF(up, "swigluBackward");
      const dg = mkF(length);
      const du = mkF(length);
      for (let i = 0; i < length; i++) {
        const s = 1 / (1 + Math.exp(-G[i]));
        du.data[i] = DY[i] * G[i] * s;
        dg.data[i] = DY[i] * U[i] * (s + G[i] * s * (1 - s));
      }
      return { dgate: dg.buf, dup: du.buf };
    },
    embedding(weight, ids, count, dim) {
      // f32, bf16 or f16 table: only the gathered rows are decoded (never the whole table)
      const W = host(weight, "embedding");
      const I = ints(ids, "embedding");
      const vocab = W.length / dim;
      const { buf, data } = mkF(count * dim);
      for (let i = 0; i < count; i++) {
        const id = I[i];
        if (id < 0 || id >= vocab)
          throw new TensorError(
            "INDEX_OUT_OF_RANGE",
            `${name}.embedding: id ${id} at position ${i} is outside [0, ${vocab})`,
          );
        for (let d = 0; d < dim; d++) data[i * dim + d] = read(W, id * dim + d);
      }
      return buf;
    },
    embeddingBackward(dy, ids, count, dim, vocab) {
      const DY = asF(dy, "embeddingBackward");
      const I = ints(ids, "embeddingBackward");
      const acc = new Float64Array(vocab * dim);
      for (let i = 0; i < count; i++) {
        const id = I[i];
        if (id < 0 || id >= vocab)
          throw new TensorError(
            "INDEX_OUT_OF_RANGE",
            `${name}.embeddingBackward: id ${id} at position ${i} is outside [0, ${vocab})`,
          );
        for (let d = 0; d < dim; d++) acc[id * dim + d] += DY[i * dim + d];
      }
      const { buf, data } = mkF(vocab * dim);
      data.set(acc);
      return buf;
    },
    adamwStepInPlace(param, grad, m, v, length, o: AdamWOptions) {
      const P = host(param, "adamwStepInPlace").data as unknown as F;
      const G = asF(grad, "adamwStepInPlace");
      const M = host(m, "adamwStepInPlace").data as unknown as F;
      const Vv = host(v, "adamwStepInPlace").data as unknown as F;
      const bc1 = 1 - o.beta1 ** o.step;
      const bc2 = 1 - o.beta2 ** o.step;
      const stepSize = o.lr / bc1;
      const bc2Sqrt = Math.sqrt(bc2);
      for (let i = 0; i < length; i++) {
        const g = G[i];
        P[i] = P[i] * (1 - o.lr * o.weightDecay);
        M[i] = o.beta1 * M[i] + (1 - o.beta1) * g;
        Vv[i] = o.beta2 * Vv[i] + (1 - o.beta2) * g * g;
        const denom = Math.sqrt(Vv[i]) / bc2Sqrt + o.eps;
        P[i] = P[i] - (stepSize * M[i]) / denom;
      }
    },
  };
  if (f64) f64Backends.add(backend);
  return backend;
}

/** The shared `reference` backend instance (always registered). */
export const referenceBackend: Backend = createReferenceBackend();
