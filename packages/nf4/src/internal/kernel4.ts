import { FP4_MAGNITUDE_CODE_BY_RANK, FP4_THRESHOLDS, NF4_THRESHOLDS } from "../tables";
import type { NestedAbsmax, QuantType } from "../types";
import { exactThreshold, NEG_ROUNDS_TO_NONZERO } from "./exact";

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
 * Bucket tables for branch-free code selection on the exact product p = x·r (see ./exact):
 * bucket j = floor((p + 1)·K) (NF4) or floor(|p|·K) (FP4); each bucket holds at most one (exact)
 * threshold, so code = base[j] + (p > thr[j]). Verified at construction: every threshold is far
 * (> 1e-9) from a bucket edge, so float64 rounding of the bucket index can never matter.
 */
interface Buckets {
  k: number;
  top: number;
  base: Uint8Array;
  thr: Float64Array;
}

function buildBuckets(thresholds: ArrayLike<number>, k: number, lo0: number): Buckets {
  const exact = Array.from(thresholds, exactThreshold);
  const top = Math.round((1 - lo0) * k);
  const base = new Uint8Array(top + 1);
  const thr = new Float64Array(top + 1).fill(Infinity);
  for (let j = 0; j <= top; j++) {
    const lo = lo0 + j / k;
    const hi = j === top ? Infinity : lo0 + (j + 1) / k;
    base[j] = exact.filter((t) => t < lo).length;
    const inside = exact.filter((t) => t >= lo && t < hi);
    if (inside.length > 1) throw new Error(`nf4 internal: bucket ${j} holds ${inside.length} thresholds`);
    if (inside.length === 1) thr[j] = inside[0];
    for (const t of exact) {
      if (Math.abs(t - lo) < 1e-9) throw new Error(`nf4 internal: threshold ${t} on bucket edge ${lo}`);
    }
  }
  return { k, top, base, thr };
}

let nf4Buckets: Buckets | undefined;
let fp4Buckets: Buckets | undefined;

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
  if (quantType === "nf4") {
    nf4Buckets ??= buildBuckets(NF4_THRESHOLDS, 125, -1);
    quantizeNf4(nf4Buckets, x, start, end, blocksize, packed, pOut, absmax, aOut);
  } else {
    fp4Buckets ??= buildBuckets(FP4_THRESHOLDS, 250, 0);
    quantizeFp4(fp4Buckets, x, start, end, blocksize, packed, pOut, absmax, aOut);
  }
}

function quantizeNf4(
  bk: Buckets,
  x: Float32Array,
  start: number,
  end: number,
  blocksize: number,
  packed: Uint8Array,
  pOut: number,
  absmax: Float32Array,
  aOut: number,
): void {
  const { k, base, thr } = bk;
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
    if (r <= 3.4028234663852886e38) {
      // r finite => |p| <= m·r <= 1 + 2^-23 (or NaN), so j = floor((p + 1)·k) is in [0, top] (NaN -> 0)
      for (let i = s; i < ePair; i += 2) {
        const p0 = x[i] * r; // exact in float64
        const p1 = x[i + 1] * r;
        const j0 = ((p0 + 1) * k) | 0;
        const j1 = ((p1 + 1) * k) | 0;
        const c0 = base[j0] + +(p0 > thr[j0]);
        const c1 = base[j1] + +(p1 > thr[j1]);
        packed[p++] = (c0 << 4) | c1;
      }
    } else {
      // absmax 0 or subnormal: r = +Inf; literal per-element path
      for (let i = s; i < ePair; i += 2) {
        packed[p++] = (nf4Code(Math.fround(x[i] * r)) << 4) | nf4Code(Math.fround(x[i + 1] * r));
      }
    }
    if (ePair < e) {
      packed[p++] = (nf4Code(Math.fround(x[ePair] * r)) << 4) | nf4Code(Math.fround(0 * r));
    }
  }
}

