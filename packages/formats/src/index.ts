export { FormatsError, SafetensorsError, GgufError } from "./errors";
export type { FormatsErrorCode, FormatsErrorDetails } from "./errors";

export { FileSource, MemorySource } from "./source";
export type { ByteSource } from "./source";
export { AtomicFile } from "./atomic";
export { ensureDirectory, ensureDirectorySync } from "./directory";
export type { AtomicWriteOptions } from "./atomic";

export {
  float32ToF16Bits,
  f16BitsToFloat32,
  float32ToBf16Bits,
  bf16BitsToFloat32,
  f16ArrayToFloat32,
  float32ArrayToF16,
  bf16ArrayToFloat32,
  float32ArrayToBf16,
} from "./float";
export { viewAs, toFloat32Array } from "./view";
export type { DtypeArrays, AnyTypedArray } from "./view";

export { SAFETENSORS_DTYPES, SAFETENSORS_DTYPE_SIZES, dtypeSize, isSafetensorsDtype } from "./safetensors/dtype";
export type { SafetensorsDtype } from "./safetensors/dtype";
export {
  SafetensorsFile,
  openSafetensors,
  parseSafetensorsHeader,
  SAFETENSORS_MAX_HEADER_SIZE,
  DEFAULT_CHUNK_SIZE,
} from "./safetensors/reader";
export type {
  SafetensorsReader,
  SafetensorsTensorInfo,
  TensorChunk,
  TensorPiece,
  IterateOptions,
  ChunkOptions,
} from "./safetensors/reader";
export { SafetensorsWriter, writeSafetensors, serializeSafetensors, layoutSafetensors } from "./safetensors/writer";
export type { SafetensorsTensorDecl, SafetensorsTensorData, SafetensorsLayout } from "./safetensors/writer";
export {
  ShardedSafetensors,
  openShardedSafetensors,
  ShardedSafetensorsWriter,
  writeShardedSafetensors,
  removeStaleShards,
  parseSafetensorsIndex,
  planShards,
  parseShardSize,
} from "./safetensors/shards";
export type { SafetensorsIndex, ShardedWriteOptions } from "./safetensors/shards";

export {
  GgufValueType,
  GgmlType,
  GGML_TYPE_TRAITS,
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAX_DIMS,
  GGUF_MAX_NAME_BYTES,
  ggmlTypeName,
  gv,
} from "./gguf/types";
export type { GgufValue, GgufWriteValue, GgufArrayValue, GgufArrayItems } from "./gguf/types";
export { GgufFile, openGguf, parseGgufHeader } from "./gguf/reader";
export type { GgufTensorInfo, GgufHeader } from "./gguf/reader";
export { GgufWriter, writeGguf, serializeGguf, layoutGguf } from "./gguf/writer";
export type { GgufTensorDecl, GgufTensorData, GgufWriteSpec, GgufWriteInput, GgufLayout } from "./gguf/writer";
export { quantizeQ8_0, dequantizeQ8_0, Q8_0_BLOCK, Q8_0_BLOCK_BYTES } from "./gguf/q8_0";
