/**
 * DDP for @qlora/trainer's Strategy slot. Trainable parameters are grouped into buckets (reverse registration
 * order, the order backward usually finishes them); in the last micro-batch's backward, each parameter's
 * post-accumulate-grad hook marks it final, and a bucket whose parameters are all final is copied out and its
 * all-reduce started at once, so communication overlaps the rest of backward. Buckets start strictly in index
 * order on every rank (MPI needs the same collective order everywhere). reduceGradients starts what is left (a
 * parameter that got no gradient counts as zeros), waits, and writes the SUM over ranks back into .grad (the
 * trainer divides losses by the global token count, see @qlora/trainer's strategy.ts).
 */
import type { Module, Tensor } from "@qlora/tensor";
import {
  type NumericArray,
  registerStrategy,
  type ReduceOp,
  type Strategy,
  type StrategySetup,
  type TrainerOptimizer,
  clipByNorm,
  gradSquaredSum,
} from "@qlora/trainer";
import type { CommHandle, Communicator } from "./communicator";
import { DistributedError } from "./errors";
import { mpiWorld } from "./mpi";
import { CommunicatorStrategy, type FlatSlot, loadFlatIntoModel, requireF32Params, sliceLike } from "./strategy-base";

export interface DdpOptions {
  readonly communicator: Communicator;
  /** Bytes of f32 gradients per all-reduce (default 25 MiB, torch's bucket_cap_mb). */
  readonly bucketCapBytes?: number;
  /** Micro-batches per optimizer step (the trainer's gradientAccumulationSteps): only the last one communicates. */
  readonly gradientAccumulationSteps?: number;
  /** Start from rank 0's trainable parameters (broadcast at setup; default true). */
  readonly broadcastParameters?: boolean;
}

interface Bucket {
  readonly slots: FlatSlot[];
  readonly data: Float32Array;
  ready: number;
  handle?: CommHandle;
}

/** Bytes communicated by this rank, per collective kind (for the communication-volume figures). */
export interface CommStats {
  allReduceBytes: number;
  allReduceCalls: number;
  /** Bucket all-reduces started from a post-accumulate-grad hook, i.e. while backward was still running. */
  startedDuringBackward: number;
  /** Milliseconds reduceGradients spent waiting for all-reduces to finish (communication not hidden by backward). */
  waitMs: number;
}

export class DdpStrategy extends CommunicatorStrategy implements Strategy {
  readonly name = "ddp";
  readonly stats: CommStats = { allReduceBytes: 0, allReduceCalls: 0, startedDuringBackward: 0, waitMs: 0 };
  private readonly bucketCapBytes: number;
  private readonly accumulation: number;
  private params: ReadonlyMap<string, Tensor> = new Map();
  private buckets: Bucket[] = [];
  private bucketOf = new Map<Tensor, Bucket>();
  private final = new Set<Tensor>();
  private nextBucket = 0;
  private backwardCalls = 0;
  private hooks: { remove(): void }[] = [];
  private lateGradient: string | undefined;

  constructor(private readonly options: DdpOptions) {
    super(options.communicator);
    this.bucketCapBytes = options.bucketCapBytes ?? 25 * 2 ** 20;
    this.accumulation = options.gradientAccumulationSteps ?? 1;
    if (!(this.bucketCapBytes > 0))
      throw new DistributedError("BAD_ARGUMENT", `DdpStrategy: bucketCapBytes must be > 0, got ${this.bucketCapBytes}`);
    if (!(Number.isInteger(this.accumulation) && this.accumulation >= 1))
      throw new DistributedError(
        "BAD_ARGUMENT",
        `DdpStrategy: gradientAccumulationSteps must be an integer >= 1, got ${this.accumulation}`,
      );
  }
  async setup(s: StrategySetup): Promise<void> {
    this.params = s.params;
    requireF32Params("DdpStrategy", s.params);
    this.buildBuckets([...s.params].reverse());
    for (const p of s.params.values()) this.hooks.push(p.registerPostAccumulateGradHook((q) => this.onFinal(q)));
    if (this.options.broadcastParameters ?? true) await this.broadcastParameters(s.model);
  }

  private buildBuckets(order: [string, Tensor][]): void {
    const capElems = Math.max(1, Math.floor(this.bucketCapBytes / 4));
    let slots: FlatSlot[] = [];
    let size = 0;
    const flush = () => {
      if (slots.length === 0) return;
      const b: Bucket = { slots, data: new Float32Array(size), ready: 0 };
      this.buckets.push(b);
      for (const s of slots) this.bucketOf.set(s.param, b);
      slots = [];
      size = 0;
    };
    for (const [name, param] of order) {
      if (size > 0 && size + param.size > capElems) flush();
      slots.push({ name, param, offset: size });
      size += param.size;
    }
    flush();
  }

