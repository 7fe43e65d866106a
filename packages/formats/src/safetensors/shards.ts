import type { Stats } from "node:fs";
import { readFile, stat, readdir, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import { SafetensorsError } from "../errors";
import { AtomicFile, type AtomicWriteOptions } from "../atomic";
import { ensureDirectory } from "../directory";
import { parseStrictJson, JsonSyntaxError, type JsonValue } from "../internal/json";
import { dtypeSize, elementCount, type SafetensorsDtype } from "./dtype";
import {
  SafetensorsFile,
  SAFETENSORS_MAX_HEADER_SIZE,
  type ChunkOptions,
  type IterateOptions,
  type SafetensorsReader,
  type SafetensorsTensorInfo,
  type TensorChunk,
  type TensorPiece,
} from "./reader";
import { SafetensorsWriter, type SafetensorsTensorData, type SafetensorsTensorDecl } from "./writer";
import { viewAs, type DtypeArrays } from "../view";

export interface SafetensorsIndex {
  /** The index's `metadata` object; `total_size` when present is a non-negative integer. */
  readonly metadata: Readonly<Record<string, unknown>>;
  /** tensor name → shard file name (relative to the index's directory), in index order. */
  readonly weightMap: ReadonlyMap<string, string>;
}

const SHARD_NAME_OK = /^[^/\\\0]+$/;

/** Parses and validates `model.safetensors.index.json` text. */
export function parseSafetensorsIndex(text: string, file = "<index>"): SafetensorsIndex {
  let json: JsonValue;
  try {
    json = parseStrictJson(text);
  } catch (e) {
    if (e instanceof JsonSyntaxError)
      throw new SafetensorsError("index_json", `index is not valid JSON: ${e.message}`, { file });
    throw e;
  }
  if (!(json instanceof Map)) throw new SafetensorsError("index_json", "index must be a JSON object", { file });
  const wm = json.get("weight_map");
  if (wm === undefined) throw new SafetensorsError("index_missing_weight_map", 'index has no "weight_map"', { file });
  if (!(wm instanceof Map))
    throw new SafetensorsError(
      "index_json",
      '"weight_map" must be an object mapping tensor names to shard file names',
      { file },
    );
  const weightMap = new Map<string, string>();
  for (const [name, shard] of wm) {
    if (typeof shard !== "string" || !SHARD_NAME_OK.test(shard) || shard === "." || shard === "..") {
      throw new SafetensorsError(
        "index_json",
        `weight_map entry must be a plain file name in the index's directory, got ${JSON.stringify(shard)}`,
        { file, tensor: name },
      );
    }
    weightMap.set(name, shard);
  }
  const metadata: Record<string, unknown> = {};
  const md = json.get("metadata");
  if (md !== undefined && md !== null) {
    if (!(md instanceof Map)) throw new SafetensorsError("index_json", '"metadata" must be an object', { file });
    for (const [k, v] of md) Object.defineProperty(metadata, k, { value: v, enumerable: true });
    const ts = md.get("total_size");
    if (ts !== undefined && (typeof ts !== "number" || !Number.isSafeInteger(ts) || ts < 0)) {
      throw new SafetensorsError(
        "index_json",
        `metadata.total_size must be a non-negative integer, got ${JSON.stringify(ts)}`,
        { file },
      );
    }
  }
  return { metadata, weightMap };
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/** A set of safetensors shards behind an index, read lazily: only headers are read on open. */
export class ShardedSafetensors implements SafetensorsReader {
  /** The index file, or undefined for a directory holding a single `model.safetensors`. */
  readonly indexPath: string | undefined;
  readonly index: SafetensorsIndex;
  readonly shards: ReadonlyMap<string, SafetensorsFile>;
  readonly names: readonly string[];

  private constructor(indexPath: string | undefined, index: SafetensorsIndex, shards: Map<string, SafetensorsFile>) {
    this.indexPath = indexPath;
    this.index = index;
    this.shards = shards;
    this.names = [...index.weightMap.keys()];
  }

  /**
   * Opens a sharded checkpoint from a directory (its `*.safetensors.index.json`, or a lone
   * `model.safetensors`) or from an index file path. Every shard's header is validated and
   * checked against the weight map (missing shards, tensors in the wrong shard, unlisted tensors).
   */
  static async open(path: string): Promise<ShardedSafetensors> {
    let st: Stats;
    try {
      st = await stat(path);
    } catch (e) {
      throw new SafetensorsError("io", `cannot stat: ${(e as Error).message}`, { file: path, cause: e });
    }
    let indexPath: string;
    if (st.isDirectory()) {
      const preferred = join(path, "model.safetensors.index.json");
      if (await exists(preferred)) indexPath = preferred;
      else {
        const entries = (await readdir(path)).filter((f) => f.endsWith(".safetensors.index.json"));
        if (entries.length === 1) indexPath = join(path, entries[0]);
        else if (entries.length > 1)
          throw new SafetensorsError(
            "index_json",
            `several index files (${entries.join(", ")}); open one of them explicitly`,
            { file: path },
          );
        else if (await exists(join(path, "model.safetensors"))) {
          const f = await SafetensorsFile.open(join(path, "model.safetensors"));
          const weightMap = new Map(f.names.map((n) => [n, "model.safetensors"]));
          return new ShardedSafetensors(undefined, { metadata: {}, weightMap }, new Map([["model.safetensors", f]]));
        } else
          throw new SafetensorsError(
            "shard_missing",
            "directory has neither a *.safetensors.index.json nor a model.safetensors",
            { file: path },
          );
      }
    } else indexPath = path;

    let text: string;
    try {
      const s = await stat(indexPath);
      if (s.size > SAFETENSORS_MAX_HEADER_SIZE)
        throw new SafetensorsError(
          "index_json",
          `index is ${s.size} bytes, above the ${SAFETENSORS_MAX_HEADER_SIZE}-byte limit`,
          { file: indexPath },
        );
      text = new TextDecoder("utf-8", { fatal: true }).decode(await readFile(indexPath));
    } catch (e) {
      if (e instanceof SafetensorsError) throw e;
      throw new SafetensorsError("index_json", `cannot read index: ${(e as Error).message}`, {
        file: indexPath,
        cause: e,
      });
    }
    const index = parseSafetensorsIndex(text, indexPath);
    const dir = dirname(indexPath);
    const shards = new Map<string, SafetensorsFile>();
    try {
      for (const shard of new Set(index.weightMap.values())) {
        const p = join(dir, shard);
        if (!(await exists(p)))
          throw new SafetensorsError(
            "shard_missing",
            `shard ${JSON.stringify(shard)} named in the weight_map does not exist`,
            { file: indexPath, tensor: [...index.weightMap].find(([, s]) => s === shard)![0] },
          );
        shards.set(shard, await SafetensorsFile.open(p));
      }
      for (const [name, shard] of index.weightMap) {
        if (!shards.get(shard)!.has(name)) {
          const actual = [...shards].find(([, f]) => f.has(name))?.[0];
          throw new SafetensorsError(
            "wrong_shard",
            `weight_map puts it in ${JSON.stringify(shard)}, which does not contain it${actual === undefined ? "" : ` (it is in ${JSON.stringify(actual)})`}`,
            { file: indexPath, tensor: name },
          );
        }
      }
      for (const [shard, f] of shards) {
        for (const name of f.names) {
          const listed = index.weightMap.get(name);
          if (listed === undefined)
            throw new SafetensorsError(
              "unlisted_tensor",
              `shard ${JSON.stringify(shard)} contains a tensor the weight_map does not list`,
              { file: join(dir, shard), tensor: name },
            );
          if (listed !== shard)
            throw new SafetensorsError(
              "wrong_shard",
              `also present in ${JSON.stringify(shard)} although the weight_map puts it in ${JSON.stringify(listed)}`,
              { file: join(dir, shard), tensor: name },
            );
        }
      }
    } catch (e) {
      await Promise.all([...shards.values()].map((f) => f.close().catch(() => undefined)));
      throw e;
    }
    return new ShardedSafetensors(indexPath, index, shards);
  }

  /** `__metadata__` of the first shard (Hugging Face writes the same into every shard). */
  get metadata(): Readonly<Record<string, string>> {
    const first = this.shards.values().next();
    return first.done === true ? {} : first.value.metadata;
  }

  /** Sum of tensor byte sizes (what `metadata.total_size` should say). */
  get totalSize(): number {
    let s = 0;
    for (const f of this.shards.values()) for (const n of f.names) s += f.info(n).byteLength;
    return s;
  }

  has(name: string): boolean {
    return this.index.weightMap.has(name);
  }

  shardOf(name: string): string {
    const s = this.index.weightMap.get(name);
    if (s === undefined)
      throw new SafetensorsError("tensor_not_found", "no such tensor in the weight_map", {
        file: this.indexPath,
        tensor: name,
      });
    return s;
  }

  #file(name: string): SafetensorsFile {
    return this.shards.get(this.shardOf(name))!;
  }

  info(name: string): SafetensorsTensorInfo {
    return this.#file(name).info(name);
  }

  read(name: string): Promise<Uint8Array> {
    return this.#file(name).read(name);
  }

  readInto(name: string, target: Uint8Array): Promise<void> {
    return this.#file(name).readInto(name, target);
  }

  async readTyped<D extends SafetensorsDtype>(name: string, dtype?: D): Promise<DtypeArrays[D]> {
    const t = this.info(name);
    if (dtype !== undefined && dtype !== t.dtype)
      throw new SafetensorsError("invalid_argument", `tensor is ${t.dtype}, not ${dtype}`, { tensor: name });
    return viewAs(await this.read(name), t.dtype as D);
  }

  /** Shard by shard (sorted by file name), each in file order. */
  async *iterate(options: IterateOptions = {}): AsyncGenerator<TensorChunk<SafetensorsTensorInfo>> {
    if (options.names !== undefined) for (const n of options.names) this.shardOf(n);
    const wanted = options.names === undefined ? undefined : new Set(options.names);
    for (const shard of [...this.shards.keys()].sort()) {
      const f = this.shards.get(shard)!;
      const names = wanted === undefined ? undefined : f.names.filter((n) => wanted.has(n));
      if (names !== undefined && names.length === 0) continue;
      yield* f.iterate({ ...options, names });
    }
  }

  /** Shard by shard (sorted by file name), each in file order, in pieces of at most `chunkSize` bytes. */
  async *iterateChunks(options: ChunkOptions = {}): AsyncGenerator<TensorPiece<SafetensorsTensorInfo>> {
    if (options.names !== undefined) for (const n of options.names) this.shardOf(n);
    const wanted = options.names === undefined ? undefined : new Set(options.names);
    for (const shard of [...this.shards.keys()].sort()) {
      const f = this.shards.get(shard)!;
      const names = wanted === undefined ? undefined : f.names.filter((n) => wanted.has(n));
      if (names !== undefined && names.length === 0) continue;
      yield* f.iterateChunks({ ...options, names });
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.shards.values()].map((f) => f.close()));
  }
}

