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

function spawnWorker(): Worker {
  const url = new URL(import.meta.url.endsWith(".ts") ? "./node-worker.ts" : "./node-worker.js", import.meta.url);
  if (url.pathname.endsWith(".ts")) {
    // running from sources (monorepo tests): load the TypeScript worker through tsx
    const code = `import("tsx/esm/api").then((api) => { api.register(); return import(${JSON.stringify(url.href)}); });`;
    return new Worker(code, { eval: true });
  }
  return new Worker(url);
}

/**
 * quantize4bit split over worker threads by block-aligned ranges; the result is byte-identical to
 * `quantize4bit`. Workers write into SharedArrayBuffers. Input backed by a SharedArrayBuffer is shared
 * with the workers (zero-copy); other input is copied range by range into each worker's message.
 */
export async function quantize4bitParallel(
  input: Float32Array | Uint16Array,
  options: ParallelQuantizeOptions = {},
): Promise<QuantState4bit> {
  const r = resolveOptions(input, options);
  const n = input.length;
  const shape = options.shape ?? [n];
  if (checkShape(shape, "options.shape") !== n) {
    throw new Nf4Error("LENGTH_MISMATCH", `options.shape: ${describe(shape)} has ${checkShape(shape)} elements but input has ${n}`);
  }
  const threadsOpt = options.threads ?? availableParallelism();
  if (!Number.isSafeInteger(threadsOpt) || threadsOpt < 1) {
    throw new Nf4Error("INVALID_ARGUMENT", `options.threads: expected a positive integer, got ${describe(threadsOpt)}`);
  }
  const nb = Math.ceil(n / r.blocksize);
  const threads = Math.min(threadsOpt, nb);
  if (threads <= 1 || n < (options.minParallelElements ?? 1 << 20)) return quantize4bit(input, options);

  const packedSab = new SharedArrayBuffer(Math.ceil(n / 2));
  const absmaxSab = new SharedArrayBuffer(4 * nb);
  const blocksPer = Math.ceil(nb / threads);
  const shared = input.buffer instanceof SharedArrayBuffer;
  const workers: Worker[] = [];
  try {
    const jobs: Promise<void>[] = [];
    for (let t = 0; t < threads; t++) {
      const start = t * blocksPer * r.blocksize;
      const end = Math.min(n, (t + 1) * blocksPer * r.blocksize);
      if (start >= end) break;
      const view = shared ? input.subarray(start, end) : input.slice(start, end);
      const job: RangeJob = {
        id: t,
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
      const w = spawnWorker();
      workers.push(w);
      jobs.push(
        new Promise<void>((resolve, reject) => {
          w.once("message", (m: RangeResult) =>
            m.ok ? resolve() : reject(new Nf4Error("INVALID_ARGUMENT", `worker ${t}: ${m.message}`)),
          );
          w.once("error", reject);
          w.once("exit", (code) => reject(new Error(`@qlora/nf4/node: worker ${t} exited (code ${code}) before finishing`)));
        }),
      );
      w.postMessage(job, shared ? [] : [view.buffer as ArrayBuffer]);
    }
    await Promise.all(jobs);
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
  // plain (non-shared) arrays in the returned state, like quantize4bit's
  const packed = new Uint8Array(packedSab.byteLength);
  packed.set(new Uint8Array(packedSab));
  const absmax = new Float32Array(nb);
  absmax.set(new Float32Array(absmaxSab));
  return finish(r, shape, packed, absmax);
}
