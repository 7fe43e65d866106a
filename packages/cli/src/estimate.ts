/**
 * `qlora estimate`: a memory plan for a QLoRA/LoRA run from a Hugging Face config.json, itemised like the QLoRA
 * paper's table (base weights, non-quantized tensors, adapters + gradients, optimizer state, activations, logits).
 * Pure arithmetic over the config: no weights are read.
 *
 * What it predicts is the peak of one training step of this runtime (@qlora/models' CausalLM, LoRA through
 * @qlora/lora's fused op, the chunked lm_head + cross-entropy of @qlora/tensor), modelled on what each op keeps:
 * - persistent: weights as stored (Linear4bit: packed codes + absmax state), LoRA parameters, optimizer state,
 *   the micro-batch's token ids;
 * - the peak is the larger of two moments of the step:
 *   loss: the forward has reached the fused lm_head + cross-entropy, which computes dHidden right away and
 *     holds one chunk of logits;
 *   backward: inside a decoder layer's backward, at the SwiGLU backward (dGate and dUp alive next to the layer's
 *     saved set, which for a checkpointed layer is its recomputation).
 * "Tracked" bytes are tensor storages, which `memoryStats("cpu").peakBytes` counts; the optimizer state is raw
 * backend buffers outside that counter. Neither figure contains Node.js's own heap or code, nor the free buffers
 * the caching host allocator keeps for reuse (see `formatPlan`'s notes).
 */
import { CliError } from "./errors";

export interface ModelShape {
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  tiedEmbeddings: boolean;
  /** Bytes per element of the non-quantized tensors as stored (bf16/f16 = 2, f32 = 4). */
  storageBytes: number;
}

export type BaseQuant = "nf4-dq" | "nf4" | "none";

export type OptimizerKind = "adamw" | "lion" | "sgd";

export interface EstimateOptions {
  seqLen: number;
  microBatchSize: number;
  loraR: number;
  /**
   * The optimizer's update rule (default AdamW): AdamW keeps two moments per parameter, Lion one (its momentum),
   * SGD one f32 momentum buffer (@qlora/paged-optim allocates it whatever the momentum).
   */
  optimizer?: OptimizerKind;
  /** 32-bit state in f32; 8-bit: u8 states + one f32 absmax per 256 (not SGD, which has no 8-bit form). */
  optimizerBits: 32 | 8;
  /** Off by default, as in `qlora train` (`gradient_checkpointing: false`). */
  gradientCheckpointing: boolean;
  baseQuant: BaseQuant;
  /** Rows of logits computed at once by the chunked lm_head + cross-entropy; default: the model's (8 Mi logits). */
  logitsChunk?: number;
  /** Train LoRA on every linear of the decoder layers (true) or on q_proj and v_proj only (PEFT's default). */
  allLinear: boolean;
  /** lora_dropout: above 0 each LoRA linear also keeps its f32 dropout mask ([tokens, in]) for backward. */
  loraDropout?: number;
}

/** When a row's bytes are alive: for the whole step, or at one of the two candidate peak moments. */
export type PlanPhase = "persistent" | "loss" | "backward";

export interface PlanRow {
  item: string;
  bytes: number;
  phase: PlanPhase;
  /** A tensor storage (counted by memoryStats); false: a raw backend buffer outside that counter. */
  tracked: boolean;
  /** What multi-process training does with the row (see `singleProcessParts`); unset: activations. */
  part?: "base" | "replicated" | "adapter" | "optimizer" | "gradients";
}

export interface MemoryPlan {
  rows: PlanRow[];
  /** Persistent rows + the larger phase, raw buffers included: the plan's answer. */
  totalBytes: number;
  /** The same peak over tensor storages only: what `memoryStats("cpu").peakBytes` reports for this step. */
  trackedPeakBytes: number;
  /** The moment of the step the peak falls on. */
  peakPhase: "loss" | "backward";
  quantizedParams: number;
  otherParams: number;
  loraParams: number;
}

export const DEFAULT_ESTIMATE: EstimateOptions = {
  seqLen: 512,
  microBatchSize: 1,
  loraR: 8,
  optimizer: "adamw",
  optimizerBits: 32,
  gradientCheckpointing: false,
  baseQuant: "nf4-dq",
  allLinear: true,
};

