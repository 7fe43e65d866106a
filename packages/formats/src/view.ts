import { FormatsError } from "./errors";
import { dtypeSize, type SafetensorsDtype } from "./safetensors/dtype";
import { bf16ArrayToFloat32, f16ArrayToFloat32, f8e4m3ToFloat32Table, f8e5m2ToFloat32Table } from "./float";

/**
 * The typed array each safetensors dtype is viewed as: floats and ints natively,
 * F16/BF16 as raw uint16 bits, F8 and BOOL as raw bytes.
 */
export interface DtypeArrays {
  F64: Float64Array;
  F32: Float32Array;
  F16: Uint16Array;
  BF16: Uint16Array;
  I64: BigInt64Array;
  I32: Int32Array;
  I16: Int16Array;
  I8: Int8Array;
  U64: BigUint64Array;
  U32: Uint32Array;
  U16: Uint16Array;
  U8: Uint8Array;
  BOOL: Uint8Array;
  F8_E4M3: Uint8Array;
  F8_E5M2: Uint8Array;
}

export type AnyTypedArray = DtypeArrays[SafetensorsDtype];

const CTORS = {
  F64: Float64Array,
  F32: Float32Array,
  F16: Uint16Array,
  BF16: Uint16Array,
  I64: BigInt64Array,
  I32: Int32Array,
  I16: Int16Array,
  I8: Int8Array,
  U64: BigUint64Array,
  U32: Uint32Array,
  U16: Uint16Array,
  U8: Uint8Array,
  BOOL: Uint8Array,
  F8_E4M3: Uint8Array,
  F8_E5M2: Uint8Array,
} as const;

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  // Every format here is little-endian and views are zero-copy reinterpretations.
  throw new Error("@qlora/formats requires a little-endian host");
}

/**
 * Views raw little-endian bytes as the dtype's typed array. Zero-copy when `bytes` is aligned
 * to the element size; otherwise the bytes are copied into a fresh aligned buffer first.
 */
export function viewAs<D extends SafetensorsDtype>(bytes: Uint8Array, dtype: D): DtypeArrays[D] {
  const size = dtypeSize(dtype);
  if (bytes.byteLength % size !== 0) {
    throw new FormatsError(
      "size_mismatch",
      `${bytes.byteLength} bytes is not a whole number of ${dtype} elements (${size} bytes each)`,
    );
  }
  let b = bytes;
  if (b.byteOffset % size !== 0) b = b.slice();
  const Ctor = CTORS[dtype] as unknown as new (buf: ArrayBufferLike, off: number, len: number) => DtypeArrays[D];
  return new Ctor(b.buffer, b.byteOffset, b.byteLength / size);
}

/** Decodes any float/int dtype to float32 values (I64/U64 through Number, so precision above 2^24 is lost as in any float32 cast). */
export function toFloat32Array(bytes: Uint8Array, dtype: SafetensorsDtype): Float32Array {
  switch (dtype) {
    case "F32":
      return Float32Array.from(viewAs(bytes, "F32"));
    case "F16":
      return f16ArrayToFloat32(viewAs(bytes, "F16"));
    case "BF16":
      return bf16ArrayToFloat32(viewAs(bytes, "BF16"));
    case "F8_E4M3": {
      const t = f8e4m3ToFloat32Table();
      return Float32Array.from(bytes, (b) => t[b]);
    }
    case "F8_E5M2": {
      const t = f8e5m2ToFloat32Table();
      return Float32Array.from(bytes, (b) => t[b]);
    }
    case "I64":
    case "U64": {
      const v = viewAs(bytes, dtype);
      const out = new Float32Array(v.length);
      for (let i = 0; i < v.length; i++) out[i] = Number(v[i]);
      return out;
    }
    default:
      return Float32Array.from(viewAs(bytes, dtype) as ArrayLike<number>);
  }
}
