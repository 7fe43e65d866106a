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
import { BLOCKSIZES_4BIT, Nf4Error, type QuantState4bit, type TensorRecords, unpackQuantState } from "@qlora/nf4";
import { Nf4WorkerPool } from "@qlora/nf4/node";
import {
  type Backend,
  availableBackends,
  type DType,
  Embedding,
  empty,
  type HostBuffer,
  Linear,
  Linear4bit,
  Module,
  RMSNorm,
  getBackend,
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
  /**
   * Receives the load's warnings (default: process warnings): checkpoint tensors the model did not use
   * (`QLORA_UNUSED_WEIGHTS`), and, once per process, no native backend registered while `backend` was not named,
   * so the model would run on the TypeScript reference backend (`QLORA_REFERENCE_BACKEND`).
   */
  onWarning?: (message: string) => void;
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

/** AutoGPTQ's quantize_config.json and AutoAWQ's quant_config.json mark quantized weights when config.json does not. */
async function refuseSideQuantization(dir: string, config: ModelConfig): Promise<void> {
  if (config.raw.quantization_config) return;
  for (const [file, method] of [
    ["quantize_config.json", "GPTQ"],
    ["quant_config.json", "AWQ"],
  ] as const) {
    const path = join(dir, file);
    if (await readJson(path, true))
      throw new ModelError(
        "unsupported_quantization",
        `${path}: the weights are ${method}-quantized, which is not supported; qlora loads dense checkpoints (F32/BF16/F16, quantized to NF4 on load) and bitsandbytes 4-bit ones: use the model's unquantized release`,
        { file: path },
      );
  }
}

/**
 * bitsandbytes 4-bit settings from config.json's quantization_config, or null when absent. Any other method (GPTQ,
 * AWQ, bitsandbytes 8-bit …) is refused by name: its tensors would otherwise fail one by one as missing or mistyped.
 */
function preQuantizedSettings(config: ModelConfig, file: string): Required<QuantizeOptions> | null {
  const q = config.raw.quantization_config as Record<string, unknown> | undefined | null;
  if (q === undefined || q === null) return null;
  const bnb4 = q.quant_method === "bitsandbytes" && (q.load_in_4bit ?? q._load_in_4bit);
  if (!bnb4) {
    const method = q.quant_method === "bitsandbytes" ? "bitsandbytes 8-bit" : JSON.stringify(q.quant_method ?? null);
    throw new ModelError(
      "unsupported_quantization",
      `${file}: quantization_config.quant_method ${method} is not supported; qlora loads dense checkpoints (F32/BF16/F16, quantized to NF4 on load) and bitsandbytes 4-bit ones: use the model's unquantized release`,
      { file, key: "quantization_config" },
    );
  }
  const skip = q.llm_int8_skip_modules;
  return {
    quantType: q.bnb_4bit_quant_type === "nf4" ? "nf4" : "fp4",
    blocksize: 64,
    doubleQuant: q.bnb_4bit_use_double_quant === true,
    skipModules: Array.isArray(skip) ? (skip as string[]) : ["lm_head"],
  };
}

const FLOAT_DTYPES: Record<string, DType> = { F32: "f32", BF16: "bf16", F16: "f16" };

/** Reads named tensors from the checkpoint with typed errors naming the file and key. */
class CheckpointReader {
  readonly used = new Set<string>();
  private readonly denseScratch = new Scratch();
  readonly backend: Backend;
  constructor(
    readonly st: ShardedSafetensors,
    readonly dir: string,
    backend: Backend | string | undefined,
  ) {
    this.backend = typeof backend === "string" ? getBackend(backend) : (backend ?? getBackend());
  }

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
  /**
   * A tensor kept as stored. On a host backend its bytes are read straight into the tensor's own buffer (no
   * scratch, no copy); otherwise into one reused buffer, then copied into backend memory.
   */
  async tensor(key: string, shape: number[]): Promise<Tensor> {
    this.require(key, shape);
    const dtype = this.dtype(key);
    const nbytes = this.st.info(key).byteLength;
    const t = empty(shape, { dtype, backend: this.backend });
    const data = (t.buffer as Partial<HostBuffer>).data;
    if (t.buffer.device === "cpu" && data !== undefined && data.byteLength === nbytes) {
      this.used.add(key);
      try {
        await this.st.readInto(key, new Uint8Array(data.buffer, data.byteOffset, nbytes));
      } catch (e) {
        t.dispose();
        throw e;
      }
      return t;
    }
    t.dispose();
    const read = await this.valuesInto(key, shape, this.denseScratch);
    const out = tensor(read.data, { shape, dtype, backend: this.backend });
    out.requiresGrad = false;
    return out;
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

/** The weight bytes of a leaf to quantize, as read, and how. */
interface QuantizeJob {
  data: Float32Array | Uint16Array;
  dtype: DType;
  shape: [number, number];
  quant: Required<QuantizeOptions>;
  bias: Tensor | null;
}

/**
 * Whether the backend quantizes natively. The reference backend's quantize4bit is @qlora/nf4 on the calling
 * thread, so for it (and backends without the op) big weights go to the worker pool instead.
 */
function nativeQuantizer(be: Backend): boolean {
  return be.quantize4bit !== undefined && be.name !== "reference";
}

/**
 * Turns read weights into Linear4bit layers: straight into backend buffers by the backend's own quantizer
 * when it has one (the cpu backend's native kernel: synchronous, on its thread pool, while the next tensor's
 * read runs in libuv's threads), else @qlora/nf4's quantize4bit on a worker pool for big weights (created
 * on first use, closed by `close`) and one copy into the backend.
 */
class Quantizer {
  private pool: Nf4WorkerPool | null = null;
  constructor(
    private readonly threads: number,
    private readonly backend: Backend,
  ) {}
  build(job: QuantizeJob): Linear4bit | Promise<Linear4bit> {
    const { quantType, blocksize, doubleQuant } = job.quant;
    const options = { bias: job.bias, backend: this.backend };
    if (nativeQuantizer(this.backend) || this.threads <= 1 || job.data.length < 1 << 20)
      return Linear4bit.quantize(job.data, {
        ...options,
        shape: job.shape,
        dtype: job.dtype as "f32" | "bf16" | "f16",
        quantType,
        blocksize,
        doubleQuant,
      });
    this.pool ??= new Nf4WorkerPool(this.threads);
    return this.pool
      .quantize(job.data, {
        quantType,
        blocksize,
        doubleQuant,
        shape: job.shape,
        dtype: job.dtype === "f32" ? "float32" : job.dtype === "bf16" ? "bfloat16" : "float16",
      })
      .then((state) => new Linear4bit(state, options));
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

/** A leaf whose tensors are read: `build` makes the module (quantizing, if it is a 4-bit linear). */
interface ReadLeaf {
  build(): Module | Promise<Module>;
  /** Frees what was read (when the load fails before `build`). */
  discard(): void;
}

/** Reads a leaf's tensors (weights to quantize into one of the two scratch buffers, the rest in place). */
async function readLeaf(ctx: BuildContext, s: LeafSpec): Promise<ReadLeaf> {
  const r = ctx.reader;
  const frozen = (m: Module) => {
    for (const p of m.parameters()) p.requiresGrad = false;
    return m;
  };
  const ready = (m: Module): ReadLeaf => ({ build: () => frozen(m), discard: () => m.dispose() });
  if (s.kind === "norm") return ready(new RMSNorm(s.dim, s.eps, { init: await r.tensor(`${s.path}.weight`, [s.dim]) }));
  if (s.kind === "embedding")
    return ready(new Embedding(s.vocab, s.dim, { init: await r.tensor(`${s.path}.weight`, [s.vocab, s.dim]) }));
  const wKey = `${s.path}.weight`;
  const shape: [number, number] = [s.outFeatures, s.inFeatures];
  const bias = s.bias ? await r.tensor(`${s.path}.bias`, [s.outFeatures]) : null;
  const qsKey = [`${wKey}.quant_state.bitsandbytes__nf4`, `${wKey}.quant_state.bitsandbytes__fp4`].find((k) =>
    r.has(k),
  );
  if (qsKey) {
    let state: QuantState4bit;
    try {
      state = unpackQuantState(await r.records(wKey), { prefix: `${s.path}.` });
    } catch (e) {
      bias?.dispose();
      if (!(e instanceof Nf4Error)) throw e;
      throw new ModelError("tensor_dtype", `${r.fileOf(wKey)}: "${wKey}": ${e.message}`, {
        file: r.fileOf(wKey),
        key: wKey,
      });
    }
    if (state.shape.join() !== shape.join()) {
      bias?.dispose();
      throw new ModelError(
        "tensor_shape",
        `${r.fileOf(qsKey)}: "${qsKey}" holds shape ${JSON.stringify(state.shape)}; config.json implies ${JSON.stringify(shape)}`,
        { file: r.fileOf(qsKey), key: qsKey },
      );
    }
    return ready(new Linear4bit(state, { bias, backend: r.backend }));
  }
  const quant = ctx.quant;
  if (quant && !isSkipped(s.path, quant.skipModules)) {
    let read: { data: Float32Array | Uint16Array; dtype: DType };
    try {
      read = await r.valuesInto(wKey, shape, ctx.scratch[ctx.turn++ % 2]);
    } catch (e) {
      bias?.dispose();
      throw e;
    }
    const job: QuantizeJob = { ...read, shape, quant, bias };
    return {
      build: () => {
        const m = ctx.quantizer.build(job);
        return m instanceof Module ? frozen(m) : m.then(frozen);
      },
      discard: () => bias?.dispose(),
    };
  }
  let weight: Tensor;
  try {
    weight = await r.tensor(wKey, shape);
  } catch (e) {
    bias?.dispose();
    throw e;
  }
  return ready(new Linear(s.inFeatures, s.outFeatures, { init: { weight, bias } }));
}

/**
 * Builds every leaf in order. Leaf i+1's read is started before leaf i is built, so reading overlaps
 * quantizing; weights to quantize alternate between two scratch buffers, and leaf i-1 is built before
 * leaf i+1's read starts, so a buffer is never read into while it is being quantized.
 */
async function buildLeaves(ctx: BuildContext, specs: LeafSpec[]): Promise<Map<string, Module>> {
  const leaves = new Map<string, Module>();
  let next: Promise<ReadLeaf> | null = specs.length > 0 ? readLeaf(ctx, specs[0]) : null;
  next?.catch(() => {});
  try {
    for (let i = 0; i < specs.length; i++) {
      const leaf = await next!;
      next = i + 1 < specs.length ? readLeaf(ctx, specs[i + 1]) : null;
      next?.catch(() => {}); // a failed read is handled when awaited; never an unhandled rejection meanwhile
      let m: Module;
      try {
        m = await leaf.build();
      } catch (e) {
        leaf.discard();
        throw e;
      }
      leaves.set(specs[i].path, m);
      ctx.onProgress?.(leaves.size, specs.length, specs[i].path);
    }
  } catch (e) {
    await next?.then(
      (l) => l.discard(),
      () => {},
    );
    for (const m of leaves.values()) m.dispose();
    throw e;
  }
  return leaves;
}

/** The `quantize` option checked before any weight is read, so an error names the option, not a kernel. */
function checkQuantize(q: Required<QuantizeOptions>): Required<QuantizeOptions> {
  const known = ["quantType", "blocksize", "doubleQuant", "skipModules"];
  for (const key of Object.keys(q))
    if (!known.includes(key)) {
      const near = known.find((n) => n.toLowerCase() === key.toLowerCase());
      throw new ModelError(
        "bad_argument",
        `loadModel: options.quantize.${key} is not a quantize option${near ? ` (did you mean "${near}"?)` : `; known: ${known.join(", ")}`}`,
        { key: `quantize.${key}` },
      );
    }
  const bad = (key: string, expected: string, got: unknown) =>
    new ModelError(
      "bad_argument",
      `loadModel: options.quantize.${key} must be ${expected}, got ${JSON.stringify(got)}`,
      {
        key: `quantize.${key}`,
      },
    );
  if (q.quantType !== "nf4" && q.quantType !== "fp4") throw bad("quantType", '"nf4" or "fp4"', q.quantType);
  if (!BLOCKSIZES_4BIT.includes(q.blocksize))
    throw bad("blocksize", `one of ${BLOCKSIZES_4BIT.join(", ")}`, q.blocksize);
  if (typeof q.doubleQuant !== "boolean") throw bad("doubleQuant", "a boolean", q.doubleQuant);
  if (!Array.isArray(q.skipModules) || q.skipModules.some((m) => typeof m !== "string"))
    throw bad("skipModules", "an array of module names", q.skipModules);
  return q;
}

/** Checkpoint tensors that are expected to go unused: rotary frequency buffers and a tied lm_head's copy. */
const BENIGN_UNUSED = /(^|\.)rotary_emb\.inv_freq$|^lm_head\.weight$/;

/**
 * Weights no module took mean config.json and the checkpoint disagree (fewer layers, another architecture): as
 * transformers does, say so rather than run a silently truncated model.
 */
function warnUnused(dir: string, unusedKeys: string[], onWarning: LoadOptions["onWarning"]): void {
  const unexpected = unusedKeys.filter((k) => !BENIGN_UNUSED.test(k));
  if (unexpected.length === 0) return;
  const shown = unexpected
    .slice(0, 3)
    .map((k) => `"${k}"`)
    .join(", ");
  const message =
    `loadModel: ${unexpected.length} tensor(s) of ${dir} were not used by the model its config.json describes ` +
    `(${shown}${unexpected.length > 3 ? ", …" : ""}); check num_hidden_layers and the architecture against the weights.`;
  if (onWarning) onWarning(message);
  else process.emitWarning(message, { code: "QLORA_UNUSED_WEIGHTS" });
}

let warnedReferenceOnly = false;

/** A model that lands on the reference backend only because nothing else was registered runs ~30x slower. */
function warnIfReferenceOnly(backend: Backend, onWarning: LoadOptions["onWarning"]): void {
  if (backend.name !== "reference" || availableBackends().length > 1) return;
  const message =
    "loadModel: no native backend is registered, so the model runs on the TypeScript reference backend (tens of " +
    'times slower). Call registerCpuBackend() from "@qlora/cpu-kernels" first, or pass backend: "reference" to ' +
    "choose it knowingly.";
  if (onWarning) {
    onWarning(message);
    return;
  }
  if (warnedReferenceOnly) return;
  warnedReferenceOnly = true;
  process.emitWarning(message, { code: "QLORA_REFERENCE_BACKEND" });
}

/**
 * Load a model directory, in eval mode (as transformers' from_pretrained; a training loop calls `model.train()`, as the
 * Trainer's fit does). Base weights are frozen (requiresGrad false); unfreeze what you train.
 */
export async function loadModel(dir: string, options: LoadOptions = {}): Promise<LoadedModel> {
  const configFile = join(dir, "config.json");
  const config = parseConfig(await readJson(configFile, false), configFile);
  await refuseSideQuantization(dir, config);
  const generationConfig = await readJson(join(dir, "generation_config.json"), true);
  // every setting is checked before a file is opened (a refused option leaves no open handle behind)
  const pre = preQuantizedSettings(config, configFile);
  const quant = pre ?? (options.quantize === false ? null : checkQuantize({ ...DEFAULT_QUANT, ...options.quantize }));
  // Missing/unreadable shards raise @qlora/formats' SafetensorsError, which names the file and tensor.
  const st = await openShardedSafetensors(dir);
  const reader = new CheckpointReader(st, dir, options.backend);
  if (options.backend === undefined) warnIfReferenceOnly(reader.backend, options.onWarning);
  const quantizer = new Quantizer(options.quantizeThreads ?? availableParallelism(), reader.backend);
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
  model.eval(); // as transformers' from_pretrained: training code switches to train() (the Trainer's fit does)
  const unusedKeys = st.names.filter((k) => !reader.used.has(k));
  warnUnused(dir, unusedKeys, options.onWarning);
  const quantization = pre ? heldQuantization(pre, leaves) : quant;
  return { model, config, generationConfig, quantization, preQuantized: pre !== null, unusedKeys };
}

/**
 * A pre-quantized checkpoint's settings as its tensors hold them: quantization_config has no block size (bitsandbytes
 * records it per tensor, in the quant_state), and the tensors are what a re-save or a merge must reproduce.
 */
function heldQuantization(pre: Required<QuantizeOptions>, leaves: Map<string, Module>): Required<QuantizeOptions> {
  const first = [...leaves.values()].find((m): m is Linear4bit => m instanceof Linear4bit);
  if (!first) return pre;
  const s = first.quantState;
  return { ...pre, quantType: s.quantType, blocksize: s.blocksize, doubleQuant: !(s.absmax instanceof Float32Array) };
}