export function openShardedSafetensors(path: string): Promise<ShardedSafetensors> {
  return ShardedSafetensors.open(path);
}

/** "5GB" (10^9), "500MiB" (2^20), or a byte count. Mirrors Hugging Face's `max_shard_size`. */
export function parseShardSize(size: number | string): number {
  if (typeof size === "number") {
    if (!Number.isSafeInteger(size) || size <= 0)
      throw new SafetensorsError("invalid_argument", `maxShardSize must be a positive integer, got ${size}`);
    return size;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$/i.exec(size);
  if (m === null)
    throw new SafetensorsError(
      "invalid_argument",
      `cannot parse maxShardSize ${JSON.stringify(size)} (expected e.g. "5GB", "500MiB" or a byte count)`,
    );
  const unit = (m[2] ?? "B").toUpperCase();
  const pow = { B: 0, KB: 1, MB: 2, GB: 3, TB: 4, KIB: 1, MIB: 2, GIB: 3, TIB: 4 }[unit]!;
  const base = unit.includes("I") ? 1024 : 1000;
  return parseShardSize(Math.floor(Number(m[1]) * base ** pow));
}

/**
 * Greedy split in declaration order, as `huggingface_hub.split_torch_state_dict_into_shards`:
 * a tensor starts a new shard when adding it would exceed the limit; a tensor larger than
 * the limit sits alone in its own shard.
 */
export function planShards(
  decls: readonly SafetensorsTensorDecl[],
  maxShardSize: number | string,
): SafetensorsTensorDecl[][] {
  const max = parseShardSize(maxShardSize);
  const shards: SafetensorsTensorDecl[][] = [];
  let cur: SafetensorsTensorDecl[] = [];
  let size = 0;
  for (const d of decls) {
    const n = elementCount(d.shape);
    if (n === undefined)
      throw new SafetensorsError("bad_shape", `shape ${JSON.stringify(d.shape)} must be non-negative integers`, {
        tensor: d.name,
      });
    const bytes = n * dtypeSize(d.dtype);
    if (cur.length > 0 && size + bytes > max) {
      shards.push(cur);
      cur = [];
      size = 0;
    }
    cur.push(d);
    size += bytes;
  }
  if (cur.length > 0 || shards.length === 0) shards.push(cur);
  return shards;
}

export interface ShardedWriteOptions extends AtomicWriteOptions {
  /** Default "5GB", as transformers' save_pretrained. */
  maxShardSize?: number | string;
  /** `__metadata__` written into every shard (Hugging Face uses {format: "pt"}). */
  metadata?: Readonly<Record<string, string>>;
  /** File name prefix, default "model" → model-00001-of-00003.safetensors + model.safetensors.index.json. */
  prefix?: string;
}

/**
 * Streaming sharded writer: declare every tensor first, then write bytes in declaration order
 * (chunks allowed). Shards are written one at a time, each atomically; the index is written
 * last. A single shard is written as `<prefix>.safetensors` with no index, as Hugging Face does.
 */
export class ShardedSafetensorsWriter {
  readonly dir: string;
  /** Shard file names, in order. */
  readonly files: readonly string[];
  readonly indexFile: string | undefined;
  readonly #plan: SafetensorsTensorDecl[][];
  readonly #options: ShardedWriteOptions;
  readonly #shardOf = new Map<string, { shard: number; bytes: number }>();
  #shard = -1;
  #writer: SafetensorsWriter | undefined;
  #done = false;

  private constructor(dir: string, plan: SafetensorsTensorDecl[][], options: ShardedWriteOptions) {
    this.dir = dir;
    this.#plan = plan;
    this.#options = options;
    plan.forEach((decls, shard) => {
      for (const d of decls) this.#shardOf.set(d.name, { shard, bytes: elementCount(d.shape)! * dtypeSize(d.dtype) });
    });
    const prefix = options.prefix ?? "model";
    const n = plan.length;
    const pad = (i: number): string => String(i).padStart(5, "0");
    this.files =
      n === 1 ? [`${prefix}.safetensors`] : plan.map((_, i) => `${prefix}-${pad(i + 1)}-of-${pad(n)}.safetensors`);
    this.indexFile = n === 1 ? undefined : `${prefix}.safetensors.index.json`;
  }

  static async create(
    dir: string,
    decls: readonly SafetensorsTensorDecl[],
    options: ShardedWriteOptions = {},
  ): Promise<ShardedSafetensorsWriter> {
    const names = new Set<string>();
    for (const d of decls) {
      if (names.has(d.name)) throw new SafetensorsError("duplicate_name", "declared twice", { tensor: d.name });
      names.add(d.name);
    }
    const plan = planShards(decls, options.maxShardSize ?? "5GB");
    await ensureDirectory(dir); // a directory of shards, like save_pretrained: created if missing
    const w = new ShardedSafetensorsWriter(dir, plan, options);
    await w.#advance();
    return w;
  }

  async #advance(): Promise<void> {
    while (this.#writer === undefined || this.#writer.next === undefined) {
      if (this.#writer !== undefined) {
        await this.#writer.finish();
        this.#writer = undefined;
      }
      if (this.#shard + 1 >= this.#plan.length) return;
      this.#shard++;
      this.#writer = await SafetensorsWriter.create(
        join(this.dir, this.files[this.#shard]),
        this.#plan[this.#shard],
        this.#options.metadata,
        this.#options,
      );
    }
  }

  get next(): string | undefined {
    return this.#writer?.next;
  }

  async writeChunk(name: string, chunk: ArrayBufferView): Promise<void> {
    if (this.#done)
      throw new SafetensorsError("writer_closed", "write after finish/abort", { file: this.dir, tensor: name });
    if (this.#writer === undefined)
      throw new SafetensorsError("write_order", "all declared tensors are already written", {
        file: this.dir,
        tensor: name,
      });
    await this.#writer.writeChunk(name, chunk);
    await this.#advance();
  }

  async writeTensor(name: string, data: ArrayBufferView): Promise<void> {
    if (this.#done)
      throw new SafetensorsError("writer_closed", "write after finish/abort", { file: this.dir, tensor: name });
    const where = this.#shardOf.get(name);
    if (where !== undefined && (where.shard < this.#shard || this.#writer === undefined)) {
      // Only legal for empty tensors, which the shard writers skip.
      if (where.bytes === 0 && data.byteLength === 0) return;
      throw new SafetensorsError("write_order", "tensor was already written", { file: this.dir, tensor: name });
    }
    if (this.#writer === undefined)
      throw new SafetensorsError("write_order", "all declared tensors are already written", {
        file: this.dir,
        tensor: name,
      });
    await this.#writer.writeTensor(name, data);
    await this.#advance();
  }

  /** Finishes the last shard and writes the index (sorted keys, indent 2, as Hugging Face). */
  async finish(): Promise<void> {
    if (this.#done) throw new SafetensorsError("writer_closed", "finish after finish/abort", { file: this.dir });
    if (this.#writer !== undefined) {
      const next = this.#writer.next;
      await this.abort();
      throw new SafetensorsError("write_incomplete", "finish() before every declared tensor was written", {
        file: this.dir,
        tensor: next,
      });
    }
    this.#done = true;
    if (this.indexFile !== undefined) await this.#writeIndex();
    await removeStaleShards(
      this.dir,
      [...this.files, ...(this.indexFile ? [this.indexFile] : [])],
      this.#options.prefix,
    );
  }

  async #writeIndex(): Promise<void> {
    let total = 0;
    const entries: [string, string][] = [];
    for (const [name, { shard, bytes }] of this.#shardOf) {
      total += bytes;
      entries.push([name, this.files[shard]]);
    }
    entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const weightMap: Record<string, string> = {};
    for (const [k, v] of entries) Object.defineProperty(weightMap, k, { value: v, enumerable: true });
    const text = `${JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2)}\n`;
    const f = await AtomicFile.create(join(this.dir, this.indexFile!), this.#options);
    try {
      await f.write(new TextEncoder().encode(text));
      await f.commit();
    } catch (e) {
      await f.abort();
      throw e;
    }
  }

  async abort(): Promise<void> {
    this.#done = true;
    const w = this.#writer;
    this.#writer = undefined;
    if (w !== undefined) await w.abort();
  }
}

/**
 * Deletes the weight files of an earlier save in `dir` that `written` does not name: `<prefix>.safetensors`,
 * `<prefix>-NNNNN-of-NNNNN.safetensors` and `<prefix>.safetensors.index.json`, as transformers' save_pretrained
 * cleans its folder. Without this, a single-file save over a sharded one leaves the old index (which loaders read
 * first) pointing at the old weights, and a sharded save over a single file leaves a model.safetensors that
 * transformers prefers to the new index. Returns the names removed.
 */
export async function removeStaleShards(dir: string, written: readonly string[], prefix = "model"): Promise<string[]> {
  const esc = prefix.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const weightFile = new RegExp(`^${esc}(-\\d{5}-of-\\d{5})?\\.safetensors(\\.index\\.json)?$`);
  const keep = new Set(written);
  const removed: string[] = [];
  for (const f of await readdir(dir)) {
    if (keep.has(f) || !weightFile.test(f)) continue;
    await unlink(join(dir, f));
    removed.push(f);
  }
  return removed;
}

/** Writes tensors as Hugging Face-style shards plus index; returns the file names written. */
export async function writeShardedSafetensors(
  dir: string,
  tensors: readonly SafetensorsTensorData[],
  options: ShardedWriteOptions = {},
): Promise<{ files: readonly string[]; indexFile: string | undefined }> {
  const w = await ShardedSafetensorsWriter.create(dir, tensors, options);
  try {
    for (const t of tensors) await w.writeTensor(t.name, t.data);
    await w.finish();
  } catch (e) {
    await w.abort();
    throw e;
  }
  return { files: w.files, indexFile: w.indexFile };
}
