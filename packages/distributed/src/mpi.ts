/**
 * Communicator over the system's MPI (Open MPI, libmpi.so.40), loaded at run time through a small N-API addon
 * (csrc/mpi.cc) so the package installs and imports without MPI. Collectives are MPI-3 nonblocking calls whose
 * requests are polled from the event loop; a request older than the timeout fails with TIMEOUT.
 */
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  type CommArray,
  type CommHandle,
  type CommReduceOp,
  type Communicator,
  checkArray,
  checkOp,
} from "./communicator";
import { DistributedError } from "./errors";

interface MpiAddon {
  load(path: string): void;
  init(): { rank: number; size: number; version: string };
  start(kind: number, dtype: number, op: number, send?: CommArray, recv?: CommArray, root?: number): number;
  test(slot: number): boolean;
  finalize(): void;
  abort(code: number): void;
}

const KIND = { allReduce: 0, allGather: 1, reduceScatter: 2, broadcast: 3, barrier: 4 } as const;
const OP: Record<CommReduceOp, number> = { sum: 0, avg: 0, max: 1, min: 2 };

export const DEFAULT_MPI_LIBRARY = "libmpi.so.40";
export const DEFAULT_TIMEOUT_MS = 300_000;

function dtypeCode(data: CommArray): number {
  return data instanceof Float32Array ? 0 : data instanceof Float64Array ? 1 : 2;
}

let addon: MpiAddon | undefined;
function loadAddon(library: string): MpiAddon {
  if (addon) return addon;
  let a: MpiAddon;
  try {
    const require = createRequire(import.meta.url);
    a = require("node-gyp-build")(join(dirname(fileURLToPath(import.meta.url)), "..")) as MpiAddon;
  } catch (error) {
    throw new DistributedError(
      "MPI_UNAVAILABLE",
      `the @qlora/distributed MPI binding is not built (run its build:native script): ${(error as Error).message}`,
    );
  }
  try {
    a.load(library);
  } catch (error) {
    throw new DistributedError(
      "MPI_UNAVAILABLE",
      `cannot load the MPI library ${library} (Open MPI; install openmpi-bin and libopenmpi-dev, or set QLORA_MPI_LIBRARY to its path): ${(error as Error).message}`,
    );
  }
  addon = a;
  return a;
}

/** Whether MPI can be used here, and why not (for skip reasons). Does not initialise MPI. */
export function mpiAvailability(library = process.env.QLORA_MPI_LIBRARY ?? DEFAULT_MPI_LIBRARY): {
  ok: boolean;
  reason?: string;
} {
  try {
    loadAddon(library);
    return { ok: true };
  } catch (error) {
    return { ok: false, reason: (error as Error).message };
  }
}

/** True when this process was started by mpirun/mpiexec (Open MPI or a PMI launcher sets these). */
export function launchedByMpi(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.OMPI_COMM_WORLD_SIZE !== undefined || env.PMI_SIZE !== undefined || env.PMIX_RANK !== undefined;
}

interface Pending {
  slot: number;
  what: string;
  started: number;
  resolve(): void;
  reject(e: Error): void;
}

export interface MpiCommunicatorOptions {
  /** Path or soname of libmpi (default $QLORA_MPI_LIBRARY or libmpi.so.40). */
  library?: string;
  /** Milliseconds a collective waits for its peers (default $QLORA_COLLECTIVE_TIMEOUT_MS or 300000). */
  timeoutMs?: number;
}

export class MpiCommunicator implements Communicator {
  readonly rank: number;
  readonly worldSize: number;
  readonly timeoutMs: number;
  /** MPI_Get_library_version's text. */
  readonly libraryVersion: string;
  private readonly a: MpiAddon;
  private pending: Pending[] = [];
  private polling = false;
  private closed = false;

