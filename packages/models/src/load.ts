/**
 * Loading a Hugging Face model directory: config.json, model.safetensors or a sharded index,
 * generation_config.json. Tensors are read one at a time (a positional read of exactly their bytes) and each
 * becomes its layer at once: linear weights are quantized to 4 bits on the spot (or adopted as they are when
 * the directory is a pre-quantized bitsandbytes checkpoint), the rest stay in the checkpoint's dtype.
 */
import { readFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { type ShardedSafetensors, openShardedSafetensors } from "@qlora/formats";
import {
  Nf4Error,
  type Quantize4bitOptions,
  type QuantState4bit,
  quantize4bit,
  type TensorRecords,
  unpackQuantState,
} from "@qlora/nf4";
import { Nf4WorkerPool } from "@qlora/nf4/node";
import {
  type Backend,
  type DType,
  Embedding,
  Linear,
  Linear4bit,
  Module,
  RMSNorm,
  type Tensor,
  tensor,
} from "@qlora/tensor";
import { type CausalLM, type CausalLMOptions, createModel } from "./causal-lm";
import { type ModelConfig, parseConfig } from "./config";
import { ModelError } from "./errors";
import { isSkipped, type LayerSource, type LinearLike, type QuantizeOptions } from "./layers";

export interface LoadOptions extends CausalLMOptions {
  /**
   * Quantize linear layers on load (default: NF4, blocksize 64, double quant, skip lm_head). `false` keeps
   * every weight dense in the checkpoint's dtype. Ignored for pre-quantized bitsandbytes directories.
   */
  quantize?: QuantizeOptions | false;
  backend?: Backend | string;
  /**
   * Worker threads quantizing big weights (default: os.availableParallelism(); 1 = on the calling thread).
   * Reading the next tensor overlaps the quantization of the current one either way.
   */
  quantizeThreads?: number;
  /** Called after each layer (embedding, linear, norm) is built: layers done, layers in all, and the layer's path. */
  onProgress?: (done: number, total: number, path: string) => void;
}

export interface LoadedModel {
  model: CausalLM;
  config: ModelConfig;
  /** generation_config.json as read, or null. */
  generationConfig: Record<string, unknown> | null;
  /** The 4-bit settings the linear layers hold (null when dense). */
  quantization: Required<QuantizeOptions> | null;
  /** Whether the directory held a bitsandbytes 4-bit checkpoint (loaded without re-quantizing). */
  preQuantized: boolean;
  /** Checkpoint tensors no module used (e.g. rotary inv_freq buffers, a tied lm_head copy). */
  unusedKeys: string[];
}

const DEFAULT_QUANT: Required<QuantizeOptions> = {
  quantType: "nf4",
  blocksize: 64,
  doubleQuant: true,
  skipModules: ["lm_head"],
};

async function readJson(file: string, optional: boolean): Promise<Record<string, unknown> | null> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    if (optional && (e as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw new ModelError("config_unreadable", `${file}: cannot read (${(e as Error).message})`, { file });
  }
  try {
    const v = JSON.parse(text);
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not a JSON object");
    return v;
  } catch (e) {
    throw new ModelError("config_unreadable", `${file}: not a JSON object (${(e as Error).message})`, { file });
  }
}

/** bitsandbytes 4-bit settings from config.json's quantization_config, or null when absent. */
function preQuantizedSettings(config: ModelConfig): Required<QuantizeOptions> | null {
  const q = config.raw.quantization_config as Record<string, unknown> | undefined;
  if (q?.quant_method === "bitsandbytes" && (q.load_in_4bit ?? q._load_in_4bit)) {
    const skip = q.llm_int8_skip_modules;
    return {
      quantType: q.bnb_4bit_quant_type === "nf4" ? "nf4" : "fp4",
      blocksize: 64,
      doubleQuant: q.bnb_4bit_use_double_quant === true,
      skipModules: Array.isArray(skip) ? (skip as string[]) : ["lm_head"],
    };
  }
  return null;
}

const FLOAT_DTYPES: Record<string, DType> = { F32: "f32", BF16: "bf16", F16: "f16" };

/** Reads named tensors from the checkpoint with typed errors naming the file and key. */
class CheckpointReader {
  readonly used = new Set<string>();
  private readonly denseScratch = new Scratch();
  constructor(
    readonly st: ShardedSafetensors,
    readonly dir: string,
    readonly backend: Backend | string | undefined,
  ) {}

  fileOf(key: string): string {
    return this.st.has(key)
      ? join(this.dir, this.st.shardOf(key))
      : (this.st.indexPath ?? join(this.dir, "model.safetensors"));
  }
  has(key: string): boolean {
    return this.st.has(key);
  }
  require(key: string, shape: number[]): void {
    if (!this.st.has(key))
      throw new ModelError("tensor_missing", `${this.fileOf(key)}: tensor "${key}" is missing from the checkpoint`, {
        file: this.fileOf(key),
        key,
      });
    const info = this.st.info(key);
    if (info.shape.join() !== shape.join())
      throw new ModelError(
        "tensor_shape",
        `${this.fileOf(key)}: "${key}" has shape ${JSON.stringify(info.shape)}; config.json implies ${JSON.stringify(shape)}`,
        { file: this.fileOf(key), key },
      );
  }
  dtype(key: string): DType {
    const d = FLOAT_DTYPES[this.st.info(key).dtype];
    if (!d)
      throw new ModelError(
        "tensor_dtype",
        `${this.fileOf(key)}: "${key}" is ${this.st.info(key).dtype}; expected F32, BF16 or F16`,
        { file: this.fileOf(key), key },
      );
    return d;
  }
  /** Raw values (Float32Array for F32, bit patterns for BF16/F16) read into `scratch` (reused: no garbage per tensor). */
  async valuesInto(
    key: string,
    shape: number[],
    scratch: Scratch,
  ): Promise<{ data: Float32Array | Uint16Array; dtype: DType }> {
    this.require(key, shape);
    const dtype = this.dtype(key);
    this.used.add(key);
    const nbytes = this.st.info(key).byteLength;
    const bytes = scratch.bytes(nbytes);
    await this.st.readInto(key, bytes);
    const data =
      dtype === "f32"
        ? new Float32Array(bytes.buffer, bytes.byteOffset, nbytes / 4)
        : new Uint16Array(bytes.buffer, bytes.byteOffset, nbytes / 2);
    return { data, dtype };
  }
  /** A tensor kept as stored: read into one reused buffer, then copied into backend memory (no garbage). */
  async tensor(key: string, shape: number[]): Promise<Tensor> {
    const { data, dtype } = await this.valuesInto(key, shape, this.denseScratch);
    const t = tensor(data, { shape, dtype, backend: this.backend });
    t.requiresGrad = false;
    return t;
  }
  /** Every `<base>` / `<base>.*` tensor as nf4 TensorRecords (a bitsandbytes 4-bit weight). */
  async records(base: string): Promise<TensorRecords> {
    const recs: TensorRecords = {};
    for (const key of this.st.names) {
      if (key !== base && !key.startsWith(`${base}.`)) continue;
      const info = this.st.info(key);
      if (!["U8", "F32", "BF16", "F16"].includes(info.dtype))
        throw new ModelError(
          "tensor_dtype",
          `${this.fileOf(key)}: "${key}" is ${info.dtype}; not a bitsandbytes 4-bit tensor`,
          {
            file: this.fileOf(key),
            key,
          },
        );
      recs[key] = { dtype: info.dtype as "U8", shape: [...info.shape], bytes: await this.st.read(key) };
      this.used.add(key);
    }
    return recs;
  }
}

/** A growable read buffer on a SharedArrayBuffer (worker threads read it without a copy). */
class Scratch {
  private buf = new Uint8Array(new SharedArrayBuffer(0));
  bytes(n: number): Uint8Array {
    if (this.buf.byteLength < n) this.buf = new Uint8Array(new SharedArrayBuffer(n));
    return this.buf.subarray(0, n);
  }
}

/** quantize4bit, on a worker pool for big weights (created on first use, closed by `close`). */
class Quantizer {
  private pool: Nf4WorkerPool | null = null;
  constructor(private readonly threads: number) {}
  quantize(data: Float32Array | Uint16Array, options: Quantize4bitOptions): Promise<QuantState4bit> {
    if (this.threads <= 1 || data.length < 1 << 20) return Promise.resolve(quantize4bit(data, options));
    this.pool ??= new Nf4WorkerPool(this.threads);
    return this.pool.quantize(data, options);
  }
  async close(): Promise<void> {
    await this.pool?.close();
  }
}

interface BuildContext {
  reader: CheckpointReader;
  quant: Required<QuantizeOptions> | null;
  quantizer: Quantizer;
  /** Two read buffers: one being read into while the other's quantization runs. */
  scratch: [Scratch, Scratch];
  turn: number;
  onProgress?: LoadOptions["onProgress"];
}

type LeafSpec =
  | { kind: "linear"; path: string; inFeatures: number; outFeatures: number; bias: boolean }
  | { kind: "norm"; path: string; dim: number; eps: number }
  | { kind: "embedding"; path: string; vocab: number; dim: number };

/** A stand-in leaf used only to learn which leaves a model needs (no tensors). */
class Placeholder extends Module {
  forward(x: Tensor): Tensor {
    return x;
  }
}

/** The leaves `createModel(config)` asks for, in construction order. */
function planLeaves(config: ModelConfig): LeafSpec[] {
  const specs: LeafSpec[] = [];
  const src = {
    linear: (path: string, inFeatures: number, outFeatures: number, bias: boolean) => {
      specs.push({ kind: "linear", path, inFeatures, outFeatures, bias });
      return new Placeholder();
    },
    norm: (path: string, dim: number, eps: number) => {
      specs.push({ kind: "norm", path, dim, eps });
      return new Placeholder() as unknown as RMSNorm;
    },
    embedding: (path: string, vocab: number, dim: number) => {
      specs.push({ kind: "embedding", path, vocab, dim });
      return new Placeholder() as unknown as Embedding;
    },
  };
  createModel(config, src);
  return specs;
}

/**
 * Reads a leaf's tensors and returns (once the reads are done) `done`, a promise of the finished module, so the caller
 * can read the next leaf while this one is being quantized.
 */
async function startLeaf(ctx: BuildContext, s: LeafSpec): Promise<{ done: Promise<Module> }> {
  const r = ctx.reader;
  const ready = (m: Module) => ({ done: Promise.resolve(m) });
  const frozen = (m: Module) => {
    for (const p of m.parameters()) p.requiresGrad = false;
    return m;
  };
  if (s.kind === "norm")
    return ready(frozen(new RMSNorm(s.dim, s.eps, { init: await r.tensor(`${s.path}.weight`, [s.dim]) })));
  if (s.kind === "embedding")
    return ready(frozen(new Embedding(s.vocab, s.dim, { init: await r.tensor(`${s.path}.weight`, [s.vocab, s.dim]) })));
  const wKey = `${s.path}.weight`;
  const shape = [s.outFeatures, s.inFeatures];
  const bias = s.bias ? await r.tensor(`${s.path}.bias`, [s.outFeatures]) : null;
  const qsKey = [`${wKey}.quant_state.bitsandbytes__nf4`, `${wKey}.quant_state.bitsandbytes__fp4`].find((k) =>
    r.has(k),
  );
  if (qsKey) {
    let state: QuantState4bit;
    try {
      state = unpackQuantState(await r.records(wKey), { prefix: `${s.path}.` });
    } catch (e) {
      if (!(e instanceof Nf4Error)) throw e;
      throw new ModelError("tensor_dtype", `${r.fileOf(wKey)}: "${wKey}": ${e.message}`, {
        file: r.fileOf(wKey),
        key: wKey,
      });
    }
    if (state.shape.join() !== shape.join())
      throw new ModelError(
        "tensor_shape",
        `${r.fileOf(qsKey)}: "${qsKey}" holds shape ${JSON.stringify(state.shape)}; config.json implies ${JSON.stringify(shape)}`,
        { file: r.fileOf(qsKey), key: qsKey },
      );
    return ready(frozen(new Linear4bit(state, { bias, backend: r.backend })));
  }
  const quant = ctx.quant;
  if (quant && !isSkipped(s.path, quant.skipModules)) {
    const { data, dtype } = await r.valuesInto(wKey, shape, ctx.scratch[ctx.turn++ % 2]);
    const pending = ctx.quantizer.quantize(data, {
      quantType: quant.quantType,
      blocksize: quant.blocksize,
      doubleQuant: quant.doubleQuant,
      shape,
      dtype: dtype === "f32" ? "float32" : dtype === "bf16" ? "bfloat16" : "float16",
    });
    return { done: pending.then((state) => frozen(new Linear4bit(state, { bias, backend: r.backend }))) };
  }
  const weight = await r.tensor(wKey, shape);
  return ready(frozen(new Linear(s.inFeatures, s.outFeatures, { init: { weight, bias } })));
}

/** Builds every leaf in order, reading leaf i+1 while leaf i is quantized (at most one in flight per buffer). */
async function buildLeaves(ctx: BuildContext, specs: LeafSpec[]): Promise<Map<string, Module>> {
  const leaves = new Map<string, Module>();
  let inflight: Promise<void> | null = null;
  try {
    for (const spec of specs) {
      const { done } = await startLeaf(ctx, spec);
      // the previous leaf's buffer is reused by the next read: wait for its quantization first
      if (inflight) await inflight;
      inflight = done.then((m) => {
        leaves.set(spec.path, m);
        ctx.onProgress?.(leaves.size, specs.length, spec.path);
      });
    }
    if (inflight) await inflight;
  } catch (e) {
    await inflight?.catch(() => {});
    for (const m of leaves.values()) m.dispose();
    throw e;
  }
  return leaves;
}

/**
 * Load a model directory. Base weights are frozen (requiresGrad false); unfreeze what you train.
 */
export async function loadModel(dir: string, options: LoadOptions = {}): Promise<LoadedModel> {
  const configFile = join(dir, "config.json");
  const config = parseConfig(await readJson(configFile, false), configFile);
  const generationConfig = await readJson(join(dir, "generation_config.json"), true);
  // Missing/unreadable shards raise @qlora/formats' SafetensorsError, which names the file and tensor.
  const st = await openShardedSafetensors(dir);
  const pre = preQuantizedSettings(config);
  const quant = pre ?? (options.quantize === false ? null : { ...DEFAULT_QUANT, ...options.quantize });
  const reader = new CheckpointReader(st, dir, options.backend);
  const quantizer = new Quantizer(options.quantizeThreads ?? availableParallelism());
  const ctx: BuildContext = {
    reader,
    quant,
    quantizer,
    scratch: [new Scratch(), new Scratch()],
    turn: 0,
    onProgress: options.onProgress,
  };
  let leaves: Map<string, Module>;
  try {
    leaves = await buildLeaves(ctx, planLeaves(config));
  } finally {
    await quantizer.close();
    await st.close();
  }
  const take = <M>(path: string) => leaves.get(path) as M;
  const src: LayerSource = {
    linear: (path) => take<LinearLike>(path),
    norm: (path) => take<RMSNorm>(path),
    embedding: (path) => take<Embedding>(path),
  };
  const model = createModel(config, src, options);
  const unusedKeys = st.names.filter((k) => !reader.used.has(k));
  return { model, config, generationConfig, quantization: quant, preQuantized: pre !== null, unusedKeys };
}
