import { checkState } from "./dequantize";
import { Nf4Error } from "./errors";
import { BLOCKSIZES_4BIT, checkDType, checkShape, describe } from "./internal/validate";
import { PyFloat, type PyJson, pythonJsonDumps, pythonJsonLoads } from "./pyjson";
import { FP4_CODE, NF4_CODE } from "./tables";
import type { FloatDType, NestedAbsmax, QuantState4bit, QuantType } from "./types";

/** safetensors dtype names used by the bitsandbytes 4-bit key set. */
export type TensorDType = "U8" | "F32" | "BF16" | "F16";
/** One tensor of a state dict: raw little-endian bytes plus dtype and shape (safetensors-style). */
export interface TensorRecord {
  dtype: TensorDType;
  shape: number[];
  bytes: Uint8Array;
}
/** name -> tensor, in insertion order. */
export type TensorRecords = Record<string, TensorRecord>;

/** Storage dtype of the packed `weight` tensor (bitsandbytes `quant_storage`). */
export type QuantStorage = "uint8" | "bfloat16" | "float16" | "float32";

export interface PackQuantStateOptions {
  /** Key prefix, e.g. "model.layers.0.mlp.down_proj." (default ""). */
  prefix?: string;
  /** Parameter name (default "weight"). */
  param?: string;
  /** Container dtype of the packed tensor (default "uint8"); others give shape [(n+1)//(2·itemsize), 1]. */
  quantStorage?: QuantStorage;
}

export interface UnpackQuantStateOptions {
  prefix?: string;
  param?: string;
}

const ITEMSIZE: Record<TensorDType, number> = { U8: 1, F32: 4, BF16: 2, F16: 2 };
const STORAGE_DTYPE: Record<QuantStorage, TensorDType> = {
  uint8: "U8",
  bfloat16: "BF16",
  float16: "F16",
  float32: "F32",
};

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

function f32Bytes(x: Float32Array): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(x.buffer.slice(x.byteOffset, x.byteOffset + x.byteLength));
  const out = new Uint8Array(x.length * 4);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < x.length; i++) dv.setFloat32(i * 4, x[i], true);
  return out;
}

function bytesF32(b: Uint8Array): Float32Array {
  if (LITTLE_ENDIAN) {
    if (b.byteOffset % 4 === 0) return new Float32Array(b.buffer, b.byteOffset, b.length / 4);
    return new Float32Array(b.slice().buffer);
  }
  const out = new Float32Array(b.length / 4);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  for (let i = 0; i < out.length; i++) out[i] = dv.getFloat32(i * 4, true);
  return out;
}

/** The quant_state JSON exactly as bitsandbytes' `pack_dict_to_tensor` writes it (json.dumps defaults). */
export function quantStateJson(state: QuantState4bit): string {
  checkState(state);
  const d: { [k: string]: PyJson } = {
    quant_type: state.quantType,
    blocksize: state.blocksize,
    dtype: state.dtype,
    shape: state.shape.slice(),
  };
  if (!(state.absmax instanceof Float32Array)) {
    d.nested_blocksize = state.absmax.nestedBlocksize;
    d.nested_dtype = "float32";
    d.nested_offset = new PyFloat(Math.fround(state.absmax.offset));
  }
  return pythonJsonDumps(d);
}

/**
 * Serializes a QuantState4bit to bitsandbytes' `Linear4bit` state-dict keys (spec §6.2):
 * `<prefix>weight`, `.absmax`, `.quant_map`, [`.nested_absmax`, `.nested_quant_map`],
 * `.quant_state.bitsandbytes__<nf4|fp4>` — in that order, with bnb's dtypes and shapes.
 */
export function packQuantState(state: QuantState4bit, options: PackQuantStateOptions = {}): TensorRecords {
  const n = checkState(state);
  const base = `${options.prefix ?? ""}${options.param ?? "weight"}`;
  const storage = options.quantStorage ?? "uint8";
  const sdt = STORAGE_DTYPE[storage];
  if (sdt === undefined) {
    throw new Nf4Error(
      "INVALID_DTYPE",
      `options.quantStorage: expected "uint8", "bfloat16", "float16" or "float32", got ${describe(storage)}`,
    );
  }
  const item = ITEMSIZE[sdt];
  const rows = Math.floor((n + 1) / (2 * item));
  if (rows * item !== state.packed.length) {
    throw new Nf4Error(
      "INVALID_ARGUMENT",
      `options.quantStorage: ${state.packed.length} packed bytes do not fill whole ${storage} elements ` +
        `(bitsandbytes' shape [(n+1)//(2*${item}), 1] would drop bytes); use "uint8"`,
    );
  }
  const out: TensorRecords = {};
  out[base] = { dtype: sdt, shape: [rows, 1], bytes: state.packed.slice() };
  const code = state.quantType === "nf4" ? NF4_CODE : FP4_CODE;
  if (state.absmax instanceof Float32Array) {
    out[`${base}.absmax`] = { dtype: "F32", shape: [state.absmax.length], bytes: f32Bytes(state.absmax) };
    out[`${base}.quant_map`] = { dtype: "F32", shape: [16], bytes: f32Bytes(code) };
  } else {
    const a = state.absmax;
    out[`${base}.absmax`] = { dtype: "U8", shape: [a.qabsmax.length], bytes: a.qabsmax.slice() };
    out[`${base}.quant_map`] = { dtype: "F32", shape: [16], bytes: f32Bytes(code) };
    out[`${base}.nested_absmax`] = { dtype: "F32", shape: [a.nestedAbsmax.length], bytes: f32Bytes(a.nestedAbsmax) };
    out[`${base}.nested_quant_map`] = { dtype: "F32", shape: [256], bytes: f32Bytes(a.code) };
  }
  const json = new TextEncoder().encode(quantStateJson(state));
  out[`${base}.quant_state.bitsandbytes__${state.quantType}`] = { dtype: "U8", shape: [json.length], bytes: json };
  return out;
}

