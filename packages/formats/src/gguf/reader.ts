import { FormatsError, GgufError, type FormatsErrorCode } from "../errors";
import { FileSource, allocBytes, type ByteSource } from "../source";
import {
  iterateChunksOf,
  type ChunkOptions,
  type IterateOptions,
  type TensorChunk,
  type TensorPiece,
} from "../safetensors/reader";
import {
  GGML_TYPE_TRAITS,
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_MAX_DIMS,
  GGUF_MAX_NAME_BYTES,
  GGUF_VALUE_SIZE,
  GgufValueType,
  ggmlTypeName,
  type GgufArrayItems,
  type GgufArrayValue,
  type GgufValue,
} from "./types";

export interface GgufTensorInfo {
  readonly name: string;
  /** ggml type id (see GgmlType). */
  readonly type: number;
  /** ggml dimension order: ne[0] is the innermost (contiguous) dimension. */
  readonly ne: readonly number[];
  /** Row-major shape (ne reversed), as torch/numpy would write it. */
  readonly shape: readonly number[];
  /** Offset relative to the start of the data section, as stored. */
  readonly offset: number;
  /** Absolute offset in the file. */
  readonly byteOffset: number;
  readonly byteLength: number;
}

const MAX_NESTING = 8;
const WINDOW = 1 << 20;
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Buffered forward cursor over a ByteSource; every length is checked against the bytes left before anything is allocated. */
class Cursor {
  pos = 0;
  #buf: Uint8Array = new Uint8Array(0);
  #view: DataView = new DataView(new ArrayBuffer(0));
  #bufStart = 0;
  readonly source: ByteSource;

  constructor(source: ByteSource) {
    this.source = source;
  }

  get remaining(): number {
    return this.source.size - this.pos;
  }

  fail(code: FormatsErrorCode, message: string, d: { tensor?: string; key?: string } = {}): never {
    throw new GgufError(code, message, { file: this.source.name, ...d });
  }

  /** Makes `n` bytes at pos available in the window. */
  async need(n: number, what: string, d?: { tensor?: string; key?: string }): Promise<void> {
    if (n > this.remaining)
      this.fail(
        "truncated",
        `file ends ${this.remaining} bytes after offset ${this.pos} while reading ${what} (${n} bytes needed)`,
        d,
      );
    if (this.pos >= this.#bufStart && this.pos + n <= this.#bufStart + this.#buf.byteLength) return;
    const len = Math.min(Math.max(n, WINDOW), this.remaining);
    try {
      this.#buf = await this.source.read(this.pos, len);
    } catch (e) {
      if (e instanceof FormatsError && !(e instanceof GgufError))
        throw new GgufError(e.code, e.message, { file: this.source.name, cause: e });
      throw e;
    }
    this.#bufStart = this.pos;
    this.#view = new DataView(this.#buf.buffer, this.#buf.byteOffset, this.#buf.byteLength);
  }

  #at(): number {
    return this.pos - this.#bufStart;
  }

