/** GGUF metadata value types (gguf.h `enum gguf_type`). */
export const GgufValueType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;
export type GgufValueType = (typeof GgufValueType)[keyof typeof GgufValueType];

type Num =
  | typeof GgufValueType.UINT8
  | typeof GgufValueType.INT8
  | typeof GgufValueType.UINT16
  | typeof GgufValueType.INT16
  | typeof GgufValueType.UINT32
  | typeof GgufValueType.INT32
  | typeof GgufValueType.FLOAT32
  | typeof GgufValueType.FLOAT64;
type Big = typeof GgufValueType.UINT64 | typeof GgufValueType.INT64;

/** Elements of an array value as read: numeric types as typed arrays, the rest as JS arrays. */
export type GgufArrayItems =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigUint64Array
  | BigInt64Array
  | boolean[]
  | string[]
  | GgufArrayValue[];

export interface GgufArrayValue {
  readonly type: typeof GgufValueType.ARRAY;
  readonly elementType: GgufValueType;
  readonly value: GgufArrayItems;
}

/** One typed metadata value. On write, numeric arrays may be any ArrayLike and 64-bit ints may be numbers. */
export type GgufValue =
  | { readonly type: Num; readonly value: number }
  | { readonly type: Big; readonly value: bigint }
  | { readonly type: typeof GgufValueType.BOOL; readonly value: boolean }
  | { readonly type: typeof GgufValueType.STRING; readonly value: string }
  | GgufArrayValue;

export type GgufWriteValue =
  | { readonly type: Num; readonly value: number }
  | { readonly type: Big; readonly value: bigint | number }
  | { readonly type: typeof GgufValueType.BOOL; readonly value: boolean }
  | { readonly type: typeof GgufValueType.STRING; readonly value: string }
  | {
      readonly type: typeof GgufValueType.ARRAY;
      readonly elementType: GgufValueType;
      readonly value: ArrayLike<unknown>;
    };

/** Small constructors for writing metadata: `gv.u32(32)`, `gv.str("llama")`, `gv.arr(GgufValueType.STRING, tokens)`. */
export const gv = {
  u8: (value: number) => ({ type: GgufValueType.UINT8, value }) as const,
  i8: (value: number) => ({ type: GgufValueType.INT8, value }) as const,
  u16: (value: number) => ({ type: GgufValueType.UINT16, value }) as const,
  i16: (value: number) => ({ type: GgufValueType.INT16, value }) as const,
  u32: (value: number) => ({ type: GgufValueType.UINT32, value }) as const,
  i32: (value: number) => ({ type: GgufValueType.INT32, value }) as const,
  f32: (value: number) => ({ type: GgufValueType.FLOAT32, value }) as const,
  f64: (value: number) => ({ type: GgufValueType.FLOAT64, value }) as const,
  u64: (value: bigint | number) => ({ type: GgufValueType.UINT64, value }) as const,
  i64: (value: bigint | number) => ({ type: GgufValueType.INT64, value }) as const,
  bool: (value: boolean) => ({ type: GgufValueType.BOOL, value }) as const,
  str: (value: string) => ({ type: GgufValueType.STRING, value }) as const,
  arr: (elementType: GgufValueType, value: ArrayLike<unknown>) =>
    ({ type: GgufValueType.ARRAY, elementType, value }) as const,
} satisfies Record<string, (...args: never[]) => GgufWriteValue>;

/** Size in bytes of fixed-size value types; strings/arrays are variable. */
export const GGUF_VALUE_SIZE: Readonly<Record<number, number>> = {
  0: 1,
  1: 1,
  2: 2,
  3: 2,
  4: 4,
  5: 4,
  6: 4,
  7: 1,
  10: 8,
  11: 8,
  12: 8,
};

