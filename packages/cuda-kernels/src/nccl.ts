/**
 * NCCL communicator: the Communicator interface of @qlora/distributed (allReduce sum/avg/max/min, allGather,
 * reduceScatter, broadcast, barrier, async handles, timeouts), implemented structurally (this package does not
 * depend on @qlora/distributed) over libnccl.so.2 loaded with dlopen at run time (never linked).
 *
 * Start-up: rank 0 creates the ncclUniqueId and hands it to the other ranks through the TCP rendezvous of
 * ./rendezvous (MASTER_ADDR:MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK — torchrun's names, or Open MPI's under
 * mpirun); then every rank calls ncclCommInitRank on a worker thread (it blocks until all ranks join) for its GPU.
 * Collectives copy the host array to the GPU, run on the communicator's own CUDA stream, and copy back; the
 * event loop polls for completion, so awaiting never blocks Node and a collective whose peers do not arrive within
 * timeoutMs fails with TIMEOUT after ncclCommAbort (the communicator is unusable afterwards; end the process).
 *
 * Written and compiled without a GPU or an NCCL library: nothing of it has run on a GPU.
 */
import { CudaKernelsError } from "./errors";
import { requireCuda } from "./device";
import { type NativeCuda, tryLoadNative } from "./native";
import { type RendezvousEnv, rendezvous, rendezvousFromEnv } from "./rendezvous";

export type NcclArray = Float32Array | Float64Array | Int32Array;
export type NcclReduceOp = "sum" | "avg" | "max" | "min";
export interface NcclHandle<T = void> {
  readonly done: Promise<T>;
}

export const DEFAULT_NCCL_LIBRARIES: readonly string[] = ["libnccl.so.2", "libnccl.so"];
export const DEFAULT_NCCL_TIMEOUT_MS = 300_000;
const INSTALL_HINT =
  "install NCCL (NVIDIA's libnccl2 package, or `pip install nvidia-nccl-cu13` / `nvidia-nccl-cu12`) and put its " +
  "directory on LD_LIBRARY_PATH, or set QLORA_NCCL_LIBRARY to the full path of libnccl.so.2";

export interface NcclCommunicatorOptions {
  /** Default: RANK / OMPI_COMM_WORLD_RANK / PMI_RANK, else 0. */
  readonly rank?: number;
  /** Default: WORLD_SIZE / OMPI_COMM_WORLD_SIZE / PMI_SIZE, else 1. */
  readonly worldSize?: number;
  /** Rank 0's address for the rendezvous (default MASTER_ADDR, else 127.0.0.1). */
  readonly masterAddr?: string;
  /** Rendezvous port (default MASTER_PORT, else 29500). */
  readonly masterPort?: number;
  /** The GPU of this rank (default LOCAL_RANK / OMPI_COMM_WORLD_LOCAL_RANK, else rank). */
  readonly device?: number;
  /** Milliseconds the rendezvous, the init and each collective wait for peers (default
   * $QLORA_COLLECTIVE_TIMEOUT_MS, else 300000). */
  readonly timeoutMs?: number;
  /** libnccl name(s) or path(s) tried in order (default $QLORA_NCCL_LIBRARY, else libnccl.so.2, libnccl.so). */
  readonly library?: string | readonly string[];
}

export interface NcclAvailability {
  readonly ok: boolean;
  readonly reason?: string;
  readonly library?: string;
  /** ncclGetVersion, e.g. 22703 for 2.27.3. */
  readonly version?: number;
}

function libraryNames(library: NcclCommunicatorOptions["library"]): string[] {
  const names = library ?? process.env.QLORA_NCCL_LIBRARY ?? DEFAULT_NCCL_LIBRARIES;
  const list = typeof names === "string" ? [names] : [...names];
  if (list.length === 0 || !list.every((n) => typeof n === "string" && n.length > 0))
    throw new CudaKernelsError(
      "BAD_ARGUMENT",
      `nccl: library must be a non-empty name or path (or a non-empty list of them), got ${JSON.stringify(library)}`,
    );
  return list;
}