  constructor(options: MpiCommunicatorOptions = {}) {
    const library = options.library ?? process.env.QLORA_MPI_LIBRARY ?? DEFAULT_MPI_LIBRARY;
    const timeoutMs = options.timeoutMs ?? Number(process.env.QLORA_COLLECTIVE_TIMEOUT_MS ?? DEFAULT_TIMEOUT_MS);
    if (!(Number.isFinite(timeoutMs) && timeoutMs > 0))
      throw new DistributedError(
        "BAD_ARGUMENT",
        `timeoutMs must be a positive number of milliseconds, got ${timeoutMs}`,
      );
    this.timeoutMs = timeoutMs;
    this.a = loadAddon(library);
    let info: { rank: number; size: number; version: string };
    try {
      info = this.a.init();
    } catch (error) {
      throw new DistributedError("MPI_ERROR", `MPI_Init failed: ${(error as Error).message}`);
    }
    this.rank = info.rank;
    this.worldSize = info.size;
    this.libraryVersion = info.version.trim();
    // A script that never calls close() still finalizes when its event loop empties (Open MPI reports a rank
    // that exits without MPI_Finalize as a failed job).
    process.once("beforeExit", () => {
      if (!this.closed && this.pending.length === 0) {
        this.closed = true;
        this.a.finalize();
      }
    });
  }

  allReduce(data: CommArray, op: CommReduceOp): CommHandle {
    checkArray("allReduce", data);
    checkOp("allReduce", data, op);
    const done = this.submit("allReduce", () => this.a.start(KIND.allReduce, dtypeCode(data), OP[op], data));
    if (op !== "avg") return { done };
    return {
      done: done.then(() => {
        for (let i = 0; i < data.length; i++) data[i] /= this.worldSize;
      }),
    };
  }

  allGather<T extends CommArray>(data: T): CommHandle<T> {
    checkArray("allGather", data);
    const out = new (data.constructor as new (n: number) => T)(data.length * this.worldSize);
    const done = this.submit("allGather", () => this.a.start(KIND.allGather, dtypeCode(data), 0, data, out));
    return { done: done.then(() => out) };
  }

  allGatherBlocking<T extends CommArray>(data: T): T {
    checkArray("allGatherBlocking", data);
    if (this.closed) throw new DistributedError("BAD_ARGUMENT", "allGatherBlocking: the communicator is closed");
    const out = new (data.constructor as new (n: number) => T)(data.length * this.worldSize);
    let slot: number;
    try {
      slot = this.a.start(KIND.allGather, dtypeCode(data), 0, data, out);
    } catch (error) {
      throw new DistributedError("MPI_ERROR", `allGatherBlocking on rank ${this.rank}: ${(error as Error).message}`);
    }
    this.waitBlocking(slot, "allGatherBlocking");
    return out;
  }

  /**
   * MPI_Test until complete: spin for the first millisecond, then sleep 0.1 ms between tests (Atomics.wait) so
   * an oversubscribed peer on the same core gets the CPU. Other pending requests progress inside MPI_Test too.
   */
  private waitBlocking(slot: number, what: string): void {
    const started = Date.now();
    const nap = new Int32Array(new SharedArrayBuffer(4));
    for (;;) {
      let complete: boolean;
      try {
        complete = this.a.test(slot);
      } catch (error) {
        throw new DistributedError("MPI_ERROR", `${what} on rank ${this.rank}: ${(error as Error).message}`);
      }
      if (complete) return;
      const waited = Date.now() - started;
      if (waited > this.timeoutMs)
        throw new DistributedError(
          "TIMEOUT",
          `${what} on rank ${this.rank} of ${this.worldSize}: peers did not arrive within ${this.timeoutMs} ms (a rank died or diverged)`,
        );
      if (waited >= 1) Atomics.wait(nap, 0, 0, 0.1);
    }
  }

  reduceScatter<T extends CommArray>(data: T, op: CommReduceOp): CommHandle<T> {
    checkArray("reduceScatter", data);
    checkOp("reduceScatter", data, op);
    if (data.length % this.worldSize !== 0)
      throw new DistributedError(
        "BAD_ARGUMENT",
        `reduceScatter: data.length ${data.length} is not divisible by the world size ${this.worldSize}`,
      );
    const out = new (data.constructor as new (n: number) => T)(data.length / this.worldSize);
    const done = this.submit("reduceScatter", () =>
      this.a.start(KIND.reduceScatter, dtypeCode(data), OP[op], data, out),
    );
    return {
      done: done.then(() => {
        if (op === "avg") for (let i = 0; i < out.length; i++) out[i] /= this.worldSize;
        return out;
      }),
    };
  }

