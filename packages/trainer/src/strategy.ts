/**
 * The Strategy slot: how gradients, optimizer steps, collectives and state dicts work across processes
 * (Lightning's Strategy). Exactly one is active. The trainer core touches parameters and gradients only through
 * it, so a DDP or FSDP strategy (issue 16) slots in without changing the core.
 *
 * Gradient contract: the core divides every micro-batch loss by the loss-token count of the whole step summed
 * over all ranks, so `reduceGradients` must SUM gradients across ranks (not average) to reproduce one big batch.
 */
import { type Module, type Tensor, noGrad } from "@qlora/tensor";
import { TrainerError } from "./errors";
import type { TrainerOptimizer } from "./optimizer";

export type ReduceOp = "sum" | "avg" | "max" | "min";
export type NumericArray = Float32Array | Float64Array | Int32Array;

export interface StrategySetup {
  readonly model: Module;
  readonly optimizer: TrainerOptimizer;
  /** The parameters that require gradients, with their names in the model. */
  readonly params: ReadonlyMap<string, Tensor>;
}

export interface Strategy {
  readonly name: string;
  readonly rank: number;
  readonly worldSize: number;
  setup(s: StrategySetup): void | Promise<void>;
  /** May return a wrapper (sharded forward); the trainer calls the loss function with what this returns. */
  wrapModel<M extends Module>(model: M): M;
  backward(loss: Tensor): void | Promise<void>;
  /** After the last micro-batch of a step: make every rank's gradients the SUM over ranks. */
  reduceGradients(): void | Promise<void>;
  /** Global L2 norm of all gradients before clipping; scales them to maxNorm when it is given and exceeded. */
  clipGradients(maxNorm: number | undefined): number | Promise<number>;
  optimizerStep(optimizer: TrainerOptimizer): void | Promise<void>;
  zeroGrad(optimizer: TrainerOptimizer): void;
  allReduce(data: NumericArray, op: ReduceOp): Promise<void>;
  /** Every rank's data concatenated in rank order. */
  allGather(data: NumericArray): Promise<NumericArray>;
  /** Reduce over ranks, then each rank keeps its 1/worldSize slice (data.length divisible by worldSize). */
  reduceScatter(data: NumericArray, op: ReduceOp): Promise<NumericArray>;
  broadcast(data: NumericArray, root: number): Promise<void>;
  barrier(): Promise<void>;
  /** What a checkpoint saves of the model (trainable parameters): full, or this rank's shard. */
  modelStateDict(options: { full: boolean }): Record<string, Tensor>;
  optimizerStateDict(optimizer: TrainerOptimizer, options: { full: boolean }): unknown;
  loadOptimizerStateDict(optimizer: TrainerOptimizer, state: unknown): void;
  teardown(): void | Promise<void>;
}

/** Sum of squares of every gradient (f64 accumulation on the host). */
export function gradSquaredSum(params: Iterable<Tensor>): number {
  let s = 0;
  for (const p of params) {
    if (!p.grad) continue;
    const g = p.grad.toTypedArray();
    for (let i = 0; i < g.length; i++) s += g[i] * g[i];
  }
  return s;
}

/** Multiply every gradient by c (replacing the .grad tensors). */
export function scaleGradients(params: Iterable<Tensor>, c: number): void {
  noGrad(() => {
    for (const p of params) {
      if (!p.grad) continue;
      const old = p.grad;
      p.grad = old.mul(c);
      old.dispose();
    }
  });
}

/** torch.nn.utils.clip_grad_norm_: scale by maxNorm / (norm + 1e-6) when the norm exceeds maxNorm. */
export function clipByNorm(params: Iterable<Tensor>, norm: number, maxNorm: number | undefined): void {
  if (maxNorm === undefined || maxNorm <= 0 || !Number.isFinite(norm)) return;
  const coef = maxNorm / (norm + 1e-6);
  if (coef < 1) scaleGradients(params, coef);
}

/** One process: collectives are identities, state dicts are full. */
export class SingleProcessStrategy implements Strategy {
  readonly name = "single";
  readonly rank = 0;
  readonly worldSize = 1;
  private params: ReadonlyMap<string, Tensor> = new Map();

  setup(s: StrategySetup): void {
    this.params = s.params;
  }
  wrapModel<M extends Module>(model: M): M {
    return model;
  }
  backward(loss: Tensor): void {
    loss.backward();
  }
  reduceGradients(): void {}
  clipGradients(maxNorm: number | undefined): number {
    const norm = Math.sqrt(gradSquaredSum(this.params.values()));
    clipByNorm(this.params.values(), norm, maxNorm);
    return norm;
  }
  optimizerStep(optimizer: TrainerOptimizer): void | Promise<void> {
    return optimizer.step();
  }
  zeroGrad(optimizer: TrainerOptimizer): void {
    optimizer.zeroGrad();
  }
  async allReduce(): Promise<void> {}
  async allGather(data: NumericArray): Promise<NumericArray> {
    return data.slice();
  }
  async reduceScatter(data: NumericArray): Promise<NumericArray> {
    return data.slice();
  }
  async broadcast(): Promise<void> {}
  async barrier(): Promise<void> {}
  modelStateDict(): Record<string, Tensor> {
    return Object.fromEntries(this.params);
  }
  optimizerStateDict(optimizer: TrainerOptimizer): unknown {
    return optimizer.stateDict();
  }
  loadOptimizerStateDict(optimizer: TrainerOptimizer, state: unknown): void {
    optimizer.loadStateDict(state);
  }
  teardown(): void {}
}

/** Strategies by name (with presets): the CLI's `strategy: ddp` resolves here; distributed packages register theirs. */
const strategies = new Map<string, () => Strategy>([["single", () => new SingleProcessStrategy()]]);

export function registerStrategy(name: string, factory: () => Strategy): void {
  strategies.set(name, factory);
}

export function strategyByName(name: string): Strategy {
  const factory = strategies.get(name);
  if (!factory)
    throw new TrainerError(
      "BAD_ARGUMENT",
      `strategy "${name}" is not registered; registered: ${[...strategies.keys()].join(", ")}`,
    );
  return factory();
}
