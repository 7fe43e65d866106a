/**
 * Sharded gradients and optimizer state (ZeRO stage 2) for the trainer's Strategy slot: each trainable parameter
 * is owned by one rank (greedy size balance, the same on every rank). Gradients are reduce-scattered so each rank
 * receives only the sums of the parameters it owns; the optimizer steps only those (the others' .grad is dropped,
 * and paged-optim/torch optimizers skip parameters without a gradient, so their state is never allocated: about
 * 1/N of the optimizer state per rank); then the updated parameters are all-gathered. Every rank keeps full
 * parameters, and the frozen base is NOT sharded: this is not yet the FSDP of issue 16.
 */
import type { Module, Tensor } from "@qlora/tensor";
import {
  registerStrategy,
  type Strategy,
  type StrategySetup,
  type TrainerOptimizer,
  clipByNorm,
  gradSquaredSum,
} from "@qlora/trainer";
import type { Communicator } from "./communicator";
import { DistributedError } from "./errors";
import { mpiWorld } from "./mpi";
import { CommunicatorStrategy, type FlatSlot, loadFlatIntoModel, requireF32Params, sliceLike } from "./strategy-base";

export interface ShardedOptions {
  readonly communicator: Communicator;
}

/** A trainable parameter, its owner rank and its offset in the flat [worldSize × partition] buffer. */
export interface Slot extends FlatSlot {
  readonly owner: number;
}

export class ShardedOptimizerStrategy extends CommunicatorStrategy implements Strategy {
  readonly name: string = "sharded-optimizer";
  protected model: Module | undefined;
  protected slots: Slot[] = [];
  protected partition = 0;
  /** Bytes reduce-scattered and all-gathered by this rank (payload handed to MPI, whole buffers), and ms waited. */
  readonly stats = { reduceScatterBytes: 0, allGatherBytes: 0, reduceScatterMs: 0, allGatherMs: 0 };

  constructor(options: ShardedOptions) {
    super(options.communicator);
  }
  protected get owned(): Tensor[] {
    return this.slots.filter((s) => s.owner === this.rank).map((s) => s.param);
  }

  async setup(s: StrategySetup): Promise<void> {
    this.model = s.model;
    const entries = [...s.params];
    requireF32Params("ShardedOptimizerStrategy", entries);
    // Largest first onto the least-loaded rank (ties: lowest rank): deterministic, so every rank agrees.
    const load = new Array(this.worldSize).fill(0);
    const owner = new Map<string, number>();
    for (const [name, p] of [...entries].sort((a, b) => b[1].size - a[1].size || (a[0] < b[0] ? -1 : 1))) {
      const r = load.indexOf(Math.min(...load));
      owner.set(name, r);
      load[r] += p.size;
    }
    this.partition = Math.max(1, ...load);
    const cursor = load.map((_, r) => r * this.partition);
    this.slots = entries.map(([name, param]) => {
      const o = owner.get(name) as number;
      const slot = { name, param, owner: o, offset: cursor[o] };
      cursor[o] += param.size;
      return slot;
    });
    // Every rank starts from rank 0's weights.
    const flat = this.flatParams();
    await this.comm.broadcast(flat, 0).done;
    this.loadFlat(flat, () => true);
  }

  private flatParams(): Float32Array {
    const flat = new Float32Array(this.partition * this.worldSize);
    for (const s of this.slots) flat.set(s.param.toTypedArray() as Float32Array, s.offset);
    return flat;
  }

  private loadFlat(flat: Float32Array, which: (s: Slot) => boolean): void {
    loadFlatIntoModel(this.model as Module, flat, this.slots.filter(which));
  }

  wrapModel<M extends Module>(model: M): M {
    return model;
  }
  backward(loss: Tensor): void {
    loss.backward();
  }

  /** Reduce-scatter: this rank's gradients become the sums over ranks for the parameters it owns; others dropped. */
  async reduceGradients(): Promise<void> {
    const flat = new Float32Array(this.partition * this.worldSize);
    for (const s of this.slots) if (s.param.grad) flat.set(s.param.grad.toTypedArray() as Float32Array, s.offset);
    this.stats.reduceScatterBytes += flat.byteLength;
    const t0 = performance.now();
    const mine = await this.comm.reduceScatter(flat, "sum").done;
    this.stats.reduceScatterMs += performance.now() - t0;
    const base = this.rank * this.partition;
    for (const s of this.slots) {
      const old = s.param.grad;
      s.param.grad = s.owner === this.rank ? sliceLike(mine, s.offset - base, s.param) : null;
      old?.dispose();
    }
  }

  async clipGradients(maxNorm: number | undefined): Promise<number> {
    const sq = new Float64Array([gradSquaredSum(this.owned)]);
    await this.comm.allReduce(sq, "sum").done;
    const norm = Math.sqrt(sq[0]);
    clipByNorm(this.owned, norm, maxNorm);
    return norm;
  }

  /** Step the owned parameters, then all-gather every rank's updated partition. */
  async optimizerStep(optimizer: TrainerOptimizer): Promise<void> {
    await optimizer.step();
    const part = new Float32Array(this.partition);
    const base = this.rank * this.partition;
    for (const s of this.slots)
      if (s.owner === this.rank) part.set(s.param.toTypedArray() as Float32Array, s.offset - base);
    const t0 = performance.now();
    const all = await this.comm.allGather(part).done;
    this.stats.allGatherMs += performance.now() - t0;
    this.stats.allGatherBytes += all.byteLength;
    this.loadFlat(all, (s) => s.owner !== this.rank);
  }
  zeroGrad(optimizer: TrainerOptimizer): void {
    optimizer.zeroGrad();
  }
  /** Every rank holds full parameters after each step. */
  modelStateDict(): Record<string, Tensor> {
    return Object.fromEntries(this.slots.map((s) => [s.name, s.param]));
  }
  optimizerStateDict(optimizer: TrainerOptimizer): unknown {
    if (this.worldSize > 1)
      throw new DistributedError(
        "NOT_SUPPORTED",
        "ShardedOptimizerStrategy: checkpoints of sharded optimizer state (per-rank shards) are not implemented; train without saveSteps or use the ddp strategy",
      );
    return optimizer.stateDict();
  }
  loadOptimizerStateDict(optimizer: TrainerOptimizer, state: unknown): void {
    if (this.worldSize > 1)
      throw new DistributedError(
        "NOT_SUPPORTED",
        "ShardedOptimizerStrategy: resuming sharded optimizer state is not implemented; use the ddp strategy",
      );
    optimizer.loadStateDict(state);
  }
  teardown(): void {}
}

/** Registers `strategy: sharded-optimizer` with the trainer's registry (MPI_COMM_WORLD unless given). */
export function registerShardedOptimizerStrategy(options: Partial<ShardedOptions> = {}): void {
  registerStrategy(
    "sharded-optimizer",
    () => new ShardedOptimizerStrategy({ communicator: options.communicator ?? mpiWorld() }),
  );
}