/** @qlora/models' default loss chunk: as many rows as make ≈ 8 Mi logits (32 MiB f32). */
export function defaultLogitsChunk(vocabSize: number): number {
  return Math.max(1, Math.floor((8 << 20) / vocabSize));
}

/** Read the fields the plan needs from a parsed config.json; `file` names it in errors. */
export function modelShapeFromConfig(config: Record<string, unknown>, file = "config.json"): ModelShape {
  const int = (key: string, fallback?: number): number => {
    const v = config[key] ?? fallback;
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0)
      throw new CliError("BAD_ARGUMENT", `${file}: ${key}: expected a positive integer, got ${JSON.stringify(v)}`);
    return v;
  };
  const hiddenSize = int("hidden_size");
  const numHeads = int("num_attention_heads");
  const dtype = config.torch_dtype ?? config.dtype ?? "bfloat16";
  return {
    hiddenSize,
    intermediateSize: int("intermediate_size"),
    numLayers: int("num_hidden_layers"),
    numHeads,
    numKvHeads: int("num_key_value_heads", numHeads),
    headDim: int("head_dim", Math.floor(hiddenSize / numHeads)),
    vocabSize: int("vocab_size"),
    tiedEmbeddings: config.tie_word_embeddings === true,
    storageBytes: dtype === "float32" ? 4 : 2,
  };
}

/** The seven decoder-layer linears as [in, out]. */
function layerLinears(m: ModelShape): Record<string, [number, number]> {
  const q = m.numHeads * m.headDim;
  const kv = m.numKvHeads * m.headDim;
  return {
    q_proj: [m.hiddenSize, q],
    k_proj: [m.hiddenSize, kv],
    v_proj: [m.hiddenSize, kv],
    o_proj: [q, m.hiddenSize],
    gate_proj: [m.hiddenSize, m.intermediateSize],
    up_proj: [m.hiddenSize, m.intermediateSize],
    down_proj: [m.intermediateSize, m.hiddenSize],
  };
}

/** Bytes of n weights in bitsandbytes' 4-bit layout, blocksize 64 (double quant: u8 absmax + f32 per 256 blocks). */
export function quantizedBytes(n: number, quant: BaseQuant, storageBytes: number): number {
  if (quant === "none") return n * storageBytes;
  const blocks = Math.ceil(n / 64);
  const packed = Math.ceil(n / 2);
  if (quant === "nf4") return packed + blocks * 4;
  return packed + blocks + Math.ceil(blocks / 256) * 4 + 256 * 4;
}

/** bitsandbytes' min_8bit_size (@qlora/paged-optim's MIN_8BIT_SIZE): smaller tensors keep 32-bit state. */
const MIN_8BIT_SIZE = 4096;

/** AdamW state bytes of one parameter tensor of n elements, as @qlora/paged-optim allocates it. */
export function adamStateBytes(n: number, bits: 32 | 8): number {
  return optimizerStateBytes(n, "adamw", bits);
}

/** States per parameter element: AdamW two moments, Lion and SGD one (momentum). */
const OPTIMIZER_STATES: Record<OptimizerKind, 1 | 2> = { adamw: 2, lion: 1, sgd: 1 };
const OPTIMIZER_TITLES: Record<OptimizerKind, string> = { adamw: "AdamW", lion: "Lion", sgd: "SGD momentum" };

/** Optimizer state bytes of one parameter tensor of n elements, as @qlora/paged-optim allocates it. */
export function optimizerStateBytes(n: number, kind: OptimizerKind, bits: 32 | 8): number {
  const states = OPTIMIZER_STATES[kind];
  // f32 states; SGD has no 8-bit form, and bitsandbytes keeps small tensors in 32-bit
  if (bits === 32 || kind === "sgd" || n < MIN_8BIT_SIZE) return states * 4 * n;
  return states * (n + 4 * Math.ceil(n / 256)); // u8 states, each with an f32 absmax per block of 256
}

/**
 * The update rule and state width of a config's `optimizer` name, as `qlora train` builds it: "lion" in the name
 * is Lion, "sgd" SGD, anything else AdamW; "8bit" in the name is 8-bit state.
 */