function loadNccl(names: string[]): { native: NativeCuda; library: string; version: number } {
  const { native, error } = tryLoadNative();
  if (!native)
    throw new CudaKernelsError(
      "NCCL_UNAVAILABLE",
      `nccl: cannot load the NCCL library (tried ${names.join(", ")}): ${error}`,
    );
  const s = native.ncclLoad(names);
  if (!s.loaded)
    throw new CudaKernelsError(
      "NCCL_UNAVAILABLE",
      `nccl: cannot load the NCCL library (tried ${names.join(", ")}: ${s.detail}); ${INSTALL_HINT}`,
    );
  return { native, library: s.library, version: s.version };
}

/** Whether libnccl loads here (no GPU needed) and why not. Never throws. */
export function ncclAvailability(library?: string | readonly string[]): NcclAvailability {
  try {
    const { library: lib, version } = loadNccl(libraryNames(library));
    return { ok: true, library: lib, version };
  } catch (error) {
    return { ok: false, reason: (error as Error).message };
  }
}

function positiveTimeout(timeoutMs: number | undefined): number {
  const t = timeoutMs ?? Number(process.env.QLORA_COLLECTIVE_TIMEOUT_MS ?? DEFAULT_NCCL_TIMEOUT_MS);
  if (!(Number.isFinite(t) && t > 0))
    throw new CudaKernelsError("BAD_ARGUMENT", `nccl: timeoutMs must be a positive number of milliseconds, got ${t}`);
  return t;
}

function resolveWorld(o: NcclCommunicatorOptions): RendezvousEnv {
  const env = rendezvousFromEnv();
  const worldSize = o.worldSize ?? env.worldSize;
  const rank = o.rank ?? env.rank;
  if (!Number.isInteger(worldSize) || worldSize < 1)
    throw new CudaKernelsError("BAD_ARGUMENT", `nccl: worldSize must be a positive integer, got ${worldSize}`);
  if (!Number.isInteger(rank) || rank < 0 || rank >= worldSize)
    throw new CudaKernelsError("BAD_ARGUMENT", `nccl: rank must be an integer in [0, ${worldSize}), got ${rank}`);
  const device = o.device ?? (o.rank === undefined ? env.localRank : rank);
  if (!Number.isInteger(device) || device < 0)
    throw new CudaKernelsError("BAD_ARGUMENT", `nccl: device must be a non-negative integer, got ${device}`);
  return {
    rank,
    worldSize,
    localRank: device,
    masterAddr: o.masterAddr ?? env.masterAddr,
    masterPort: o.masterPort ?? env.masterPort,
  };
}

/** Rejects with TIMEOUT when `p` has not settled within `ms`. */
function withTimeout<T>(p: Promise<T>, ms: number, message: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new CudaKernelsError("TIMEOUT", message())), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Creates this rank's communicator: checks the arguments, loads libnccl (NCCL_UNAVAILABLE naming the library and
 * what to install), requires a CUDA device (CudaUnavailableError), exchanges the unique id, initialises NCCL.
 */
export async function createNcclCommunicator(options: NcclCommunicatorOptions = {}): Promise<NcclCommunicator> {
  const timeoutMs = positiveTimeout(options.timeoutMs);
  const world = resolveWorld(options);
  const { native, library, version } = loadNccl(libraryNames(options.library));
  requireCuda();
  const id = await rendezvous({
    masterAddr: world.masterAddr,
    masterPort: world.masterPort,
    rank: world.rank,
    worldSize: world.worldSize,
    timeoutMs,
    payload: world.rank === 0 ? native.ncclUniqueId() : undefined,
  });
  let comm: number;
  try {
    comm = await withTimeout(
      native.ncclInitRank(id, world.worldSize, world.rank, world.localRank),
      timeoutMs,
      () =>
        `nccl: ncclCommInitRank on rank ${world.rank} of ${world.worldSize} (GPU ${world.localRank}) did not complete within ${timeoutMs} ms; its thread cannot be cancelled: end the process`,
    );
  } catch (error) {
    if (error instanceof CudaKernelsError) throw error;
    throw new CudaKernelsError(
      "NCCL_ERROR",
      `nccl: rank ${world.rank} of ${world.worldSize} (GPU ${world.localRank}): ${(error as Error).message}`,
    );
  }
  return new NcclCommunicator(native, comm, world.rank, world.worldSize, timeoutMs, library, version);
}

