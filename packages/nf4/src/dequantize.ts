import { Nf4Error } from "./errors";
import { f32BitsToBf16Bits, f32BitsToF16Bits } from "./half";
import { type AbsmaxSource, dequantizeRangeF32, dequantizeRangeU16 } from "./internal/kernel4";

const EMPTY = new Float32Array(0);
import { checkBlocksize4, checkDType, checkQuantType, checkShape, describe } from "./internal/validate";
import { FP4_CODE, NF4_CODE } from "./tables";
import type { FloatDType, NestedAbsmax, QuantState4bit } from "./types";

function isNested(a: QuantState4bit["absmax"]): a is NestedAbsmax {
  return !(a instanceof Float32Array);
}

/** Validates a QuantState4bit's fields and lengths; returns n. */
export function checkState(state: QuantState4bit, arg = "state"): number {
  if (state === null || typeof state !== "object") {
    throw new Nf4Error("INVALID_ARGUMENT", `${arg}: expected a QuantState4bit object, got ${describe(state)}`);
  }
  checkQuantType(state.quantType, `${arg}.quantType`);
  const bs = checkBlocksize4(state.blocksize, `${arg}.blocksize`);
  checkDType(state.dtype, `${arg}.dtype`);
  const n = checkShape(state.shape, `${arg}.shape`);
  if (!(state.packed instanceof Uint8Array) || state.packed.length !== Math.ceil(n / 2)) {
    throw new Nf4Error(
      "LENGTH_MISMATCH",
      `${arg}.packed: expected a Uint8Array of ceil(${n}/2) = ${Math.ceil(n / 2)} bytes, got ${
        state.packed instanceof Uint8Array ? `${state.packed.length} bytes` : describe(state.packed)
      }`,
    );
  }
  const nb = Math.ceil(n / bs);
  const a = state.absmax;
  if (a instanceof Float32Array) {
    if (a.length !== nb) {
      throw new Nf4Error(
        "LENGTH_MISMATCH",
        `${arg}.absmax: expected ${nb} float32 values (ceil(${n}/${bs})), got ${a.length}`,
      );
    }
  } else if (a !== null && typeof a === "object") {
    if (!(a.qabsmax instanceof Uint8Array) || a.qabsmax.length !== nb) {
      throw new Nf4Error(
        "LENGTH_MISMATCH",
        `${arg}.absmax.qabsmax: expected a Uint8Array of ${nb} codes, got ${describe(a.qabsmax)}${a.qabsmax instanceof Uint8Array ? ` of length ${a.qabsmax.length}` : ""}`,
      );
    }
    if (!Number.isSafeInteger(a.nestedBlocksize) || a.nestedBlocksize <= 0) {
      throw new Nf4Error(
        "INVALID_ARGUMENT",
        `${arg}.absmax.nestedBlocksize: expected a positive integer (256), got ${describe(a.nestedBlocksize)}`,
      );
    }
    const nn = Math.ceil(nb / a.nestedBlocksize);
    if (!(a.nestedAbsmax instanceof Float32Array) || a.nestedAbsmax.length !== nn) {
      throw new Nf4Error(
        "LENGTH_MISMATCH",
        `${arg}.absmax.nestedAbsmax: expected a Float32Array of ${nn} values, got ${describe(a.nestedAbsmax)}${a.nestedAbsmax instanceof Float32Array ? ` of length ${a.nestedAbsmax.length}` : ""}`,
      );
    }
    if (!(a.code instanceof Float32Array) || a.code.length !== 256) {
      throw new Nf4Error(
        "LENGTH_MISMATCH",
        `${arg}.absmax.code: expected a Float32Array of 256 values, got ${describe(a.code)}`,
      );
    }
    if (typeof a.offset !== "number") {
      throw new Nf4Error("INVALID_ARGUMENT", `${arg}.absmax.offset: expected a number, got ${describe(a.offset)}`);
    }
  } else {
    throw new Nf4Error(
      "INVALID_ARGUMENT",
      `${arg}.absmax: expected a Float32Array or a NestedAbsmax, got ${describe(a)}`,
    );
  }
  return n;
}

/** Two-rounding recovery of a nested absmax (spec §5.4): fl32(fl32(code[q]·nested[j/256]) + offset), blocks [from, to). */
export function recoverNestedAbsmax(nested: NestedAbsmax, from = 0, to: number = nested.qabsmax.length): Float32Array {
  const { qabsmax, nestedAbsmax, code, nestedBlocksize } = nested;
  const offset = Math.fround(nested.offset);
  const out = new Float32Array(to - from);
  for (let j = from; j < to; j++) {
    out[j - from] = Math.fround(code[qabsmax[j]] * nestedAbsmax[Math.floor(j / nestedBlocksize)]) + offset;
  }
  return out;
}

/**
 * The kernels' view of a state's absmax. Always the same three keys, so the kernels see one object
 * shape: two shapes (with and without `nested`) made TurboFan deoptimize dequantizeRangeF32 on every
 * switch between plain and double-quantized states.
 */
