/**
 * Half-precision helpers (Node 20 has no Float16Array): fp16 and bf16 as raw uint16 bits,
 * fp8 (E4M3FN, E5M2) decoding. All encoders round to nearest, ties to even.
 */
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 → IEEE binary16 bits (round to nearest even; overflow → ±inf; NaN stays NaN). */
export function float32ToF16Bits(value: number): number {
  f32[0] = value;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 112; // rebias 127 → 15
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    const m = mant | 0x800000;
    const shift = 14 - e;
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1) !== 0)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) !== 0)) h++;
  return sign | h;
}

let f16Table: Float32Array | undefined;
function f16Lut(): Float32Array {
  if (f16Table !== undefined) return f16Table;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0) t[h] = sign * mant * 2 ** -24;
    else if (exp === 0x1f) t[h] = mant === 0 ? sign * Infinity : NaN;
    else t[h] = sign * (1 + mant / 1024) * 2 ** (exp - 15);
  }
  f16Table = t;
  return t;
}

/** IEEE binary16 bits → number. */
export function f16BitsToFloat32(bits: number): number {
  return f16Lut()[bits & 0xffff];
}

/** float32 → bfloat16 bits (round to nearest even; NaN stays NaN). */
export function float32ToBf16Bits(value: number): number {
  f32[0] = value;
  const x = u32[0];
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) | 0x40) & 0xffff;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/** bfloat16 bits → number. */
export function bf16BitsToFloat32(bits: number): number {
  u32[0] = (bits & 0xffff) << 16;
  return f32[0];
}

export function f16ArrayToFloat32(src: Uint16Array): Float32Array {
  const lut = f16Lut();
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = lut[src[i]];
  return out;
}

export function float32ArrayToF16(src: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = float32ToF16Bits(src[i]);
  return out;
}

export function bf16ArrayToFloat32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  const o32 = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) o32[i] = src[i] << 16;
  return out;
}

export function float32ArrayToBf16(src: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = float32ToBf16Bits(src[i]);
  return out;
}

let e4m3Table: Float32Array | undefined;
let e5m2Table: Float32Array | undefined;

/** OCP FP8 E4M3FN: bias 7, no infinities, S.1111.111 is NaN, max 448. */
export function f8e4m3ToFloat32Table(): Float32Array {
  if (e4m3Table !== undefined) return e4m3Table;
  const t = new Float32Array(256);
  for (let b = 0; b < 256; b++) {
    const sign = b & 0x80 ? -1 : 1;
    const exp = (b >>> 3) & 0xf;
    const mant = b & 7;
    if (exp === 0xf && mant === 7) t[b] = NaN;
    else if (exp === 0) t[b] = sign * mant * 2 ** -9;
    else t[b] = sign * (1 + mant / 8) * 2 ** (exp - 7);
  }
  e4m3Table = t;
  return t;
}

/** OCP FP8 E5M2: bias 15, IEEE-like infinities and NaNs. */
export function f8e5m2ToFloat32Table(): Float32Array {
  if (e5m2Table !== undefined) return e5m2Table;
  const t = new Float32Array(256);
  for (let b = 0; b < 256; b++) t[b] = f16BitsToFloat32(b << 8);
  e5m2Table = t;
  return t;
}
