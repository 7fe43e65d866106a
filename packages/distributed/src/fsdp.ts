/**
 * FSDP-style sharding for the trainer's Strategy slot (issue 16), for QLoRA: a frozen NF4 base plus small LoRA
 * adapters.
 *
 * Frozen base: every decoder layer (`…layers.{i}`) is one FSDP unit. At setup each Linear4bit inside it is packed
 * (bitsandbytes key set: packed codes, absmax, nested absmax, quant maps, quant-state JSON) into one flat byte
 * buffer per unit; each rank keeps only its 1/N slice (padded to a multiple of 4·N bytes) and the Linear4bits are
 * replaced by ShardedLinear4bit, the layer by FsdpUnit. Before a unit's forward its shards are all-gathered and the
 * layer's Linear4bits rebuilt; after it they are freed. In backward the unit is recomputed (gradient
 * checkpointing: the model's own, or the unit's checkpoint when the model has it off) and gathered again there;
 * the recomputed graph still needs the weights for its own backward, so a unit gathered in recomputation is freed
 * when the next unit is gathered or when backward ends: at most one unit is whole at any time. The gather inside
 * backward is a blocking all-gather (autograd's backward is synchronous); there is no prefetch.
 *
 * Trainable (LoRA) parameters: ZeRO-style ownership by parameter (ShardedOptimizerStrategy): each parameter has
 * one owner rank (greedy size balance); gradients are reduce-scattered after the step's last micro-batch so each
 * rank keeps only the summed gradients it owns, the optimizer holds state for (and steps) only those, and the
 * updated parameters are all-gathered after each step. The model's LoRA tensors therefore stay whole on every
 * rank between steps (they are small next to the base; a tensor's storage cannot be swapped, and the optimizer
 * and the trainer hold those tensor objects), so forward needs no per-unit adapter gather.
 */
import type { TensorRecord } from "@qlora/nf4";
import { packQuantState, unpackQuantState } from "@qlora/nf4";
import { Linear4bit, type Module, type Tensor, isGradEnabled } from "@qlora/tensor";
import { registerStrategy, type StrategySetup, type TrainerOptimizer } from "@qlora/trainer";
import type { Communicator } from "./communicator";
import { DistributedError } from "./errors";
import { FsdpUnit, type LinearSlot, type RecordSlot, ShardedLinear4bit, type UnitOwner } from "./fsdp-modules";
import { type OptimizerShards, gatherOptimizerShards, selectOptimizerState } from "./fsdp-state";
import { mpiWorld } from "./mpi";
import { ShardedOptimizerStrategy } from "./sharded";

export interface FsdpOptions {
  /** Needs allGatherBlocking (MpiCommunicator, LocalCommunicator). */
  readonly communicator: Communicator;
}

/** Bytes of the frozen 4-bit base held by this rank, counted from the buffers actually allocated. */
export interface FsdpMemory {
  /** The 4-bit state tensors of every sharded Linear4bit before sharding (what one process holds). */
  readonly unshardedBaseBytes: number;
  /** This rank's shards (all units, with padding). */
  readonly shardBytes: number;
  /** Bytes of the unit gathered now (rebuilt Linear4bit state tensors). */
  readonly gatheredBytes: number;
  /** Peak of gathered bytes (including the all-gather's receive buffer while the layers are rebuilt). */
  readonly peakGatheredBytes: number;
  /** The largest unit's unpadded 4-bit bytes. */
  readonly largestUnitBytes: number;
  readonly units: number;
}

export interface FsdpGatherStats {
  /** Bytes received by this rank's base all-gathers (whole gathered buffers). */
  baseAllGatherBytes: number;
  /** Unit gathers before a forward (no grad: the first pass of a checkpoint, or evaluation). */
  forwardGathers: number;
  /** Unit gathers during checkpoint recomputation in backward. */
  recomputeGathers: number;
  /** Milliseconds spent in base all-gathers (blocking: communication plus waiting for peers). */
  gatherMs: number;
  /** Milliseconds rebuilding Linear4bits from gathered bytes. */
  rebuildMs: number;
}

/** A unit path: "model.layers.3" (also under a prefix, e.g. "base_model.model.model.layers.3"). */
const UNIT_PATH = /(^|\.)layers\.\d+$/;

