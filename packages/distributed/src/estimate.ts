/**
 * Per-rank memory of multi-process training, from a one-process plan's parts (what `qlora estimate --world-size N`
 * shows). DDP replicates everything and adds one f32 copy of the gradients (the buckets being all-reduced). FSDP
 * (FsdpStrategy as built): each rank keeps 1/N of the frozen quantized base and of the optimizer state, plus one
 * decoder layer rebuilt whole while it runs (and the all-gather's receive buffer beside it); the LoRA parameters
 * stay whole on every rank, their gradients too until the step's reduce-scatter (whose send buffer is one more
 * f32 copy). Activations are per rank's micro-batch in both.
 */
import { DistributedError } from "./errors";

export interface SingleProcessMemory {
  /** Frozen quantized linear weights with their quant state (what FSDP shards). */
  readonly baseWeightBytes: number;
  /** Frozen weights that stay whole on every rank (embeddings, norms, lm_head). */
  readonly replicatedBytes: number;
  /** Trainable parameters (f32). */
  readonly adapterBytes: number;
  /** Optimizer state of the trainable parameters. */
  readonly optimizerBytes: number;
  /** Peak activation bytes of one micro-batch (the per-rank micro-batch). */
  readonly activationBytes: number;
  /** Decoder layers (FSDP gathers one layer at a time). */
  readonly layers: number;
}

export interface PerRankMemory {
  readonly strategy: "ddp" | "fsdp";
  readonly worldSize: number;
  readonly rows: readonly { item: string; bytes: number }[];
  readonly totalBytes: number;
}

export function perRankMemory(m: SingleProcessMemory, worldSize: number, strategy: "ddp" | "fsdp"): PerRankMemory {
  if (!Number.isInteger(worldSize) || worldSize < 1)
    throw new DistributedError("BAD_ARGUMENT", `perRankMemory: worldSize must be a positive integer, got ${worldSize}`);
  if (strategy !== "ddp" && strategy !== "fsdp")
    throw new DistributedError(
      "BAD_ARGUMENT",
      `perRankMemory: strategy must be "ddp" or "fsdp", got ${String(strategy)}`,
    );
  for (const [k, v] of Object.entries(m))
    if (!(Number.isFinite(v) && v >= 0))
      throw new DistributedError("BAD_ARGUMENT", `perRankMemory: ${k} must be a non-negative number, got ${v}`);
  if (!(m.layers >= 1)) throw new DistributedError("BAD_ARGUMENT", "perRankMemory: layers must be >= 1");
  const n = worldSize;
  const rows =
    strategy === "ddp"
      ? [
          { item: "quantized base weights", bytes: m.baseWeightBytes },
          { item: "replicated frozen weights", bytes: m.replicatedBytes },
          { item: "adapter parameters", bytes: m.adapterBytes },
          { item: "adapter gradients", bytes: m.adapterBytes },
          { item: "all-reduce buckets", bytes: n > 1 ? m.adapterBytes : 0 },
          { item: "optimizer state", bytes: m.optimizerBytes },
          { item: "activations (per-rank micro-batch)", bytes: m.activationBytes },
        ]
      : [
          { item: "quantized base weights (1/N shard)", bytes: Math.ceil(m.baseWeightBytes / n) },
          {
            item: "one layer's base gathered + receive buffer",
            bytes: n > 1 ? 2 * Math.ceil(m.baseWeightBytes / m.layers) : 0,
          },
          { item: "replicated frozen weights", bytes: m.replicatedBytes },
          { item: "adapter parameters (whole on every rank)", bytes: m.adapterBytes },
          { item: "adapter gradients (whole until reduce-scattered)", bytes: m.adapterBytes },
          { item: "reduce-scatter buffer", bytes: n > 1 ? m.adapterBytes : 0 },
          { item: "optimizer state (1/N shard)", bytes: Math.ceil(m.optimizerBytes / n) },
          { item: "activations (per-rank micro-batch)", bytes: m.activationBytes },
        ];
  return { strategy, worldSize, rows, totalBytes: rows.reduce((s, r) => s + r.bytes, 0) };
}

export interface CommVolumeInput {
  /** Frozen quantized linear weights with their quant state (what FSDP shards and gathers). */
  readonly baseWeightBytes: number;
  /** Trainable f32 parameters (= their gradients). */
  readonly adapterBytes: number;
  /** Micro-batches per optimizer step (gradient accumulation). */
  readonly microBatches: number;
}

/** Bytes each rank sends (= receives) per optimizer step, ring algorithms: (N-1)/N of a buffer per pass. */
export interface CommVolume {
  readonly strategy: "ddp" | "fsdp";
  readonly worldSize: number;
  readonly allReduceBytes: number;
  readonly allGatherBytes: number;
  readonly reduceScatterBytes: number;
}

/**
 * Analytical communication per rank per optimizer step. DDP: one all-reduce of the gradients (a ring all-reduce
 * is a reduce-scatter plus an all-gather: 2·(N-1)/N of the buffer). FSDP as built: every micro-batch gathers the
 * whole base twice (before forward and again in the recomputation), the step reduce-scatters the gradients once
 * and all-gathers the updated adapter once.
 */
export function commVolume(m: CommVolumeInput, worldSize: number, strategy: "ddp" | "fsdp"): CommVolume {
  if (!Number.isInteger(worldSize) || worldSize < 1)
    throw new DistributedError("BAD_ARGUMENT", `commVolume: worldSize must be a positive integer, got ${worldSize}`);
  for (const [k, v] of Object.entries(m))
    if (!(Number.isFinite(v) && v >= 0))
      throw new DistributedError("BAD_ARGUMENT", `commVolume: ${k} must be a non-negative number, got ${v}`);
  const f = (worldSize - 1) / worldSize;
  if (strategy === "ddp")
    return {
      strategy,
      worldSize,
      allReduceBytes: Math.round(2 * f * m.adapterBytes),
      allGatherBytes: 0,
      reduceScatterBytes: 0,
    };
  return {
    strategy,
    worldSize,
    allReduceBytes: 0,
    allGatherBytes: Math.round(f * (2 * m.microBatches * m.baseWeightBytes + m.adapterBytes)),
    reduceScatterBytes: Math.round(f * m.adapterBytes),
  };
}