const JSON_KEYS = new Set([
  "quant_type",
  "blocksize",
  "dtype",
  "shape",
  "nested_blocksize",
  "nested_dtype",
  "nested_offset",
]);

function stateError(key: string, msg: string): Nf4Error {
  return new Nf4Error("INVALID_QUANT_STATE", `${key}: ${msg}`);
}

function getTensor(records: TensorRecords, key: string, dtypes: TensorDType[], elements?: number): TensorRecord {
  const t = records[key];
  if (t === undefined) {
    throw new Nf4Error("MISSING_TENSOR", `${key}: tensor missing from the record (expected ${dtypes.join(" or ")})`);
  }
  if (t === null || typeof t !== "object" || !(t.bytes instanceof Uint8Array)) {
    throw new Nf4Error("INVALID_ARGUMENT", `${key}: expected {dtype, shape, bytes: Uint8Array}, got ${describe(t)}`);
  }
  if (!dtypes.includes(t.dtype)) {
    throw new Nf4Error(
      "TENSOR_DTYPE_MISMATCH",
      `${key}: expected dtype ${dtypes.join(" or ")}, got ${describe(t.dtype)}`,
    );
  }
  const count = checkShape(t.shape, `${key}.shape`);
  if (count * ITEMSIZE[t.dtype] !== t.bytes.length) {
    throw new Nf4Error(
      "TENSOR_SHAPE_MISMATCH",
      `${key}: shape ${describe(t.shape)} of ${t.dtype} needs ${count * ITEMSIZE[t.dtype]} bytes, got ${t.bytes.length}`,
    );
  }
  if (elements !== undefined && count !== elements) {
    throw new Nf4Error(
      "TENSOR_SHAPE_MISMATCH",
      `${key}: expected ${elements} elements, got shape ${describe(t.shape)}`,
    );
  }
  return t;
}

/**
 * Reads a 4-bit tensor back from bitsandbytes' state-dict keys (the inverse of packQuantState).
 * Accepts uint8, bf16, fp16 and fp32 `quant_storage` containers for the packed weight (raw bytes are
 * reinterpreted). Returned arrays may share memory with `records`. The stored `quant_map` is checked
 * for dtype and size only (CUDA dequantization uses its compiled table); `nested_quant_map` is used.
 */
