import { FormatsError, SafetensorsError } from "../errors";
import { FileSource, allocBytes, type ByteSource } from "../source";
import { parseStrictJson, JsonSyntaxError, type JsonValue } from "../internal/json";
import { dtypeSize, elementCount, isSafetensorsDtype, type SafetensorsDtype } from "./dtype";
import { viewAs, type DtypeArrays } from "../view";

/** The Rust `safetensors` crate refuses headers above 100 MB; so do we. */
export const SAFETENSORS_MAX_HEADER_SIZE = 100_000_000;

export interface SafetensorsTensorInfo {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
  /** `data_offsets` as written in the header: relative to the start of the data section. */
  readonly dataOffsets: readonly [number, number];
  /** Absolute byte offset of the tensor's data in the file. */
  readonly byteOffset: number;
  readonly byteLength: number;
}

export interface TensorChunk<I> {
  readonly info: I;
  readonly data: Uint8Array;
}

export interface IterateOptions {
  /** Only these tensors (still visited in file order). */
  names?: readonly string[];
  /**
   * Reuse one buffer (grown as needed) for every tensor instead of allocating a fresh one:
   * each yielded `data` is only valid until the iterator is advanced.
   */
  reuseBuffer?: boolean;
}

/** One piece of a tensor from `iterateChunks`: `data` covers [offset, offset + data.byteLength) of the tensor. */
export interface TensorPiece<I> {
  readonly info: I;
  readonly offset: number;
  readonly data: Uint8Array;
}

export interface ChunkOptions {
  /** Only these tensors (still visited in file order). */
  names?: readonly string[];
  /** Bytes per piece (default 8 MiB); one buffer of this size is reused for every piece. */
  chunkSize?: number;
}

export const DEFAULT_CHUNK_SIZE = 8 << 20;

/**
 * Streams tensors in file order as pieces of at most `chunkSize` bytes, read into one reused buffer
 * (each `data` is valid until the iterator is advanced). Memory stays at one chunk whatever the
 * tensor sizes, and the small hot buffer makes this the fastest way to scan a file.
 */
export async function* iterateChunksOf<
  I extends { readonly name: string; readonly byteOffset: number; readonly byteLength: number },
>(
  source: ByteSource,
  infos: readonly I[],
  options: ChunkOptions,
  wrap: (e: FormatsError, tensor: string) => Error,
): AsyncGenerator<TensorPiece<I>> {
  const size = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
  if (!Number.isSafeInteger(size) || size <= 0)
    throw wrap(new FormatsError("invalid_argument", `chunkSize must be a positive integer, got ${size}`), "");
  const wanted = options.names === undefined ? undefined : new Set(options.names);
  const sorted = [...infos]
    .sort((a, b) => a.byteOffset - b.byteOffset)
    .filter((t) => wanted === undefined || wanted.has(t.name));
  const max = sorted.reduce((m, t) => Math.max(m, Math.min(size, t.byteLength)), 0);
  const buf = allocBytes(max);
  for (const t of sorted) {
    if (t.byteLength === 0) yield { info: t, offset: 0, data: buf.subarray(0, 0) };
    for (let off = 0; off < t.byteLength; off += size) {
      const piece = buf.subarray(0, Math.min(size, t.byteLength - off));
      try {
        await source.readInto(piece, t.byteOffset + off);
      } catch (e) {
        if (e instanceof FormatsError) throw wrap(e, t.name);
        throw e;
      }
      yield { info: t, offset: off, data: piece };
    }
  }
}

