/**
 * The `cuda` Backend: every op runs on device buffers (opaque handles into the native caching
 * allocator) on one compute stream; fromHost/toHost are the only host↔device copies.
 * Numerics follow the reference backend (f32 compute). Exceptions, said where they happen:
 * sums are accumulated in f32 in a different order (within the parity tolerances), and
 * `matmul4bit` with `fused4bit: true` uses bitsandbytes' bf16 compute (weight rounded to bf16).
 */
import type {
  AdamWOptions,
  AttentionOptions,
  Backend,
  BinaryOp,
  Buffer,
  DType,
  HostArray,
  MatmulOptions,
  MemoryStats,
  QuantizedWeightBuffers,
  ReduceOp,
  RopeOptions,
  StridedView,
  UnaryOp,
} from "@qlora/tensor";
import { withAttentionLayouts } from "./attention-layout";
import { requireCuda } from "./device";
import { CudaKernelsError } from "./errors";
import { type LoraAccumulatePlan, loraAccumulatePlan, loraRouteEnabled } from "./lora-route";
import type { NativeCuda, NativeMemoryStats } from "./native";

const DTYPE_CODE: Record<DType, number> = { f32: 0, f16: 1, bf16: 2, i32: 3, u8: 4, bool: 5 };
const DTYPE_BYTES: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, i32: 4, u8: 1, bool: 1 };
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

/** A device allocation. `handle` is meaningful only to this backend's addon. */
export class CudaBuffer implements Buffer {
  readonly device = "cuda:0";
  freed = false;
  constructor(
    readonly dtype: DType,
    readonly length: number,
    readonly handle: number,
  ) {}
}

export interface CudaBackendOptions {
  /** Route matmul4bit through the bf16 tensor-core 4-bit paths (bitsandbytes numerics: x and the dequantized
   * weight rounded to bf16, f32 accumulation): fused dequant + GEMM, or for m ≥ 256 with cuBLAS a bounded
   * bf16 dequant panel + cuBLAS (QLORA_CUDA_GEMM4BIT=fused|dequant-cublas|auto). Default false: exact-f32 path. */
  readonly fused4bit?: boolean;
}

export interface CudaBackend extends Backend {
  readonly name: "cuda";
  /** Allocator and device counters beyond MemoryStats (reserved, managed, cudaMemGetInfo). */
  deviceMemoryStats(): NativeMemoryStats;
  /** Waits for all queued device work. */
  synchronize(): void;
  /** Returns cached blocks to the driver. */
  emptyCache(): void;
  /** Paged (cudaMallocManaged) zero-filled buffer when length ≥ 1e5 elements, else a normal one. */
  allocPaged(dtype: DType, length: number): CudaBuffer;
  /** Optimizer state (Backend.allocState): allocPaged, or a normal buffer when QLORA_CUDA_PAGED_STATES=0.
   * The AdamW ops prefetch managed states to the device before each update. */
  allocState(dtype: DType, length: number): CudaBuffer;
  /** bitsandbytes 4-bit quantize of a device buffer (f32/bf16/f16) → codes u8 + absmax f32. (Named apart from the
   * optional host-input `Backend.quantize4bit`, which this backend leaves to @qlora/nf4.) */
  quantize4bitDevice(x: Buffer, quantType: "nf4" | "fp4", blocksize: number): { codes: CudaBuffer; absmax: CudaBuffer };
  /** Dequantize a 4-bit weight (double quant resolved in the same launch) to f32/bf16/f16. */
  dequantize4bit(w: QuantizedWeightBuffers, dtype: "f32" | "bf16" | "f16"): CudaBuffer;
  /** bitsandbytes 8-bit blockwise AdamW (spec §8.4), in place; states u8, absmax f32 [ceil(n/256)]. */
  adamw8bitStepInPlace(
    param: Buffer,
    grad: Buffer,
    state: { state1: Buffer; state2: Buffer; absmax1: Buffer; absmax2: Buffer; qmap1: Buffer; qmap2: Buffer },
    length: number,
    options: AdamWOptions,
  ): void;
}