export class FsdpStrategy extends ShardedOptimizerStrategy implements UnitOwner {
  override readonly name: string = "fsdp";
  readonly gatherStats: FsdpGatherStats = {
    baseAllGatherBytes: 0,
    forwardGathers: 0,
    recomputeGathers: 0,
    gatherMs: 0,
    rebuildMs: 0,
  };
  private units: FsdpUnit[] = [];
  private current: FsdpUnit | null = null;
  private mem = { unshardedBaseBytes: 0, shardBytes: 0, gatheredBytes: 0, peakGatheredBytes: 0, largestUnitBytes: 0 };
  private backwardDepth = 0;
  /** Rank 0: every rank's optimizer state from the last optimizerStateDict(), for fsdpCheckpointIO to write. */
  private pendingShards: OptimizerShards | undefined;
  /** Optimizer state for this rank read by fsdpCheckpointIO.loadModel, for loadOptimizerStateDict. */
  private resumeState: unknown;

  constructor(options: FsdpOptions) {
    super(options);
    if (typeof options.communicator.allGatherBlocking !== "function")
      throw new DistributedError(
        "BAD_ARGUMENT",
        "FsdpStrategy: the communicator has no allGatherBlocking (needed to gather a layer inside backward)",
      );
  }

  get inBackward(): boolean {
    return this.backwardDepth > 0;
  }

  override async setup(s: StrategySetup): Promise<void> {
    await super.setup(s);
    this.shardBase(s.model);
  }

  /** Replace every decoder layer by an FsdpUnit holding this rank's slice of its Linear4bits' bytes. */
  private shardBase(model: Module): void {
    const sharded = [...model.namedModules()].filter(([, m]) => m instanceof FsdpUnit).map(([, m]) => m);
    if (sharded.length > 0) {
      if (sharded.every((u) => this.units.includes(u as FsdpUnit))) return; // a second fit() with this strategy
      throw new DistributedError(
        "BAD_ARGUMENT",
        "FsdpStrategy: the model's layers are already sharded by another FsdpStrategy; use that one (or a fresh model)",
      );
    }
    const layers = [...model.namedModules()].filter(([path, m]) => UNIT_PATH.test(path) && !(m instanceof FsdpUnit));
    if (layers.length === 0)
      throw new DistributedError(
        "BAD_ARGUMENT",
        "FsdpStrategy: the model has no decoder layers named …layers.{i} (the FSDP units)",
      );
    for (const [path, layer] of layers) {
      for (const [name] of layer.namedParameters())
        if (!name.includes("."))
          throw new DistributedError(
            "NOT_SUPPORTED",
            `FsdpStrategy: ${path}.${name} is a parameter of the layer module itself; units wrap layers whose tensors live in child modules`,
          );
      const unit = this.buildUnit(model, path, layer);
      model.setSubmodule(path, unit);
      this.units.push(unit);
    }
  }

  private buildUnit(model: Module, path: string, layer: Module): FsdpUnit {
    const found = [...layer.namedModules()].filter(
      (e): e is [string, Linear4bit] => e[1] instanceof Linear4bit && !(e[1] instanceof ShardedLinear4bit),
    );
    const packed: { sub: string; m: Linear4bit; recs: [string, TensorRecord][] }[] = [];
    let total = 0;
    for (const [sub, m] of found) {
      const recs = Object.entries(packQuantState(m.quantState, { param: "weight" }));
      packed.push({ sub, m, recs });
      for (const [, r] of recs) total += r.bytes.length;
      this.mem.unshardedBaseBytes += stateTensorBytes(m);
    }
    const n = this.worldSize;
    const padded = Math.max(1, Math.ceil(total / (4 * n))) * 4 * n;
    const flat = new Uint8Array(padded);
    let offset = 0;
    const linears: LinearSlot[] = packed.map(({ sub, m, recs }) => {
      const records: RecordSlot[] = recs.map(([key, r]) => {
        flat.set(r.bytes, offset);
        const slot = { key, dtype: r.dtype, shape: [...r.shape], offset, length: r.bytes.length };
        offset += r.bytes.length;
        return slot;
      });
      const full = `${path}.${sub}`;
      const sharded = new ShardedLinear4bit(full, m);
      model.setSubmodule(full, sharded);
      m.dispose();
      return { path: full, module: sharded, records };
    });
    const per = padded / n;
    const shard = new Int32Array(flat.buffer.slice(this.rank * per, (this.rank + 1) * per));
    this.mem.shardBytes += shard.byteLength;
    this.mem.largestUnitBytes = Math.max(this.mem.largestUnitBytes, total);
    return new FsdpUnit(path, layer, linears, shard, total, this);
  }

