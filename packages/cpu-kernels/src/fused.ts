// Attention, norms, rope, softmax, cross-entropy, swiglu, embedding, dropout masks, adamw,
// elementwise/reduce/copy over the native addon (csrc/attention*.cc, norm.cc, rope.cc, softmax.cc,
// xent.cc, swiglu.cc, embedding.cc, dropout.cc, adamw.cc, elementwise*.cc).
//
// Outputs are allocated through the host backend's allocator (the reference backend: one set of
// memory counters). The native kernels read f32 (and i32 indices); an op called with another input
// dtype (the Backend allows e.g. a bf16 gradient to adamw, or unary on bf16) is handled natively
// where a kernel exists for it and otherwise delegated, explicitly, to the host backend's op.
import {
  type AdamWOptions,
  type AttentionOptions,
  type Backend,
  type BinaryOp,
  type Buffer,
  type CrossEntropyGradOptions,
  type DType,
  type HostBuffer,
  type ReduceOp,
  type RopeOptions,
  type StridedView,
  type UnaryOp,
  referenceBackend,
} from "@qlora/tensor";
import { CpuKernelsError } from "./errors";
import { loadNative } from "./load";

type Typed = Float32Array | Uint16Array | Int32Array | Uint8Array;

/** The N-API surface of the fused-op kernels (argument order as in the csrc files). */
export interface FusedNative {
  unaryF32(op: number, x: Float32Array, y: Float32Array, n: number): void;
  binaryF32(
    op: number,
    a: Float32Array,
    aOffset: number,
    aStrides: readonly number[],
    b: Float32Array,
    bOffset: number,
    bStrides: readonly number[],
    shape: readonly number[],
    y: Float32Array,
  ): void;
  reduceF32(op: number, x: Float32Array, y: Float32Array, outer: number, size: number, inner: number): void;
  copy(
    src: Typed,
    srcDtype: number,
    srcOffset: number,
    srcStrides: readonly number[],
    shape: readonly number[],
    dst: Typed,
    dstDtype: number,
    dstOffset: number,
    dstStrides: readonly number[],
  ): void;
  fill(dst: Typed, dtype: number, length: number, value: number): void;
  axpyF32(dst: Float32Array, dstOffset: number, src: Float32Array, srcOffset: number, n: number, alpha: number): void;
  rmsNorm(
    x: Float32Array,
    w: Float32Array,
    y: Float32Array,
    rstd: Float32Array,
    rows: number,
    dim: number,
    eps: number,
  ): void;
  rmsNormBackward(
    dy: Float32Array,
    x: Float32Array,
    w: Float32Array,
    rstd: Float32Array,
    dx: Float32Array,
    dw: Float32Array | null,
    rows: number,
    dim: number,
  ): void;
  rope(
    x: Float32Array,
    positions: Int32Array,
    out: Float32Array,
    batch: number,
    seq: number,
    heads: number,
    headDim: number,
    theta: number,
    inverse: boolean,
  ): void;
  softmax(x: Float32Array, y: Float32Array, rows: number, n: number): void;
  softmaxBackward(dy: Float32Array, y: Float32Array, dx: Float32Array, rows: number, n: number): void;
  crossEntropy(
    logits: Float32Array,
    labels: Int32Array,
    loss: Float32Array,
    lse: Float32Array,
    rows: number,
    vocab: number,
    ignoreIndex: number,
  ): void;
  crossEntropyBackward(
    dloss: Float32Array,
    logits: Float32Array,
    labels: Int32Array,
    lse: Float32Array,
    dlogits: Float32Array,
    rows: number,
    vocab: number,
    ignoreIndex: number,
  ): void;
  crossEntropyGradInPlace(
    logits: Float32Array,
    labels: Int32Array,
    loss: Float32Array,
    rows: number,
    vocab: number,
    ignoreIndex: number,
    zLoss: number,
    grad: boolean,
  ): void;
  swiglu(gate: Float32Array, up: Float32Array, y: Float32Array, n: number): void;
  dropoutMask(seed: number, offset: number, p: number, scale: number, out: Float32Array, n: number): void;
  swigluBackward(
    dy: Float32Array,
    gate: Float32Array,
    up: Float32Array,
    dgate: Float32Array,
    dup: Float32Array,
    n: number,
  ): void;
  embedding(w: Float32Array, ids: Int32Array, out: Float32Array, count: number, dim: number, vocab: number): void;
  embeddingHalf(
    w: Uint16Array,
    bf16: boolean,
    ids: Int32Array,
    out: Float32Array,
    count: number,
    dim: number,
    vocab: number,
  ): void;
  embeddingBackward(
    dy: Float32Array,
    ids: Int32Array,
    dw: Float32Array,
    count: number,
    dim: number,
    vocab: number,
  ): void;
  adamwStep(
    p: Float32Array,
    g: Float32Array | Uint16Array,
    m: Float32Array,
    v: Float32Array,
    n: number,
    lr: number,
    beta1: number,
    beta2: number,
    eps: number,
    weightDecay: number,
    step: number,
    gradIsBf16: boolean,
  ): void;
  attentionForward(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    seg: Int32Array | null,
    out: Float32Array,
    lse: Float32Array,
    batch: number,
    heads: number,
    kvHeads: number,
    seq: number,
    headDim: number,
    scale: number,
    kvSeq?: number,
    layout?: number,
    window?: number,
  ): void;
  attentionBackward(
    dout: Float32Array,
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    out: Float32Array,
    lse: Float32Array,
    seg: Int32Array | null,
    dq: Float32Array,
    dk: Float32Array,
    dv: Float32Array,
    batch: number,
    heads: number,
    kvHeads: number,
    seq: number,
    headDim: number,
    scale: number,
    kvSeq?: number,
    layout?: number,
    window?: number,
  ): void;
  /** Caps the fused kernels' ISA (2 AVX-512, 1 AVX2, 0 SSE4.2); returns the level in use. */
  setFusedIsaLevel(level: number): number;
}

