import { GgufError } from "../errors";
import { AtomicFile, type AtomicWriteOptions } from "../atomic";
import {
  GGML_TYPE_TRAITS,
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_MAX_DIMS,
  GGUF_MAX_NAME_BYTES,
  GgufValueType,
  ggmlTypeName,
  type GgufValue,
  type GgufWriteValue,
} from "./types";

export interface GgufTensorDecl {
  readonly name: string;
  /** ggml type id (GgmlType.F32, …). */
  readonly type: number;
  /** Row-major (torch) shape; or give `ne` (ggml order) instead. */
  readonly shape?: readonly number[];
  readonly ne?: readonly number[];
}

export interface GgufTensorData extends GgufTensorDecl {
  readonly data: ArrayBufferView;
}

export interface GgufWriteSpec {
  /** Written in insertion order. `general.alignment` (UINT32) sets the alignment. */
  readonly metadata?:
    | Readonly<Record<string, GgufWriteValue | GgufValue>>
    | ReadonlyMap<string, GgufWriteValue | GgufValue>;
  readonly tensors: readonly GgufTensorDecl[];
  /** Used when metadata has no general.alignment; a non-default value is added to the metadata. */
  readonly alignment?: number;
}

/** A spec whose tensors carry their bytes. */
export interface GgufWriteInput extends Omit<GgufWriteSpec, "tensors"> {
  readonly tensors: readonly GgufTensorData[];
}

export interface GgufLayout {
  /** Header through the padding before the data section. */
  readonly header: Uint8Array;
  readonly alignment: number;
  readonly tensors: readonly { name: string; ne: number[]; type: number; offset: number; byteLength: number }[];
  /** Data section size, including the padding after every tensor. */
  readonly dataLength: number;
}

const enc = new TextEncoder();

