// Skinny matmul with a half-precision weight (csrc/gemv_bf16.cc): f32 activations x[m, k] with m ≤ 4 times a
// bf16/f16 weight read straight from its 16-bit storage. The cpu backend's `matmul` routes such products here
// (batch-1 decode: the bf16 lm_head, a bf16/f16 dense projection) instead of the packed GEMM, which widens every
// weight panel into an f32 buffer before using it once. Everything else goes to the GEMM unchanged.
import type { Backend, Buffer, HostBuffer, MatmulOptions } from "@qlora/tensor";
import type { NativeModule } from "./load";

/** Rows of x the skinny kernel takes (more rows reuse each weight panel enough for the packed GEMM to win). */
export const GEMV_HALF_MAX_M = 4;

/** The N-API entry point; returns the path that ran ("avx2" | "scalar"). */
export type GemvHalfNative = (
  x: Float32Array,
  w: Uint16Array,
  out: Float32Array,
  m: number,
  k: number,
  n: number,
  transB: boolean,
  isF16: boolean,
  accumulate: boolean,
) => string;

export interface GemvHalfProblem {
  m: number;
  k: number;
  n: number;
  /** w stored [n, k] (nn.Linear's layout) instead of [k, n]. */
  transB: boolean;
  /** w holds f16 bits instead of bf16. */
  f16: boolean;
}

const scratchBits = new Uint32Array(1);
const scratchFloat = new Float32Array(scratchBits.buffer);
/** bf16 bits → number (the high half of an f32). */
function bf16ToNumber(h: number): number {
  scratchBits[0] = h << 16;
  return scratchFloat[0];
}

/** f16 bits → number (IEEE binary16: subnormals, infinities, NaN). */
function f16ToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/**
 * The reference: y[i, j] = Σ_p x[i, p] · W(p, j), summed in f64 and rounded once to f32, with W(p, j) =
 * w[j·k + p] when transB, else w[p·n + j]. The kernel sums in f32 (8 lanes, then across them), so it
 * differs from this by reassociation only.
 */
export function referenceGemvHalf(x: Float32Array, w: Uint16Array, p: GemvHalfProblem): Float32Array {
  const { m, k, n, transB, f16 } = p;
  const weight = Float64Array.from(w.subarray(0, k * n), f16 ? f16ToNumber : bf16ToNumber);
  const y = new Float32Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let q = 0; q < k; q++) s += x[i * k + q] * weight[transB ? j * k + q : q * n + j];
      y[i * n + j] = s;
    }
  return y;
}

/** The native entry point, or null for a binary built before it existed (then nothing is routed). */
export function gemvHalfNative(native: NativeModule): GemvHalfNative | null {
  const fn = native.gemvHalf as unknown;
  return typeof fn === "function" ? (fn as GemvHalfNative) : null;
}

function hostData(b: Buffer): HostBuffer["data"] | undefined {
  const h = b as HostBuffer;
  return h.device === "cpu" ? h.data : undefined;
}

/**
 * Wraps `matmul` so that f32 x[m ≤ 4, k] · a bf16/f16 weight (batch 1, x not transposed, plain or C += A·B)
 * runs on the skinny kernel; any other call goes to `matmul` as before.
 */
export function routeHalfGemv(
  gemv: GemvHalfNative,
  matmul: Backend["matmul"],
  allocator: Pick<Backend, "alloc" | "allocUninit">,
): Backend["matmul"] {
  return (a: Buffer, b: Buffer, o: MatmulOptions, c?: Buffer): Buffer => {
    const x = hostData(a);
    const w = hostData(b);
    const halfWeight = (b.dtype === "bf16" || b.dtype === "f16") && w instanceof Uint16Array;
    const alpha = o.alpha ?? 1;
    const beta = o.beta ?? 0;
    const cData = c ? hostData(c) : undefined;
    const fits =
      halfWeight &&
      x instanceof Float32Array &&
      a.dtype === "f32" &&
      o.batch === 1 &&
      o.transA !== true &&
      o.m >= 1 &&
      o.m <= GEMV_HALF_MAX_M &&
      o.k >= 1 &&
      alpha === 1 &&
      (c === undefined || (c.dtype === "f32" && cData instanceof Float32Array && (beta === 0 || beta === 1)));
    if (!fits) return matmul(a, b, o, c);
    const out = c ?? (allocator.allocUninit ?? allocator.alloc)("f32", o.m * o.n);
    gemv(
      x,
      w,
      hostData(out) as Float32Array,
      o.m,
      o.k,
      o.n,
      o.transB === true,
      b.dtype === "f16",
      c !== undefined && beta === 1,
    );
    return out;
  };
}
