// Owned by the GEMM engineer: matmul, matmul4bit, matmul4bitInputGrad over the native addon
// (csrc/gemm.cc, csrc/nf4_gemm.cc, csrc/nf4_gemv.cc). Outputs are allocated through the shared host
// allocator so memory statistics stay one set of counters with the reference backend.
import type { Backend, Buffer, HostBuffer, MatmulOptions, QuantizedWeightBuffers } from "@qlora/tensor";
import { CpuKernelsError } from "./errors";
import type { NativeModule } from "./load";

/** The N-API surface of the GEMM-family kernels (see csrc/gemm.cc, csrc/nf4_gemm.cc). */
export interface GemmNative {
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
    /** Both given when an operand holds f16 bits (the other operand must then be f32). */
    aIsF16?: boolean,
    bIsF16?: boolean,
    /** out += op(A)·op(B) (out is read) instead of out = op(A)·op(B). */
    accumulate?: boolean,
  ): void;
  matmul4bit(x: Float32Array, m: number, out: Float32Array, w: NativeQuantWeight): void;
  matmul4bitInputGrad(dy: Float32Array, m: number, out: Float32Array, w: NativeQuantWeight): void;
  gemmIsa(isa?: string): string;
  /** The vector ISA the 4-bit GEMV (m ≤ 4) runs on: the widest gemmIsa's request allows (Zen 4: wider than gemmIsa()). */
  gemvIsa(): string;
  /** The micro-kernel bf16 x bf16 matmul runs on: "avx512bf16" (vdpbf16ps) or the widening gemmIsa() one. */
  gemmBf16Kernel(): string;
}

/** A 4-bit weight as the native kernels take it (typed arrays, no Buffer wrappers). */
export interface NativeQuantWeight {
  quantType: "nf4" | "fp4";
  blocksize: number;
  n: number;
  k: number;
  codes: Uint8Array;
  absmax?: Float32Array;
  qabsmax?: Uint8Array;
  code?: Float32Array;
  nestedAbsmax?: Float32Array;
  nestedBlocksize?: number;
  offset?: number;
}

type GemmOpName = "matmul" | "matmul4bit" | "matmul4bitInputGrad";

function host(b: Buffer, op: string, arg: string): HostBuffer {
  const h = b as HostBuffer;
  if (h.device !== "cpu" || h.data === undefined)
    throw new CpuKernelsError("BAD_BUFFER", `cpu.${op}: ${arg} must be a host buffer, got device "${b.device}"`);
  return h;
}

function f32(b: Buffer, op: string, arg: string): Float32Array {
  const h = host(b, op, arg);
  if (h.dtype !== "f32" || !(h.data instanceof Float32Array))
    throw new CpuKernelsError("BAD_DTYPE", `cpu.${op}: ${arg} must be f32, got ${h.dtype}`);
  return h.data;
}

/** An operand as the native GEMM takes it: f32 or bf16/f16 bits (f16 flagged; widened panel by panel). */
function matmulInput(b: Buffer, arg: string): { data: Float32Array | Uint16Array; f16: boolean } {
  const h = host(b, "matmul", arg);
  if (h.dtype === "f32" && h.data instanceof Float32Array) return { data: h.data, f16: false };
  if ((h.dtype === "bf16" || h.dtype === "f16") && h.data instanceof Uint16Array)
    return { data: h.data, f16: h.dtype === "f16" };
  throw new CpuKernelsError(
    "BAD_DTYPE",
    `cpu.matmul: ${arg} must be f32 or bf16, got ${h.dtype} (f16 is accepted too, against an f32 operand)`,
  );
}

