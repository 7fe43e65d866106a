/**
 * Saves any JSON-like state (optimizer/plugin state dicts) whose leaves may be Tensors or typed arrays: the tree
 * goes to `<name>.json` with each array replaced by a reference, the arrays to `<name>.safetensors` with their
 * exact bytes (f32 state round-trips bit for bit). Non-finite numbers and Maps survive the JSON.
 */
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { openSafetensors, writeSafetensors, type SafetensorsDtype } from "@qlora/formats";
import { type DType, Tensor, tensor } from "@qlora/tensor";
import { TrainerError } from "../errors";
import { fsyncFile } from "./fsutil";

type Leaf = Tensor | Float32Array | Float64Array | Int32Array | Uint8Array | Uint16Array;
const TENSOR_TO_ST: Record<DType, SafetensorsDtype> = {
  f32: "F32",
  bf16: "BF16",
  f16: "F16",
  i32: "I32",
  u8: "U8",
  bool: "BOOL",
};
const ARRAY_TO_ST: Record<string, SafetensorsDtype> = {
  Float32Array: "F32",
  Float64Array: "F64",
  Int32Array: "I32",
  Uint8Array: "U8",
  Uint16Array: "U16",
  Int8Array: "I8",
  Uint32Array: "U32",
  Int16Array: "I16",
};

interface Encoded {
  json: unknown;
  arrays: { name: string; dtype: SafetensorsDtype; shape: number[]; data: ArrayBufferView }[];
}

function encode(x: unknown, out: Encoded["arrays"], path: string): unknown {
  if (x instanceof Tensor) {
    const name = `t${out.length}`;
    out.push({
      name,
      dtype: TENSOR_TO_ST[x.dtype],
      shape: [...x.shape],
      data: x.contiguous().toHost() as ArrayBufferView,
    });
    return { __tensor__: name, dtype: x.dtype };
  }
  if (ArrayBuffer.isView(x) && !(x instanceof DataView)) {
    const kind = x.constructor.name;
    const dtype = ARRAY_TO_ST[kind];
    if (!dtype) throw new TrainerError("STATE_TYPE", `state "${path}": ${kind} cannot be saved`, { key: path });
    const name = `t${out.length}`;
    out.push({ name, dtype, shape: [(x as Leaf as Float32Array).length], data: x });
    return { __array__: name, type: kind };
  }
  if (typeof x === "number" && !Number.isFinite(x)) return { __num__: String(x) };
  if (x === null || typeof x !== "object") return x;
  if (x instanceof Map) return { __map__: [...x].map(([k, v], i) => [k, encode(v, out, `${path}[${i}]`)]) };
  if (Array.isArray(x)) return x.map((v, i) => encode(v, out, `${path}[${i}]`));
  return Object.fromEntries(Object.entries(x).map(([k, v]) => [k, encode(v, out, path ? `${path}.${k}` : k)]));
}

const ARRAY_CTORS: Record<string, new (b: ArrayBuffer) => ArrayBufferView> = {
  Float32Array,
  Float64Array,
  Int32Array,
  Uint8Array,
  Uint16Array,
  Int8Array,
  Uint32Array,
  Int16Array,
};

function decode(x: unknown, arrays: Map<string, { bytes: Uint8Array; shape: number[] }>): unknown {
  if (x === null || typeof x !== "object") return x;
  if (Array.isArray(x)) return x.map((v) => decode(v, arrays));
  const o = x as Record<string, unknown>;
  if (typeof o.__num__ === "string") return Number(o.__num__);
  if (Array.isArray(o.__map__))
    return new Map((o.__map__ as [unknown, unknown][]).map(([k, v]) => [k, decode(v, arrays)]));
  if (typeof o.__tensor__ === "string" || typeof o.__array__ === "string") {
    const a = arrays.get((o.__tensor__ ?? o.__array__) as string);
    if (!a) throw new TrainerError("STATE_MISSING", `state tensor "${o.__tensor__ ?? o.__array__}" missing`);
    const copy = a.bytes.slice().buffer;
    if (typeof o.__array__ === "string") return new ARRAY_CTORS[o.type as string](copy);
    const dtype = o.dtype as DType;
    const host =
      dtype === "f32"
        ? new Float32Array(copy)
        : dtype === "i32"
          ? new Int32Array(copy)
          : dtype === "bf16" || dtype === "f16"
            ? new Uint16Array(copy)
            : new Uint8Array(copy);
    return tensor(host, { dtype, shape: a.shape });
  }
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, decode(v, arrays)]));
}

/** Write `<dir>/<name>.json` (+ `<name>.safetensors` when there are arrays), fsynced. */
export async function saveStateTree(dir: string, name: string, state: unknown): Promise<void> {
  const arrays: Encoded["arrays"] = [];
  const json = encode(state, arrays, "");
  if (arrays.length) await writeSafetensors(join(dir, `${name}.safetensors`), arrays, { format: "qlora-state" });
  const path = join(dir, `${name}.json`);
  await writeFile(path, JSON.stringify(json));
  await fsyncFile(path);
}

export async function loadStateTree(dir: string, name: string): Promise<unknown> {
  const path = join(dir, `${name}.json`);
  let json: unknown;
  try {
    json = JSON.parse(await readFile(path, "utf8"));
  } catch (e) {
    throw new TrainerError("CHECKPOINT_READ", `${path}: cannot read state (${(e as Error).message})`, { file: path });
  }
  const arrays = new Map<string, { bytes: Uint8Array; shape: number[] }>();
  if (JSON.stringify(json).includes('"__tensor__"') || JSON.stringify(json).includes('"__array__"')) {
    const f = await openSafetensors(join(dir, `${name}.safetensors`));
    try {
      for (const n of f.names) arrays.set(n, { bytes: await f.read(n), shape: [...f.info(n).shape] });
    } finally {
      await f.close();
    }
  }
  return decode(json, arrays);
}
