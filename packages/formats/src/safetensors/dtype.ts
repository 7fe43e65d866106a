/** safetensors dtype names and their element sizes in bytes. */
export const SAFETENSORS_DTYPE_SIZES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
} as const;

export type SafetensorsDtype = keyof typeof SAFETENSORS_DTYPE_SIZES;

export const SAFETENSORS_DTYPES: readonly SafetensorsDtype[] = Object.keys(
  SAFETENSORS_DTYPE_SIZES,
) as SafetensorsDtype[];

export function isSafetensorsDtype(s: unknown): s is SafetensorsDtype {
  return typeof s === "string" && Object.hasOwn(SAFETENSORS_DTYPE_SIZES, s);
}

export function dtypeSize(dtype: SafetensorsDtype): number {
  return SAFETENSORS_DTYPE_SIZES[dtype];
}

/** Product of a shape, or undefined when it is not a list of safe non-negative integers or overflows 2^53. */
export function elementCount(shape: readonly unknown[]): number | undefined {
  let n = 1;
  for (const d of shape) {
    if (typeof d !== "number" || !Number.isSafeInteger(d) || d < 0) return undefined;
    n *= d;
    if (!Number.isSafeInteger(n)) return undefined;
  }
  return n;
}
