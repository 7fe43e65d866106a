import { Nf4Error } from "./errors";
import { NEG_FLT_MAX } from "./internal/kernel4";
import { checkBlocksize8, describe } from "./internal/validate";
import { DYNAMIC_MAP_SIGNED } from "./tables";
import type { Blockwise8bit, Blockwise8bitOptions } from "./types";

function checkCode(code: unknown, arg: string): Float32Array {
  if (!(code instanceof Float32Array) || code.length !== 256) {
    throw new Nf4Error(
      "INVALID_ARGUMENT",
      `${arg}: expected a Float32Array of 256 ascending code values, got ${describe(code)}${
        code instanceof Float32Array ? ` of length ${code.length}` : ""
      }`,
    );
  }
  return code;
}

/**
 * Index of `y` in the 256-entry ascending map `c`, by the literal binary search of CUDA
 * `dQuantize<0>` (spec §5.2): nearest entry against float32 midpoints, exact ties to the even index,
 * NaN -> 0.
 */
export function quantize8bitValue(c: Float32Array, y: number): number {
  let pivot = 127;
  let lo = 0;
  let hi = 255;
  let lower = -1;
  let upper = 1;
  let val = c[127];
  for (let s = 64; s > 0; s >>= 1) {
    if (y > val) {
      lo = pivot;
      lower = val;
      pivot += s;
    } else {
      hi = pivot;
      upper = val;
      pivot -= s;
    }
    val = c[pivot];
  }
  if (hi === 255) upper = c[255];
  if (lo === 0) lower = c[0];
  if (y > val) {
    const mid = Math.fround(Math.fround(upper + val) * 0.5);
    return y > mid ? hi : pivot;
  }
  const mid = Math.fround(Math.fround(lower + val) * 0.5);
  return y < mid ? lo : pivot;
}

/**
 * bitsandbytes 8-bit blockwise quantization (`quantize_blockwise`, CUDA semantics, spec §5.2):
 * per block absmax = max|x| (NaN ignored), r = fl32(1/absmax), y = fl32(x·r), q = nearest code
 * index (ties to even). Used for double quantization (signed map, blocksize 256) and for 8-bit
 * optimizer states (state1: signed map, state2: DYNAMIC_MAP_UNSIGNED; blocksize 256).
 */
export function quantizeBlockwise8bit(values: Float32Array, options: Blockwise8bitOptions = {}): Blockwise8bit {
  if (!(values instanceof Float32Array)) {
    throw new Nf4Error("INVALID_ARGUMENT", `values: expected a Float32Array, got ${describe(values)}`);
  }
  const code = checkCode(options.code ?? DYNAMIC_MAP_SIGNED, "options.code");
  const bs = checkBlocksize8(options.blocksize ?? 4096, "options.blocksize");
  const n = values.length;
  const q = new Uint8Array(n);
  const absmax = new Float32Array(Math.ceil(n / bs));
  quantizeBlockwise8bitInto(values, code, bs, q, absmax);
  return { q, absmax };
}

/** Same as quantizeBlockwise8bit, writing into caller-provided arrays (no validation). */
export function quantizeBlockwise8bitInto(
  values: Float32Array,
  code: Float32Array,
  blocksize: number,
  q: Uint8Array,
  absmax: Float32Array,
): void {
  const n = values.length;
  let a = 0;
  for (let s = 0; s < n; s += blocksize) {
    const e = Math.min(s + blocksize, n);
    let m = e - s === blocksize ? NEG_FLT_MAX : 0;
    for (let i = s; i < e; i++) {
      const v = Math.abs(values[i]);
      if (v > m) m = v;
    }
    absmax[a++] = m;
    const r = Math.fround(1 / m);
    for (let i = s; i < e; i++) q[i] = quantize8bitValue(code, Math.fround(values[i] * r));
  }
}

/** Inverse of quantizeBlockwise8bit: out[i] = fl32(code[q[i]] · absmax[i / blocksize]). */
export function dequantizeBlockwise8bit(state: Blockwise8bit, options: Blockwise8bitOptions = {}): Float32Array {
  const code = checkCode(options.code ?? DYNAMIC_MAP_SIGNED, "options.code");
  const bs = checkBlocksize8(options.blocksize ?? 4096, "options.blocksize");
  const { q, absmax } = state;
  if (!(q instanceof Uint8Array)) {
    throw new Nf4Error("INVALID_ARGUMENT", `state.q: expected a Uint8Array, got ${describe(q)}`);
  }
  if (!(absmax instanceof Float32Array) || absmax.length !== Math.ceil(q.length / bs)) {
    throw new Nf4Error(
      "LENGTH_MISMATCH",
      `state.absmax: expected a Float32Array of length ceil(${q.length}/${bs}) = ${Math.ceil(q.length / bs)}, got ${
        absmax instanceof Float32Array ? `length ${absmax.length}` : describe(absmax)
      }`,
    );
  }
  const n = q.length;
  const out = new Float32Array(n);
  for (let s = 0, b = 0; s < n; s += bs, b++) {
    const a = absmax[b];
    const e = Math.min(s + bs, n);
    for (let i = s; i < e; i++) out[i] = code[q[i]] * a;
  }
  return out;
}