/** QuantizedWeightBuffers → the plain object the native 4-bit kernels read. */
export function nativeQuantWeight(w: QuantizedWeightBuffers, op: string): NativeQuantWeight {
  const codes = host(w.codes, op, "w.codes");
  if (codes.dtype !== "u8") throw new CpuKernelsError("BAD_DTYPE", `cpu.${op}: w.codes must be u8, got ${codes.dtype}`);
  const [n, k] = w.shape;
  const base = { quantType: w.quantType, blocksize: w.blocksize, n, k, codes: codes.data as Uint8Array };
  if (w.absmax.kind === "f32") return { ...base, absmax: f32(w.absmax.values, op, "w.absmax.values") };
  const q = host(w.absmax.qabsmax, op, "w.absmax.qabsmax");
  if (q.dtype !== "u8")
    throw new CpuKernelsError("BAD_DTYPE", `cpu.${op}: w.absmax.qabsmax must be u8, got ${q.dtype}`);
  return {
    ...base,
    qabsmax: q.data as Uint8Array,
    code: f32(w.absmax.code, op, "w.absmax.code"),
    nestedAbsmax: f32(w.absmax.nestedAbsmax, op, "w.absmax.nestedAbsmax"),
    nestedBlocksize: w.absmax.nestedBlocksize,
    offset: w.absmax.offset,
  };
}

/** The GEMM-family Backend ops over `native`, allocating outputs with `allocator` (the shared host allocator:
 * outputs the kernels overwrite whole come from its cache without zeroing). */