/** The common read API of single files and sharded sets. */
export interface SafetensorsReader {
  readonly metadata: Readonly<Record<string, string>>;
  /** Tensor names in header order. */
  readonly names: readonly string[];
  has(name: string): boolean;
  info(name: string): SafetensorsTensorInfo;
  /** Reads just this tensor's byte range (a positional read; the file is never loaded whole). */
  read(name: string): Promise<Uint8Array>;
  readInto(name: string, target: Uint8Array): Promise<void>;
  /** Reads the tensor and views it as its dtype's typed array. */
  readTyped<D extends SafetensorsDtype>(name: string, dtype?: D): Promise<DtypeArrays[D]>;
  /** Visits tensors in file (offset) order. */
  iterate(options?: IterateOptions): AsyncGenerator<TensorChunk<SafetensorsTensorInfo>>;
  /** Visits tensors in file order as pieces of at most `chunkSize` bytes in one reused buffer. */
  iterateChunks(options?: ChunkOptions): AsyncGenerator<TensorPiece<SafetensorsTensorInfo>>;
  close(): Promise<void>;
}

function err(
  code: ConstructorParameters<typeof SafetensorsError>[0],
  message: string,
  file: string,
  tensor?: string,
): SafetensorsError {
  return new SafetensorsError(code, message, { file, tensor });
}

