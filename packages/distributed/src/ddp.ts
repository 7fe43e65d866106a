/**
 * DDP for @qlora/trainer's Strategy slot. Trainable parameters are grouped into buckets (reverse registration
 * order, the order backward usually finishes them); in the last micro-batch's backward, each parameter's
 * post-accumulate-grad hook marks it final, and a bucket whose parameters are all final is copied out and its
 * all-reduce started at once, so communication overlaps the rest of backward. Buckets start strictly in index
 * order on every rank (MPI needs the same collective order everywhere). reduceGradients starts what is left (a
 * parameter that got no gradient counts as zeros), waits, and writes the SUM over ranks back into .grad (the
 * trainer divides losses by the global token count, see @qlora/trainer's strategy.ts).
 */
import { type Module, type Tensor, tensor } from "@qlora/tensor";
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
import type { CommArray, CommHandle, Communicator } from "./communicator";
import { DistributedError } from "./errors";
import { mpiWorld } from "./mpi";

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
  readonly params: Tensor[];
  readonly offsets: number[];
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

export class DdpStrategy implements Strategy {
  readonly name = "ddp";
  readonly comm: Communicator;
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
    this.comm = options.communicator;
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
  get rank(): number {
    return this.comm.rank;
  }
  get worldSize(): number {
    return this.comm.worldSize;
  }

  async setup(s: StrategySetup): Promise<void> {
    this.params = s.params;
    for (const [name, p] of s.params)
      if (p.dtype !== "f32")
        throw new DistributedError(
          "BAD_ARGUMENT",
          `DdpStrategy: trainable parameter "${name}" is ${p.dtype}; f32 expected`,
        );
    this.buildBuckets([...s.params.values()].reverse());
    for (const p of s.params.values()) this.hooks.push(p.registerPostAccumulateGradHook((q) => this.onFinal(q)));
    if (this.options.broadcastParameters ?? true) await this.broadcastParameters(s.model);
  }

  private buildBuckets(order: Tensor[]): void {
    const capElems = Math.max(1, Math.floor(this.bucketCapBytes / 4));
    let cur: Tensor[] = [];
    let size = 0;
    const flush = () => {
      if (cur.length === 0) return;
      const offsets: number[] = [];
      let o = 0;
      for (const p of cur) {
        offsets.push(o);
        o += p.size;
      }
      const b: Bucket = { params: cur, offsets, data: new Float32Array(o), ready: 0 };
      this.buckets.push(b);
      for (const p of cur) this.bucketOf.set(p, b);
      cur = [];
      size = 0;
    };
    for (const p of order) {
      if (size > 0 && size + p.size > capElems) flush();
      cur.push(p);
      size += p.size;
    }
    flush();
  }

  /** Every rank starts from rank 0's trainable weights (one broadcast per bucket). */
  private async broadcastParameters(model: Module): Promise<void> {
    const names = new Map([...this.params].map(([n, p]) => [p, n]));
    for (const b of this.buckets) {
      for (const [i, p] of b.params.entries()) b.data.set(p.toTypedArray() as Float32Array, b.offsets[i]);
      await this.comm.broadcast(b.data, 0).done;
      const sd: Record<string, Tensor> = {};
      b.params.forEach((p, i) => {
        const slice = b.data.slice(b.offsets[i], b.offsets[i] + p.size);
        sd[names.get(p) as string] = tensor(slice, { shape: [...p.shape], backend: p.backend });
      });
      model.loadStateDict(sd, { strict: false }); // copies in place
      for (const t of Object.values(sd)) t.dispose();
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
      if (b.ready < b.params.length) return;
      this.start(b);
      this.stats.startedDuringBackward++;
    }
  }

  private start(b: Bucket): void {
    b.params.forEach((p, i) => {
      if (p.grad) b.data.set(p.grad.toTypedArray() as Float32Array, b.offsets[i]);
      else b.data.fill(0, b.offsets[i], b.offsets[i] + p.size);
    });
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
      b.params.forEach((p, i) => {
        const old = p.grad;
        p.grad = tensor(b.data.slice(b.offsets[i], b.offsets[i] + p.size), { shape: [...p.shape], backend: p.backend });
        old?.dispose();
      });
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

  async allReduce(data: NumericArray, op: ReduceOp): Promise<void> {
    await this.settleInFlight();
    await this.comm.allReduce(data as CommArray, op).done;
  }
  async allGather(data: NumericArray): Promise<NumericArray> {
    return this.comm.allGather(data as CommArray).done;
  }
  async reduceScatter(data: NumericArray, op: ReduceOp): Promise<NumericArray> {
    return this.comm.reduceScatter(data as CommArray, op).done;
  }
  async broadcast(data: NumericArray, root: number): Promise<void> {
    await this.comm.broadcast(data as CommArray, root).done;
  }
  async barrier(): Promise<void> {
    await this.comm.barrier().done;
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