export function unpackQuantState(records: TensorRecords, options: UnpackQuantStateOptions = {}): QuantState4bit {
  if (records === null || typeof records !== "object") {
    throw new Nf4Error("INVALID_ARGUMENT", `records: expected an object of tensors, got ${describe(records)}`);
  }
  const base = `${options.prefix ?? ""}${options.param ?? "weight"}`;
  const qsKeys = (["nf4", "fp4"] as const)
    .map((t) => `${base}.quant_state.bitsandbytes__${t}`)
    .filter((k) => records[k] !== undefined);
  if (qsKeys.length === 0) {
    throw new Nf4Error(
      "MISSING_TENSOR",
      `${base}.quant_state.bitsandbytes__nf4 (or __fp4): tensor missing from the record`,
    );
  }
  if (qsKeys.length > 1) {
    throw new Nf4Error(
      "INVALID_QUANT_STATE",
      `${qsKeys.join(", ")}: expected exactly one quant_state tensor, got both`,
    );
  }
  const qsKey = qsKeys[0];
  const keyType: QuantType = qsKey.endsWith("nf4") ? "nf4" : "fp4";
  const qsT = getTensor(records, qsKey, ["U8"]);
  let text: string;
  let raw: unknown;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(qsT.bytes);
    raw = pythonJsonLoads(text);
  } catch (err) {
    throw stateError(qsKey, `expected UTF-8 JSON, could not parse it (${(err as Error).message})`);
  }
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw stateError(qsKey, `expected a JSON object, got ${describe(raw)}`);
  }
  const js: Record<string, unknown> = {};
  for (const [k0, v] of Object.entries(raw)) {
    const k = k0.split(".").pop() as string; // bnb strips keys to their last dotted component
    if (!JSON_KEYS.has(k)) {
      throw stateError(qsKey, `unknown key ${JSON.stringify(k0)} in the JSON (expected ${[...JSON_KEYS].join(", ")})`);
    }
    js[k] = v;
  }
  for (const k of ["quant_type", "blocksize", "dtype", "shape"]) {
    if (!(k in js)) throw stateError(qsKey, `JSON key "${k}" missing`);
  }
  if (js.quant_type !== keyType) {
    throw stateError(
      qsKey,
      `JSON "quant_type" must be ${JSON.stringify(keyType)} (as in the key), got ${describe(js.quant_type)}`,
    );
  }
  const bs = js.blocksize;
  if (typeof bs !== "number" || !BLOCKSIZES_4BIT.includes(bs)) {
    throw stateError(qsKey, `JSON "blocksize": expected one of ${BLOCKSIZES_4BIT.join(", ")}, got ${describe(bs)}`);
  }
  let dtype: FloatDType;
  let n: number;
  try {
    dtype = checkDType(js.dtype, `${qsKey}: JSON "dtype"`);
    n = checkShape(js.shape, `${qsKey}: JSON "shape"`);
  } catch (err) {
    throw new Nf4Error("INVALID_QUANT_STATE", (err as Error).message);
  }
  const shape = (js.shape as number[]).slice();
  const nb = Math.ceil(n / bs);
  const nestedKeys = ["nested_blocksize", "nested_dtype", "nested_offset"].filter((k) => k in js);
  const hasNestedTensor = records[`${base}.nested_absmax`] !== undefined;
  const nested = nestedKeys.length > 0 || hasNestedTensor;
  if (nested && nestedKeys.length !== 3) {
    throw stateError(
      qsKey,
      `double-quantized state needs JSON keys nested_blocksize, nested_dtype and nested_offset, got ${nestedKeys.length === 0 ? "none" : nestedKeys.join(", ")}`,
    );
  }

  // packed weight
  const wT = getTensor(records, base, ["U8", "BF16", "F16", "F32"]);
  const need = Math.ceil(n / 2);
  const item = ITEMSIZE[wT.dtype];
  let packed: Uint8Array;
  if (wT.dtype === "U8") {
    if (wT.bytes.length !== need) {
      throw new Nf4Error(
        "TENSOR_SHAPE_MISMATCH",
        `${base}: expected ${need} packed bytes for shape ${describe(shape)}, got ${wT.bytes.length}`,
      );
    }
    packed = wT.bytes;
  } else {
    if (wT.bytes.length < need || wT.bytes.length >= need + item) {
      throw new Nf4Error(
        "TENSOR_SHAPE_MISMATCH",
        `${base}: ${wT.dtype} container holds ${wT.bytes.length} bytes, expected ${need} packed bytes for shape ${describe(shape)}` +
          (wT.bytes.length < need ? " (the container is truncated)" : ""),
      );
    }
    packed = wT.bytes.subarray(0, need);
  }
  getTensor(records, `${base}.quant_map`, ["F32"], 16);

  let absmax: Float32Array | NestedAbsmax;
  if (!nested) {
    absmax = bytesF32(getTensor(records, `${base}.absmax`, ["F32"], nb).bytes);
  } else {
    const nbs = js.nested_blocksize;
    if (typeof nbs !== "number" || !Number.isSafeInteger(nbs) || nbs <= 0) {
      throw stateError(qsKey, `JSON "nested_blocksize": expected a positive integer (256), got ${describe(nbs)}`);
    }
    if (js.nested_dtype !== "float32") {
      throw stateError(qsKey, `JSON "nested_dtype": expected "float32", got ${describe(js.nested_dtype)}`);
    }
    if (typeof js.nested_offset !== "number") {
      throw stateError(qsKey, `JSON "nested_offset": expected a number, got ${describe(js.nested_offset)}`);
    }
    const qabsmax = getTensor(records, `${base}.absmax`, ["U8"], nb).bytes;
    const nestedAbsmax = bytesF32(getTensor(records, `${base}.nested_absmax`, ["F32"], Math.ceil(nb / nbs)).bytes);
    const code = bytesF32(getTensor(records, `${base}.nested_quant_map`, ["F32"], 256).bytes);
    absmax = { qabsmax, nestedAbsmax, code, nestedBlocksize: nbs, offset: Math.fround(js.nested_offset) };
  }
  return { quantType: keyType, blocksize: bs, dtype, shape, packed, absmax };
}
