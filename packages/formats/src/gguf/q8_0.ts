import { GgufError } from "../errors";
import { f16BitsToFloat32, float32ToF16Bits } from "../float";

export const Q8_0_BLOCK = 32;
export const Q8_0_BLOCK_BYTES = 34;

/** roundf: round half away from zero. */
function roundf(x: number): number {
  return x < 0 ? -Math.round(-x) : Math.round(x);
}

/**
 * ggml `quantize_row_q8_0_ref`, in float32 arithmetic: per block of 32,
 * amax = max|x|, d = amax / 127, id = d ? 1/d : 0, q = roundf(x * id); stored as fp16 d + 32 int8.
 */
export function quantizeQ8_0(x: ArrayLike<number>): Uint8Array {
  if (x.length % Q8_0_BLOCK !== 0)
    throw new GgufError("block_size", `Q8_0 needs a multiple of ${Q8_0_BLOCK} values, got ${x.length}`);
  const nb = x.length / Q8_0_BLOCK;
  const out = new Uint8Array(nb * Q8_0_BLOCK_BYTES);
  const view = new DataView(out.buffer);
  const f = Math.fround;
  for (let i = 0; i < nb; i++) {
    let amax = 0;
    for (let j = 0; j < Q8_0_BLOCK; j++) {
      const a = Math.abs(f(x[i * Q8_0_BLOCK + j]));
      if (a > amax) amax = a; // fmaxf ignores NaN, as MAX(a,b) with a NaN comparison does here
    }
    const d = f(amax / 127);
    const id = d !== 0 ? f(1 / d) : 0;
    const o = i * Q8_0_BLOCK_BYTES;
    view.setUint16(o, float32ToF16Bits(d), true);
    for (let j = 0; j < Q8_0_BLOCK; j++) {
      const q = roundf(f(f(x[i * Q8_0_BLOCK + j]) * id));
      view.setInt8(o + 2 + j, q);
    }
  }
  return out;
}

/** ggml `dequantize_row_q8_0`: y = q * fp16_to_fp32(d). */
export function dequantizeQ8_0(bytes: Uint8Array, count?: number): Float32Array {
  if (bytes.byteLength % Q8_0_BLOCK_BYTES !== 0)
    throw new GgufError(
      "size_mismatch",
      `Q8_0 data must be a multiple of ${Q8_0_BLOCK_BYTES} bytes, got ${bytes.byteLength}`,
    );
  const nb = bytes.byteLength / Q8_0_BLOCK_BYTES;
  const n = count ?? nb * Q8_0_BLOCK;
  if (n !== nb * Q8_0_BLOCK)
    throw new GgufError("size_mismatch", `${bytes.byteLength} bytes of Q8_0 hold ${nb * Q8_0_BLOCK} values, not ${n}`);
  const out = new Float32Array(n);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < nb; i++) {
    const o = i * Q8_0_BLOCK_BYTES;
    const d = f16BitsToFloat32(view.getUint16(o, true));
    for (let j = 0; j < Q8_0_BLOCK; j++) out[i * Q8_0_BLOCK + j] = view.getInt8(o + 2 + j) * d;
  }
  return out;
}