const DTYPE_CODE: Record<DType, number> = { f32: 0, f16: 1, bf16: 2, i32: 3, u8: 4, bool: 5 };
const UNARY_CODE: Record<UnaryOp, number> = {
  neg: 0,
  exp: 1,
  log: 2,
  sqrt: 3,
  rsqrt: 4,
  abs: 5,
  sigmoid: 6,
  silu: 7,
  relu: 8,
  tanh: 9,
  recip: 10,
  square: 11,
  sign: 12,
};
const BINARY_CODE: Record<BinaryOp, number> = {
  add: 0,
  sub: 1,
  mul: 2,
  div: 3,
  max: 4,
  min: 5,
  pow: 6,
  eq: 7,
  gt: 8,
  lt: 9,
};
const REDUCE_CODE: Record<ReduceOp, number> = { sum: 0, max: 1, min: 2 };

function hostOf(b: Buffer, op: string, arg: string): HostBuffer {
  const h = b as HostBuffer;
  if (h.device !== "cpu" || h.data === undefined)
    throw new CpuKernelsError("BAD_BUFFER", `cpu.${op}: ${arg} must be a host buffer, got device "${b.device}"`);
  return h;
}

/** The f32 data of a buffer, or undefined when it is not f32 (the caller then delegates). */
function f32Of(b: Buffer, op: string, arg: string): Float32Array | undefined {
  const h = hostOf(b, op, arg);
  return h.dtype === "f32" && h.data instanceof Float32Array ? h.data : undefined;
}

function i32Of(b: Buffer, op: string, arg: string): Int32Array {
  const h = hostOf(b, op, arg);
  if (h.dtype !== "i32" || !(h.data instanceof Int32Array))
    throw new CpuKernelsError("BAD_DTYPE", `cpu.${op}: ${arg} must be i32, got ${h.dtype}`);
  return h.data;
}

function allF32(bufs: readonly (Buffer | undefined)[], op: string): Float32Array[] | undefined {
  const out: Float32Array[] = [];
  for (let i = 0; i < bufs.length; i++) {
    const b = bufs[i];
    if (b === undefined) return undefined;
    const d = f32Of(b, op, `input ${i}`);
    if (d === undefined) return undefined;
    out.push(d);
  }
  return out;
}

const contiguousStrides = (shape: readonly number[]): number[] => {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    s[d] = acc;
    acc *= shape[d];
  }
  return s;
};

const numel = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

/** Whether a view is one contiguous row-major run (strides of size-1 dimensions do not matter). */
const isDense = (view: StridedView): boolean => {
  const want = contiguousStrides(view.shape);
  return view.shape.every((n, d) => n === 1 || view.strides[d] === want[d]);
};

/** Whether elements [aOff, aOff + n) of a and [bOff, bOff + n) of b share memory. */
const overlaps = (a: Float32Array, aOff: number, b: Float32Array, bOff: number, n: number): boolean => {
  if (a.buffer !== b.buffer || n === 0) return false;
  const a0 = a.byteOffset + 4 * aOff;
  const b0 = b.byteOffset + 4 * bOff;
  return a0 < b0 + 4 * n && b0 < a0 + 4 * n;
};