export function createGemmOps(
  native: GemmNative,
  allocator: Pick<Backend, "alloc" | "allocUninit" | "free">,
): Pick<Backend, GemmOpName> {
  const out = (length: number) => {
    const buf = (allocator.allocUninit ?? allocator.alloc)("f32", length) as HostBuffer;
    return { buf, data: buf.data as Float32Array };
  };
  /** C = alpha·T + beta·C over the native result T (beta 0: C is not read). */
  const blend = (c: Float32Array, t: Float32Array | null, alpha: number, beta: number): void => {
    const n = c.length;
    if (!t) for (let i = 0; i < n; i++) c[i] = beta === 0 ? 0 : beta * c[i];
    else if (beta === 0) for (let i = 0; i < n; i++) c[i] = alpha * t[i];
    else if (beta === 1) for (let i = 0; i < n; i++) c[i] += alpha * t[i];
    else for (let i = 0; i < n; i++) c[i] = alpha * t[i] + beta * c[i];
  };
  const accumulate = (a: Buffer, b: Buffer, o: MatmulOptions, c: Buffer): Buffer => {
    const { batch, m, k, n } = o;
    const cd = f32(c, "matmul", "out");
    if (cd.length !== batch * m * n)
      throw new CpuKernelsError("BAD_SHAPE", `cpu.matmul: out has ${cd.length} elements, expected ${batch * m * n}`);
    const alpha = o.alpha ?? 1;
    const beta = o.beta ?? 0;
    if (k === 0) {
      blend(cd, null, alpha, beta);
      return c;
    }
    if (alpha === 1 && beta === 0) {
      run(a, b, o, cd); // the native GEMM overwrites C: straight into it
      return c;
    }
    if (beta !== 0) {
      // C = beta·C (one pass, only when beta ≠ 1), then C += op(alpha·A)·op(B) inside the GEMM (its accumulate
      // mode): C is read and written once more, no m×n temporary. alpha scales the smaller f32 operand.
      if (beta !== 1) blend(cd, null, 1, beta);
      if (alpha === 1) {
        run(a, b, o, cd, true);
        return c;
      }
      const scaled = scaleSmallerOperand(a, b, alpha);
      if (scaled) {
        try {
          run(scaled.a, scaled.b, o, cd, true);
        } finally {
          allocator.free(scaled.temp);
        }
        return c;
      }
      // half-precision operands: GEMM into a scratch buffer and blend (beta already applied)
      const t = out(batch * m * n);
      try {
        run(a, b, o, t.data);
        blend(cd, t.data, alpha, 1);
      } finally {
        allocator.free(t.buf);
      }
      return c;
    }
    // beta 0, alpha ≠ 1: GEMM into a cached scratch buffer and scale into C (C is never read).
    const t = out(batch * m * n);
    try {
      run(a, b, o, t.data);
      blend(cd, t.data, alpha, beta);
    } finally {
      allocator.free(t.buf);
    }
    return c;
  };
  /** A copy of the f32 operand with fewer elements, times alpha (the other one as is); null if neither is f32. */
  const scaleSmallerOperand = (a: Buffer, b: Buffer, alpha: number): { a: Buffer; b: Buffer; temp: Buffer } | null => {
    const fa = (a as HostBuffer).data instanceof Float32Array;
    const fb = (b as HostBuffer).data instanceof Float32Array;
    if (!fa && !fb) return null;
    const pickA = fa && (!fb || a.length <= b.length);
    const src = ((pickA ? a : b) as HostBuffer).data as Float32Array;
    const t = out(src.length);
    for (let i = 0; i < src.length; i++) t.data[i] = alpha * src[i];
    return pickA ? { a: t.buf, b, temp: t.buf } : { a, b: t.buf, temp: t.buf };
  };
  const run = (a: Buffer, b: Buffer, o: MatmulOptions, y: Float32Array, accumulateC = false): void => {
    const { batch, m, k, n } = o;
    const A = matmulInput(a, "a");
    const B = matmulInput(b, "b");
    if ((A.f16 && !(B.data instanceof Float32Array)) || (B.f16 && !(A.data instanceof Float32Array)))
      throw new CpuKernelsError("BAD_DTYPE", "cpu.matmul: an f16 operand needs an f32 other operand");
    const flags = accumulateC ? [A.f16, B.f16, true] : A.f16 || B.f16 ? [A.f16, B.f16] : [];
    native.matmul(
      A.data,
      B.data,
      y,
      batch,
      m,
      k,
      n,
      o.transA === true,
      o.transB === true,
      o.aBatchStride ?? m * k,
      o.bBatchStride ?? k * n,
      ...flags,
    );
  };
  return {
    matmul(a: Buffer, b: Buffer, o: MatmulOptions, c?: Buffer) {
      if (c) return accumulate(a, b, o, c);
      const { batch, m, k, n } = o;
      const y = out(batch * m * n);
      if (k === 0) {
        y.data.fill(0); // an empty inner dimension: the kernel would not touch the (recycled) output
        return y.buf;
      }
      run(a, b, o, y.data);
      if (o.alpha !== undefined && o.alpha !== 1) blend(y.data, y.data, o.alpha, 0);
      return y.buf;
    },
    matmul4bit(x: Buffer, w: QuantizedWeightBuffers, m: number) {
      const y = out(m * w.shape[0]);
      native.matmul4bit(f32(x, "matmul4bit", "x"), m, y.data, nativeQuantWeight(w, "matmul4bit"));
      return y.buf;
    },
    matmul4bitInputGrad(dy: Buffer, w: QuantizedWeightBuffers, m: number) {
      const dx = out(m * w.shape[1]);
      native.matmul4bitInputGrad(
        f32(dy, "matmul4bitInputGrad", "dy"),
        m,
        dx.data,
        nativeQuantWeight(w, "matmul4bitInputGrad"),
      );
      return dx.buf;
    },
  };
}

/** Narrow the raw module to the GEMM functions, naming any that are missing (a stale binary). */
export function gemmNative(native: NativeModule): GemmNative {
  for (const fn of ["matmul", "matmul4bit", "matmul4bitInputGrad", "gemmIsa", "gemvIsa", "gemmBf16Kernel"])
    if (typeof native[fn] !== "function")
      throw new CpuKernelsError(
        "STALE_BINARY",
        `@qlora/cpu-kernels: the native binary lacks "${fn}"; rebuild it (pnpm --filter @qlora/cpu-kernels build:native)`,
      );
  return native as unknown as GemmNative;
}
