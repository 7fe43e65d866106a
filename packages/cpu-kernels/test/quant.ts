// Helpers turning an @qlora/nf4 QuantState4bit into the object the native 4-bit kernels take.
import type { QuantState4bit } from "@qlora/nf4";
import type { NativeQuantWeight } from "../src/gemm";

/** The object the native 4-bit kernels take (same type as src/gemm.ts). */
export type NativeQuant = NativeQuantWeight;

export function nativeQuant(s: QuantState4bit): NativeQuant {
  const [n, k] = s.shape as [number, number];
  const base = { quantType: s.quantType, blocksize: s.blocksize, n, k, codes: s.packed };
  if (s.absmax instanceof Float32Array) return { ...base, absmax: s.absmax };
  const a = s.absmax;
  return {
    ...base,
    qabsmax: a.qabsmax,
    code: a.code,
    nestedAbsmax: a.nestedAbsmax,
    nestedBlocksize: a.nestedBlocksize,
    offset: a.offset,
  };
}