function quantizeFp4(
  bk: Buckets,
  x: Float32Array,
  start: number,
  end: number,
  blocksize: number,
  packed: Uint8Array,
  pOut: number,
  absmax: Float32Array,
  aOut: number,
): void {
  const { k, base, thr } = bk;
  const rank = FP4_RANK;
  const neg = NEG_ROUNDS_TO_NONZERO;
  let p = pOut;
  let a = aOut;
  for (let s = start; s < end; s += blocksize) {
    const e = Math.min(s + blocksize, end);
    let m = e - s === blocksize ? NEG_FLT_MAX : 0;
    for (let i = s; i < e; i++) {
      const v = Math.abs(x[i]);
      if (v > m) m = v;
    }
    absmax[a++] = m;
    const r = Math.fround(1 / m);
    const ePair = s + ((e - s) & ~1);
    if (r <= 3.4028234663852886e38) {
      for (let i = s; i < ePair; i += 2) {
        const p0 = x[i] * r;
        const p1 = x[i + 1] * r;
        const a0 = Math.abs(p0);
        const a1 = Math.abs(p1);
        const j0 = (a0 * k) | 0;
        const j1 = (a1 * k) | 0;
        const c0 = rank[base[j0] + +(a0 > thr[j0])] | (+(p0 < neg) << 3);
        const c1 = rank[base[j1] + +(a1 > thr[j1])] | (+(p1 < neg) << 3);
        packed[p++] = (c0 << 4) | c1;
      }
    } else {
      for (let i = s; i < ePair; i += 2) {
        packed[p++] = (fp4Code(Math.fround(x[i] * r)) << 4) | fp4Code(Math.fround(x[i + 1] * r));
      }
    }
    if (ePair < e) {
      packed[p++] = (fp4Code(Math.fround(x[ePair] * r)) << 4) | fp4Code(Math.fround(0 * r));
    }
  }
}

/** Per-block absmax source: plain float32 values, or a double-quantized state recovered on the fly. */
export interface AbsmaxSource {
  /** absmax[blk - base] when `nested` is undefined. */
  values: Float32Array;
  base: number;
  nested?: NestedAbsmax;
}

