// Worker side of @qlora/nf4/node: quantizes one block-aligned range into shared output buffers.
import { parentPort } from "node:worker_threads";
import { quantizeRangeF32 } from "./internal/kernel4";
import { CHUNK, toF32 } from "./quantize";
import type { FloatDType, QuantType } from "./types";

export interface RangeJob {
  id: number;
  quantType: QuantType;
  blocksize: number;
  /** "float32" means `data` holds float32 values; otherwise bf16/f16 bit patterns. */
  dtype: FloatDType;
  /** Input buffer (shared or transferred) and the view of this range inside it. */
  data: ArrayBufferLike;
  byteOffset: number;
  length: number;
  /** Flat element index of the range's first element in the whole tensor (block-aligned). */
  start: number;
  packed: SharedArrayBuffer;
  absmax: SharedArrayBuffer;
}

export type RangeResult = { id: number; ok: true } | { id: number; ok: false; message: string };

function run(job: RangeJob): void {
  const packed = new Uint8Array(job.packed);
  const absmax = new Float32Array(job.absmax);
  const pOut = job.start / 2;
  const aOut = job.start / job.blocksize;
  if (job.dtype === "float32") {
    const x = new Float32Array(job.data, job.byteOffset, job.length);
    quantizeRangeF32(job.quantType, x, 0, job.length, job.blocksize, packed, pOut, absmax, aOut);
    return;
  }
  const x = new Uint16Array(job.data, job.byteOffset, job.length);
  const buf = new Float32Array(Math.min(CHUNK, job.length));
  for (let s = 0; s < job.length; s += CHUNK) {
    const e = Math.min(s + CHUNK, job.length);
    toF32(x, job.dtype, s, e, buf);
    quantizeRangeF32(
      job.quantType,
      buf,
      0,
      e - s,
      job.blocksize,
      packed,
      pOut + s / 2,
      absmax,
      aOut + s / job.blocksize,
    );
  }
}

parentPort?.on("message", (job: RangeJob) => {
  try {
    run(job);
    parentPort?.postMessage({ id: job.id, ok: true } satisfies RangeResult);
  } catch (err) {
    parentPort?.postMessage({ id: job.id, ok: false, message: (err as Error).message } satisfies RangeResult);
  }
});
