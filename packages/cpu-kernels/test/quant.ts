// Helpers turning an @qlora/nf4 QuantState4bit into the object the native 4-bit kernels take.
import type { QuantState4bit } from "@qlora/nf4";

export interface NativeQuant {
  quantType: "nf4" | "fp4";
  blocksize: number;
  n: number;
  k: number;
  codes: Uint8Array;
  absmax?: Float32Array;
  qabsmax?: Uint8Array;
  code?: Float32Array;
  nestedAbsmax?: Float32Array;
  nestedBlocksize?: number;
  offset?: number;
}

export function nativeQuant(s: QuantState4bit): NativeQuant {
  const [n, k] = s.shape as [number, number];
  const base = { quantType: s.quantType, blocksize: s.blocksize, n, k, codes: s.packed };
  if (s.absmax instanceof Float32Array) return { ...base, absmax: s.absmax };
  const a = s.absmax;
  return { ...base, qabsmax: a.qabsmax, code: a.code, nestedAbsmax: a.nestedAbsmax, nestedBlocksize: a.nestedBlocksize, offset: a.offset };
}