const KIND = { allReduce: 0, allGather: 1, reduceScatter: 2, broadcast: 3 } as const;
const OP: Record<NcclReduceOp, number> = { sum: 0, avg: 0, max: 2, min: 3 }; // ncclRedOp_t; avg = sum, then ÷ N

interface Pending {
  readonly slot: number;
  readonly what: string;
  readonly started: number;
  readonly out: NcclArray;
  resolve(): void;
  reject(e: Error): void;
}

function checkArray(what: string, data: unknown): asserts data is NcclArray {
  if (!(data instanceof Float32Array || data instanceof Float64Array || data instanceof Int32Array))
    throw new CudaKernelsError(
      "BAD_ARGUMENT",
      `nccl.${what}: data must be a Float32Array, Float64Array or Int32Array, got ${Object.prototype.toString.call(data)}`,
    );
}

function checkOp(what: string, data: NcclArray, op: unknown): asserts op is NcclReduceOp {
  if (op !== "sum" && op !== "avg" && op !== "max" && op !== "min")
    throw new CudaKernelsError(
      "BAD_ARGUMENT",
      `nccl.${what}: op must be "sum", "avg", "max" or "min", got ${String(op)}`,
    );
  if (op === "avg" && data instanceof Int32Array)
    throw new CudaKernelsError("BAD_ARGUMENT", `nccl.${what}: op "avg" needs a float array (Int32Array given)`);
}

/** One rank's NCCL communicator (see the module comment). Same contract as @qlora/distributed's Communicator. */
export class NcclCommunicator {
  private pending: Pending[] = [];
  private polling = false;
  private state: "open" | "aborted" | "closed" = "open";

  constructor(
    private readonly native: NativeCuda,
    private readonly comm: number,
    readonly rank: number,
    readonly worldSize: number,
    readonly timeoutMs: number,
    /** The libnccl that loaded. */
    readonly library: string,
    /** ncclGetVersion. */
    readonly ncclVersion: number,
  ) {}

  allReduce(data: NcclArray, op: NcclReduceOp): NcclHandle {
    checkArray("allReduce", data);
    checkOp("allReduce", data, op);
    const done = this.submit("allReduce", data, () =>
      this.native.ncclStart(this.comm, KIND.allReduce, OP[op], 0, data),
    );
    return {
      done:
        op === "avg"
          ? done.then(() => {
              this.divide(data);
            })
          : done,
    };
  }

  allGather<T extends NcclArray>(data: T): NcclHandle<T> {
    checkArray("allGather", data);
    const out = new (data.constructor as new (n: number) => T)(data.length * this.worldSize);
    const done = this.submit("allGather", out, () => this.native.ncclStart(this.comm, KIND.allGather, 0, 0, data));
    return { done: done.then(() => out) };
  }

  reduceScatter<T extends NcclArray>(data: T, op: NcclReduceOp): NcclHandle<T> {
    checkArray("reduceScatter", data);
    checkOp("reduceScatter", data, op);
    if (data.length % this.worldSize !== 0)
      throw new CudaKernelsError(
        "BAD_ARGUMENT",
        `nccl.reduceScatter: data.length ${data.length} is not divisible by the world size ${this.worldSize}`,
      );
    const out = new (data.constructor as new (n: number) => T)(data.length / this.worldSize);
    const done = this.submit("reduceScatter", out, () =>
      this.native.ncclStart(this.comm, KIND.reduceScatter, OP[op], 0, data),
    );
    return { done: done.then(() => (op === "avg" ? this.divide(out) : out)) };
  }