async function readExact(source: ByteSource, offset: number, length: number): Promise<Uint8Array> {
  try {
    return await source.read(offset, length);
  } catch (e) {
    if (e instanceof FormatsError && !(e instanceof SafetensorsError)) {
      throw new SafetensorsError(e.code, e.message, { file: source.name, cause: e });
    }
    throw e;
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Parses and fully validates a safetensors header; never reads tensor data. */
export async function parseSafetensorsHeader(source: ByteSource): Promise<{
  metadata: Record<string, string>;
  tensors: SafetensorsTensorInfo[];
  dataStart: number;
}> {
  const file = source.name;
  if (source.size < 8)
    throw err("header_length", `file is ${source.size} bytes, shorter than the 8-byte header length prefix`, file);
  const prefix = await readExact(source, 0, 8);
  const n64 = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n64 > BigInt(source.size - 8)) {
    throw err(
      "header_length",
      `header length ${n64} goes past the end of the file (only ${source.size - 8} bytes follow the prefix)`,
      file,
    );
  }
  if (n64 > BigInt(SAFETENSORS_MAX_HEADER_SIZE)) {
    throw err("header_too_large", `header length ${n64} exceeds the ${SAFETENSORS_MAX_HEADER_SIZE}-byte limit`, file);
  }
  const n = Number(n64);
  if (n < 2) throw err("header_json", `header length ${n} is too short for a JSON object`, file);
  const raw = await readExact(source, 8, n);
  let text: string;
  try {
    text = utf8.decode(raw);
  } catch {
    throw err("header_utf8", "header is not valid UTF-8", file);
  }
  let json: JsonValue;
  try {
    json = parseStrictJson(text);
  } catch (e) {
    if (e instanceof JsonSyntaxError) {
      if (e.duplicateKey !== undefined)
        throw err(
          "duplicate_name",
          `header lists ${JSON.stringify(e.duplicateKey)} twice (${e.message})`,
          file,
          e.duplicateKey,
        );
      throw err("header_json", `header is not valid JSON: ${e.message}`, file);
    }
    throw e;
  }
  if (!(json instanceof Map))
    throw err(
      "header_not_object",
      `header must be a JSON object, got ${Array.isArray(json) ? "an array" : typeof json}`,
      file,
    );

  const dataStart = 8 + n;
  const dataLength = source.size - dataStart;
  const metadata: Record<string, string> = {};
  const tensors: SafetensorsTensorInfo[] = [];

  for (const [name, entry] of json) {
    if (name === "__metadata__") {
      if (!(entry instanceof Map)) throw err("bad_metadata", "__metadata__ must be an object of string values", file);
      for (const [k, v] of entry) {
        if (typeof v !== "string")
          throw err(
            "bad_metadata",
            `__metadata__[${JSON.stringify(k)}] must be a string, got ${v === null ? "null" : Array.isArray(v) ? "array" : typeof v}`,
            file,
          );
        Object.defineProperty(metadata, k, { value: v, enumerable: true, writable: false, configurable: false });
      }
      continue;
    }
    if (!(entry instanceof Map))
      throw err("bad_tensor_entry", "entry must be an object with dtype, shape and data_offsets", file, name);
    const dtype = entry.get("dtype");
    const shape = entry.get("shape");
    const offsets = entry.get("data_offsets");
    if (typeof dtype !== "string") throw err("bad_tensor_entry", 'missing or non-string "dtype"', file, name);
    if (!isSafetensorsDtype(dtype))
      throw err(
        "unknown_dtype",
        `unknown dtype ${JSON.stringify(dtype)} (expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL, F8_E4M3, F8_E5M2)`,
        file,
        name,
      );
    if (!Array.isArray(shape)) throw err("bad_shape", 'missing or non-array "shape"', file, name);
    const count = elementCount(shape);
    if (count === undefined)
      throw err(
        "bad_shape",
        `shape ${JSON.stringify(shape)} must be a list of non-negative integers whose product is below 2^53`,
        file,
        name,
      );
    if (!Array.isArray(offsets) || offsets.length !== 2)
      throw err("bad_tensor_entry", '"data_offsets" must be [begin, end]', file, name);
    const [begin, end] = offsets;
    if (
      typeof begin !== "number" ||
      typeof end !== "number" ||
      !Number.isSafeInteger(begin) ||
      !Number.isSafeInteger(end) ||
      begin < 0 ||
      end < begin
    ) {
      throw err(
        "bad_tensor_entry",
        `data_offsets ${JSON.stringify(offsets)} must be non-negative integers with begin <= end`,
        file,
        name,
      );
    }
    const expected = count * dtypeSize(dtype);
    if (!Number.isSafeInteger(expected) || expected !== end - begin) {
      throw err(
        "size_mismatch",
        `shape ${JSON.stringify(shape)} × ${dtype} (${dtypeSize(dtype)} bytes) is ${expected} bytes but data_offsets [${begin}, ${end}] span ${end - begin}`,
        file,
        name,
      );
    }
    if (end > dataLength) {
      throw err(
        "out_of_bounds",
        `data_offsets [${begin}, ${end}] go past the end of the data section (${dataLength} bytes)`,
        file,
        name,
      );
    }
    tensors.push({
      name,
      dtype,
      shape: shape as number[],
      dataOffsets: [begin, end],
      byteOffset: dataStart + begin,
      byteLength: end - begin,
    });
  }

  // Offsets must tile the data section exactly: sorted by begin, each starts where the last ended.
  const sorted = [...tensors].sort(
    (a, b) => a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1],
  );
  let cursor = 0;
  let prev: SafetensorsTensorInfo | undefined;
  for (const t of sorted) {
    const [begin, end] = t.dataOffsets;
    if (begin < cursor)
      throw err(
        "overlap",
        `data_offsets [${begin}, ${end}] overlap the previous tensor ${JSON.stringify(prev!.name)} which ends at ${cursor}`,
        file,
        t.name,
      );
    if (begin > cursor)
      throw err(
        "gap",
        `data_offsets start at ${begin} but the previous tensor ends at ${cursor} (${begin - cursor} unaccounted bytes)`,
        file,
        t.name,
      );
    cursor = end;
    prev = t;
  }
  if (cursor !== dataLength) {
    throw err(
      "gap",
      `tensors cover ${cursor} bytes of data but the data section is ${dataLength} bytes (${dataLength - cursor} trailing bytes)`,
      file,
    );
  }
  return { metadata, tensors, dataStart };
}

/** One safetensors file opened for lazy reads. */
export class SafetensorsFile implements SafetensorsReader {
  readonly source: ByteSource;
  readonly metadata: Readonly<Record<string, string>>;
  readonly names: readonly string[];
  /** Start of the data section (8 + header length). */
  readonly dataStart: number;
  readonly #infos: Map<string, SafetensorsTensorInfo>;
  readonly #byOffset: readonly SafetensorsTensorInfo[];

  private constructor(source: ByteSource, header: Awaited<ReturnType<typeof parseSafetensorsHeader>>) {
    this.source = source;
    this.metadata = Object.freeze(header.metadata);
    this.dataStart = header.dataStart;
    this.#infos = new Map(header.tensors.map((t) => [t.name, t]));
    this.names = header.tensors.map((t) => t.name);
    this.#byOffset = [...header.tensors].sort((a, b) => a.byteOffset - b.byteOffset);
  }

  /** Opens a file (or any ByteSource) and validates its header. The source is closed if validation fails. */
  static async open(pathOrSource: string | ByteSource): Promise<SafetensorsFile> {
    let source: ByteSource;
    if (typeof pathOrSource === "string") {
      try {
        source = await FileSource.open(pathOrSource);
      } catch (e) {
        if (e instanceof FormatsError && !(e instanceof SafetensorsError))
          throw new SafetensorsError(e.code, e.message, { file: pathOrSource, cause: e });
        throw e;
      }
    } else {
      source = pathOrSource;
    }
    try {
      return new SafetensorsFile(source, await parseSafetensorsHeader(source));
    } catch (e) {
      await source.close().catch(() => undefined);
      throw e;
    }
  }

  /** Tensor infos in file (offset) order. */
  get tensorsInFileOrder(): readonly SafetensorsTensorInfo[] {
    return this.#byOffset;
  }

  has(name: string): boolean {
    return this.#infos.has(name);
  }

  info(name: string): SafetensorsTensorInfo {
    const t = this.#infos.get(name);
    if (t === undefined) throw err("tensor_not_found", "no such tensor in this file", this.source.name, name);
    return t;
  }

  async read(name: string): Promise<Uint8Array> {
    const t = this.info(name);
    return readExact(this.source, t.byteOffset, t.byteLength);
  }

  async readInto(name: string, target: Uint8Array): Promise<void> {
    const t = this.info(name);
    if (target.byteLength !== t.byteLength) {
      throw err(
        "invalid_argument",
        `target buffer is ${target.byteLength} bytes, tensor is ${t.byteLength}`,
        this.source.name,
        name,
      );
    }
    try {
      await this.source.readInto(target, t.byteOffset);
    } catch (e) {
      if (e instanceof FormatsError && !(e instanceof SafetensorsError))
        throw new SafetensorsError(e.code, e.message, { file: this.source.name, tensor: name, cause: e });
      throw e;
    }
  }

  async readTyped<D extends SafetensorsDtype>(name: string, dtype?: D): Promise<DtypeArrays[D]> {
    const t = this.info(name);
    if (dtype !== undefined && dtype !== t.dtype)
      throw err("invalid_argument", `tensor is ${t.dtype}, not ${dtype}`, this.source.name, name);
    return viewAs(await this.read(name), t.dtype as D);
  }

  async *iterate(options: IterateOptions = {}): AsyncGenerator<TensorChunk<SafetensorsTensorInfo>> {
    const wanted = options.names === undefined ? undefined : new Set(options.names);
    if (wanted !== undefined) for (const n of wanted) this.info(n);
    let scratch: Uint8Array | undefined;
    for (const t of this.#byOffset) {
      if (wanted !== undefined && !wanted.has(t.name)) continue;
      let data: Uint8Array;
      if (options.reuseBuffer === true) {
        if (scratch === undefined || scratch.byteLength < t.byteLength)
          scratch = allocBytes(Math.max(t.byteLength, scratch === undefined ? 0 : scratch.byteLength * 2));
        data = scratch.subarray(0, t.byteLength);
        await this.readInto(t.name, data);
      } else {
        data = await this.read(t.name);
      }
      yield { info: t, data };
    }
  }

  iterateChunks(options: ChunkOptions = {}): AsyncGenerator<TensorPiece<SafetensorsTensorInfo>> {
    if (options.names !== undefined) for (const n of options.names) this.info(n);
    return iterateChunksOf(this.source, this.#byOffset, options, (e, tensor) =>
      e instanceof SafetensorsError
        ? e
        : new SafetensorsError(e.code, e.message, {
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

/** Opens one safetensors file for lazy reads. */
export function openSafetensors(pathOrSource: string | ByteSource): Promise<SafetensorsFile> {
  return SafetensorsFile.open(pathOrSource);
}
