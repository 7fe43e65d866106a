/**
 * Per-rank memory of multi-process training, from a one-process plan's parts (what `qlora estimate --world-size N`
 * shows). DDP replicates everything and adds one f32 copy of the gradients (the buckets being all-reduced). The
 * FSDP figure is the design of issue 16 (not implemented yet): each rank keeps 1/N of the frozen quantized base,
 * of the adapter, its gradients and the optimizer state, plus one decoder layer's base and adapter gathered whole
 * while that layer runs; activations are per rank's micro-batch in both.
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
          { item: "one layer's base gathered", bytes: n > 1 ? Math.ceil(m.baseWeightBytes / m.layers) : 0 },
          { item: "replicated frozen weights", bytes: m.replicatedBytes },
          { item: "adapter parameters (1/N shard)", bytes: Math.ceil(m.adapterBytes / n) },
          { item: "one layer's adapter gathered", bytes: n > 1 ? Math.ceil(m.adapterBytes / m.layers) : 0 },
          { item: "adapter gradients (1/N shard)", bytes: Math.ceil(m.adapterBytes / n) },
          { item: "optimizer state (1/N shard)", bytes: Math.ceil(m.optimizerBytes / n) },
          { item: "activations (per-rank micro-batch)", bytes: m.activationBytes },
        ];
  return { strategy, worldSize, rows, totalBytes: rows.reduce((s, r) => s + r.bytes, 0) };
}
