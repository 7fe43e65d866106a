export type {
  QuantType,
  FloatDType,
  NestedAbsmax,
  QuantState4bit,
  Quantize4bitOptions,
  Blockwise8bit,
  Blockwise8bitOptions,
} from "./types";
export { Nf4Error, type Nf4ErrorCode } from "./errors";
export { BLOCKSIZES_4BIT } from "./internal/validate";
export {
  NF4_CODE,
  FP4_CODE,
  NF4_THRESHOLDS,
  FP4_THRESHOLDS,
  DYNAMIC_MAP_SIGNED,
  DYNAMIC_MAP_UNSIGNED,
} from "./tables";
export {
  quantize4bit,
  quantize4bitInto,
  quantize4bitChunks,
  type Quantize4bitBuffers,
  doubleQuantize,
  Quantizer4bit,
  type Quantizer4bitOptions,
  type Quantized4bitChunk,
} from "./quantize";
export {
  dequantize4bit,
  dequantize4bitInto,
  recoverAbsmax,
  recoverNestedAbsmax,
  type DequantizeIntoOptions,
} from "./dequantize";
export { quantizeBlockwise8bit, dequantizeBlockwise8bit, quantize8bitValue } from "./blockwise8bit";
export { f32ToBf16, bf16ToF32, f32ToF16, f16ToF32 } from "./half";
export { packNibbles, unpackNibbles } from "./nibbles";
export {
  packQuantState,
  unpackQuantState,
  quantStateJson,
  type TensorDType,
  type TensorRecord,
  type TensorRecords,
  type QuantStorage,
  type PackQuantStateOptions,
  type UnpackQuantStateOptions,
} from "./serialize";
export { pythonFloatRepr } from "./pyjson";
export { storageBytes, storageOfState, type StorageOptions, type StorageBreakdown } from "./accounting";
export { meanAbsError, meanRelError, sqnrDb, errorMetrics, type ErrorMetrics } from "./metrics";