/** Common ggml tensor types. */
export const GgmlType = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q5_0: 6,
  Q5_1: 7,
  Q8_0: 8,
  Q8_1: 9,
  Q2_K: 10,
  Q3_K: 11,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  Q8_K: 15,
  IQ2_XXS: 16,
  IQ2_XS: 17,
  IQ3_XXS: 18,
  IQ1_S: 19,
  IQ4_NL: 20,
  IQ3_S: 21,
  IQ2_S: 22,
  IQ4_XS: 23,
  I8: 24,
  I16: 25,
  I32: 26,
  I64: 27,
  F64: 28,
  IQ1_M: 29,
  BF16: 30,
  TQ1_0: 34,
  TQ2_0: 35,
  MXFP4: 39,
  NVFP4: 40,
  Q1_0: 41,
  Q2_0: 42,
} as const;
export type GgmlType = (typeof GgmlType)[keyof typeof GgmlType];

/** ggml `type_traits`: [elements per block, bytes per block]. Ids 4, 5, 31–33, 36–38 were removed from ggml. */
export const GGML_TYPE_TRAITS: Readonly<
  Record<number, { readonly name: string; readonly blockSize: number; readonly typeSize: number }>
> = {
  0: { name: "F32", blockSize: 1, typeSize: 4 },
  1: { name: "F16", blockSize: 1, typeSize: 2 },
  2: { name: "Q4_0", blockSize: 32, typeSize: 18 },
  3: { name: "Q4_1", blockSize: 32, typeSize: 20 },
  6: { name: "Q5_0", blockSize: 32, typeSize: 22 },
  7: { name: "Q5_1", blockSize: 32, typeSize: 24 },
  8: { name: "Q8_0", blockSize: 32, typeSize: 34 },
  9: { name: "Q8_1", blockSize: 32, typeSize: 36 },
  10: { name: "Q2_K", blockSize: 256, typeSize: 84 },
  11: { name: "Q3_K", blockSize: 256, typeSize: 110 },
  12: { name: "Q4_K", blockSize: 256, typeSize: 144 },
  13: { name: "Q5_K", blockSize: 256, typeSize: 176 },
  14: { name: "Q6_K", blockSize: 256, typeSize: 210 },
  15: { name: "Q8_K", blockSize: 256, typeSize: 292 },
  16: { name: "IQ2_XXS", blockSize: 256, typeSize: 66 },
  17: { name: "IQ2_XS", blockSize: 256, typeSize: 74 },
  18: { name: "IQ3_XXS", blockSize: 256, typeSize: 98 },
  19: { name: "IQ1_S", blockSize: 256, typeSize: 50 },
  20: { name: "IQ4_NL", blockSize: 32, typeSize: 18 },
  21: { name: "IQ3_S", blockSize: 256, typeSize: 110 },
  22: { name: "IQ2_S", blockSize: 256, typeSize: 82 },
  23: { name: "IQ4_XS", blockSize: 256, typeSize: 136 },
  24: { name: "I8", blockSize: 1, typeSize: 1 },
  25: { name: "I16", blockSize: 1, typeSize: 2 },
  26: { name: "I32", blockSize: 1, typeSize: 4 },
  27: { name: "I64", blockSize: 1, typeSize: 8 },
  28: { name: "F64", blockSize: 1, typeSize: 8 },
  29: { name: "IQ1_M", blockSize: 256, typeSize: 56 },
  30: { name: "BF16", blockSize: 1, typeSize: 2 },
  34: { name: "TQ1_0", blockSize: 256, typeSize: 54 },
  35: { name: "TQ2_0", blockSize: 256, typeSize: 66 },
  39: { name: "MXFP4", blockSize: 32, typeSize: 17 },
  40: { name: "NVFP4", blockSize: 64, typeSize: 36 },
  41: { name: "Q1_0", blockSize: 128, typeSize: 18 },
  42: { name: "Q2_0", blockSize: 64, typeSize: 18 },
};

export function ggmlTypeName(type: number): string {
  return GGML_TYPE_TRAITS[type]?.name ?? `unknown(${type})`;
}

/** ggml GGML_MAX_NAME (64 including the NUL): names are at most 63 bytes. */
export const GGUF_MAX_NAME_BYTES = 63;
export const GGUF_MAX_DIMS = 4;
export const GGUF_DEFAULT_ALIGNMENT = 32;
export const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian
