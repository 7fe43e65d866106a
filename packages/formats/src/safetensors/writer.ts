import { SafetensorsError } from "../errors";
import { AtomicFile, type AtomicWriteOptions } from "../atomic";
import { dtypeSize, elementCount, isSafetensorsDtype, type SafetensorsDtype } from "./dtype";

export interface SafetensorsTensorDecl {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
}

export interface SafetensorsTensorData extends SafetensorsTensorDecl {
  /** Raw little-endian bytes (any ArrayBufferView is taken by its bytes). */
  readonly data: ArrayBufferView;
}

export interface SafetensorsLayout {
  /** The full header including the 8-byte length prefix and space padding. */
  readonly header: Uint8Array;
  /** Per tensor, in declaration order: byte length and [begin, end) data offsets. */
  readonly tensors: readonly { name: string; byteLength: number; begin: number; end: number }[];
  readonly dataLength: number;
}

function bytesOf(v: ArrayBufferView): Uint8Array {
  return v instanceof Uint8Array ? v : new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

/**
 * Validates declarations and builds the header: `{"__metadata__":…, name:{dtype,shape,data_offsets}…}`
 * in declaration order, data contiguous in that order, padded with spaces to a multiple of 8.
 */
export function layoutSafetensors(
  decls: readonly SafetensorsTensorDecl[],
  metadata?: Readonly<Record<string, string>>,
  file = "<memory>",
): SafetensorsLayout {
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) {
    const m: Record<string, string> = {};
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string")
        throw new SafetensorsError("bad_metadata", `metadata value for ${JSON.stringify(k)} must be a string`, {
          file,
        });
      m[k] = v;
    }
    header.__metadata__ = m;
  }
  const seen = new Set<string>();
  const tensors: { name: string; byteLength: number; begin: number; end: number }[] = [];
  let offset = 0;
  for (const d of decls) {
    if (typeof d.name !== "string" || d.name === "__metadata__")
      throw new SafetensorsError("invalid_argument", `tensor name ${JSON.stringify(d.name)} is not allowed`, { file });
    if (seen.has(d.name)) throw new SafetensorsError("duplicate_name", "declared twice", { file, tensor: d.name });
    seen.add(d.name);
    if (!isSafetensorsDtype(d.dtype))
      throw new SafetensorsError("unknown_dtype", `unknown dtype ${JSON.stringify(d.dtype)}`, { file, tensor: d.name });
    const count = Array.isArray(d.shape) ? elementCount(d.shape) : undefined;
    if (count === undefined)
      throw new SafetensorsError("bad_shape", `shape ${JSON.stringify(d.shape)} must be non-negative integers`, {
        file,
        tensor: d.name,
      });
    const byteLength = count * dtypeSize(d.dtype);
    tensors.push({ name: d.name, byteLength, begin: offset, end: offset + byteLength });
    Object.defineProperty(header, d.name, {
      value: { dtype: d.dtype, shape: [...d.shape], data_offsets: [offset, offset + byteLength] },
      enumerable: true,
      writable: true,
      configurable: true,
    });
    offset += byteLength;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = json.byteLength + ((8 - (json.byteLength % 8)) % 8);
  const out = new Uint8Array(8 + padded);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.byteLength);
  return { header: out, tensors, dataLength: offset };
}

/** Builds a whole safetensors file in memory (small files, tests). */
export function serializeSafetensors(
  tensors: readonly SafetensorsTensorData[],
  metadata?: Readonly<Record<string, string>>,
): Uint8Array {
  const layout = layoutSafetensors(tensors, metadata);
  const out = new Uint8Array(layout.header.byteLength + layout.dataLength);
  out.set(layout.header, 0);
  tensors.forEach((t, i) => {
    const bytes = bytesOf(t.data);
    const l = layout.tensors[i];
    if (bytes.byteLength !== l.byteLength)
      throw new SafetensorsError(
        "size_mismatch",
        `data is ${bytes.byteLength} bytes, shape × dtype needs ${l.byteLength}`,
        { tensor: t.name },
      );
    out.set(bytes, layout.header.byteLength + l.begin);
  });
  return out;
}

/**
 * Streaming writer: tensors are declared up front (so the header can be written first),
 * then their bytes are written in declaration order, each tensor in one or more chunks.
 * The file appears under its final name only after `finish()` (temp file, fsync, rename).
 */
export class SafetensorsWriter {
  readonly path: string;
  readonly #file: AtomicFile;
  readonly #layout: SafetensorsLayout;
  readonly #sizes: Map<string, number>;
  #index = 0; // current tensor
  #written = 0; // bytes of the current tensor written so far
  #done = false;

  private constructor(path: string, file: AtomicFile, layout: SafetensorsLayout) {
    this.path = path;
    this.#file = file;
    this.#layout = layout;
    this.#sizes = new Map(layout.tensors.map((t) => [t.name, t.byteLength]));
  }

  static async create(
    path: string,
    tensors: readonly SafetensorsTensorDecl[],
    metadata?: Readonly<Record<string, string>>,
    options: AtomicWriteOptions = {},
  ): Promise<SafetensorsWriter> {
    const layout = layoutSafetensors(tensors, metadata, path);
    const file = await AtomicFile.create(path, options);
    const w = new SafetensorsWriter(path, file, layout);
    try {
      await file.write(layout.header);
      w.#skipEmpty();
    } catch (e) {
      await file.abort();
      throw e;
    }
    return w;
  }

  /** Name of the tensor whose bytes are expected next, or undefined when all are written. */
  get next(): string | undefined {
    return this.#layout.tensors[this.#index]?.name;
  }

  #skipEmpty(): void {
    while (this.#index < this.#layout.tensors.length && this.#layout.tensors[this.#index].byteLength === 0)
      this.#index++;
  }

  /** Appends bytes to `name`, which must be the tensor currently being written. */
  async writeChunk(name: string, chunk: ArrayBufferView): Promise<void> {
    if (this.#done)
      throw new SafetensorsError("writer_closed", "write after finish/abort", { file: this.path, tensor: name });
    const cur = this.#layout.tensors[this.#index];
    if (cur === undefined || cur.name !== name) {
      const declared = this.#layout.tensors.some((t) => t.name === name);
      throw new SafetensorsError(
        "write_order",
        declared
          ? `tensors must be written in declaration order; expected ${cur === undefined ? "no more data" : JSON.stringify(cur.name)}`
          : "tensor was not declared",
        { file: this.path, tensor: name },
      );
    }
    const bytes = bytesOf(chunk);
    if (this.#written + bytes.byteLength > cur.byteLength) {
      throw new SafetensorsError(
        "size_mismatch",
        `chunk of ${bytes.byteLength} bytes after ${this.#written} would exceed the tensor's ${cur.byteLength} bytes`,
        { file: this.path, tensor: name },
      );
    }
    await this.#file.write(bytes);
    this.#written += bytes.byteLength;
    if (this.#written === cur.byteLength) {
      this.#index++;
      this.#written = 0;
      this.#skipEmpty();
    }
  }

  /** Writes a whole tensor at once (it must be next and not yet started). */
  async writeTensor(name: string, data: ArrayBufferView): Promise<void> {
    if (this.#sizes.get(name) === 0) {
      if (data.byteLength !== 0)
        throw new SafetensorsError("size_mismatch", `data is ${data.byteLength} bytes, the tensor is empty`, {
          file: this.path,
          tensor: name,
        });
      return;
    }
    const cur = this.#layout.tensors[this.#index];
    if (cur !== undefined && cur.name === name && (this.#written !== 0 || data.byteLength !== cur.byteLength)) {
      throw new SafetensorsError(
        "size_mismatch",
        `data is ${data.byteLength} bytes, shape × dtype needs ${cur.byteLength}${this.#written !== 0 ? " (and the tensor was already partly written)" : ""}`,
        { file: this.path, tensor: name },
      );
    }
    await this.writeChunk(name, data);
  }

  /** Checks every tensor is complete, then fsyncs and renames into place. */
  async finish(): Promise<void> {
    if (this.#done) throw new SafetensorsError("writer_closed", "finish after finish/abort", { file: this.path });
    if (this.#index < this.#layout.tensors.length) {
      const cur = this.#layout.tensors[this.#index];
      await this.abort();
      throw new SafetensorsError(
        "write_incomplete",
        `finish() with ${cur.byteLength - this.#written} bytes of this tensor (and ${this.#layout.tensors.length - this.#index - 1} later tensors) unwritten; nothing was written under the final name`,
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

/** Writes a complete safetensors file atomically (every tensor's bytes given up front). */
export async function writeSafetensors(
  path: string,
  tensors: readonly SafetensorsTensorData[],
  metadata?: Readonly<Record<string, string>>,
  options: AtomicWriteOptions = {},
): Promise<void> {
  const w = await SafetensorsWriter.create(path, tensors, metadata, options);
  try {
    for (const t of tensors) await w.writeTensor(t.name, t.data);
    await w.finish();
  } catch (e) {
    await w.abort();
    throw e;
  }
}