/** fl32(fl32(code[q]·nestedAbsmax[blk / nbs]) + offset) (spec §5.4) or the stored value. */
function blockAbsmax(src: AbsmaxSource, blk: number): number {
  const nd = src.nested;
  if (nd === undefined) return src.values[blk - src.base];
  return Math.fround(
    Math.fround(nd.code[nd.qabsmax[blk]] * nd.nestedAbsmax[Math.floor(blk / nd.nestedBlocksize)]) + Math.fround(nd.offset),
  );
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * Fills out[w ...] with table entries for the codes of elements [i, e) (i even), table `t` indexed by
 * code (float32 bit patterns). Reads the packed bytes four at
 * a time (8 codes) where they are 4-byte aligned.
 */
function fillCodes32(
  t: Uint32Array,
  packed: Uint8Array,
  p32: Uint32Array | undefined,
  i: number,
  e: number,
  out: Uint32Array,
  w: number,
): void {
  let p = i >>> 1;
  let j = i;
  // bytes until 4-byte aligned
  while (j + 1 < e && (p & 3) !== 0) {
    const b = packed[p++];
    out[w] = t[b >>> 4];
    out[w + 1] = t[b & 15];
    w += 2;
    j += 2;
  }
  if (p32 !== undefined && (p & 3) === 0) {
    let q = p >>> 2;
    for (; j + 8 <= e; j += 8) {
      const v = p32[q++];
      out[w] = t[(v >>> 4) & 15];
      out[w + 1] = t[v & 15];
      out[w + 2] = t[(v >>> 12) & 15];
      out[w + 3] = t[(v >>> 8) & 15];
      out[w + 4] = t[(v >>> 20) & 15];
      out[w + 5] = t[(v >>> 16) & 15];
      out[w + 6] = t[v >>> 28];
      out[w + 7] = t[(v >>> 24) & 15];
      w += 8;
    }
    p = q << 2;
  }
  for (; j + 1 < e; j += 2) {
    const b = packed[p++];
    out[w] = t[b >>> 4];
    out[w + 1] = t[b & 15];
    w += 2;
  }
  if (j < e) out[w] = t[packed[p] >>> 4];
}

/** Same as fillCodes32 for 16-bit tables/outputs (a separate copy keeps both call sites monomorphic). */
function fillCodes16(
  t: Uint16Array,
  packed: Uint8Array,
  p32: Uint32Array | undefined,
  i: number,
  e: number,
  out: Uint16Array,
  w: number,
): void {
  let p = i >>> 1;
  let j = i;
  // bytes until 4-byte aligned
  while (j + 1 < e && (p & 3) !== 0) {
    const b = packed[p++];
    out[w] = t[b >>> 4];
    out[w + 1] = t[b & 15];
    w += 2;
    j += 2;
  }
  if (p32 !== undefined && (p & 3) === 0) {
    let q = p >>> 2;
    for (; j + 8 <= e; j += 8) {
      const v = p32[q++];
      out[w] = t[(v >>> 4) & 15];
      out[w + 1] = t[v & 15];
      out[w + 2] = t[(v >>> 12) & 15];
      out[w + 3] = t[(v >>> 8) & 15];
      out[w + 4] = t[(v >>> 20) & 15];
      out[w + 5] = t[(v >>> 16) & 15];
      out[w + 6] = t[v >>> 28];
      out[w + 7] = t[(v >>> 24) & 15];
      w += 8;
    }
    p = q << 2;
  }
  for (; j + 1 < e; j += 2) {
    const b = packed[p++];
    out[w] = t[b >>> 4];
    out[w + 1] = t[b & 15];
    w += 2;
  }
  if (j < e) out[w] = t[packed[p] >>> 4];
}

function words(packed: Uint8Array): Uint32Array | undefined {
  if (!LITTLE_ENDIAN || packed.byteOffset % 4 !== 0) return undefined;
  return new Uint32Array(packed.buffer, packed.byteOffset, packed.length >>> 2);
}

/**
 * Dequantizes elements [start, end) (start even) to float32: out[o + i - start] = fl32(code · absmax).
 * Per block, the 16 scaled values are formed once (one float32 multiply each, as CUDA does per
 * element) and the output is filled by moving their bit patterns (no per-element float work).
 * Nested absmax is recovered per block on the fly (no temporary array).
 */
export function dequantizeRangeF32(
  code: Float32Array,
  packed: Uint8Array,
  absmax: AbsmaxSource,
  blocksize: number,
  start: number,
  end: number,
  out: Float32Array,
  o: number,
): void {
  const outU = new Uint32Array(out.buffer, out.byteOffset, out.length);
  const p32 = words(packed);
  const sF = new Float32Array(16);
  const sU = new Uint32Array(sF.buffer);
  let i = start;
  if (p32 !== undefined && start % 8 === 0) {
    // fast path: whole blocks, 8 codes per 32-bit read, inlined (blocksize is a multiple of 8)
    const fullEnd = start + Math.floor((end - start) / blocksize) * blocksize;
    let blk = start / blocksize;
    const t = sU;
    while (i < fullEnd && i % blocksize === 0) {
      const a = blockAbsmax(absmax, blk);
      for (let c = 0; c < 16; c++) sF[c] = code[c] * a;
      const e = i + blocksize;
      let q = i >>> 3;
      let w = o + (i - start);
      for (let j = i; j < e; j += 8) {
        const v = p32[q++];
        outU[w] = t[(v >>> 4) & 15];
        outU[w + 1] = t[v & 15];
        outU[w + 2] = t[(v >>> 12) & 15];
        outU[w + 3] = t[(v >>> 8) & 15];
        outU[w + 4] = t[(v >>> 20) & 15];
        outU[w + 5] = t[(v >>> 16) & 15];
        outU[w + 6] = t[v >>> 28];
        outU[w + 7] = t[(v >>> 24) & 15];
        w += 8;
      }
      i = e;
      blk++;
    }
  }
  while (i < end) {
    const blk = Math.floor(i / blocksize);
    const a = blockAbsmax(absmax, blk);
    for (let c = 0; c < 16; c++) sF[c] = code[c] * a;
    const e = Math.min((blk + 1) * blocksize, end);
    fillCodes32(sU, packed, p32, i, e, outU, o + (i - start));
    i = e;
  }
}

/**
 * Same for 16-bit outputs: per block the 16 scaled float32 values are converted once (RNE) with
 * `conv` (f32 bits -> bf16/f16 bits) and the output is filled with those bit patterns.
 */
export function dequantizeRangeU16(
  code: Float32Array,
  packed: Uint8Array,
  absmax: AbsmaxSource,
  blocksize: number,
  start: number,
  end: number,
  out: Uint16Array,
  o: number,
  conv: (bits: number) => number,
): void {
  const p32 = words(packed);
  const sF = new Float32Array(16);
  const sU = new Uint32Array(sF.buffer);
  const h = new Uint16Array(16);
  let i = start;
  while (i < end) {
    const blk = Math.floor(i / blocksize);
    const a = blockAbsmax(absmax, blk);
    for (let c = 0; c < 16; c++) {
      sF[c] = code[c] * a;
      h[c] = conv(sU[c]);
    }
    const e = Math.min((blk + 1) * blocksize, end);
    fillCodes16(h, packed, p32, i, e, out, o + (i - start));
    i = e;
  }
}
