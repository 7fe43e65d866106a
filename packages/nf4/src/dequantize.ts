import { Nf4Error } from "./errors";
import { f32BitsToF16Bits } from "./half";
import { dequantizeRangeF32, pairTable } from "./internal/kernel4";
import { checkBlocksize4, checkDType, checkQuantType, checkShape, describe } from "./internal/validate";
import { FP4_CODE, NF4_CODE } from "./tables";
import type { FloatDType, NestedAbsmax, QuantState4bit } from "./types";

const CHUNK = 1 << 16;

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
      throw new Nf4Error("LENGTH_MISMATCH", `${arg}.absmax: expected ${nb} float32 values (ceil(${n}/${bs})), got ${a.length}`);
    }
  } else if (a !== null && typeof a === "object") {
    if (!(a.qabsmax instanceof Uint8Array) || a.qabsmax.length !== nb) {
      throw new Nf4Error("LENGTH_MISMATCH", `${arg}.absmax.qabsmax: expected a Uint8Array of ${nb} codes, got ${describe(a.qabsmax)}${a.qabsmax instanceof Uint8Array ? ` of length ${a.qabsmax.length}` : ""}`);
    }
    if (!Number.isSafeInteger(a.nestedBlocksize) || a.nestedBlocksize <= 0) {
      throw new Nf4Error("INVALID_ARGUMENT", `${arg}.absmax.nestedBlocksize: expected a positive integer (256), got ${describe(a.nestedBlocksize)}`);
    }
    const nn = Math.ceil(nb / a.nestedBlocksize);
    if (!(a.nestedAbsmax instanceof Float32Array) || a.nestedAbsmax.length !== nn) {
      throw new Nf4Error("LENGTH_MISMATCH", `${arg}.absmax.nestedAbsmax: expected a Float32Array of ${nn} values, got ${describe(a.nestedAbsmax)}${a.nestedAbsmax instanceof Float32Array ? ` of length ${a.nestedAbsmax.length}` : ""}`);
    }
    if (!(a.code instanceof Float32Array) || a.code.length !== 256) {
      throw new Nf4Error("LENGTH_MISMATCH", `${arg}.absmax.code: expected a Float32Array of 256 values, got ${describe(a.code)}`);
    }
    if (typeof a.offset !== "number") {
      throw new Nf4Error("INVALID_ARGUMENT", `${arg}.absmax.offset: expected a number, got ${describe(a.offset)}`);
    }
  } else {
    throw new Nf4Error("INVALID_ARGUMENT", `${arg}.absmax: expected a Float32Array or a NestedAbsmax, got ${describe(a)}`);
  }
  return n;
}

/** Two-rounding recovery of a nested absmax (spec §5.4): fl32(fl32(code[q]·nested[j/256]) + offset). */
export function recoverNestedAbsmax(nested: NestedAbsmax): Float32Array {
  const { qabsmax, nestedAbsmax, code, nestedBlocksize } = nested;
  const offset = Math.fround(nested.offset);
  const nb = qabsmax.length;
  const out = new Float32Array(nb);
  for (let j = 0; j < nb; j++) {
    out[j] = Math.fround(code[qabsmax[j]] * nestedAbsmax[Math.floor(j / nestedBlocksize)]) + offset;
  }
  return out;
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
export function dequantize4bit(state: QuantState4bit, outDtype?: FloatDType): Float32Array | Uint16Array {
  const n = checkState(state);
  const dt = checkDType(outDtype ?? state.dtype, "outDtype");
  const absmax = isNested(state.absmax) ? recoverNestedAbsmax(state.absmax) : state.absmax;
  const lut = pairTable(state.quantType === "nf4" ? NF4_CODE : FP4_CODE, state.quantType);
  if (dt === "float32") {
    const out = new Float32Array(n);
    dequantizeRangeF32(lut, state.packed, absmax, state.blocksize, 0, n, out, 0);
    return out;
  }
  const out = new Uint16Array(n);
  const buf = new Float32Array(Math.min(CHUNK, n));
  const u = new Uint32Array(buf.buffer);
  for (let s = 0; s < n; s += CHUNK) {
    const e = Math.min(s + CHUNK, n);
    dequantizeRangeF32(lut, state.packed, absmax, state.blocksize, s, e, buf, 0);
    const len = e - s;
    if (dt === "bfloat16") {
      for (let i = 0; i < len; i++) {
        const b = u[i];
        out[s + i] = (b & 0x7fffffff) > 0x7f800000 ? 0x7fff : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
      }
    } else {
      for (let i = 0; i < len; i++) out[s + i] = f32BitsToF16Bits(u[i]);
    }
  }
  return out;
}