export function optimizerSpec(name: string): { optimizer: OptimizerKind; optimizerBits: 32 | 8 } {
  const optimizer: OptimizerKind = name.includes("lion") ? "lion" : name === "sgd" ? "sgd" : "adamw";
  return { optimizer, optimizerBits: optimizer !== "sgd" && name.includes("8bit") ? 8 : 32 };
}

const F32 = 4;

/** Bytes one decoder layer keeps for its backward (f32), read off the ops' saved tensors. */
function layerSavedBytes(
  m: ModelShape,
  tokens: number,
  targets: readonly [string, [number, number]][],
  r: number,
  dropout: boolean,
): number {
  const q = m.numHeads * m.headDim;
  const kv = m.numKvHeads * m.headDim;
  const perToken =
    4 * m.hiddenSize + // input_layernorm output, h + attention (residual), post-attention norm output, layer output
    2 * q + // rotated queries and the attention output (attention saves both)
    2 * kv + // rotated keys and the values
    3 * m.intermediateSize + // gate, up and swiglu outputs (swiglu's and down_proj's inputs)
    targets.length * r + // each LoRA linear keeps x·Aᵀ for dB
    (dropout ? targets.reduce((sum, [, [inF]]) => sum + inF, 0) : 0) + // and its dropout mask, as wide as its input
    m.numHeads + // attention's per-row log-sum-exp
    2; // the two RMSNorms' per-row 1/rms
  return tokens * F32 * perToken;
}

