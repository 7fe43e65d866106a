// Oracles for the kernel tests: the @qlora/tensor reference backend (f64 accumulation, one f32
// rounding at the end), so the error measured is essentially the kernel's own f32 summation.
import type { QuantState4bit } from "@qlora/nf4";
import {
  type Backend,
  type HostBuffer,
  type MatmulOptions,
  type QuantizedWeightBuffers,
  referenceBackend,
} from "@qlora/tensor";

/** The oracle: the reference backend's matmul (f64 accumulation, one final f32 rounding). */
export function referenceMatmul(
  a: Float32Array | Uint16Array,
  b: Float32Array | Uint16Array,
  o: MatmulOptions,
): Float32Array {
  const r = referenceBackend;
  const A = r.fromHost(a, a instanceof Uint16Array ? "bf16" : "f32"),
    B = r.fromHost(b, b instanceof Uint16Array ? "bf16" : "f32");
  const y = r.matmul(A, B, o);
  const out = (y as HostBuffer).data as Float32Array;
  for (const buf of [A, B, y]) r.free(buf);
  return out;
}

/** A QuantState4bit as backend buffers of `be`. */
export function quantBuffers(be: Backend, s: QuantState4bit): QuantizedWeightBuffers {
  const [n, k] = s.shape as [number, number];
  const codes = be.fromHost(s.packed, "u8");
  if (s.absmax instanceof Float32Array)
    return {
      quantType: s.quantType,
      blocksize: s.blocksize,
      shape: [n, k],
      codes,
      absmax: { kind: "f32", values: be.fromHost(s.absmax, "f32") },
    };
  const a = s.absmax;
  return {
    quantType: s.quantType,
    blocksize: s.blocksize,
    shape: [n, k],
    codes,
    absmax: {
      kind: "nested",
      qabsmax: be.fromHost(a.qabsmax, "u8"),
      code: be.fromHost(a.code, "f32"),
      nestedAbsmax: be.fromHost(a.nestedAbsmax, "f32"),
      nestedBlocksize: a.nestedBlocksize,
      offset: a.offset,
    },
  };
}

/** The oracle for the 4-bit ops: the reference backend's matmul4bit / matmul4bitInputGrad. */
export function referenceMatmul4bit(
  input: Float32Array,
  w: QuantizedWeightBuffers,
  m: number,
  grad: boolean,
): Float32Array {
  const r = referenceBackend;
  const x = r.fromHost(input, "f32");
  const y = grad ? r.matmul4bitInputGrad(x, w, m) : r.matmul4bit(x, w, m);
  const out = (y as HostBuffer).data as Float32Array;
  r.free(x);
  r.free(y);
  return out;
}

/** Deterministic pseudo-random floats in [-1, 1) (xorshift32), so failures reproduce. */
export function randomF32(length: number, seed: number): Float32Array {
  const out = new Float32Array(length);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

export function randomBytes(length: number, seed: number): Uint8Array {
  const f = randomF32(length, seed);
  return Uint8Array.from(f, (v) => Math.floor((v + 1) * 128) & 255);
}

/** Largest violation ratio of |got - want| <= tol * (1 + |want|) * sqrt(k); <= 1 means within bound. */
export function worstRatio(got: ArrayLike<number>, want: ArrayLike<number>, k: number, tol = 1e-5): number {
  let worst = 0;
  const scale = tol * Math.sqrt(Math.max(k, 1));
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i]! - want[i]!);
    const r = Number.isNaN(d) ? Infinity : d / (scale * (1 + Math.abs(want[i]!)));
    if (r > worst) worst = r;
  }
  return worst;
}