class ByteBuilder {
  #buf = new Uint8Array(1024);
  #view = new DataView(this.#buf.buffer);
  length = 0;
  #grow(n: number): void {
    if (this.length + n <= this.#buf.byteLength) return;
    let cap = this.#buf.byteLength * 2;
    while (cap < this.length + n) cap *= 2;
    const b = new Uint8Array(cap);
    b.set(this.#buf.subarray(0, this.length));
    this.#buf = b;
    this.#view = new DataView(b.buffer);
  }
  u8(v: number): void {
    this.#grow(1);
    this.#view.setUint8(this.length, v);
    this.length += 1;
  }
  u32(v: number): void {
    this.#grow(4);
    this.#view.setUint32(this.length, v, true);
    this.length += 4;
  }
  u64(v: bigint | number): void {
    this.#grow(8);
    this.#view.setBigUint64(this.length, BigInt(v), true);
    this.length += 8;
  }
  bytes(b: Uint8Array): void {
    this.#grow(b.byteLength);
    this.#buf.set(b, this.length);
    this.length += b.byteLength;
  }
  string(s: string): void {
    const b = enc.encode(s);
    this.u64(b.byteLength);
    this.bytes(b);
  }
  scalar(type: number, v: unknown, key: string): void {
    const bad = (what: string): never => {
      throw new GgufError("bad_value", `${what}, got ${typeof v === "bigint" ? `${v}n` : JSON.stringify(v)}`, { key });
    };
    const int = (lo: number, hi: number): number => {
      if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi)
        bad(`expected an integer in [${lo}, ${hi}]`);
      return v as number;
    };
    const view = (n: number): DataView => {
      this.#grow(n);
      const d = this.#view;
      return d;
    };
    const at = this.length;
    switch (type) {
      case GgufValueType.UINT8:
        view(1).setUint8(at, int(0, 0xff));
        this.length += 1;
        return;
      case GgufValueType.INT8:
        view(1).setInt8(at, int(-0x80, 0x7f));
        this.length += 1;
        return;
      case GgufValueType.UINT16:
        view(2).setUint16(at, int(0, 0xffff), true);
        this.length += 2;
        return;
      case GgufValueType.INT16:
        view(2).setInt16(at, int(-0x8000, 0x7fff), true);
        this.length += 2;
        return;
      case GgufValueType.UINT32:
        view(4).setUint32(at, int(0, 0xffffffff), true);
        this.length += 4;
        return;
      case GgufValueType.INT32:
        view(4).setInt32(at, int(-0x80000000, 0x7fffffff), true);
        this.length += 4;
        return;
      case GgufValueType.FLOAT32:
        if (typeof v !== "number") bad("expected a number");
        view(4).setFloat32(at, v as number, true);
        this.length += 4;
        return;
      case GgufValueType.FLOAT64:
        if (typeof v !== "number") bad("expected a number");
        view(8).setFloat64(at, v as number, true);
        this.length += 8;
        return;
      case GgufValueType.UINT64:
      case GgufValueType.INT64: {
        let b: bigint;
        if (typeof v === "bigint") b = v;
        else if (typeof v === "number" && Number.isSafeInteger(v)) b = BigInt(v);
        else throw bad("expected a bigint or safe integer");
        const [lo, hi] = type === GgufValueType.UINT64 ? [0n, (1n << 64n) - 1n] : [-(1n << 63n), (1n << 63n) - 1n];
        if (b < lo || b > hi) bad(`out of range for ${type === GgufValueType.UINT64 ? "UINT64" : "INT64"}`);
        view(8).setBigUint64(at, BigInt.asUintN(64, b), true);
        this.length += 8;
        return;
      }
      case GgufValueType.BOOL:
        if (typeof v !== "boolean") bad("expected a boolean");
        this.u8(v ? 1 : 0);
        return;
      case GgufValueType.STRING:
        if (typeof v !== "string") bad("expected a string");
        this.string(v as string);
        return;
    }
    throw new GgufError("unknown_value_type", `unknown value type ${type}`, { key });
  }
  value(v: { type: number; value: unknown; elementType?: number }, key: string, depth = 0): void {
    if (v.type !== GgufValueType.ARRAY) {
      this.scalar(v.type, v.value, key);
      return;
    }
    if (depth > 8) throw new GgufError("nesting_too_deep", "arrays nested more than 8 deep", { key });
    const et = v.elementType;
    if (et === undefined || !Number.isInteger(et) || et < 0 || et > 12)
      throw new GgufError("unknown_value_type", `unknown array element type ${et}`, { key });
    const items = v.value as ArrayLike<unknown>;
    if (items === null || typeof items !== "object" || typeof items.length !== "number")
      throw new GgufError("bad_value", "array value must be array-like", { key });
    this.u32(et);
    this.u64(items.length);
    for (let i = 0; i < items.length; i++) {
      const it = items[i];
      if (et === GgufValueType.ARRAY) {
        if (it === null || typeof it !== "object")
          throw new GgufError("bad_value", `nested array element ${i} must be {elementType, value}`, { key });
        const o = it as { elementType?: number; value: unknown };
        this.value({ type: GgufValueType.ARRAY, elementType: o.elementType, value: o.value }, key, depth + 1);
      } else this.scalar(et, it, key);
    }
  }
  pad(alignment: number): void {
    const n = (alignment - (this.length % alignment)) % alignment;
    this.#grow(n);
    this.#buf.fill(0, this.length, this.length + n);
    this.length += n;
  }
  finish(): Uint8Array {
    return this.#buf.slice(0, this.length);
  }
}

function resolveNe(d: GgufTensorDecl, file: string): number[] {
  if ((d.shape === undefined) === (d.ne === undefined))
    throw new GgufError("invalid_argument", "give exactly one of shape (row-major) or ne (ggml order)", {
      file,
      tensor: d.name,
    });
  const ne = d.ne !== undefined ? [...d.ne] : [...d.shape!].reverse();
  if (ne.length > GGUF_MAX_DIMS)
    throw new GgufError("too_many_dims", `${ne.length} dimensions (ggml allows at most ${GGUF_MAX_DIMS})`, {
      file,
      tensor: d.name,
    });
  for (const x of ne)
    if (!Number.isSafeInteger(x) || x <= 0)
      throw new GgufError("bad_dim", `dimensions must be positive integers, got ${JSON.stringify(ne)}`, {
        file,
        tensor: d.name,
      });
  return ne;
}