export function estimateMemory(m: ModelShape, o: EstimateOptions): MemoryPlan {
  const linears = Object.entries(layerLinears(m));
  const perLayerLinear = linears.reduce((s, [, [i, out]]) => s + i * out, 0);
  const quantizedParams = perLayerLinear * m.numLayers;
  const embed = m.vocabSize * m.hiddenSize;
  const norms = (2 * m.numLayers + 1) * m.hiddenSize;
  const otherParams = embed * (m.tiedEmbeddings ? 1 : 2) + norms;
  const targets = o.allLinear ? linears : linears.filter(([n]) => n === "q_proj" || n === "v_proj");
  const loraPerLayer = targets.reduce((s, [, [i, out]]) => s + o.loraR * (i + out), 0);
  const loraParams = loraPerLayer * m.numLayers;
  const kind = o.optimizer ?? "adamw";
  const bits = kind === "sgd" ? 32 : o.optimizerBits;
  const optimizerBytes =
    targets.reduce(
      (s, [, [i, out]]) =>
        s + optimizerStateBytes(o.loraR * i, kind, bits) + optimizerStateBytes(out * o.loraR, kind, bits),
      0,
    ) * m.numLayers;

  const L = m.numLayers;
  const tokens = o.seqLen * o.microBatchSize;
  const hidden = tokens * m.hiddenSize * F32; // one [tokens, hidden] f32 activation
  const saved = layerSavedBytes(m, tokens, targets, o.loraR, (o.loraDropout ?? 0) > 0);
  const chunk = Math.min(o.logitsChunk ?? defaultLogitsChunk(m.vocabSize), tokens);
  const ckpt = o.gradientCheckpointing;

  const persistent: PlanRow[] = [
    {
      item: `base weights (${o.baseQuant === "none" ? "16-bit" : o.baseQuant.toUpperCase()})`,
      bytes: linears.reduce((s, [, [i, out]]) => s + quantizedBytes(i * out, o.baseQuant, m.storageBytes) * L, 0),
      phase: "persistent",
      tracked: true,
      part: "base",
    },
    {
      item: "embeddings, norms, lm_head (as stored)",
      bytes: otherParams * m.storageBytes,
      phase: "persistent",
      tracked: true,
      part: "replicated",
    },
    { item: "LoRA parameters (f32)", bytes: loraParams * F32, phase: "persistent", tracked: true, part: "adapter" },
    {
      item: `optimizer state (${bits}-bit ${OPTIMIZER_TITLES[kind]})`,
      bytes: optimizerBytes,
      phase: "persistent",
      tracked: false, // @qlora/paged-optim allocates it as raw backend buffers
      part: "optimizer",
    },
    // input ids, positions, segment ids, labels, shifted targets (i32), per-token loss and final-norm 1/rms (f32)
    { item: "token ids and per-token scalars", bytes: tokens * 7 * 4, phase: "persistent", tracked: true },
  ];

  // What the forward keeps until backward: with checkpointing each layer's input (the embedding output for layer
  // 0) plus the last layer's output (the final norm's input); without, every layer's saved set and the embedding.
  const kept = ckpt ? (L + 1) * hidden : hidden + L * saved;
  const loss: PlanRow[] = [
    {
      item: ckpt ? `checkpointed layer inputs (${L + 1} × tokens × hidden)` : `saved activations (all ${L} layers)`,
      bytes: kept,
      phase: "loss",
      tracked: true,
    },
    // the fused op computes dHidden for the whole batch in its forward and keeps it until backward
    { item: "final norm output + its gradient", bytes: 2 * hidden, phase: "loss", tracked: true },
    {
      item: `logits chunk (${chunk} rows × vocab, f32)`,
      bytes: chunk * m.vocabSize * F32,
      phase: "loss",
      tracked: true,
    },
    // the cross-entropy gradient is written over the logits chunk (crossEntropyGradInPlace on the CPU backends)
    { item: "chunk hidden rows + their gradient", bytes: 2 * chunk * m.hiddenSize * F32, phase: "loss", tracked: true },
  ];

  // Backward of layer i, at its SwiGLU backward: the inputs (or saved sets) of layers 0..i are alive, layers
  // i+1..L−1 have all their LoRA gradients and layer i only down_proj's (the one linear back-propagated so far).
  // Linear in i, so the worst layer is the first or the last one. At the first layer the gradients of its other
  // linears come later, once part of its saved set is freed; counting them here makes that case a slight upper
  // bound (it only wins when the adapters outweigh a layer's activations: a large rank over few tokens).
  const gradsPerLayer = loraPerLayer * F32;
  const down = targets.find(([n]) => n === "down_proj")?.[1];
  const gradsDown = down ? o.loraR * (down[0] + down[1]) * F32 : 0;
  const alive = ckpt ? hidden : saved;
  const atLast = L * alive + gradsDown;
  const atFirst = alive + L * gradsPerLayer;
  const worstIsLast = atLast >= atFirst;
  const inputsAlive = worstIsLast ? L : 1;
  const backward: PlanRow[] = [
    {
      item: ckpt
        ? `checkpointed layer inputs alive (${inputsAlive} of ${L})`
        : `saved activations alive (${inputsAlive} of ${L} layers)`,
      bytes: inputsAlive * alive,
      phase: "backward",
      tracked: true,
    },
    {
      item: worstIsLast ? "LoRA gradients so far (down_proj's, f32)" : `LoRA gradients (all ${L} layers, f32)`,
      bytes: worstIsLast ? gradsDown : L * gradsPerLayer,
      phase: "backward",
      tracked: true,
      part: "gradients",
    },
    ...(ckpt
      ? [{ item: "one layer's recomputed activations", bytes: saved, phase: "backward" as const, tracked: true }]
      : []),
    {
      // the gradient arriving at the layer, and SwiGLU's backward writing dGate and dUp while its own
      // incoming gradient has replaced the freed swiglu output
      item: "layer output gradient + dGate, dUp",
      bytes: hidden + 2 * tokens * m.intermediateSize * F32,
      phase: "backward",
      tracked: true,
    },
  ];

  const sum = (rows: PlanRow[], trackedOnly: boolean) =>
    rows.reduce((s, r) => s + (trackedOnly && !r.tracked ? 0 : r.bytes), 0);
  const lossTracked = sum(loss, true);
  const backwardTracked = sum(backward, true);
  const peakPhase = sum(loss, false) >= sum(backward, false) ? "loss" : "backward";
  const rows = [...persistent, ...loss, ...backward];
  return {
    rows,
    totalBytes: sum(persistent, false) + Math.max(sum(loss, false), sum(backward, false)),
    trackedPeakBytes: sum(persistent, true) + Math.max(lossTracked, backwardTracked),
    peakPhase,
    quantizedParams,
    otherParams,
    loraParams,
  };
}

/** A one-process plan in the parts @qlora/distributed's perRankMemory() shares out between ranks (its SingleProcessMemory). */
export interface SingleProcessParts {
  baseWeightBytes: number;
  replicatedBytes: number;
  adapterBytes: number;
  optimizerBytes: number;
  activationBytes: number;
  layers: number;
}