  broadcast(data: CommArray, root: number): CommHandle {
    checkArray("broadcast", data);
    if (!Number.isInteger(root) || root < 0 || root >= this.worldSize)
      throw new DistributedError(
        "BAD_ARGUMENT",
        `broadcast: root must be a rank in [0, ${this.worldSize}), got ${root}`,
      );
    return { done: this.submit("broadcast", () => this.a.start(KIND.broadcast, dtypeCode(data), 0, data, data, root)) };
  }

  barrier(): CommHandle {
    return { done: this.submit("barrier", () => this.a.start(KIND.barrier, 0, 0)) };
  }

  progress(): void {
    for (const p of [...this.pending]) this.testOne(p);
  }

  abort(code: number): never {
    this.a.abort(code);
    process.exit(code); // MPI_Abort does not return; this line is for the type checker
  }

  async close(): Promise<void> {
    if (this.closed) return;
    if (this.pending.length > 0)
      throw new DistributedError(
        "BAD_ARGUMENT",
        `close: ${this.pending.length} collectives still pending (${this.pending.map((p) => p.what).join(", ")}); await them first`,
      );
    this.closed = true;
    this.a.finalize();
  }

  private submit(what: string, start: () => number): Promise<void> {
    if (this.closed) throw new DistributedError("BAD_ARGUMENT", `${what}: the communicator is closed`);
    let slot: number;
    try {
      slot = start();
    } catch (error) {
      throw new DistributedError("MPI_ERROR", `${what} on rank ${this.rank}: ${(error as Error).message}`);
    }
    return new Promise<void>((resolve, reject) => {
      const p: Pending = { slot, what, started: Date.now(), resolve, reject };
      this.pending.push(p);
      if (!this.testOne(p)) this.schedulePoll();
    });
  }

  /** MPI_Test one request; settles it when complete, failed or timed out. */
  private testOne(p: Pending): boolean {
    let complete: boolean;
    try {
      complete = this.a.test(p.slot);
    } catch (error) {
      this.settle(p);
      p.reject(new DistributedError("MPI_ERROR", `${p.what} on rank ${this.rank}: ${(error as Error).message}`));
      return true;
    }
    if (complete) {
      this.settle(p);
      p.resolve();
      return true;
    }
    if (Date.now() - p.started > this.timeoutMs) {
      // The request stays posted inside MPI (it cannot be cancelled): the job must end, see abort().
      this.settle(p);
      p.reject(
        new DistributedError(
          "TIMEOUT",
          `${p.what} on rank ${this.rank} of ${this.worldSize}: peers did not arrive within ${this.timeoutMs} ms (a rank died or diverged)`,
        ),
      );
      return true;
    }
    return false;
  }

  private settle(p: Pending): void {
    const i = this.pending.indexOf(p);
    if (i >= 0) this.pending.splice(i, 1);
  }

  /** Poll from the event loop: immediately at first, then every millisecond (no busy loop under oversubscription). */
  private schedulePoll(): void {
    if (this.polling) return;
    this.polling = true;
    const since = Date.now();
    const tick = () => {
      this.progress();
      if (this.pending.length === 0) {
        this.polling = false;
        return;
      }
      if (Date.now() - since < 1) setImmediate(tick);
      else setTimeout(tick, 1);
    };
    setImmediate(tick);
  }
}

let world: MpiCommunicator | undefined;
/** The process's MPI communicator over MPI_COMM_WORLD (MPI_Init once per process). */
export function mpiWorld(options: MpiCommunicatorOptions = {}): MpiCommunicator {
  world ??= new MpiCommunicator(options);
  return world;
}