function absmaxSource(state: QuantState4bit): AbsmaxSource {
  return isNested(state.absmax)
    ? { values: EMPTY, base: 0, nested: state.absmax }
    : { values: state.absmax, base: 0, nested: undefined };
}

/** The float32 absmax per block (recovered with the two-rounding formula when nested). */
export function recoverAbsmax(state: QuantState4bit): Float32Array {
  checkState(state);
  return isNested(state.absmax) ? recoverNestedAbsmax(state.absmax) : state.absmax.slice();
}

/**
 * Full dequantization (spec §4): out[i] = T(fl32(code[c_i] · absmax[i / blocksize])).
 * `outDtype` defaults to `state.dtype` (bitsandbytes returns the original dtype); "float32" gives a
 * Float32Array, "bfloat16"/"float16" give RNE bit patterns in a Uint16Array.
 * The LUT is the compiled NF4/FP4 table (like CUDA, a stored quant_map is not consulted).
 */
export function dequantize4bit(state: QuantState4bit, outDtype: "float32"): Float32Array;
export function dequantize4bit(state: QuantState4bit, outDtype: "bfloat16" | "float16"): Uint16Array;
export function dequantize4bit(state: QuantState4bit, outDtype?: FloatDType): Float32Array | Uint16Array;
export function dequantize4bit(state: QuantState4bit, outDtype?: FloatDType): Float32Array | Uint16Array {
  const n = checkState(state);
  const dt = checkDType(outDtype ?? state.dtype, "outDtype");
  const absmax = absmaxSource(state);
  const code = state.quantType === "nf4" ? NF4_CODE : FP4_CODE;
  if (dt === "float32") {
    const out = new Float32Array(n);
    dequantizeRangeF32(code, state.packed, absmax, state.blocksize, 0, n, out, 0);
    return out;
  }
  const out = new Uint16Array(n);
  dequantizeRangeU16(
    code,
    state.packed,
    absmax,
    state.blocksize,
    0,
    n,
    out,
    0,
    dt === "bfloat16" ? f32BitsToBf16Bits : f32BitsToF16Bits,
  );
  return out;
}

export interface DequantizeIntoOptions {
  /** Output dtype; default: "float32" for a Float32Array `out`, `state.dtype` for a Uint16Array. */
  outDtype?: FloatDType;
  /** First element (flat index, even) to dequantize; `out.length` elements are written. Default 0. */
  start?: number;
}

/**
 * Allocation-free / chunked dequantization: writes elements [start, start + out.length) into `out`
 * (Float32Array for "float32", Uint16Array for "bfloat16"/"float16" bit patterns). Dequantizing a
 * large tensor in chunks: call with consecutive even `start`s and reused `out` buffers.
 */
export function dequantize4bitInto<Out extends Float32Array | Uint16Array>(
  state: QuantState4bit,
  out: Out,
  options?: DequantizeIntoOptions,
): Out;
export function dequantize4bitInto(
  state: QuantState4bit,
  out: Float32Array | Uint16Array,
  options: DequantizeIntoOptions = {},
): Float32Array | Uint16Array {
  const n = checkState(state);
  const start = options.start ?? 0;
  if (!Number.isSafeInteger(start) || start < 0 || start % 2 !== 0) {
    throw new Nf4Error(
      "INVALID_ARGUMENT",
      `options.start: expected an even non-negative integer, got ${describe(start)}`,
    );
  }
  let dt: FloatDType;
  if (out instanceof Float32Array) {
    dt = checkDType(options.outDtype ?? "float32", "options.outDtype");
    if (dt !== "float32") {
      throw new Nf4Error("INVALID_DTYPE", `options.outDtype: a Float32Array out holds "float32", got ${describe(dt)}`);
    }
  } else if (out instanceof Uint16Array) {
    dt = checkDType(options.outDtype ?? state.dtype, "options.outDtype");
    if (dt === "float32") {
      throw new Nf4Error(
        "INVALID_DTYPE",
        `options.outDtype: a Uint16Array out needs "bfloat16" or "float16", got "float32"`,
      );
    }
  } else {
    throw new Nf4Error("INVALID_ARGUMENT", `out: expected a Float32Array or Uint16Array, got ${describe(out)}`);
  }
  const end = start + out.length;
  if (end > n) {
    throw new Nf4Error("LENGTH_MISMATCH", `out: elements [${start}, ${end}) exceed the tensor's ${n} elements`);
  }
  const absmax = absmaxSource(state);
  const code = state.quantType === "nf4" ? NF4_CODE : FP4_CODE;
  const conv = dt === "bfloat16" ? f32BitsToBf16Bits : f32BitsToF16Bits;
  if (out instanceof Float32Array) dequantizeRangeF32(code, state.packed, absmax, state.blocksize, start, end, out, 0);
  else dequantizeRangeU16(code, state.packed, absmax, state.blocksize, start, end, out, 0, conv);
  return out;
}