/**
 * The plan's parts for `qlora estimate --world-size N`. Activations are everything else at the peak (token ids
 * included) without the LoRA gradients the backward row counts: perRankMemory adds the whole adapter's gradients
 * itself (DDP holds all of them when it all-reduces), so they are not counted twice.
 */
export function singleProcessParts(plan: MemoryPlan, layers: number): SingleProcessParts {
  const part = (p: PlanRow["part"]) => plan.rows.filter((r) => r.part === p).reduce((s, r) => s + r.bytes, 0);
  const activations = (phase: PlanPhase) =>
    plan.rows.filter((r) => r.phase === phase && r.part === undefined).reduce((s, r) => s + r.bytes, 0);
  return {
    baseWeightBytes: part("base"),
    replicatedBytes: part("replicated"),
    adapterBytes: part("adapter"),
    optimizerBytes: part("optimizer"),
    activationBytes: activations("persistent") + Math.max(activations("loss"), activations("backward")),
    layers,
  };
}

export function formatBytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB`;
  return `${n} B`;
}

const PHASE_TITLES: Record<PlanPhase, string> = {
  persistent: "resident for the whole step",
  loss: "peak candidate: forward at the chunked lm_head + cross-entropy",
  backward: "peak candidate: inside a decoder layer's backward",
};

/** The per-rank tables of `qlora estimate --world-size N` (rows from perRankMemory). */
export function formatPerRank(
  perRank: readonly {
    strategy: string;
    worldSize: number;
    rows: readonly { item: string; bytes: number }[];
    totalBytes: number;
  }[],
): string {
  const width = Math.max(...perRank.flatMap((p) => p.rows.map((r) => r.item.length + 2)), 44);
  const line = (item: string, bytes: number) => `${item.padEnd(width)}  ${formatBytes(bytes).padStart(10)}`;
  const titles: Record<string, string> = {
    ddp: "DDP: every rank holds the whole model, adapter, gradients and optimizer state",
    fsdp: "FSDP: each rank holds 1/N of the base and of the optimizer state, one layer gathered, the adapter whole",
  };
  const lines: string[] = [];
  for (const p of perRank) {
    if (lines.length > 0) lines.push("");
    lines.push(`${titles[p.strategy] ?? p.strategy} (per rank, ${p.worldSize} ranks)`);
    for (const r of p.rows) lines.push(line(`  ${r.item}`, r.bytes));
    lines.push(line("total per rank", p.totalBytes));
  }
  return lines.join("\n");
}

export function formatPlan(plan: MemoryPlan): string {
  const width = Math.max(...plan.rows.map((r) => r.item.length + 2), 44);
  const line = (item: string, bytes: number) => `${item.padEnd(width)}  ${formatBytes(bytes).padStart(10)}`;
  const lines: string[] = [];
  for (const phase of ["persistent", "loss", "backward"] as const) {
    const mark = phase === plan.peakPhase ? "  <- peak" : "";
    lines.push(`${PHASE_TITLES[phase]}${mark}`);
    for (const r of plan.rows.filter((x) => x.phase === phase))
      lines.push(line(`  ${r.item}${r.tracked ? "" : " *"}`, r.bytes));
  }
  lines.push(line("total", plan.totalBytes));
  lines.push(line("  tensor storages only (memoryStats peak)", plan.trackedPeakBytes));
  // RSS guidance, from CPU runs of four tiny models (plans of 4.8-100 MB): the caching host allocator keeps freed
  // buffers for reuse in size classes, and its reserve peaked at 1.1-1.5x the plan's total; Node.js and the
  // loaded packages start at about 0.1 GB. The cache's free part is capped (2 GiB by default).
  const rss = (f: number) => formatBytes(1e8 + plan.totalBytes + Math.min((f - 1) * plan.totalBytes, 2 ** 31));
  const [low, high] = [rss(1.1), rss(1.5)];
  lines.push(
    '* raw backend buffers: outside memoryStats("cpu").peakBytes, which counts tensor storages only.',
    "Process RSS is higher: Node.js itself (about 0.1 GB) plus the caching host allocator, which keeps freed buffers",
    `for reuse (1.1-1.5x the total in CPU test runs; cap 2 GiB or $QLORA_HOST_CACHE_BYTES): expect ${low === high ? `about ${high}` : `${low} to ${high}`}.`,
  );
  return lines.join("\n");
}
