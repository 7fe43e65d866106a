/**
 * Collectives over raw typed arrays. Every call returns a handle at once (the transfer runs while the caller keeps
 * computing, e.g. the rest of backward); `await handle.done` waits for it, failing with a TIMEOUT DistributedError
 * when a peer does not arrive within the communicator's timeout (a dead rank never hangs the others).
 * All ranks must issue the same collectives in the same order with the same lengths and dtypes.
 */
import { DistributedError } from "./errors";

export type CommArray = Float32Array | Float64Array | Int32Array;
export type CommReduceOp = "sum" | "avg" | "max" | "min";

export interface CommHandle<T = void> {
  /** Resolves once this rank's part of the collective is complete. */
  readonly done: Promise<T>;
}

export interface Communicator {
  readonly rank: number;
  readonly worldSize: number;
  /** Milliseconds a collective may wait for its peers before failing with TIMEOUT. */
  readonly timeoutMs: number;
  /** In place: every rank's `data` becomes the elementwise reduction over ranks ("avg": sum / worldSize, floats only). */
  allReduce(data: CommArray, op: CommReduceOp): CommHandle;
  /** Every rank's `data` concatenated in rank order (same length on every rank). */
  allGather<T extends CommArray>(data: T): CommHandle<T>;
  /** Reduce over ranks, then rank r keeps slice r (data.length divisible by worldSize). */
  reduceScatter<T extends CommArray>(data: T, op: CommReduceOp): CommHandle<T>;
  /** In place: every rank's `data` becomes root's. */
  broadcast(data: CommArray, root: number): CommHandle;
  barrier(): CommHandle;
  /**
   * All-gather that returns only when complete (MPI_Iallgather + MPI_Test in a loop, same timeout): for callers
   * inside synchronous code that cannot await, i.e. FSDP gathering a layer's shards during autograd's backward.
   */
  allGatherBlocking?<T extends CommArray>(data: T): T;
  /** Lets pending transfers advance (MPI progresses nonblocking collectives only inside MPI calls). */
  progress(): void;
  /** Ends the whole job at once (every rank): for errors after which the collectives cannot continue. */
  abort(code: number): never;
  close(): Promise<void>;
}

/** The reference definitions every implementation is tested against (f64 accumulation in rank order). */
export const referenceCollectives = {
  allReduce(parts: readonly CommArray[], op: CommReduceOp): Float64Array {
    const out = new Float64Array(parts[0].length);
    for (let i = 0; i < out.length; i++) {
      let v = parts[0][i];
      for (let r = 1; r < parts.length; r++) {
        const x = parts[r][i];
        v = op === "max" ? Math.max(v, x) : op === "min" ? Math.min(v, x) : v + x;
      }
      out[i] = op === "avg" ? v / parts.length : v;
    }
    return out;
  },
  allGather(parts: readonly CommArray[]): Float64Array {
    return Float64Array.from(parts.flatMap((p) => Array.from(p)));
  },
  reduceScatter(parts: readonly CommArray[], op: CommReduceOp, rank: number): Float64Array {
    const all = referenceCollectives.allReduce(parts, op);
    const n = all.length / parts.length;
    return all.slice(rank * n, (rank + 1) * n);
  },
};

export function checkArray(what: string, data: unknown): asserts data is CommArray {
  if (!(data instanceof Float32Array || data instanceof Float64Array || data instanceof Int32Array))
    throw new DistributedError(
      "BAD_ARGUMENT",
      `${what}: data must be a Float32Array, Float64Array or Int32Array, got ${Object.prototype.toString.call(data)}`,
    );
}

export function checkOp(what: string, data: CommArray, op: unknown): asserts op is CommReduceOp {
  if (op !== "sum" && op !== "avg" && op !== "max" && op !== "min")
    throw new DistributedError("BAD_ARGUMENT", `${what}: op must be "sum", "avg", "max" or "min", got ${String(op)}`);
  if (op === "avg" && data instanceof Int32Array)
    throw new DistributedError("BAD_ARGUMENT", `${what}: op "avg" needs a float array (Int32Array given)`);
}
