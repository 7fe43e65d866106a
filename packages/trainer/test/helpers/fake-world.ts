/**
 * An in-process "world" of N ranks for testing the Strategy slot: collectives rendezvous through promises, so N
 * trainers running concurrently in one event loop behave like N processes doing DDP.
 */
import { type Module, type Tensor, tensor } from "@qlora/tensor";
import {
  type NumericArray,
  type ReduceOp,
  type Strategy,
  type StrategySetup,
  type TrainerOptimizer,
  clipByNorm,
  gradSquaredSum,
} from "../../src/index";

export class FakeWorld {
  private readonly rounds = new Map<number, { data: NumericArray[]; waiters: (() => void)[] }>();
  private readonly counters: number[];
  constructor(readonly size: number) {
    this.counters = new Array(size).fill(0);
  }
  /** Every rank's data of this rank's next collective, once all ranks arrived. */
  async exchange(rank: number, data: NumericArray): Promise<NumericArray[]> {
    const id = this.counters[rank]++;
    let round = this.rounds.get(id);
    if (!round) {
      round = { data: new Array(this.size), waiters: [] };
      this.rounds.set(id, round);
    }
    round.data[rank] = data.slice();
    const r = round;
    if (r.data.filter(Boolean).length < this.size) await new Promise<void>((res) => r.waiters.push(res));
    else for (const w of r.waiters) w();
    return r.data;
  }
}

function reduce(parts: NumericArray[], op: ReduceOp): Float64Array {
  const out = new Float64Array(parts[0].length);
  for (let i = 0; i < out.length; i++) {
    let v = parts[0][i];
    for (const p of parts.slice(1)) v = op === "max" ? Math.max(v, p[i]) : op === "min" ? Math.min(v, p[i]) : v + p[i];
    out[i] = op === "avg" ? v / parts.length : v;
  }
  return out;
}

/** DDP over a FakeWorld that logs its calls and flags when grads may be touched. */
export class FakeRankStrategy implements Strategy {
  readonly name = "fake-ddp";
  readonly calls: string[] = [];
  /** True while one of this strategy's methods that own the gradients is running. */
  inside = false;
  params: ReadonlyMap<string, Tensor> = new Map();
  constructor(
    readonly world: FakeWorld,
    readonly rank: number,
  ) {}
  get worldSize() {
    return this.world.size;
  }
  private async owning<T>(name: string, fn: () => T | Promise<T>): Promise<T> {
    this.calls.push(name);
    this.inside = true;
    try {
      return await fn();
    } finally {
      this.inside = false;
    }
  }
  setup(s: StrategySetup) {
    this.calls.push("setup");
    this.params = s.params;
  }
  wrapModel<M extends Module>(m: M): M {
    this.calls.push("wrapModel");
    return m;
  }
  backward(loss: Tensor) {
    return this.owning("backward", () => loss.backward());
  }
  reduceGradients() {
    return this.owning("reduceGradients", async () => {
      for (const p of this.params.values()) {
        const local = p.grad ? (p.grad.toTypedArray() as Float32Array) : new Float32Array(p.size);
        const sum = reduce(await this.world.exchange(this.rank, local), "sum");
        p.grad?.dispose();
        p.grad = tensor(Float32Array.from(sum), { shape: [...p.shape] });
      }
    });
  }
  clipGradients(maxNorm: number | undefined) {
    return this.owning("clipGradients", () => {
      const norm = Math.sqrt(gradSquaredSum(this.params.values()));
      clipByNorm(this.params.values(), norm, maxNorm);
      return norm;
    });
  }
  optimizerStep(o: TrainerOptimizer) {
    return this.owning("optimizerStep", () => o.step());
  }
  zeroGrad(o: TrainerOptimizer) {
    this.calls.push("zeroGrad");
    this.inside = true;
    o.zeroGrad();
    this.inside = false;
  }
  async allReduce(data: NumericArray, op: ReduceOp) {
    this.calls.push(`allReduce:${op}`);
    data.set(reduce(await this.world.exchange(this.rank, data), op));
  }
  async allGather(data: NumericArray) {
    const parts = await this.world.exchange(this.rank, data);
    return Float64Array.from(parts.flatMap((p) => [...p]));
  }
  async reduceScatter(data: NumericArray, op: ReduceOp) {
    const all = reduce(await this.world.exchange(this.rank, data), op);
    const n = all.length / this.worldSize;
    return all.slice(this.rank * n, (this.rank + 1) * n);
  }
  async broadcast(data: NumericArray, root: number) {
    data.set((await this.world.exchange(this.rank, data))[root]);
  }
  async barrier() {
    this.calls.push("barrier");
    await this.world.exchange(this.rank, new Float64Array(1));
  }
  modelStateDict() {
    this.calls.push("modelStateDict");
    return Object.fromEntries(this.params);
  }
  optimizerStateDict(o: TrainerOptimizer) {
    this.calls.push("optimizerStateDict");
    return o.stateDict();
  }
  loadOptimizerStateDict(o: TrainerOptimizer, s: unknown) {
    o.loadStateDict(s);
  }
  teardown() {
    this.calls.push("teardown");
  }
}

/** Make every access to p.grad outside `allowed()` a recorded violation. */
export function guardGrads(params: Iterable<Tensor>, allowed: () => boolean, violations: string[]): void {
  for (const p of params) {
    let g = p.grad;
    Object.defineProperty(p, "grad", {
      configurable: true,
      get() {
        if (!allowed()) violations.push(`read ${p}`);
        return g;
      },
      set(v) {
        if (!allowed()) violations.push(`write ${p}`);
        g = v;
      },
    });
  }
}