/** Validates a spec and builds the header bytes and the data layout. */
export function layoutGguf(spec: GgufWriteSpec, file = "<memory>"): GgufLayout {
  const entries: [string, { type: number; value: unknown; elementType?: number }][] =
    spec.metadata === undefined
      ? []
      : spec.metadata instanceof Map
        ? [...spec.metadata]
        : Object.entries(spec.metadata);
  let alignment = spec.alignment ?? GGUF_DEFAULT_ALIGNMENT;
  const al = entries.find(([k]) => k === "general.alignment");
  if (al !== undefined) {
    const [, v] = al;
    if (v.type !== GgufValueType.UINT32 || typeof v.value !== "number")
      throw new GgufError("bad_alignment", "general.alignment must be a UINT32", { file, key: "general.alignment" });
    if (spec.alignment !== undefined && spec.alignment !== v.value)
      throw new GgufError(
        "bad_alignment",
        `options.alignment ${spec.alignment} disagrees with general.alignment ${v.value}`,
        { file, key: "general.alignment" },
      );
    alignment = v.value;
  } else if (alignment !== GGUF_DEFAULT_ALIGNMENT)
    entries.push(["general.alignment", { type: GgufValueType.UINT32, value: alignment }]);
  if (!Number.isInteger(alignment) || alignment <= 0 || (alignment & (alignment - 1)) !== 0 || alignment > 0x80000000) {
    throw new GgufError("bad_alignment", `alignment must be a power of two, got ${alignment}`, {
      file,
      key: "general.alignment",
    });
  }

  const b = new ByteBuilder();
  b.u32(GGUF_MAGIC);
  b.u32(3);
  b.u64(spec.tensors.length);
  b.u64(entries.length);
  const keys = new Set<string>();
  for (const [k, v] of entries) {
    if (keys.has(k)) throw new GgufError("duplicate_key", "metadata key given twice", { file, key: k });
    keys.add(k);
    if (v === null || typeof v !== "object")
      throw new GgufError("bad_value", "metadata value must be {type, value}", { file, key: k });
    b.string(k);
    b.u32(v.type);
    try {
      b.value(v, k);
    } catch (e) {
      if (e instanceof GgufError && e.file === undefined) throw new GgufError(e.code, e.message, { file, cause: e });
      throw e;
    }
  }
  const tensors: { name: string; ne: number[]; type: number; offset: number; byteLength: number }[] = [];
  const names = new Set<string>();
  let offset = 0;
  for (const d of spec.tensors) {
    const nameBytes = enc.encode(d.name);
    if (nameBytes.byteLength > GGUF_MAX_NAME_BYTES)
      throw new GgufError(
        "name_too_long",
        `name is ${nameBytes.byteLength} bytes (ggml allows at most ${GGUF_MAX_NAME_BYTES})`,
        { file, tensor: d.name },
      );
    if (names.has(d.name)) throw new GgufError("duplicate_name", "tensor given twice", { file, tensor: d.name });
    names.add(d.name);
    const traits = GGML_TYPE_TRAITS[d.type];
    if (traits === undefined)
      throw new GgufError("unknown_type", `unknown ggml type ${d.type}`, { file, tensor: d.name });
    const ne = resolveNe(d, file);
    const elements = ne.reduce((a, x) => a * x, 1);
    if (!Number.isSafeInteger(elements))
      throw new GgufError("bad_dim", "element count overflows", { file, tensor: d.name });
    if ((ne[0] ?? 1) % traits.blockSize !== 0)
      throw new GgufError(
        "block_size",
        `ne[0] = ${ne[0] ?? 1} is not a multiple of ${traits.name}'s block size ${traits.blockSize}`,
        { file, tensor: d.name },
      );
    const byteLength = (elements / traits.blockSize) * traits.typeSize;
    b.string(d.name);
    b.u32(ne.length);
    for (const x of ne) b.u64(x);
    b.u32(d.type);
    b.u64(offset);
    tensors.push({ name: d.name, ne, type: d.type, offset, byteLength });
    offset += Math.ceil(byteLength / alignment) * alignment;
  }
  b.pad(alignment);
  return { header: b.finish(), alignment, tensors, dataLength: offset };
}

