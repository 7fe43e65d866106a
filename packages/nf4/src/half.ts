/**
 * float32 <-> bfloat16 / float16 conversions on bit patterns (Uint16Array), round-to-nearest-even.
 * NaN converts to the canonical quiet NaN 0x7FFF (what CUDA's `__float2bfloat16` / `__float2half`
 * write); f16 overflow (|x| >= 65520) becomes +-Inf; f16 subnormals are produced exactly (no FTZ).
 */

/** float32 bit pattern -> bfloat16 bit pattern (RNE). */
export function f32BitsToBf16Bits(bits: number): number {
  if ((bits & 0x7fffffff) > 0x7f800000) return 0x7fff;
  return ((bits >>> 0) + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
}

/** float32 bit pattern -> float16 bit pattern (RNE). */
export function f32BitsToF16Bits(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const abs = bits & 0x7fffffff;
  if (abs >= 0x7f800000) return abs > 0x7f800000 ? 0x7fff : sign | 0x7c00;
  if (abs >= 0x477ff000) return sign | 0x7c00; // >= 65520 rounds to Inf
  if (abs >= 0x38800000) {
    // normal half
    const mant = abs & 0x7fffff;
    let q = (((abs >>> 23) - 112) << 10) | (mant >>> 13);
    const rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && (q & 1) !== 0)) q++;
    return sign | q;
  }
  if (abs <= 0x33000000) return sign; // <= 2^-25 rounds to (signed) zero
  const e = abs >>> 23; // 102..112
  const m = (abs & 0x7fffff) | 0x800000;
  const shift = 126 - e; // 14..24
  let q = m >>> shift;
  const rem = m & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rem > half || (rem === half && (q & 1) !== 0)) q++;
  return sign | q;
}

/** float16 bit pattern -> float32 bit pattern (exact). */
export function f16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const e = (h >>> 10) & 0x1f;
  let m = h & 0x3ff;
  if (e === 0x1f) return (sign | 0x7f800000 | (m << 13)) >>> 0;
  if (e !== 0) return (sign | ((e + 112) << 23) | (m << 13)) >>> 0;
  if (m === 0) return sign >>> 0;
  // subnormal: normalise
  let exp = 113;
  while ((m & 0x400) === 0) {
    m <<= 1;
    exp--;
  }
  return (sign | (exp << 23) | ((m & 0x3ff) << 13)) >>> 0;
}

let f16Lut: Float32Array | undefined;
/** 65536-entry float16 -> float32 table, built on first use (256 KiB). */
export function f16Table(): Float32Array {
  if (f16Lut === undefined) {
    const u = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) u[h] = f16BitsToF32Bits(h);
    f16Lut = new Float32Array(u.buffer);
  }
  return f16Lut;
}

function u32View(x: Float32Array): Uint32Array {
  return new Uint32Array(x.buffer, x.byteOffset, x.length);
}

/** float32 values -> bfloat16 bit patterns (RNE; NaN -> 0x7FFF). */
export function f32ToBf16(x: Float32Array, out: Uint16Array = new Uint16Array(x.length)): Uint16Array {
  const u = u32View(x);
  const n = x.length;
  for (let i = 0; i < n; i++) {
    const b = u[i];
    out[i] = (b & 0x7fffffff) > 0x7f800000 ? 0x7fff : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** bfloat16 bit patterns -> float32 values (exact). */
export function bf16ToF32(x: Uint16Array, out: Float32Array = new Float32Array(x.length)): Float32Array {
  const u = u32View(out);
  const n = x.length;
  for (let i = 0; i < n; i++) u[i] = x[i] << 16;
  return out;
}

/** float32 values -> float16 bit patterns (RNE; overflow -> Inf; subnormals exact; NaN -> 0x7FFF). */
export function f32ToF16(x: Float32Array, out: Uint16Array = new Uint16Array(x.length)): Uint16Array {
  const u = u32View(x);
  const n = x.length;
  for (let i = 0; i < n; i++) out[i] = f32BitsToF16Bits(u[i]);
  return out;
}

/** float16 bit patterns -> float32 values (exact). */
export function f16ToF32(x: Uint16Array, out: Float32Array = new Float32Array(x.length)): Float32Array {
  const t = f16Table();
  const n = x.length;
  for (let i = 0; i < n; i++) out[i] = t[x[i]];
  return out;
}
