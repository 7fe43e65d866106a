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

/**
 * Same as quantizeBlockwise8bit, writing into caller-provided arrays (no validation). The values
 * quantized are fl32(values[i] − offset): double quantization passes its mean here instead of
 * materialising the shifted copy (a fresh array's first touch costs more than the whole pass).
 */
export function quantizeBlockwise8bitInto(
  values: Float32Array,
  code: Float32Array,
  blocksize: number,
  q: Uint8Array,
  absmax: Float32Array,
  offset = 0,
): void {
  const n = values.length;
  const lookup = n >= LOOKUP_MIN_VALUES ? bucketLookup(code) : undefined;
  let a = 0;
  for (let s = 0; s < n; s += blocksize) {
    const e = Math.min(s + blocksize, n);
    let m = e - s === blocksize ? NEG_FLT_MAX : 0;
    for (let i = s; i < e; i++) {
      const v = Math.abs(Math.fround(values[i] - offset));
      if (v > m) m = v;
    }
    absmax[a++] = m;
    const r = Math.fround(1 / m);
    if (lookup !== undefined && r <= 3.4028234663852886e38) {
      // r finite => |y| <= 1 + 2^-23 or NaN: the bucket index is in [0, 2·K8]
      for (let i = s; i < e; i++) {
        const y = Math.fround(Math.fround(values[i] - offset) * r);
        const c = lookup[((y + 1) * K8) | 0];
        q[i] = c >= 0 && !Number.isNaN(y) ? c : quantize8bitValue(code, y);
      }
    } else {
      for (let i = s; i < e; i++) q[i] = quantize8bitValue(code, Math.fround(Math.fround(values[i] - offset) * r));
    }
  }
}

/** Buckets per unit of the 8-bit lookup: 8193 two-byte entries over [-1, 1]. */
const K8 = 4096;
/** Below this many values the literal search is cheaper than building a lookup. */
const LOOKUP_MIN_VALUES = 1 << 15;
let lookupCache: { code: Float32Array; lookup: Int16Array | undefined } | undefined;

/**
 * Bucket j = floor((y + 1)·K8) → the index quantize8bitValue gives every float32 y in the bucket
 * (widened by 1e-9 on both sides, so a rounded bucket index cannot matter), or −1 where the bucket
 * straddles a decision boundary (then the literal search runs). Sound because the literal search is
 * monotone in y for an ascending code; undefined (no lookup) for a code that is not ascending.
 */
function bucketLookup(code: Float32Array): Int16Array | undefined {
  if (lookupCache?.code.every((v, i) => Object.is(v, code[i]))) return lookupCache.lookup;
  let ascending = true;
  for (let i = 1; i < 256; i++) if (!(code[i - 1] < code[i])) ascending = false;
  let lookup: Int16Array | undefined;
  if (ascending) {
    lookup = new Int16Array(2 * K8 + 1);
    for (let j = 0; j <= 2 * K8; j++) {
      const first = quantize8bitValue(code, f32AtOrBelow(-1 + j / K8 - 1e-9));
      const last = quantize8bitValue(code, f32AtOrAbove(-1 + (j + 1) / K8 + 1e-9));
      lookup[j] = first === last ? first : -1;
    }
  }
  lookupCache = { code: code.slice(), lookup };
  return lookup;
}

const f32Scratch = new Float32Array(1);
const i32Scratch = new Int32Array(f32Scratch.buffer);
/** Largest float32 <= v (v finite, |v| < 2). */
function f32AtOrBelow(v: number): number {
  f32Scratch[0] = v;
  if (f32Scratch[0] > v) i32Scratch[0] += f32Scratch[0] > 0 ? -1 : 1;
  return f32Scratch[0];
}
/** Smallest float32 >= v (v finite, |v| < 2). */
function f32AtOrAbove(v: number): number {
  f32Scratch[0] = v;
  if (f32Scratch[0] < v) i32Scratch[0] += f32Scratch[0] >= 0 ? 1 : -1;
  return f32Scratch[0];
}

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