  broadcast(data: NcclArray, root: number): NcclHandle {
    checkArray("broadcast", data);
    if (!Number.isInteger(root) || root < 0 || root >= this.worldSize)
      throw new CudaKernelsError(
        "BAD_ARGUMENT",
        `nccl.broadcast: root must be a rank in [0, ${this.worldSize}), got ${root}`,
      );
    return {
      done: this.submit("broadcast", data, () => this.native.ncclStart(this.comm, KIND.broadcast, 0, root, data)),
    };
  }

  /** NCCL has no barrier: a one-element all-reduce (what torch.distributed does for NCCL too). */
  barrier(): NcclHandle {
    const token = new Int32Array(1);
    return { done: this.submit("barrier", token, () => this.native.ncclStart(this.comm, KIND.allReduce, 0, 0, token)) };
  }

  progress(): void {
    for (const p of [...this.pending]) this.testOne(p);
  }

  /** ncclCommAbort, then ends the process with `code` (the other ranks fail their collectives or time out). */
  abort(code: number): never {
    if (this.state === "open") {
      this.state = "aborted";
      this.native.ncclAbort(this.comm);
    }
    process.exit(code);
  }

  async close(): Promise<void> {
    if (this.state === "closed") return;
    if (this.pending.length > 0)
      throw new CudaKernelsError(
        "BAD_ARGUMENT",
        `nccl.close: ${this.pending.length} collectives still pending (${this.pending.map((p) => p.what).join(", ")}); await them first`,
      );
    const wasOpen = this.state === "open";
    this.state = "closed";
    if (wasOpen) this.native.ncclDestroy(this.comm);
  }

  private divide<T extends NcclArray>(a: T): T {
    for (let i = 0; i < a.length; i++) a[i] /= this.worldSize;
    return a;
  }

  private submit(what: string, out: NcclArray, start: () => number): Promise<void> {
    if (this.state !== "open")
      throw new CudaKernelsError(
        "BAD_ARGUMENT",
        `nccl.${what}: the communicator is ${this.state === "closed" ? "closed" : "aborted (after a timeout or an NCCL error)"}`,
      );
    let slot: number;
    try {
      slot = start();
    } catch (error) {
      throw new CudaKernelsError("NCCL_ERROR", `nccl.${what} on rank ${this.rank}: ${(error as Error).message}`);
    }
    return new Promise<void>((resolve, reject) => {
      const p: Pending = { slot, what, started: Date.now(), out, resolve, reject };
      this.pending.push(p);
      if (!this.testOne(p)) this.schedulePoll();
    });
  }

  /** Settles `p` when complete; an error or a timeout aborts the communicator and fails every pending call. */
  private testOne(p: Pending): boolean {
    if (!this.pending.includes(p)) return true; // already failed by an earlier call's abort
    let complete: boolean;
    try {
      complete = this.native.ncclTest(p.slot);
      if (complete) this.native.ncclFinish(p.slot, p.out);
    } catch (error) {
      this.failAll(
        new CudaKernelsError("NCCL_ERROR", `nccl.${p.what} on rank ${this.rank}: ${(error as Error).message}`),
      );
      return true;
    }
    if (complete) {
      this.pending.splice(this.pending.indexOf(p), 1);
      p.resolve();
      return true;
    }
    if (Date.now() - p.started > this.timeoutMs) {
      this.failAll(
        new CudaKernelsError(
          "TIMEOUT",
          `nccl.${p.what} on rank ${this.rank} of ${this.worldSize}: peers did not arrive within ${this.timeoutMs} ms (a rank died or diverged); the communicator was aborted`,
        ),
      );
      return true;
    }
    return false;
  }

  private failAll(error: CudaKernelsError): void {
    if (this.state === "open") {
      this.state = "aborted";
      try {
        this.native.ncclAbort(this.comm);
      } catch {
        // already broken: the error below says why
      }
    }
    const all = this.pending;
    this.pending = [];
    for (const q of all) q.reject(error);
  }

  /** Poll from the event loop: immediately at first, then every millisecond. */
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
