/**
 * @qlora/nf4/node — Node-only helpers: parallel 4-bit quantization on worker_threads.
 * The main entry (`@qlora/nf4`) stays browser-safe; only this subpath imports `node:` modules.
 */
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { Nf4Error } from "./errors";
import { checkShape, describe } from "./internal/validate";
import type { RangeJob, RangeResult } from "./node-worker";
import { finish, quantize4bit, resolveOptions } from "./quantize";
import type { QuantState4bit, Quantize4bitOptions } from "./types";

export interface ParallelQuantizeOptions extends Quantize4bitOptions {
  /** Worker threads (default: os.availableParallelism()). 1 runs on the calling thread. */
  threads?: number;
  /** Below this many elements the work is done on the calling thread (default 1 << 20). */
  minParallelElements?: number;
}

/**
 * The parent's Node flags minus `--input-type`: a worker inherits `process.execArgv`, and Node refuses to start
 * a worker from a file under `--input-type` (ERR_INPUT_TYPE_NOT_ALLOWED), as when the parent ran
 * `node --input-type=module -e '…'`.
 */
function workerExecArgv(execArgv: readonly string[] = process.execArgv): string[] {
  const kept: string[] = [];
  for (let i = 0; i < execArgv.length; i++) {
    if (execArgv[i] === "--input-type")
      i++; // and its value
    else if (!execArgv[i]!.startsWith("--input-type=")) kept.push(execArgv[i]!);
  }
  return kept;
}

function tsxApi(): string {
  try {
    return import.meta.resolve("tsx/esm/api");
  } catch {
    return "tsx/esm/api";
  }
}

function spawnWorker(): Worker {
  const url = new URL(import.meta.url.endsWith(".ts") ? "./node-worker.ts" : "./node-worker.js", import.meta.url);
  const execArgv = workerExecArgv();
  if (url.pathname.endsWith(".ts")) {
    // running from sources (monorepo tests): load the TypeScript worker through tsx, resolved from this package (an
    // eval'd worker resolves bare names from the process's directory, which may have no tsx)
    const code = `import(${JSON.stringify(tsxApi())}).then((api) => { api.register(); return import(${JSON.stringify(url.href)}); });`;
    return new Worker(code, { eval: true, execArgv });
  }
  return new Worker(url, { execArgv });
}

/**
 * A reusable pool of quantization workers (spawning a worker costs tens of milliseconds, so keep a pool
 * when quantizing many tensors). Idle workers do not keep the process alive; `close()` terminates them.
 */
export class Nf4WorkerPool {
  readonly threads: number;
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, { resolve: () => void; reject: (e: Error) => void; worker: number }>();
  private nextId = 0;
  private closed = false;

  constructor(threads: number = availableParallelism()) {
    if (!Number.isSafeInteger(threads) || threads < 1) {
      throw new Nf4Error("INVALID_ARGUMENT", `threads: expected a positive integer, got ${describe(threads)}`);
    }
    this.threads = threads;
  }

  private worker(k: number): Worker {
    let w = this.workers[k];
    if (w === undefined) {
      w = spawnWorker();
      w.unref();
      w.on("message", (m: RangeResult) => {
        const p = this.pending.get(m.id);
        if (p === undefined) return;
        this.pending.delete(m.id);
        if (![...this.pending.values()].some((q) => q.worker === k)) w?.unref(); // idle workers don't hold the process
        if (m.ok) p.resolve();
        else p.reject(new Nf4Error("INVALID_ARGUMENT", `worker ${k}: ${m.message}`));
      });
      const fail = (e: Error) => {
        for (const [id, p] of this.pending) {
          if (p.worker === k) {
            this.pending.delete(id);
            p.reject(e);
          }
        }
      };
      w.on("error", fail);
      w.on("exit", (code) => {
        delete this.workers[k];
        fail(new Error(`@qlora/nf4/node: worker ${k} exited (code ${code})`));
      });
      this.workers[k] = w;
    }
    return w;
  }

  /** quantize4bit split by block-aligned ranges over the pool's workers; byte-identical result. */
  async quantize(input: Float32Array | Uint16Array, options: Quantize4bitOptions = {}): Promise<QuantState4bit> {
    if (this.closed) throw new Nf4Error("INVALID_ARGUMENT", "Nf4WorkerPool.quantize: the pool is closed");
    const r = resolveOptions(input, options);
    const n = input.length;
    const shape = options.shape ?? [n];
    const count = checkShape(shape, "options.shape");
    if (count !== n) {
      throw new Nf4Error(
        "LENGTH_MISMATCH",
        `options.shape: ${describe(shape)} has ${count} elements but input has ${n}`,
      );
    }
    const nb = Math.ceil(n / r.blocksize);
    const parts = Math.max(1, Math.min(this.threads, nb));
    const packedSab = new SharedArrayBuffer(Math.ceil(n / 2));
    const absmaxSab = new SharedArrayBuffer(4 * nb);
    const blocksPer = Math.ceil(nb / parts);
    const shared = input.buffer instanceof SharedArrayBuffer;
    const jobs: Promise<void>[] = [];
    for (let t = 0; t < parts; t++) {
      const start = t * blocksPer * r.blocksize;
      const end = Math.min(n, (t + 1) * blocksPer * r.blocksize);
      if (start >= end) break;
      const view = shared ? input.subarray(start, end) : input.slice(start, end);
      const id = this.nextId++;
      const job: RangeJob = {
        id,
        quantType: r.quantType,
        blocksize: r.blocksize,
        dtype: input instanceof Float32Array ? "float32" : r.dtype,
        data: view.buffer,
        byteOffset: view.byteOffset,
        length: view.length,
        start,
        packed: packedSab,
        absmax: absmaxSab,
      };
      const w = this.worker(t);
      jobs.push(new Promise<void>((resolve, reject) => this.pending.set(id, { resolve, reject, worker: t })));
      w.ref(); // keep the process alive while a job is pending
      w.postMessage(job, shared ? [] : [view.buffer as ArrayBuffer]);
    }
    await Promise.all(jobs);
    // plain (non-shared) arrays in the returned state, like quantize4bit's
    const packed = new Uint8Array(packedSab.byteLength);
    packed.set(new Uint8Array(packedSab));
    const absmax = new Float32Array(nb);
    absmax.set(new Float32Array(absmaxSab));
    return finish(r, shape, packed, absmax);
  }

  /** Terminates the workers. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.workers.filter((w) => w !== undefined).map((w) => w.terminate()));
  }
}

/**
 * quantize4bit split over worker threads by block-aligned ranges (a one-shot Nf4WorkerPool); the
 * result is byte-identical to `quantize4bit`. Workers write into SharedArrayBuffers. Input backed by a
 * SharedArrayBuffer is shared with the workers (zero-copy); other input is copied range by range into
 * each worker's message. Small inputs (< minParallelElements) run on the calling thread.
 */
export async function quantize4bitParallel(
  input: Float32Array | Uint16Array,
  options: ParallelQuantizeOptions = {},
): Promise<QuantState4bit> {
  const { threads = availableParallelism(), minParallelElements = 1 << 20, ...rest } = options;
  resolveOptions(input, rest);
  if (!Number.isSafeInteger(threads) || threads < 1) {
    throw new Nf4Error("INVALID_ARGUMENT", `options.threads: expected a positive integer, got ${describe(threads)}`);
  }
  if (threads === 1 || input.length < minParallelElements) return quantize4bit(input, rest);
  const pool = new Nf4WorkerPool(threads);
  try {
    return await pool.quantize(input, rest);
  } finally {
    await pool.close();
  }
}