/**
 * Builds the fused ops over a native module (resolved lazily, on first use) and a host backend whose
 * allocator they use and to which they delegate inputs the native kernels do not take.
 */
export function createFusedOps(
  nativeOf: () => FusedNative = () => loadNative() as unknown as FusedNative,
  host: Backend = referenceBackend,
): Partial<Backend> {
  let cached: FusedNative | undefined;
  const nat = (): FusedNative => (cached ??= nativeOf());
  const allocF = (length: number): { buf: Buffer; data: Float32Array } => {
    const buf = host.alloc("f32", length);
    return { buf, data: hostOf(buf, "alloc", "output").data as Float32Array };
  };
  const alloc = (dtype: DType, length: number): { buf: Buffer; data: Typed } => {
    const buf = host.alloc(dtype, length);
    return { buf, data: hostOf(buf, "alloc", "output").data };
  };

  return {
    copy(src, view, dtype) {
      const s = hostOf(src, "copy", "src");
      const out = alloc(dtype, numel(view.shape));
      nat().copy(
        s.data,
        DTYPE_CODE[s.dtype],
        view.offset,
        view.strides,
        view.shape,
        out.data,
        DTYPE_CODE[dtype],
        0,
        contiguousStrides(view.shape),
      );
      return out.buf;
    },
    copyInPlace(dst: Buffer, dstView: StridedView, src: Buffer, srcView: StridedView) {
      const d = hostOf(dst, "copyInPlace", "dst");
      const s = hostOf(src, "copyInPlace", "src");
      if (
        d.data.buffer === s.data.buffer ||
        dstView.shape.length !== srcView.shape.length ||
        dstView.shape.some((n, i) => n !== srcView.shape[i])
      ) {
        // Possibly overlapping views (the reference gathers into a temporary first) or mismatched
        // shapes (the reference reports them): not worth a native path.
        host.copyInPlace!(dst, dstView, src, srcView);
        return;
      }
      nat().copy(
        s.data,
        DTYPE_CODE[s.dtype],
        srcView.offset,
        srcView.strides,
        srcView.shape,
        d.data,
        DTYPE_CODE[d.dtype],
        dstView.offset,
        dstView.strides,
      );
    },
    addInPlace(dst: Buffer, dstView: StridedView, src: Buffer, srcView: StridedView, alpha: number) {
      const d = f32Of(dst, "addInPlace", "dst");
      const s = f32Of(src, "addInPlace", "src");
      // The hot case (gradient accumulation) natively: dense f32 views of equal shape that do not overlap.
      // Broadcasts, strided views, half-precision dst and overlapping views keep the reference's semantics.
      const sameShape =
        dstView.shape.length === srcView.shape.length && dstView.shape.every((n, i) => n === srcView.shape[i]);
      const n = numel(srcView.shape);
      if (
        !d ||
        !s ||
        !sameShape ||
        !isDense(dstView) ||
        !isDense(srcView) ||
        overlaps(d, dstView.offset, s, srcView.offset, n)
      ) {
        host.addInPlace!(dst, dstView, src, srcView, alpha);
        return;
      }
      nat().axpyF32(d, dstView.offset, s, srcView.offset, n, alpha);
    },
    fill(dtype, length, value) {
      const out = alloc(dtype, length);
      nat().fill(out.data, DTYPE_CODE[dtype], length, value);
      return out.buf;
    },
    unary(op, x, length) {
      const xs = f32Of(x, "unary", "x");
      if (!xs) return host.unary(op, x, length);
      const out = allocF(length);
      nat().unaryF32(UNARY_CODE[op], xs, out.data, length);
      return out.buf;
    },
    binary(op, a, aView, b, bView, shape) {
      const as = f32Of(a, "binary", "a");
      const bs = f32Of(b, "binary", "b");
      if (!as || !bs) return host.binary(op, a, aView, b, bView, shape);
      const out = allocF(numel(shape));
      nat().binaryF32(
        BINARY_CODE[op],
        as,
        aView.offset,
        aView.strides,
        bs,
        bView.offset,
        bView.strides,
        shape,
        out.data,
      );
      return out.buf;
    },
    reduce(op, x, outer, size, inner) {
      const xs = f32Of(x, "reduce", "x");
      if (!xs) return host.reduce(op, x, outer, size, inner);
      const out = allocF(outer * inner);
      nat().reduceF32(REDUCE_CODE[op], xs, out.data, outer, size, inner);
      return out.buf;
    },
    rmsNorm(x, weight, rows, dim, eps) {
      const f = allF32([x, weight], "rmsNorm");
      if (!f) return host.rmsNorm(x, weight, rows, dim, eps);
      const y = allocF(rows * dim);
      const rstd = allocF(rows);
      nat().rmsNorm(f[0], f[1], y.data, rstd.data, rows, dim, eps);
      return { y: y.buf, rstd: rstd.buf };
    },
    rmsNormBackward(dy, x, weight, rstd, rows, dim, options?: { readonly weightGrad: boolean }) {
      const f = allF32([dy, x, weight, rstd], "rmsNormBackward");
      if (!f)
        return host.rmsNormBackward(dy, x, weight, rstd, rows, dim, {
          weightGrad: options?.weightGrad !== false,
        }) as { dx: Buffer; dweight: Buffer }; // dweight null only when the caller asked for none
      const dx = allocF(rows * dim);
      // a frozen weight (weightGrad false): the kernel skips the dweight reduction (null output)
      const dw = options?.weightGrad === false ? null : allocF(dim);
      nat().rmsNormBackward(f[0], f[1], f[2], f[3], dx.data, dw?.data ?? null, rows, dim);
      return { dx: dx.buf, dweight: (dw?.buf ?? null) as Buffer };
    },
    rope(x, positions, o: RopeOptions) {
      const xs = f32Of(x, "rope", "x");
      if (!xs) return host.rope(x, positions, o);
      const out = allocF(o.batch * o.seq * o.heads * o.headDim);
      nat().rope(
        xs,
        i32Of(positions, "rope", "positions"),
        out.data,
        o.batch,
        o.seq,
        o.heads,
        o.headDim,
        o.theta,
        o.inverse === true,
      );
      return out.buf;
    },
    attention(q, k, v, o: AttentionOptions) {
      const f = allF32([q, k, v], "attention");
      if (!f) return host.attention(q, k, v, o);
      const seg = o.segmentIds ? i32Of(o.segmentIds, "attention", "segmentIds") : null;
      const out = allocF(o.batch * o.heads * o.seq * o.headDim);
      const lse = allocF(o.batch * o.heads * o.seq);
      nat().attentionForward(
        f[0],
        f[1],
        f[2],
        seg,
        out.data,
        lse.data,
        o.batch,
        o.heads,
        o.kvHeads,
        o.seq,
        o.headDim,
        o.scale,
        o.kvSeq ?? o.seq,
        o.layout === "bshd" ? 1 : 0,
        o.window ?? 0,
      );
      return { out: out.buf, lse: lse.buf };
    },
    attentionBackward(dout, q, k, v, out, lse, o: AttentionOptions) {
      const f = allF32([dout, q, k, v, out, lse], "attentionBackward");
      if (!f) return host.attentionBackward(dout, q, k, v, out, lse, o);
      const seg = o.segmentIds ? i32Of(o.segmentIds, "attentionBackward", "segmentIds") : null;
      const nq = o.batch * o.heads * o.seq * o.headDim;
      const nkv = o.batch * o.kvHeads * (o.kvSeq ?? o.seq) * o.headDim;
      const dq = allocF(nq);
      const dk = allocF(nkv);
      const dv = allocF(nkv);
      nat().attentionBackward(
        f[0],
        f[1],
        f[2],
        f[3],
        f[4],
        f[5],
        seg,
        dq.data,
        dk.data,
        dv.data,
        o.batch,
        o.heads,
        o.kvHeads,
        o.seq,
        o.headDim,
        o.scale,
        o.kvSeq ?? o.seq,
        o.layout === "bshd" ? 1 : 0,
        o.window ?? 0,
      );
      return { dq: dq.buf, dk: dk.buf, dv: dv.buf };
    },
    softmax(x, rows, n) {
      const xs = f32Of(x, "softmax", "x");
      if (!xs) return host.softmax(x, rows, n);
      const y = allocF(rows * n);
      nat().softmax(xs, y.data, rows, n);
      return y.buf;
    },
    softmaxBackward(dy, y, rows, n) {
      const f = allF32([dy, y], "softmaxBackward");
      if (!f) return host.softmaxBackward(dy, y, rows, n);
      const dx = allocF(rows * n);
      nat().softmaxBackward(f[0], f[1], dx.data, rows, n);
      return dx.buf;
    },
    crossEntropy(logits, labels, rows, vocab, ignoreIndex) {
      const xs = f32Of(logits, "crossEntropy", "logits");
      if (!xs) return host.crossEntropy(logits, labels, rows, vocab, ignoreIndex);
      const loss = allocF(rows);
      const lse = allocF(rows);
      nat().crossEntropy(xs, i32Of(labels, "crossEntropy", "labels"), loss.data, lse.data, rows, vocab, ignoreIndex);
      return { loss: loss.buf, lse: lse.buf };
    },
    crossEntropyBackward(dloss, logits, labels, lse, rows, vocab, ignoreIndex) {
      const f = allF32([dloss, logits, lse], "crossEntropyBackward");
      if (!f) return host.crossEntropyBackward(dloss, logits, labels, lse, rows, vocab, ignoreIndex);
      const d = allocF(rows * vocab);
      nat().crossEntropyBackward(
        f[0],
        f[1],
        i32Of(labels, "crossEntropyBackward", "labels"),
        f[2],
        d.data,
        rows,
        vocab,
        ignoreIndex,
      );
      return d.buf;
    },
    crossEntropyGradInPlace(logits, labels, rows, vocab, o: CrossEntropyGradOptions) {
      const xs = f32Of(logits, "crossEntropyGradInPlace", "logits");
      if (!xs) return host.crossEntropyGradInPlace!(logits, labels, rows, vocab, o);
      const loss = allocF(rows);
      try {
        nat().crossEntropyGradInPlace(
          xs,
          i32Of(labels, "crossEntropyGradInPlace", "labels"),
          loss.data,
          rows,
          vocab,
          o.ignoreIndex,
          o.zLoss,
          o.grad,
        );
      } catch (error) {
        host.free(loss.buf); // a bad label: the kernel validated before touching anything
        throw error;
      }
      return loss.buf;
    },
    dropoutMask(seed, offset, length, p, scale) {
      const out = allocF(length);
      nat().dropoutMask(seed, offset, p, scale, out.data, length);
      return out.buf;
    },
    swiglu(gate, up, length) {
      const f = allF32([gate, up], "swiglu");
      if (!f) return host.swiglu(gate, up, length);
      const y = allocF(length);
      nat().swiglu(f[0], f[1], y.data, length);
      return y.buf;
    },
    swigluBackward(dy, gate, up, length) {
      const f = allF32([dy, gate, up], "swigluBackward");
      if (!f) return host.swigluBackward(dy, gate, up, length);
      const dg = allocF(length);
      const du = allocF(length);
      nat().swigluBackward(f[0], f[1], f[2], dg.data, du.data, length);
      return { dgate: dg.buf, dup: du.buf };
    },
    embedding(weight, ids, count, dim) {
      const half = hostOf(weight, "embedding", "weight");
      if ((half.dtype === "bf16" || half.dtype === "f16") && half.data instanceof Uint16Array) {
        // a bf16/f16 table: only the gathered rows are widened (never the whole table)
        const out = allocF(count * dim);
        const vocab = dim > 0 ? Math.floor(half.data.length / dim) : 0;
        nat().embeddingHalf(
          half.data,
          half.dtype === "bf16",
          i32Of(ids, "embedding", "ids"),
          out.data,
          count,
          dim,
          vocab,
        );
        return out.buf;
      }
      const w = f32Of(weight, "embedding", "weight");
      if (!w) return host.embedding(weight, ids, count, dim);
      const out = allocF(count * dim);
      nat().embedding(
        w,
        i32Of(ids, "embedding", "ids"),
        out.data,
        count,
        dim,
        dim > 0 ? Math.floor(w.length / dim) : 0,
      );
      return out.buf;
    },
    embeddingBackward(dy, ids, count, dim, vocab) {
      const g = f32Of(dy, "embeddingBackward", "dy");
      if (!g) return host.embeddingBackward(dy, ids, count, dim, vocab);
      const out = allocF(vocab * dim);
      nat().embeddingBackward(g, i32Of(ids, "embeddingBackward", "ids"), out.data, count, dim, vocab);
      return out.buf;
    },
    adamwStepInPlace(param, grad, m, v, length, o: AdamWOptions) {
      const f = allF32([param, m, v], "adamwStepInPlace");
      const g = hostOf(grad, "adamwStepInPlace", "grad");
      const gradOk =
        (g.dtype === "f32" && g.data instanceof Float32Array) || (g.dtype === "bf16" && g.data instanceof Uint16Array);
      if (!f || !gradOk) {
        host.adamwStepInPlace(param, grad, m, v, length, o);
        return;
      }
      nat().adamwStep(
        f[0],
        g.data as Float32Array | Uint16Array,
        f[1],
        f[2],
        length,
        o.lr,
        o.beta1,
        o.beta2,
        o.eps,
        o.weightDecay,
        o.step,
        g.dtype === "bf16",
      );
    },
  };
}

/** The fused ops of the `cpu` backend (native addon loaded on first use; outputs from the reference allocator). */
export const fusedOps: Partial<Backend> = createFusedOps();