  /** All-gather a unit's shards and lend each ShardedLinear4bit its whole Linear4bit (frees the previous unit). */
  gather(unit: FsdpUnit): void {
    if (this.current === unit) return;
    if (this.current) this.release(this.current);
    const recompute = isGradEnabled();
    const t0 = performance.now();
    const all = (this.comm.allGatherBlocking as NonNullable<Communicator["allGatherBlocking"]>)(unit.shard);
    const t1 = performance.now();
    const bytes = new Uint8Array(all.buffer, all.byteOffset, unit.byteLength);
    let held = 0;
    for (const l of unit.linears) {
      const recs: Record<string, TensorRecord> = {};
      for (const r of l.records)
        recs[r.key] = { dtype: r.dtype, shape: r.shape, bytes: bytes.slice(r.offset, r.offset + r.length) };
      const whole = new Linear4bit(unpackQuantState(recs, { param: "weight" }), {
        backend: l.module.weightBackend,
      });
      held += stateTensorBytes(whole);
      l.module.lend(whole);
    }
    this.gatherStats.gatherMs += t1 - t0;
    this.gatherStats.rebuildMs += performance.now() - t1;
    this.gatherStats.baseAllGatherBytes += all.byteLength;
    if (recompute) this.gatherStats.recomputeGathers++;
    else this.gatherStats.forwardGathers++;
    this.mem.gatheredBytes = held;
    // the receive buffer is alive until here, beside the rebuilt layers
    this.mem.peakGatheredBytes = Math.max(this.mem.peakGatheredBytes, held + all.byteLength);
    this.current = unit;
  }

  release(unit: FsdpUnit): void {
    if (this.current !== unit) return;
    for (const l of unit.linears) l.module.take()?.dispose();
    this.current = null;
    this.mem.gatheredBytes = 0;
  }

  /** Free the unit kept whole for backward (called when backward ends). */
  releaseAll(): void {
    if (this.current) this.release(this.current);
  }

  override backward(loss: Tensor): void {
    this.backwardDepth++;
    try {
      loss.backward();
    } finally {
      this.backwardDepth--;
      this.releaseAll();
    }
  }

  memory(): FsdpMemory {
    return { ...this.mem, units: this.units.length };
  }

  /** The units (FsdpUnit modules now in the model), in model order. */
  get fsdpUnits(): readonly FsdpUnit[] {
    return this.units;
  }

  /**
   * Every rank's optimizer state, gathered to rank 0 (blocking collectives: the trainer asks synchronously).
   * Rank 0 keeps the shards for fsdpCheckpointIO to write as one file pair per rank; every rank returns the
   * manifest that the trainer writes as optimizer.json.
   */
  override optimizerStateDict(optimizer: TrainerOptimizer): unknown {
    const { manifest, shards } = gatherOptimizerShards(this.comm, optimizer.stateDict());
    if (this.rank === 0) this.pendingShards = shards;
    return manifest;
  }

  /** fsdpCheckpointIO: the shards of the last optimizerStateDict() (rank 0), once. */
  takeOptimizerShards(): OptimizerShards | undefined {
    const s = this.pendingShards;
    this.pendingShards = undefined;
    return s;
  }

  /** fsdpCheckpointIO.loadModel: this rank's optimizer state, read from the checkpoint's shards. */
  setResumeState(state: unknown): void {
    this.resumeState = state;
  }

  /** Names of the trainable parameters this rank owns (their optimizer state lives here). */
  ownedNames(): Set<string> {
    return new Set(this.slots.filter((s) => s.owner === this.rank).map((s) => s.name));
  }

  override loadOptimizerStateDict(optimizer: TrainerOptimizer, manifest: unknown): void {
    if (this.resumeState === undefined)
      throw new DistributedError(
        "CHECKPOINT",
        "FsdpStrategy: the optimizer shards were not read; resume FSDP checkpoints with fsdpCheckpointIO as the trainer's checkpointIO",
      );
    selectOptimizerState(manifest); // validates the manifest's format
    optimizer.loadStateDict(this.resumeState);
    this.resumeState = undefined;
  }

  override async teardown(): Promise<void> {
    this.releaseAll();
    await super.teardown();
  }
}

/** Bytes of a Linear4bit's 4-bit state tensors (the buffers the kernels read), from their storages. */
export function stateTensorBytes(m: Linear4bit): number {
  let bytes = 0;
  for (const [key, t] of Object.entries(m.stateDict())) if (key.startsWith("weight")) bytes += t.storage.bytes;
  return bytes;
}

/** Registers `strategy: fsdp` with the trainer's registry (MPI_COMM_WORLD unless given). */
export function registerFsdpStrategy(options: Partial<FsdpOptions> = {}): void {
  registerStrategy("fsdp", () => new FsdpStrategy({ communicator: options.communicator ?? mpiWorld() }));
}
