/**
 * `qlora estimate`: a memory plan for a QLoRA/LoRA run from a Hugging Face config.json, itemised like the QLoRA
 * paper's table (base weights, non-quantized tensors, adapters + gradients, optimizer state, activations, logits).
 * Pure arithmetic over the config: no weights are read.
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

export interface EstimateOptions {
  seqLen: number;
  microBatchSize: number;
  loraR: number;
  /** "32bit" AdamW keeps two f32 moments per parameter; "8bit" two u8 moments + one f32 absmax per 256. */
  optimizerBits: 32 | 8;
  gradientCheckpointing: boolean;
  baseQuant: BaseQuant;
  /** Rows of logits computed at once by the chunked lm_head + cross-entropy. */
  logitsChunk: number;
  /** Train LoRA on every linear of the decoder layers (true) or on q_proj and v_proj only (PEFT's default). */
  allLinear: boolean;
}

export interface MemoryPlan {
  rows: { item: string; bytes: number }[];
  totalBytes: number;
  quantizedParams: number;
  otherParams: number;
  loraParams: number;
}

export const DEFAULT_ESTIMATE: EstimateOptions = {
  seqLen: 512,
  microBatchSize: 1,
  loraR: 8,
  optimizerBits: 32,
  gradientCheckpointing: true,
  baseQuant: "nf4-dq",
  logitsChunk: 1024,
  allLinear: true,
};

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
  const dtype = config.torch_dtype ?? "bfloat16";
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

export function estimateMemory(m: ModelShape, o: EstimateOptions): MemoryPlan {
  const linears = Object.entries(layerLinears(m));
  const perLayerLinear = linears.reduce((s, [, [i, out]]) => s + i * out, 0);
  const quantizedParams = perLayerLinear * m.numLayers;
  const embed = m.vocabSize * m.hiddenSize;
  const norms = (2 * m.numLayers + 1) * m.hiddenSize;
  const otherParams = embed * (m.tiedEmbeddings ? 1 : 2) + norms;
  const targets = o.allLinear ? linears : linears.filter(([n]) => n === "q_proj" || n === "v_proj");
  const loraParams = targets.reduce((s, [, [i, out]]) => s + o.loraR * (i + out), 0) * m.numLayers;

  const tokens = o.seqLen * o.microBatchSize;
  const f32 = 4;
  const qDim = m.numHeads * m.headDim;
  const kvDim = m.numKvHeads * m.headDim;
  // What one decoder layer keeps for backward (f32 activations): two norm outputs and residual inputs, q/k/v,
  // attention output, gate/up/swiglu outputs, and each LoRA's x·Aᵀ.
  const layerSaved =
    tokens * f32 * (4 * m.hiddenSize + 2 * qDim + 2 * kvDim + 3 * m.intermediateSize + targets.length * o.loraR);
  const layerInput = tokens * m.hiddenSize * f32;
  const activations = o.gradientCheckpointing
    ? m.numLayers * layerInput + layerSaved // every layer's input + one layer recomputed at a time
    : m.numLayers * layerSaved;
  // Gradients flowing through one layer during backward: a few hidden/ffn-sized buffers alive at once.
  const backwardWorkspace = tokens * f32 * (2 * m.hiddenSize + 2 * m.intermediateSize);
  const logitsChunk = Math.min(o.logitsChunk, tokens) * m.vocabSize * f32 * 2; // chunk logits + their gradient

  const optimizerPerParam = o.optimizerBits === 32 ? 8 : 2 + 8 / 256;
  const rows = [
    { item: `base weights (${o.baseQuant === "none" ? "16-bit" : o.baseQuant.toUpperCase()})`, bytes: 0 },
    { item: "embeddings, norms, lm_head (as stored)", bytes: otherParams * m.storageBytes },
    { item: "LoRA parameters (f32)", bytes: loraParams * f32 },
    { item: "LoRA gradients (f32)", bytes: loraParams * f32 },
    { item: `optimizer state (${o.optimizerBits}-bit AdamW)`, bytes: Math.ceil(loraParams * optimizerPerParam) },
    { item: `activations (${o.gradientCheckpointing ? "checkpointed" : "all layers kept"})`, bytes: activations },
    { item: "backward workspace (one layer)", bytes: backwardWorkspace },
    { item: "logits chunk + gradient", bytes: logitsChunk },
  ];
  rows[0].bytes = linears.reduce(
    (s, [, [i, out]]) => s + quantizedBytes(i * out, o.baseQuant, m.storageBytes) * m.numLayers,
    0,
  );
  const totalBytes = rows.reduce((s, r) => s + r.bytes, 0);
  return { rows, totalBytes, quantizedParams, otherParams, loraParams };
}

export function formatBytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB`;
  return `${n} B`;
}

export function formatPlan(plan: MemoryPlan): string {
  const width = Math.max(...plan.rows.map((r) => r.item.length), 5);
  const lines = plan.rows.map((r) => `${r.item.padEnd(width)}  ${formatBytes(r.bytes).padStart(10)}`);
  lines.push(`${"total".padEnd(width)}  ${formatBytes(plan.totalBytes).padStart(10)}`);
  return lines.join("\n");
}