function bytesOf(v: ArrayBufferView): Uint8Array {
  return v instanceof Uint8Array ? v : new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

/** Builds a whole GGUF file in memory (small files, tests). */
export function serializeGguf(spec: GgufWriteInput): Uint8Array {
  const layout = layoutGguf(spec);
  const out = new Uint8Array(layout.header.byteLength + layout.dataLength);
  out.set(layout.header);
  spec.tensors.forEach((t, i) => {
    const l = layout.tensors[i];
    const bytes = bytesOf(t.data);
    if (bytes.byteLength !== l.byteLength)
      throw new GgufError(
        "size_mismatch",
        `data is ${bytes.byteLength} bytes, ${ggmlTypeName(t.type)} ne ${JSON.stringify(l.ne)} needs ${l.byteLength}`,
        { tensor: t.name },
      );
    out.set(bytes, layout.header.byteLength + l.offset);
  });
  return out;
}

/**
 * Streaming GGUF writer: metadata and tensor infos first, then each tensor's bytes in
 * declaration order (chunks allowed); padding is inserted automatically. Atomic on finish().
 */
export class GgufWriter {
  readonly path: string;
  readonly layout: GgufLayout;
  readonly #file: AtomicFile;
  #index = 0;
  #written = 0;
  #done = false;

  private constructor(path: string, file: AtomicFile, layout: GgufLayout) {
    this.path = path;
    this.#file = file;
    this.layout = layout;
  }

  static async create(path: string, spec: GgufWriteSpec, options: AtomicWriteOptions = {}): Promise<GgufWriter> {
    const layout = layoutGguf(spec, path);
    const file = await AtomicFile.create(path, options);
    try {
      await file.write(layout.header);
    } catch (e) {
      await file.abort();
      throw e;
    }
    return new GgufWriter(path, file, layout);
  }

  get next(): string | undefined {
    return this.layout.tensors[this.#index]?.name;
  }

  async writeChunk(name: string, chunk: ArrayBufferView): Promise<void> {
    if (this.#done) throw new GgufError("writer_closed", "write after finish/abort", { file: this.path, tensor: name });
    const cur = this.layout.tensors[this.#index];
    if (cur === undefined || cur.name !== name) {
      const declared = this.layout.tensors.some((t) => t.name === name);
      throw new GgufError(
        "write_order",
        declared
          ? `tensors must be written in declaration order; expected ${cur === undefined ? "no more data" : JSON.stringify(cur.name)}`
          : "tensor was not declared",
        { file: this.path, tensor: name },
      );
    }
    const bytes = bytesOf(chunk);
    if (this.#written + bytes.byteLength > cur.byteLength)
      throw new GgufError(
        "size_mismatch",
        `chunk of ${bytes.byteLength} bytes after ${this.#written} would exceed the tensor's ${cur.byteLength} bytes`,
        { file: this.path, tensor: name },
      );
    await this.#file.write(bytes);
    this.#written += bytes.byteLength;
    if (this.#written === cur.byteLength) {
      await this.#file.writeZeros(
        Math.ceil(cur.byteLength / this.layout.alignment) * this.layout.alignment - cur.byteLength,
      );
      this.#index++;
      this.#written = 0;
    }
  }

  async writeTensor(name: string, data: ArrayBufferView): Promise<void> {
    const cur = this.layout.tensors[this.#index];
    if (cur !== undefined && cur.name === name && (this.#written !== 0 || data.byteLength !== cur.byteLength)) {
      throw new GgufError(
        "size_mismatch",
        `data is ${data.byteLength} bytes, ${ggmlTypeName(cur.type)} ne ${JSON.stringify(cur.ne)} needs ${cur.byteLength}`,
        { file: this.path, tensor: name },
      );
    }
    await this.writeChunk(name, data);
  }

  async finish(): Promise<void> {
    if (this.#done) throw new GgufError("writer_closed", "finish after finish/abort", { file: this.path });
    if (this.#index < this.layout.tensors.length) {
      const cur = this.layout.tensors[this.#index];
      await this.abort();
      throw new GgufError(
        "write_incomplete",
        "finish() before every declared tensor was written; nothing was written under the final name",
        { file: this.path, tensor: cur.name },
      );
    }
    this.#done = true;
    await this.#file.commit();
  }

  async abort(): Promise<void> {
    this.#done = true;
    await this.#file.abort();
  }
}

/** Writes a complete GGUF file atomically. */
export async function writeGguf(path: string, spec: GgufWriteInput, options: AtomicWriteOptions = {}): Promise<void> {
  const w = await GgufWriter.create(path, spec, options);
  try {
    for (const t of spec.tensors) await w.writeTensor(t.name, t.data);
    await w.finish();
  } catch (e) {
    await w.abort();
    throw e;
  }
}