  async u32(what: string, d?: { tensor?: string; key?: string }): Promise<number> {
    if (!this.#has(4)) await this.need(4, what, d);
    const v = this.#view.getUint32(this.#at(), true);
    this.pos += 4;
    return v;
  }

  async u64(what: string, d?: { tensor?: string; key?: string }): Promise<bigint> {
    if (!this.#has(8)) await this.need(8, what, d);
    const v = this.#view.getBigUint64(this.#at(), true);
    this.pos += 8;
    return v;
  }

  #has(n: number): boolean {
    return this.pos >= this.#bufStart && this.pos + n <= this.#bufStart + this.#buf.byteLength;
  }

  async bytes(n: number, what: string, d?: { tensor?: string; key?: string }): Promise<Uint8Array> {
    if (!this.#has(n)) await this.need(n, what, d);
    const out = this.#buf.subarray(this.#at(), this.#at() + n);
    this.pos += n;
    return out;
  }

  /** A count or length (uint64) that is checked to fit: count × minSize ≤ bytes remaining. */
  async length(
    minSize: number,
    what: string,
    d?: { tensor?: string; key?: string },
    code: FormatsErrorCode = "length_too_large",
  ): Promise<number> {
    const n = await this.u64(what, d);
    if (n * BigInt(minSize) > BigInt(this.remaining)) {
      this.fail(
        code,
        `${what} ${n} × at least ${minSize} byte(s) each does not fit in the ${this.remaining} bytes left in the file`,
        d,
      );
    }
    return Number(n);
  }

  /**
   * Synchronous fast path for a string wholly inside the window (the common case in vocab arrays):
   * no awaits, no BigInt, ASCII decoded without TextDecoder. Returns undefined whenever anything is
   * unusual (length beyond the window or the file, invalid UTF-8) so the checked path reports it.
   */
  stringSync(): string | undefined {
    if (!this.#has(8)) return undefined;
    const o = this.#at();
    const lo = this.#view.getUint32(o, true);
    if (this.#view.getUint32(o + 4, true) !== 0 || lo > this.remaining - 8 || !this.#has(8 + lo)) return undefined;
    const b = this.#buf.subarray(o + 8, o + 8 + lo);
    let ascii = lo <= 256;
    if (ascii)
      for (let i = 0; i < lo; i++)
        if (b[i] >= 0x80) {
          ascii = false;
          break;
        }
    let s: string;
    if (ascii) s = String.fromCharCode.apply(null, b as unknown as number[]);
    else {
      try {
        s = utf8.decode(b);
      } catch {
        return undefined;
      }
    }
    this.pos += 8 + lo;
    return s;
  }

  async string(what: string, d?: { tensor?: string; key?: string }): Promise<string> {
    const len = await this.length(1, `${what} length`, d);
    const b = await this.bytes(len, what, d);
    try {
      return utf8.decode(b);
    } catch {
      return this.fail("bad_string", `${what} is not valid UTF-8`, d);
    }
  }

  async scalar(type: number, key: string): Promise<number | bigint | boolean> {
    const size = GGUF_VALUE_SIZE[type];
    if (!this.#has(size)) await this.need(size, `value of type ${type}`, { key });
    const o = this.#at();
    const v = this.#view;
    this.pos += size;
    switch (type) {
      case GgufValueType.UINT8:
        return v.getUint8(o);
      case GgufValueType.INT8:
        return v.getInt8(o);
      case GgufValueType.UINT16:
        return v.getUint16(o, true);
      case GgufValueType.INT16:
        return v.getInt16(o, true);
      case GgufValueType.UINT32:
        return v.getUint32(o, true);
      case GgufValueType.INT32:
        return v.getInt32(o, true);
      case GgufValueType.FLOAT32:
        return v.getFloat32(o, true);
      case GgufValueType.FLOAT64:
        return v.getFloat64(o, true);
      case GgufValueType.UINT64:
        return v.getBigUint64(o, true);
      case GgufValueType.INT64:
        return v.getBigInt64(o, true);
      case GgufValueType.BOOL: {
        const b = v.getUint8(o);
        if (b > 1) this.fail("bad_value", `bool value must be 0 or 1, got ${b}`, { key });
        return b === 1;
      }
    }
    return this.fail("unknown_value_type", `unknown value type ${type}`, { key });
  }
}

const TYPED_CTORS: Record<
  number,
  { new (n: number): GgufArrayItems & { set(a: ArrayLike<number | bigint>): void }; BYTES_PER_ELEMENT: number }
> = {
  [GgufValueType.UINT8]: Uint8Array,
  [GgufValueType.INT8]: Int8Array,
  [GgufValueType.UINT16]: Uint16Array,
  [GgufValueType.INT16]: Int16Array,
  [GgufValueType.UINT32]: Uint32Array,
  [GgufValueType.INT32]: Int32Array,
  [GgufValueType.FLOAT32]: Float32Array,
  [GgufValueType.FLOAT64]: Float64Array,
  [GgufValueType.UINT64]: BigUint64Array as never,
  [GgufValueType.INT64]: BigInt64Array as never,
} as never;

function isKnownValueType(t: number): t is GgufValueType {
  return Number.isInteger(t) && t >= 0 && t <= 12;
}

async function readArray(c: Cursor, key: string, depth: number): Promise<GgufArrayValue> {
  if (depth > MAX_NESTING) c.fail("nesting_too_deep", `arrays nested more than ${MAX_NESTING} deep`, { key });
  const elementType = await c.u32("array element type", { key });
  if (!isKnownValueType(elementType))
    c.fail("unknown_value_type", `unknown array element type ${elementType}`, { key });
  const min =
    elementType === GgufValueType.STRING ? 8 : elementType === GgufValueType.ARRAY ? 12 : GGUF_VALUE_SIZE[elementType];
  const count = await c.length(min, "array length", { key });
  const Ctor = TYPED_CTORS[elementType];
  if (Ctor !== undefined) {
    // count × element size already checked against the bytes left
    const raw = await c.bytes(count * Ctor.BYTES_PER_ELEMENT, "array data", { key });
    const out = new Ctor(count);
    new Uint8Array((out as Uint8Array).buffer).set(raw);
    return { type: GgufValueType.ARRAY, elementType, value: out };
  }
  if (elementType === GgufValueType.BOOL) {
    const raw = await c.bytes(count, "array data", { key });
    const out: boolean[] = [];
    for (let i = 0; i < count; i++) {
      if (raw[i] > 1) c.fail("bad_value", `bool array element ${i} must be 0 or 1, got ${raw[i]}`, { key });
      out.push(raw[i] === 1);
    }
    return { type: GgufValueType.ARRAY, elementType, value: out };
  }
  if (elementType === GgufValueType.STRING) {
    const out: string[] = [];
    for (let i = 0; i < count; i++) out.push(c.stringSync() ?? (await c.string(`array string ${i}`, { key })));
    return { type: GgufValueType.ARRAY, elementType, value: out };
  }
  const out: GgufArrayValue[] = [];
  for (let i = 0; i < count; i++) out.push(await readArray(c, key, depth + 1));
  return { type: GgufValueType.ARRAY, elementType, value: out };
}

async function readValue(c: Cursor, type: number, key: string): Promise<GgufValue> {
  if (!isKnownValueType(type)) c.fail("unknown_value_type", `unknown value type ${type} (expected 0..12)`, { key });
  if (type === GgufValueType.STRING) return { type, value: await c.string("string value", { key }) };
  if (type === GgufValueType.ARRAY) return readArray(c, key, 1);
  return { type, value: await c.scalar(type, key) } as GgufValue;
}

export interface GgufHeader {
  version: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensorInfo[];
  alignment: number;
  /** Absolute offset of the data section. */
  dataStart: number;
}

/** Parses and validates a GGUF header (v3; v2 has the same layout and is accepted for reading). */
export async function parseGgufHeader(source: ByteSource): Promise<GgufHeader> {
  const c = new Cursor(source);
  const magic = await c.u32("magic");
  if (magic !== GGUF_MAGIC) c.fail("bad_magic", `bad magic 0x${magic.toString(16).padStart(8, "0")} (expected "GGUF")`);
  const version = await c.u32("version");
  if (version !== 3 && version !== 2) {
    if (version === 0x03000000 || version === 0x02000000)
      c.fail("unsupported_version", "big-endian GGUF files are not supported");
    c.fail("unsupported_version", `GGUF version ${version} is not supported (expected 3; 2 is read too)`);
  }
  const tensorCount = await c.length(24, "tensor count", {}, "count_too_large");
  const kvCount = await c.length(13, "metadata kv count", {}, "count_too_large");

  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    const key = await c.string(`metadata key ${i}`);
    if (metadata.has(key)) c.fail("duplicate_key", "metadata key appears twice", { key });
    const type = await c.u32("value type", { key });
    metadata.set(key, await readValue(c, type, key));
  }

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const a = metadata.get("general.alignment");
  if (a !== undefined) {
    if (a.type !== GgufValueType.UINT32)
      c.fail("bad_alignment", `general.alignment must be UINT32, got value type ${a.type}`, {
        key: "general.alignment",
      });
    const v = a.value as number;
    if (v === 0 || (v & (v - 1)) !== 0)
      c.fail("bad_alignment", `general.alignment must be a power of two, got ${v}`, { key: "general.alignment" });
    alignment = v;
  }

  const raw: { name: string; type: number; ne: number[]; offset: number; byteLength: number }[] = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const nameLen = await c.length(1, `tensor ${i} name length`);
    if (nameLen > GGUF_MAX_NAME_BYTES)
      c.fail("name_too_long", `tensor ${i} name is ${nameLen} bytes (ggml allows at most ${GGUF_MAX_NAME_BYTES})`);
    let name: string;
    try {
      name = utf8.decode(await c.bytes(nameLen, `tensor ${i} name`));
    } catch (e) {
      if (e instanceof GgufError) throw e;
      return c.fail("bad_string", `tensor ${i} name is not valid UTF-8`);
    }
    const d = { tensor: name };
    if (names.has(name)) c.fail("duplicate_name", "tensor name appears twice", d);
    names.add(name);
    const nDims = await c.u32("n_dims", d);
    if (nDims > GGUF_MAX_DIMS) c.fail("too_many_dims", `${nDims} dimensions (ggml allows at most ${GGUF_MAX_DIMS})`, d);
    const ne: number[] = [];
    let elements = 1;
    for (let j = 0; j < nDims; j++) {
      const v = await c.u64(`ne[${j}]`, d);
      if (v === 0n || v >= 1n << 63n)
        c.fail("bad_dim", `ne[${j}] = ${BigInt.asIntN(64, v)} (dimensions must be positive)`, d);
      if (v > BigInt(Number.MAX_SAFE_INTEGER)) c.fail("bad_dim", `ne[${j}] = ${v} is too large`, d);
      ne.push(Number(v));
      elements *= Number(v);
      if (!Number.isSafeInteger(elements)) c.fail("bad_dim", `element count of ne ${JSON.stringify(ne)} overflows`, d);
    }
    const type = await c.u32("type", d);
    const traits = GGML_TYPE_TRAITS[type];
    if (traits === undefined) c.fail("unknown_type", `unknown ggml type ${type}`, d);
    if ((ne[0] ?? 1) % traits.blockSize !== 0)
      c.fail(
        "block_size",
        `ne[0] = ${ne[0] ?? 1} is not a multiple of ${traits.name}'s block size ${traits.blockSize}`,
        d,
      );
    const off = await c.u64("offset", d);
    if (off > BigInt(source.size))
      c.fail("out_of_bounds", `data offset ${off} is beyond the end of the file (${source.size} bytes)`, d);
    const offset = Number(off);
    if (offset % alignment !== 0)
      c.fail("misaligned_offset", `data offset ${offset} is not a multiple of the alignment ${alignment}`, d);
    const byteLength = (elements / traits.blockSize) * traits.typeSize;
    raw.push({ name, type, ne, offset, byteLength });
  }

  const dataStart = Math.ceil(c.pos / alignment) * alignment;
  const tensors: GgufTensorInfo[] = raw.map((t) => ({
    name: t.name,
    type: t.type,
    ne: t.ne,
    shape: [...t.ne].reverse(),
    offset: t.offset,
    byteOffset: dataStart + t.offset,
    byteLength: t.byteLength,
  }));
  for (const t of tensors) {
    if (t.byteOffset + t.byteLength > source.size) {
      c.fail(
        "out_of_bounds",
        `${ggmlTypeName(t.type)} data of ${t.byteLength} bytes at offset ${t.offset} (absolute ${t.byteOffset}) goes past the end of the file (${source.size} bytes)`,
        { tensor: t.name },
      );
    }
  }
  const sorted = [...tensors].sort((x, y) => x.offset - y.offset);
  for (let i = 1; i < sorted.length; i++) {
    const p = sorted[i - 1];
    const t = sorted[i];
    if (t.offset < p.offset + p.byteLength)
      c.fail(
        "overlap",
        `data at offset ${t.offset} overlaps ${JSON.stringify(p.name)} (offset ${p.offset}, ${p.byteLength} bytes)`,
        { tensor: t.name },
      );
  }
  return { version, metadata, tensors, alignment, dataStart };
}

function plain(v: GgufValue): unknown {
  if (v.type !== GgufValueType.ARRAY) return v.value;
  if (v.elementType === GgufValueType.ARRAY) return (v.value as GgufArrayValue[]).map(plain);
  return v.value;
}

/** A GGUF file opened for lazy tensor reads. */
export class GgufFile {
  readonly source: ByteSource;
  readonly version: number;
  /** Typed metadata in file order. */
  readonly metadata: ReadonlyMap<string, GgufValue>;
  /** Tensor infos in header order. */
  readonly tensors: readonly GgufTensorInfo[];
  readonly alignment: number;
  readonly dataStart: number;
  readonly #byName: Map<string, GgufTensorInfo>;

  private constructor(source: ByteSource, h: GgufHeader) {
    this.source = source;
    this.version = h.version;
    this.metadata = h.metadata;
    this.tensors = h.tensors;
    this.alignment = h.alignment;
    this.dataStart = h.dataStart;
    this.#byName = new Map(h.tensors.map((t) => [t.name, t]));
  }

  static async open(pathOrSource: string | ByteSource): Promise<GgufFile> {
    let source: ByteSource;
    if (typeof pathOrSource === "string") {
      try {
        source = await FileSource.open(pathOrSource);
      } catch (e) {
        if (e instanceof FormatsError && !(e instanceof GgufError))
          throw new GgufError(e.code, e.message, { file: pathOrSource, cause: e });
        throw e;
      }
    } else source = pathOrSource;
    try {
      return new GgufFile(source, await parseGgufHeader(source));
    } catch (e) {
      await source.close().catch(() => undefined);
      throw e;
    }
  }

  /** A metadata value without its type tag (numeric arrays as typed arrays, nested arrays as arrays). */
  get(key: string): unknown {
    const v = this.metadata.get(key);
    return v === undefined ? undefined : plain(v);
  }

  has(name: string): boolean {
    return this.#byName.has(name);
  }

  info(name: string): GgufTensorInfo {
    const t = this.#byName.get(name);
    if (t === undefined)
      throw new GgufError("tensor_not_found", "no such tensor in this file", { file: this.source.name, tensor: name });
    return t;
  }

  async read(name: string): Promise<Uint8Array> {
    const t = this.info(name);
    const out = allocBytes(t.byteLength);
    await this.readInto(name, out);
    return out;
  }

  async readInto(name: string, target: Uint8Array): Promise<void> {
    const t = this.info(name);
    if (target.byteLength !== t.byteLength)
      throw new GgufError(
        "invalid_argument",
        `target buffer is ${target.byteLength} bytes, tensor is ${t.byteLength}`,
        { file: this.source.name, tensor: name },
      );
    try {
      await this.source.readInto(target, t.byteOffset);
    } catch (e) {
      if (e instanceof FormatsError && !(e instanceof GgufError))
        throw new GgufError(e.code, e.message, { file: this.source.name, tensor: name, cause: e });
      throw e;
    }
  }

  /** Visits tensors in data (offset) order. */
  async *iterate(options: IterateOptions = {}): AsyncGenerator<TensorChunk<GgufTensorInfo>> {
    const wanted = options.names === undefined ? undefined : new Set(options.names);
    if (wanted !== undefined) for (const n of wanted) this.info(n);
    let scratch: Uint8Array | undefined;
    for (const t of [...this.tensors].sort((a, b) => a.offset - b.offset)) {
      if (wanted !== undefined && !wanted.has(t.name)) continue;
      let data: Uint8Array;
      if (options.reuseBuffer === true) {
        if (scratch === undefined || scratch.byteLength < t.byteLength) scratch = allocBytes(t.byteLength);
        data = scratch.subarray(0, t.byteLength);
        await this.readInto(t.name, data);
      } else data = await this.read(t.name);
      yield { info: t, data };
    }
  }

  /** Visits tensors in data order as pieces of at most `chunkSize` bytes in one reused buffer. */
  iterateChunks(options: ChunkOptions = {}): AsyncGenerator<TensorPiece<GgufTensorInfo>> {
    if (options.names !== undefined) for (const n of options.names) this.info(n);
    return iterateChunksOf(this.source, this.tensors, options, (e, tensor) =>
      e instanceof GgufError
        ? e
        : new GgufError(e.code, e.message, {
            file: this.source.name,
            tensor: tensor === "" ? undefined : tensor,
            cause: e,
          }),
    );
  }

  async close(): Promise<void> {
    await this.source.close();
  }
}

export function openGguf(pathOrSource: string | ByteSource): Promise<GgufFile> {
  return GgufFile.open(pathOrSource);
}