function hostArrayFor(dtype: DType, length: number): HostArray {
  switch (dtype) {
    case "f32":
      return new Float32Array(length);
    case "f16":
    case "bf16":
      return new Uint16Array(length);
    case "i32":
      return new Int32Array(length);
    default:
      return new Uint8Array(length);
  }
}

/** States this large go to managed memory; smaller ones are not worth a page-granular, uncached allocation. */
const PAGED_MIN_ELEMENTS = 100_000;

/** Creates the backend on device 0; throws CudaUnavailableError (with the runtime's reason) without one. */
export function createCudaBackend(options: CudaBackendOptions = {}): CudaBackend {
  const native: NativeCuda = requireCuda();

  const buf = (b: Buffer, what: string): CudaBuffer => {
    if (!(b instanceof CudaBuffer)) {
      throw new CudaKernelsError(
        "FOREIGN_BUFFER",
        `cuda.${what}: expected a cuda buffer, got one on device "${b?.device}"`,
      );
    }
    if (b.freed) throw new CudaKernelsError("FREED_BUFFER", `cuda.${what}: buffer was freed`);
    return b;
  };
  const alloc = (dtype: DType, length: number, managed = false): CudaBuffer => {
    if (!Number.isInteger(length) || length < 0)
      throw new CudaKernelsError("BAD_LENGTH", `cuda.alloc: length must be a non-negative integer, got ${length}`);
    return new CudaBuffer(dtype, length, native.alloc(length * DTYPE_BYTES[dtype], managed));
  };
  // Read once: QLORA_CUDA_PAGED_STATES=0 bypasses managed memory for optimizer states.
  const pagedStates = process.env.QLORA_CUDA_PAGED_STATES !== "0";
  const free = (b: Buffer): void => {
    const c = buf(b, "free");
    c.freed = true;
    native.free(c.handle);
  };
  const h = (b: Buffer, what: string): number => buf(b, what).handle;
  /** x as an f32 buffer (the input itself when already f32; else a cast copy the caller frees). */
  const asF32 = (x: Buffer, what: string): { b: CudaBuffer; temp: boolean } => {
    const c = buf(x, what);
    if (c.dtype === "f32") return { b: c, temp: false };
    return { b: backend.copy(c, { shape: [c.length], strides: [1], offset: 0 }, "f32") as CudaBuffer, temp: true };
  };
  const withF32 = <T>(xs: Buffer[], what: string, fn: (...hs: number[]) => T): T => {
    const conv = xs.map((x) => asF32(x, what));
    try {
      return fn(...conv.map((c) => c.b.handle));
    } finally {
      for (const c of conv) if (c.temp) free(c.b);
    }
  };
  const f32Out = (length: number) => alloc("f32", length);
  const weightArgs = (w: QuantizedWeightBuffers): (number | boolean)[] => {
    const a = w.absmax;
    const spec =
      a.kind === "f32"
        ? [h(a.values, "absmax"), 0, 0, 0, 256, 0]
        : [
            0,
            h(a.qabsmax, "qabsmax"),
            h(a.code, "code"),
            h(a.nestedAbsmax, "nestedAbsmax"),
            a.nestedBlocksize,
            a.offset,
          ];
    return [h(w.codes, "codes"), w.shape[0], w.shape[1], w.blocksize, w.quantType === "fp4", ...spec];
  };

  // C = alpha·op(A)·op(B) + beta·C and dst += alpha·src, composed from the gemm, binary and copyInPlace
  // kernels; an inner dimension ≤ 64 goes to the fused LoRA kernel instead (loraAccumulateInto). Compiled,
  // unverified on a GPU.
  const scalar = (v: number, shape: readonly number[]) => ({
    buf: backend.fill("f32", 1, v),
    view: { shape, strides: shape.map(() => 0), offset: 0 },
  });
  const denseView = (shape: readonly number[]): StridedView => {
    const strides = new Array<number>(shape.length);
    let acc = 1;
    for (let i = shape.length - 1; i >= 0; i--) {
      strides[i] = acc;
      acc *= shape[i];
    }
    return { shape, strides, offset: 0 };
  };
  /** dst[dstView] = alpha·src[srcView] + beta·dst[dstView] (beta 0: dst not read). */
  const blendInto = (
    dst: Buffer,
    dstView: StridedView,
    src: Buffer,
    srcView: StridedView,
    alpha: number,
    beta: number,
  ) => {
    const shape = srcView.shape;
    const temps: Buffer[] = [];
    let cur = src;
    let curView = srcView;
    if (alpha !== 1) {
      const s = scalar(alpha, shape);
      temps.push(s.buf);
      cur = backend.binary("mul", cur, curView, s.buf, s.view, shape);
      curView = denseView(shape);
      temps.push(cur);
    }
    if (beta !== 0) {
      let d = dst;
      let dView = dstView;
      if (beta !== 1) {
        const s = scalar(beta, shape);
        temps.push(s.buf);
        d = backend.binary("mul", dst, dstView, s.buf, s.view, shape);
        dView = denseView(shape);
        temps.push(d);
      }
      cur = backend.binary("add", cur, curView, d, dView, shape);
      curView = denseView(shape);
      temps.push(cur);
    }
    backend.copyInPlace!(dst, dstView, cur, curView);
    for (const t of temps) free(t);
  };
  /** C (fresh when absent) = alpha·t·op(B) + beta·C with the fused rank-r kernel (csrc/kernels/lora.cu): C is
   * zeroed (beta 0) or scaled (beta ≠ 1) first, then y += alpha·t·op(B) reads and writes C once. */
  const loraAccumulateInto = (a: Buffer, b: Buffer, o: MatmulOptions, plan: LoraAccumulatePlan, c?: Buffer) => {
    const length = plan.rows * plan.n;
    const out = c ? buf(c, "matmul") : alloc("f32", length);
    const beta = c ? (o.beta ?? 0) : 0;
    if (beta === 0) native.fill(out.handle, DTYPE_CODE.f32, length, 0);
    else if (beta !== 1) blendInto(out, denseView([length]), out, denseView([length]), beta, 0);
    const ca = buf(a, "matmul");
    const cb = buf(b, "matmul");
    const run = (th: number, bh: number, dtype: number) =>
      native.loraAccumulate(th, bh, dtype, plan.bTransposed, plan.rows, plan.n, plan.r, o.alpha ?? 1, out.handle);
    if (ca.dtype === "bf16" && cb.dtype === "bf16") run(ca.handle, cb.handle, DTYPE_CODE.bf16);
    else withF32([ca, cb], "matmul", (th, bh) => run(th, bh, DTYPE_CODE.f32));
    return out;
  };
  const loraRoute = loraRouteEnabled();
  const accumulateMatmul = (a: Buffer, b: Buffer, o: MatmulOptions, c?: Buffer): Buffer => {
    const plan = loraRoute ? loraAccumulatePlan(o) : null;
    if (plan) return loraAccumulateInto(a, b, o, plan, c);
    const t = backend.matmul(a, b, { ...o, alpha: 1, beta: 0 });
    const shape = [o.batch * o.m * o.n];
    if (!c) {
      blendInto(t, denseView(shape), t, denseView(shape), o.alpha ?? 1, 0);
      return t;
    }
    blendInto(c, denseView(shape), t, denseView(shape), o.alpha ?? 1, o.beta ?? 0);
    free(t);
    return c;
  };

  const backend: CudaBackend = {
    name: "cuda",
    device: "cuda:0",

    alloc: (dtype, length) => alloc(dtype, length),
    free,
    fromHost(data, dtype) {
      const out = alloc(dtype, data.length);
      let host = data;
      const want = hostArrayFor(dtype, 0).constructor;
      if (host.constructor !== want) {
        host = hostArrayFor(dtype, data.length);
        (host as unknown as { set(a: ArrayLike<number>): void }).set(data as ArrayLike<number>);
      }
      native.upload(out.handle, host);
      return out;
    },
    toHost(b) {
      const c = buf(b, "toHost");
      const out = hostArrayFor(c.dtype, c.length);
      native.download(c.handle, out);
      return out;
    },
    memoryStats(): MemoryStats {
      const s = native.memoryStats();
      return { currentBytes: s.currentBytes, peakBytes: s.peakBytes };
    },
    resetPeak: () => native.resetPeak(),
    deviceMemoryStats: () => native.memoryStats(),
    synchronize: () => native.synchronize(),
    emptyCache: () => native.emptyCache(),
    allocPaged: (dtype, length) => alloc(dtype, length, length >= PAGED_MIN_ELEMENTS),
    allocState: (dtype, length) => alloc(dtype, length, pagedStates && length >= PAGED_MIN_ELEMENTS),

    copy(src, view: StridedView, dtype) {
      const s = buf(src, "copy");
      const out = alloc(
        dtype,
        view.shape.reduce((a, b) => a * b, 1),
      );
      native.copy(s.handle, DTYPE_CODE[s.dtype], view.shape, view.strides, view.offset, out.handle, DTYPE_CODE[dtype]);
      return out;
    },
    copyInPlace(dst, dstView: StridedView, src, srcView: StridedView) {
      const d = buf(dst, "copyInPlace");
      const s = buf(src, "copyInPlace");
      native.copyInPlace(
        d.handle,
        DTYPE_CODE[d.dtype],
        srcView.shape,
        dstView.strides,
        dstView.offset,
        s.handle,
        DTYPE_CODE[s.dtype],
        srcView.strides,
        srcView.offset,
      );
    },
    addInPlace(dst, dstView: StridedView, src, srcView: StridedView, alpha: number) {
      blendInto(dst, dstView, src, srcView, alpha, 1);
    },
    fill(dtype, length, value) {
      const out = alloc(dtype, length);
      native.fill(out.handle, DTYPE_CODE[dtype], length, value);
      return out;
    },
    unary(op, x, length) {
      const out = f32Out(length);
      withF32([x], "unary", (xh) => native.unary(UNARY_CODE[op], xh, out.handle, length));
      return out;
    },
    binary(op, a, aView, b, bView, shape) {
      const out = f32Out(shape.reduce((p, q) => p * q, 1));
      withF32([a, b], "binary", (ah, bh) =>
        native.binary(
          BINARY_CODE[op],
          ah,
          shape,
          aView.strides,
          aView.offset,
          bh,
          bView.strides,
          bView.offset,
          out.handle,
        ),
      );
      return out;
    },
    reduce(op, x, outer, size, inner) {
      const out = f32Out(outer * inner);
      withF32([x], "reduce", (xh) => native.reduce(REDUCE_CODE[op], xh, outer, size, inner, out.handle));
      return out;
    },
    matmul(a, b, o: MatmulOptions, c?: Buffer) {
      if (c || (o.alpha !== undefined && o.alpha !== 1)) return accumulateMatmul(a, b, o, c);
      const out = f32Out(o.batch * o.m * o.n);
      const run = (ah: number, bh: number, dtype: number) =>
        native.gemm(
          ah,
          bh,
          out.handle,
          o.batch,
          o.m,
          o.n,
          o.k,
          !!o.transA,
          !!o.transB,
          o.aBatchStride ?? -1,
          o.bBatchStride ?? -1,
          dtype,
        );
      const ca = buf(a, "matmul");
      const cb = buf(b, "matmul");
      if (ca.dtype === "bf16" && cb.dtype === "bf16") run(ca.handle, cb.handle, DTYPE_CODE.bf16);
      else withF32([ca, cb], "matmul", (ah, bh) => run(ah, bh, DTYPE_CODE.f32));
      return out;
    },

    matmul4bit(x, w, m) {
      const [n] = w.shape;
      const out = f32Out(m * n);
      const cx = buf(x, "matmul4bit");
      if (options.fused4bit && (cx.dtype === "bf16" || cx.dtype === "f32")) {
        native.gemm4bit(cx.handle, DTYPE_CODE[cx.dtype], m, ...weightArgs(w), out.handle, DTYPE_CODE.f32);
        return out;
      }
      // Exact-f32 path (reference numerics), never a whole-weight copy: f32 panels of ≤ 64 MiB + cuBLAS SGEMM,
      // or without cuBLAS a SIMT GEMM that dequantizes W tile by tile (no scratch).
      withF32([cx], "matmul4bit", (xh) => native.gemm4bitF32(xh, m, ...weightArgs(w), out.handle, false));
      return out;
    },
    matmul4bitInputGrad(dy, w, m) {
      const [, k] = w.shape;
      const out = f32Out(m * k);
      const cd = buf(dy, "matmul4bitInputGrad");
      if (options.fused4bit && (cd.dtype === "bf16" || cd.dtype === "f32")) {
        native.gemm4bitInputGrad(cd.handle, DTYPE_CODE[cd.dtype], m, ...weightArgs(w), out.handle, DTYPE_CODE.f32);
        return out;
      }
      withF32([cd], "matmul4bitInputGrad", (dh) => native.gemm4bitF32(dh, m, ...weightArgs(w), out.handle, true));
      return out;
    },
    rmsNorm(x, weight, rows, dim, eps) {
      const y = f32Out(rows * dim);
      const rstd = f32Out(rows);
      withF32([x, weight], "rmsNorm", (xh, wh) =>
        native.rmsNorm(...([xh, wh, rows, dim, eps, y.handle, rstd.handle] as never[])),
      );
      return { y, rstd };
    },
    rmsNormBackward(dy, x, weight, rstd, rows, dim) {
      const dx = f32Out(rows * dim);
      const dweight = f32Out(dim);
      withF32([dy, x, weight, rstd], "rmsNormBackward", (a, b, c, d) =>
        native.rmsNormBackward(...([a, b, c, d, rows, dim, dx.handle, dweight.handle] as never[])),
      );
      return { dx, dweight };
    },
    rope(x, positions, o: RopeOptions) {
      const y = f32Out(o.batch * o.seq * o.heads * o.headDim);
      const p = h(positions, "rope");
      withF32([x], "rope", (xh) =>
        native.rope(...([xh, p, o.batch, o.seq, o.heads, o.headDim, o.theta, !!o.inverse, y.handle] as never[])),
      );
      return y;
    },
    attention(q, k, v, o: AttentionOptions) {
      const out = f32Out(o.batch * o.heads * o.seq * o.headDim);
      const lse = f32Out(o.batch * o.heads * o.seq);
      const seg = o.segmentIds ? h(o.segmentIds, "attention") : 0;
      const dims = [o.batch, o.heads, o.kvHeads, o.seq, o.headDim] as const;
      const bf16 = [q, k, v].every((x) => buf(x, "attention").dtype === "bf16");
      // bf16 tensor cores (attention_tc.cu) for bf16 buffers, the exact-f32 SIMT kernel otherwise;
      // QLORA_CUDA_ATTENTION=simt|tc overrides. out stays f32 on every path (the Backend contract).
      if (native.attentionUseTc(...dims, bf16)) {
        const inDtype = DTYPE_CODE[bf16 ? "bf16" : "f32"];
        const bytes = native.attentionTcScratchBytes(...dims, false, inDtype);
        const scratch = bytes > 0 ? alloc("u8", bytes) : undefined;
        const run = (qh: number, kh: number, vh: number) =>
          native.attentionTc(
            qh,
            kh,
            vh,
            inDtype,
            ...dims,
            o.scale,
            seg,
            out.handle,
            DTYPE_CODE.f32,
            lse.handle,
            scratch?.handle ?? 0,
          );
        try {
          if (bf16) run(h(q, "attention"), h(k, "attention"), h(v, "attention"));
          else withF32([q, k, v], "attention", run);
        } finally {
          if (scratch) free(scratch);
        }
        return { out, lse };
      }
      withF32([q, k, v], "attention", (qh, kh, vh) =>
        native.attention(
          ...([
            qh,
            kh,
            vh,
            o.batch,
            o.heads,
            o.kvHeads,
            o.seq,
            o.headDim,
            o.scale,
            seg,
            out.handle,
            lse.handle,
          ] as never[]),
        ),
      );
      return { out, lse };
    },
    attentionBackward(dout, q, k, v, out, lse, o: AttentionOptions) {
      const dq = f32Out(o.batch * o.heads * o.seq * o.headDim);
      const dk = f32Out(o.batch * o.kvHeads * o.seq * o.headDim);
      const dv = f32Out(o.batch * o.kvHeads * o.seq * o.headDim);
      const scratch = f32Out(o.batch * o.heads * o.seq);
      const seg = o.segmentIds ? h(o.segmentIds, "attentionBackward") : 0;
      const dims = [o.batch, o.heads, o.kvHeads, o.seq, o.headDim] as const;
      const bf16 = [q, k, v].every((x) => buf(x, "attentionBackward").dtype === "bf16");
      if (native.attentionUseTc(...dims, bf16)) {
        // dout is brought to the inputs' dtype, out is read as given (f32 from attention(), or bf16); dq/dk/dv f32.
        const inDtype: DType = bf16 ? "bf16" : "f32";
        const outDtype: DType = buf(out, "attentionBackward").dtype === "bf16" ? "bf16" : "f32";
        const temps: CudaBuffer[] = [scratch];
        const as = (x: Buffer, dtype: DType): number => {
          const c = buf(x, "attentionBackward");
          if (c.dtype === dtype) return c.handle;
          const t = backend.copy(c, { shape: [c.length], strides: [1], offset: 0 }, dtype) as CudaBuffer;
          temps.push(t);
          return t.handle;
        };
        try {
          const [a, b, c, d] = [dout, q, k, v].map((x) => as(x, inDtype));
          const tcScratch = alloc("u8", native.attentionTcScratchBytes(...dims, true, DTYPE_CODE[inDtype]));
          temps.push(tcScratch);
          native.attentionBackwardTc(
            a,
            b,
            c,
            d,
            DTYPE_CODE[inDtype],
            as(out, outDtype),
            DTYPE_CODE[outDtype],
            as(lse, "f32"),
            ...dims,
            o.scale,
            seg,
            dq.handle,
            dk.handle,
            dv.handle,
            DTYPE_CODE.f32,
            tcScratch.handle,
          );
        } finally {
          for (const t of temps) free(t);
        }
        return { dq, dk, dv };
      }
      try {
        withF32([dout, q, k, v, out, lse], "attentionBackward", (a, b, c, d, e, f) =>
          native.attentionBackward(
            ...([
              a,
              b,
              c,
              d,
              e,
              f,
              o.batch,
              o.heads,
              o.kvHeads,
              o.seq,
              o.headDim,
              o.scale,
              seg,
              dq.handle,
              dk.handle,
              dv.handle,
              scratch.handle,
            ] as never[]),
          ),
        );
      } finally {
        free(scratch);
      }
      return { dq, dk, dv };
    },
    softmax(x, rows, n) {
      const y = f32Out(rows * n);
      withF32([x], "softmax", (xh) => native.softmax(...([xh, rows, n, y.handle] as never[])));
      return y;
    },
    softmaxBackward(dy, y, rows, n) {
      const dx = f32Out(rows * n);
      withF32([dy, y], "softmaxBackward", (a, b) => native.softmaxBackward(...([a, b, rows, n, dx.handle] as never[])));
      return dx;
    },
    crossEntropy(logits, labels, rows, vocab, ignoreIndex) {
      const loss = f32Out(rows);
      const lse = f32Out(rows);
      const lb = h(labels, "crossEntropy");
      withF32([logits], "crossEntropy", (xh) =>
        native.crossEntropy(...([xh, lb, rows, vocab, ignoreIndex, loss.handle, lse.handle] as never[])),
      );
      return { loss, lse };
    },
    crossEntropyBackward(dloss, logits, labels, lse, rows, vocab, ignoreIndex) {
      const d = f32Out(rows * vocab);
      const lb = h(labels, "crossEntropyBackward");
      withF32([dloss, logits, lse], "crossEntropyBackward", (a, b, c) =>
        native.crossEntropyBackward(...([a, b, lb, c, rows, vocab, ignoreIndex, d.handle] as never[])),
      );
      return d;
    },
    swiglu(gate, up, length) {
      const y = f32Out(length);
      withF32([gate, up], "swiglu", (g, u) => native.swiglu(...([g, u, length, y.handle] as never[])));
      return y;
    },
    swigluBackward(dy, gate, up, length) {
      const dgate = f32Out(length);
      const dup = f32Out(length);
      withF32([dy, gate, up], "swigluBackward", (a, b, c) =>
        native.swigluBackward(...([a, b, c, length, dgate.handle, dup.handle] as never[])),
      );
      return { dgate, dup };
    },
    embedding(weight, ids, count, dim) {
      const out = f32Out(count * dim);
      const vocab = Math.floor(weight.length / dim);
      const ih = h(ids, "embedding");
      withF32([weight], "embedding", (wh) => native.embedding(...([wh, ih, count, dim, vocab, out.handle] as never[])));
      return out;
    },
    embeddingBackward(dy, ids, count, dim, vocab) {
      const dw = f32Out(vocab * dim);
      const ih = h(ids, "embeddingBackward");
      withF32([dy], "embeddingBackward", (dh) =>
        native.embeddingBackward(...([dh, ih, count, dim, vocab, dw.handle] as never[])),
      );
      return dw;
    },
    adamwStepInPlace(param, grad, m, v, length, o: AdamWOptions) {
      const p = h(param, "adamwStepInPlace");
      const mh = h(m, "adamwStepInPlace");
      const vh = h(v, "adamwStepInPlace");
      withF32([grad], "adamwStepInPlace", (g) =>
        native.adamw(...([p, g, mh, vh, length, o.lr, o.beta1, o.beta2, o.eps, o.weightDecay, o.step] as never[])),
      );
    },

    quantize4bitDevice(x, quantType, blocksize) {
      const c = buf(x, "quantize4bitDevice");
      const codes = alloc("u8", Math.ceil(c.length / 2));
      const absmax = alloc("f32", Math.ceil(c.length / blocksize));
      native.quantize4bit(
        c.handle,
        DTYPE_CODE[c.dtype],
        c.length,
        blocksize,
        quantType === "fp4",
        codes.handle,
        absmax.handle,
      );
      return { codes, absmax };
    },
    dequantize4bit(w, dtype) {
      const n = w.shape[0] * w.shape[1];
      const out = alloc(dtype, n);
      const [codes, , , blocksize, fp4, ...spec] = weightArgs(w);
      native.dequantize4bit(codes, n, blocksize, fp4, ...spec, out.handle, DTYPE_CODE[dtype]);
      return out;
    },
    adamw8bitStepInPlace(param, grad, s, length, o) {
      const hs = [s.state1, s.state2, s.absmax1, s.absmax2, s.qmap1, s.qmap2].map((b) => h(b, "adamw8bitStepInPlace"));
      const p = h(param, "adamw8bitStepInPlace");
      withF32([grad], "adamw8bitStepInPlace", (g) =>
        native.adamw8bit(...([p, g, ...hs, length, o.lr, o.beta1, o.beta2, o.eps, o.weightDecay, o.step] as never[])),
      );
    },
  };
  // bshd layout (transposing device copies) and the KV-cache refusal: the kernels read bhsd only
  Object.assign(
    backend,
    withAttentionLayouts(backend, { attention: backend.attention, attentionBackward: backend.attentionBackward }),
  );
  return backend;
}