  /** Every rank starts from rank 0's trainable weights (one broadcast per bucket). */
  private async broadcastParameters(model: Module): Promise<void> {
    for (const b of this.buckets) {
      for (const s of b.slots) b.data.set(s.param.toTypedArray() as Float32Array, s.offset);
      await this.comm.broadcast(b.data, 0).done;
      loadFlatIntoModel(model, b.data, b.slots);
    }
  }

  wrapModel<M extends Module>(model: M): M {
    return model;
  }

  backward(loss: Tensor): void {
    this.backwardCalls++;
    loss.backward();
    this.comm.progress();
  }

  private onFinal(p: Tensor): void {
    if (this.backwardCalls < this.accumulation) return; // not the step's last micro-batch: accumulate locally
    const b = this.bucketOf.get(p);
    if (!b) return;
    if (b.handle) {
      // A gradient arrived after its bucket was sent: more micro-batches than gradientAccumulationSteps.
      this.lateGradient ??= `a gradient arrived after its bucket was all-reduced (backward call ${this.backwardCalls}); set DdpStrategy's gradientAccumulationSteps to the trainer's (${this.accumulation} given)`;
      return;
    }
    if (this.final.has(p)) return;
    this.final.add(p);
    b.ready++;
    this.startReadyBuckets();
  }

  private startReadyBuckets(): void {
    while (this.nextBucket < this.buckets.length) {
      const b = this.buckets[this.nextBucket];
      if (b.ready < b.slots.length) return;
      this.start(b);
      this.stats.startedDuringBackward++;
    }
  }

  private start(b: Bucket): void {
    for (const { param, offset } of b.slots) {
      if (param.grad) b.data.set(param.grad.toTypedArray() as Float32Array, offset);
      else b.data.fill(0, offset, offset + param.size);
    }
    b.handle = this.comm.allReduce(b.data, "sum");
    this.stats.allReduceBytes += b.data.byteLength;
    this.stats.allReduceCalls++;
    this.nextBucket++;
  }

  async reduceGradients(): Promise<void> {
    if (this.lateGradient) throw new DistributedError("ACCUMULATION_MISMATCH", `DdpStrategy: ${this.lateGradient}`);
    while (this.nextBucket < this.buckets.length) this.start(this.buckets[this.nextBucket]);
    for (const b of this.buckets) {
      const t0 = performance.now();
      await b.handle?.done;
      this.stats.waitMs += performance.now() - t0;
      for (const { param, offset } of b.slots) {
        const old = param.grad;
        param.grad = sliceLike(b.data, offset, param);
        old?.dispose();
      }
    }
    this.resetStep();
  }

  private resetStep(): void {
    for (const b of this.buckets) {
      b.ready = 0;
      b.handle = undefined;
    }
    this.final.clear();
    this.nextBucket = 0;
    this.backwardCalls = 0;
  }

  /** After reduceGradients every rank holds the same gradients, so the local norm is the global one. */
  clipGradients(maxNorm: number | undefined): number {
    const norm = Math.sqrt(gradSquaredSum(this.params.values()));
    clipByNorm(this.params.values(), norm, maxNorm);
    return norm;
  }
  optimizerStep(optimizer: TrainerOptimizer): void | Promise<void> {
    return optimizer.step();
  }
  zeroGrad(optimizer: TrainerOptimizer): void {
    // A skipped step (non-finite loss) may leave buckets in flight: they complete on every rank alike, and
    // their results are dropped here. Waiting for them happens in teardown or the next reduceGradients' awaits.
    this.drainInFlight();
    optimizer.zeroGrad();
  }
  private inFlight: Promise<void>[] = [];
  private drainInFlight(): void {
    for (const b of this.buckets) if (b.handle) this.inFlight.push(b.handle.done);
    this.resetStep();
  }

  /** Waits first for the buckets a skipped step left in flight. */
  override async allReduce(data: NumericArray, op: ReduceOp): Promise<void> {
    await this.settleInFlight();
    await super.allReduce(data, op);
  }
  private async settleInFlight(): Promise<void> {
    const pending = this.inFlight;
    this.inFlight = [];
    await Promise.all(pending);
  }
  modelStateDict(): Record<string, Tensor> {
    return Object.fromEntries(this.params);
  }
  optimizerStateDict(optimizer: TrainerOptimizer): unknown {
    return optimizer.stateDict();
  }
  loadOptimizerStateDict(optimizer: TrainerOptimizer, state: unknown): void {
    optimizer.loadStateDict(state);
  }
  async teardown(): Promise<void> {
    await this.settleInFlight();
    for (const h of this.hooks) h.remove();
    this.hooks = [];
  }
}

/**
 * Registers `strategy: ddp` with the trainer's name registry (what the CLI resolves). The communicator defaults
 * to MPI_COMM_WORLD, created when the strategy is first built (so registering needs no MPI).
 */
export function registerDdpStrategy(options: Partial<DdpOptions> = {}): void {
  registerStrategy("ddp", () => new DdpStrategy({ ...options, communicator: options.communicator ?? mpiWorld() }));
}
