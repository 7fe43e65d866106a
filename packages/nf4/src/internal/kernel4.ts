import { FP4_MAGNITUDE_CODE_BY_RANK, FP4_THRESHOLDS, NF4_THRESHOLDS } from "../tables";
import type { QuantType } from "../types";

/** float32 max: per-thread maxima in the CUDA kernel start from -FLT_MAX (spec §2.2). */
export const NEG_FLT_MAX = -3.4028234663852886e38;

// Thresholds as float64 copies of the float32 literals (comparisons are exact either way).
const NT = Float64Array.from(NF4_THRESHOLDS);
const FT = Float64Array.from(FP4_THRESHOLDS);
const FP4_RANK = FP4_MAGNITUDE_CODE_BY_RANK;

/** NF4 code of a scaled value y (float32): number of thresholds strictly below y; NaN -> 0. */
export function nf4Code(y: number): number {
  let c = y > NT[7] ? 8 : 0;
  c += y > NT[c + 3] ? 4 : 0;
  c += y > NT[c + 1] ? 2 : 0;
  c += y > NT[c] ? 1 : 0;
  return c;
}

/** FP4 code of a scaled value y (float32), CUDA `dQuantizeFP4` literals; NaN -> 0, -0 -> 0. */
export function fp4Code(y: number): number {
  const a = Math.abs(y);
  let k = a > FT[3] ? 4 : 0;
  k += a > FT[k + 1] ? 2 : 0;
  k += a > FT[k] ? 1 : 0;
  return FP4_RANK[k] + (y < 0 ? 8 : 0);
}

/**
 * Quantizes elements [start, end) of `x` (start block-aligned relative to the tensor; end either
 * block-aligned or the tensor end) into `packed` from byte `pOut` and `absmax` from index `aOut`.
 * `end - start` odd is only allowed for the tensor's final chunk (padding nibble = code of 0·r).
 */
export function quantizeRangeF32(
  quantType: QuantType,
  x: Float32Array,
  start: number,
  end: number,
  blocksize: number,
  packed: Uint8Array,
  pOut: number,
  absmax: Float32Array,
  aOut: number,
): void {
  const nt7 = NT[7];
  const ft3 = FT[3];
  const nt = NT;
  const ft = FT;
  const rank = FP4_RANK;
  const nf4 = quantType === "nf4";
  let p = pOut;
  let a = aOut;
  for (let s = start; s < end; s += blocksize) {
    const e = Math.min(s + blocksize, end);
    // fmaxf from -FLT_MAX over real elements: NaN ignored, Inf included; a partial block's
    // padding slots load as 0.
    let m = e - s === blocksize ? NEG_FLT_MAX : 0;
    for (let i = s; i < e; i++) {
      const v = Math.abs(x[i]);
      if (v > m) m = v;
    }
    absmax[a++] = m;
    const r = Math.fround(1 / m);
    const ePair = s + ((e - s) & ~1);
    if (nf4) {
      for (let i = s; i < ePair; i += 2) {
        const y0 = Math.fround(x[i] * r);
        const y1 = Math.fround(x[i + 1] * r);
        let c0 = y0 > nt7 ? 8 : 0;
        let c1 = y1 > nt7 ? 8 : 0;
        c0 += y0 > nt[c0 + 3] ? 4 : 0;
        c1 += y1 > nt[c1 + 3] ? 4 : 0;
        c0 += y0 > nt[c0 + 1] ? 2 : 0;
        c1 += y1 > nt[c1 + 1] ? 2 : 0;
        c0 += y0 > nt[c0] ? 1 : 0;
        c1 += y1 > nt[c1] ? 1 : 0;
        packed[p++] = (c0 << 4) | c1;
      }
      if (ePair < e) {
        packed[p++] = (nf4Code(Math.fround(x[ePair] * r)) << 4) | nf4Code(Math.fround(0 * r));
      }
    } else {
      for (let i = s; i < ePair; i += 2) {
        const y0 = Math.fround(x[i] * r);
        const y1 = Math.fround(x[i + 1] * r);
        const a0 = Math.abs(y0);
        const a1 = Math.abs(y1);
        let k0 = a0 > ft3 ? 4 : 0;
        let k1 = a1 > ft3 ? 4 : 0;
        k0 += a0 > ft[k0 + 1] ? 2 : 0;
        k1 += a1 > ft[k1 + 1] ? 2 : 0;
        k0 += a0 > ft[k0] ? 1 : 0;
        k1 += a1 > ft[k1] ? 1 : 0;
        const c0 = rank[k0] + (y0 < 0 ? 8 : 0);
        const c1 = rank[k1] + (y1 < 0 ? 8 : 0);
        packed[p++] = (c0 << 4) | c1;
      }
      if (ePair < e) {
        packed[p++] = (fp4Code(Math.fround(x[ePair] * r)) << 4) | fp4Code(Math.fround(0 * r));
      }
    }
  }
}

let nf4Pair: Float32Array | undefined;
let fp4Pair: Float32Array | undefined;

/** 512-entry LUT: byte b -> [code[b >> 4], code[b & 15]]. */
export function pairTable(code: Float32Array, quantType: QuantType): Float32Array {
  const cached = quantType === "nf4" ? nf4Pair : fp4Pair;
  if (cached !== undefined) return cached;
  const t = new Float32Array(512);
  for (let b = 0; b < 256; b++) {
    t[2 * b] = code[b >> 4];
    t[2 * b + 1] = code[b & 15];
  }
  if (quantType === "nf4") nf4Pair = t;
  else fp4Pair = t;
  return t;
}

/**
 * Dequantizes elements [start, end) (start even) to float32: out[o + i - start] = fl32(code · absmax).
 */
export function dequantizeRangeF32(
  lut: Float32Array,
  packed: Uint8Array,
  absmax: Float32Array,
  blocksize: number,
  start: number,
  end: number,
  out: Float32Array,
  o: number,
): void {
  let i = start;
  while (i < end) {
    const blk = Math.floor(i / blocksize);
    const a = absmax[blk];
    const e = Math.min((blk + 1) * blocksize, end);
    const ePair = i + ((e - i) & ~1);
    let p = i >>> 1;
    let w = o + (i - start);
    for (let j = i; j < ePair; j += 2) {
      const b = packed[p++] << 1;
      out[w] = lut[b] * a;
      out[w + 1] = lut[b + 1] * a;
      w += 2;
    }
    if (ePair < e) out[w] = lut[packed[p] << 1] * a;
    i = e;
  }
}
