import { DYNAMIC_MAP_SIGNED_BITS, DYNAMIC_MAP_UNSIGNED_BITS } from "./internal/maps";

function fromBits(bits: readonly number[]): Float32Array {
  const u = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) u[i] = bits[i] >>> 0;
  return new Float32Array(u.buffer);
}

/** NF4 code values in code order (spec §1.1); also the bytes of `weight.quant_map`. */
export const NF4_CODE: Float32Array = fromBits([
  0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871, 0x00000000, 0x3da2faff,
  0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000,
]);

/** FP4 code values in code (bit-pattern) order, NOT sorted (spec §1.2). */
export const FP4_CODE: Float32Array = fromBits([
  0x00000000, 0x3baaaaab, 0x3f2aaaab, 0x3f800000, 0x3eaaaaab, 0x3f000000, 0x3e2aaaab, 0x3e800000, 0x80000000,
  0xbbaaaaab, 0xbf2aaaab, 0xbf800000, 0xbeaaaaab, 0xbf000000, 0xbe2aaaab, 0xbe800000,
]);

/**
 * NF4 decision thresholds (float32 literals of `dQuantizeNF4`, spec §2.2), ascending.
 * code = number of thresholds T_k with y > T_k (strict).
 */
export const NF4_THRESHOLDS: Float32Array = fromBits([
  0xbf591cd8, 0xbf1c5270, 0xbeeb8480, 0xbeadea76, 0xbe703cec, 0xbe0d38bc, 0xbd3a7871, 0x3d22faff, 0x3df64862,
  0x3e5067e0, 0x3e9582d4, 0x3ec753f9, 0x3f006d04, 0x3f248daf, 0x3f5c89da,
]);

/**
 * FP4 magnitude thresholds (the float32 literals of `dQuantizeFP4`, spec §2.2), ascending:
 * 0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333.
 * These are NOT the exact midpoints; bit-compatibility requires the literals.
 */
export const FP4_THRESHOLDS: Float32Array = fromBits([
  0x3b2aaab9, 0x3db00000, 0x3e555555, 0x3e955555, 0x3ed55556, 0x3f155550, 0x3f555555,
]);

/** FP4 magnitude code for "number of FP4 thresholds strictly below |y|" (0..7). */
export const FP4_MAGNITUDE_CODE_BY_RANK: Uint8Array = new Uint8Array([0, 1, 6, 7, 4, 5, 2, 3]);

/** 256-entry signed dynamic map (spec Appendix A.1): nested_quant_map, 8-bit optimizer qmap1. */
export const DYNAMIC_MAP_SIGNED: Float32Array = fromBits(DYNAMIC_MAP_SIGNED_BITS);

/** 256-entry unsigned dynamic map (spec Appendix A.2, bnb >= 0.42): 8-bit optimizer qmap2. */
export const DYNAMIC_MAP_UNSIGNED: Float32Array = fromBits(DYNAMIC_MAP_UNSIGNED_BITS);
