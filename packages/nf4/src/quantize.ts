import { quantizeBlockwise8bitInto } from "./blockwise8bit";
import { Nf4Error } from "./errors";
import { bf16ToF32, f16Table } from "./half";
import { quantizeRangeF32 } from "./internal/kernel4";
import { checkBlocksize4, checkDType, checkQuantType, checkShape, describe } from "./internal/validate";
import { DYNAMIC_MAP_SIGNED } from "./tables";
import type { FloatDType, NestedAbsmax, QuantState4bit, Quantize4bitOptions, QuantType } from "./types";

/** Elements converted per step for bf16/f16 input (a multiple of every blocksize). */
export const CHUNK = 1 << 16;

export interface Resolved {
  quantType: QuantType;
  blocksize: number;
  doubleQuant: boolean;
  dtype: FloatDType;
}

/** @internal Validates quantize options (shared with the node subpath). */
export function resolveOptions(input: unknown, options: Quantize4bitOptions | undefined): Resolved {
  const o = options ?? {};
  if (typeof o !== "object") {
    throw new Nf4Error("INVALID_ARGUMENT", `options: expected an object, got ${describe(o)}`);
  }
  const quantType = checkQuantType(o.quantType ?? "nf4", "options.quantType");
  const blocksize = checkBlocksize4(o.blocksize ?? 64, "options.blocksize");
  const doubleQuant = o.doubleQuant ?? false;
  if (typeof doubleQuant !== "boolean") {
    throw new Nf4Error("INVALID_ARGUMENT", `options.doubleQuant: expected a boolean, got ${describe(doubleQuant)}`);
  }
  let dtype: FloatDType;
  if (input instanceof Uint16Array) {
    if (o.dtype !== "bfloat16" && o.dtype !== "float16") {
      throw new Nf4Error(
        "INVALID_DTYPE",
        `options.dtype: a Uint16Array input needs "bfloat16" or "float16" to say what its bit patterns are, got ${describe(o.dtype)}`,
      );
    }
    dtype = o.dtype;
  } else if (input instanceof Float32Array) {
    dtype = checkDType(o.dtype ?? "float32", "options.dtype");
  } else {
    throw new Nf4Error(
      "INVALID_ARGUMENT",
      `input: expected a Float32Array (values) or a Uint16Array (bf16/f16 bit patterns), got ${describe(input)}`,
    );
  }
  return { quantType, blocksize, doubleQuant, dtype };
}

/** Converts bf16/f16 bit patterns [start, end) into `out` (float32). */
export function toF32(input: Uint16Array, dtype: FloatDType, start: number, end: number, out: Float32Array): void {
  if (dtype === "bfloat16") {
    bf16ToF32(input.subarray(start, end), out);
  } else {
    const t = f16Table();
    for (let i = start, j = 0; i < end; i++, j++) out[j] = t[input[i]];
  }
}

/**
 * Double quantization (spec §5.1): offset = fl32(mean(absmax)) (float64 accumulation),
 * x = fl32(absmax - offset), 8-bit blockwise quantization of x with the signed dynamic map, blocksize 256.
 */
export function doubleQuantize(absmax: Float32Array): NestedAbsmax {
  if (!(absmax instanceof Float32Array)) {
    throw new Nf4Error("INVALID_ARGUMENT", `absmax: expected a Float32Array, got ${describe(absmax)}`);
  }
  const nb = absmax.length;
  let sum = 0;
  for (let i = 0; i < nb; i++) sum += absmax[i];
  const offset = nb === 0 ? 0 : Math.fround(sum / nb);
  const nestedBlocksize = 256;
  const qabsmax = new Uint8Array(nb);
  const nestedAbsmax = new Float32Array(Math.ceil(nb / nestedBlocksize));
  const code = DYNAMIC_MAP_SIGNED.slice();
  quantizeBlockwise8bitInto(absmax, code, nestedBlocksize, qabsmax, nestedAbsmax, offset);
  return { qabsmax, nestedAbsmax, code, nestedBlocksize, offset };
}

export function finish(r: Resolved, shape: number[], packed: Uint8Array, absmax: Float32Array): QuantState4bit {
  return {
    quantType: r.quantType,
    blocksize: r.blocksize,
    dtype: r.dtype,
    shape: shape.slice(),
    packed,
    absmax: r.doubleQuant ? doubleQuantize(absmax) : absmax,
  };
}

/**
 * Quantizes a tensor to 4 bits exactly as bitsandbytes' CUDA `quantize_4bit` (spec §2–§3, §5).
 * `input`: float32 values, or bf16/f16 bit patterns as Uint16Array (then `options.dtype` says which;
 * they are converted in block-aligned chunks, never as a whole).
 */
export function quantize4bit(input: Float32Array | Uint16Array, options?: Quantize4bitOptions): QuantState4bit {
  return quantizeImpl(input, options, undefined);
}

/** Caller-provided output buffers for quantize4bitInto. */
export interface Quantize4bitBuffers {
  /** At least ceil(n/2) bytes; the state's `packed` is a view of the first ceil(n/2). */
  packed: Uint8Array;
  /** At least ceil(n/blocksize) values; the state's (pre-double-quant) absmax is a view of the first ones. */
  absmax: Float32Array;
}

/**
 * quantize4bit writing into caller-provided (reusable) buffers: no per-call allocation of the packed
 * codes or absmax (double quantization still allocates its small arrays).
 */
export function quantize4bitInto(
  input: Float32Array | Uint16Array,
  out: Quantize4bitBuffers,
  options?: Quantize4bitOptions,
): QuantState4bit {
  return quantizeImpl(input, options, out);
}

function quantizeImpl(
  input: Float32Array | Uint16Array,
  options: Quantize4bitOptions | undefined,
  out: Quantize4bitBuffers | undefined,
): QuantState4bit {
  const r = resolveOptions(input, options);
  const n = input.length;
  const shape = options?.shape ?? [n];
  const count = checkShape(shape, "options.shape");
  if (count !== n) {
    throw new Nf4Error("LENGTH_MISMATCH", `options.shape: ${describe(shape)} has ${count} elements but input has ${n}`);
  }
  const nBytes = Math.ceil(n / 2);
  const nb = Math.ceil(n / r.blocksize);
  let packed: Uint8Array;
  let absmax: Float32Array;
  if (out === undefined) {
    packed = new Uint8Array(nBytes);
    absmax = new Float32Array(nb);
  } else {
    if (!(out?.packed instanceof Uint8Array) || out.packed.length < nBytes) {
      throw new Nf4Error(
        "LENGTH_MISMATCH",
        `out.packed: expected a Uint8Array of at least ${nBytes} bytes, got ${describe(out?.packed)}${out?.packed instanceof Uint8Array ? ` of ${out.packed.length}` : ""}`,
      );
    }
    if (!(out.absmax instanceof Float32Array) || out.absmax.length < nb) {
      throw new Nf4Error(
        "LENGTH_MISMATCH",
        `out.absmax: expected a Float32Array of at least ${nb} values, got ${describe(out.absmax)}${out.absmax instanceof Float32Array ? ` of ${out.absmax.length}` : ""}`,
      );
    }
    packed = out.packed.subarray(0, nBytes);
    absmax = out.absmax.subarray(0, nb);
  }
  if (input instanceof Float32Array) {
    quantizeRangeF32(r.quantType, input, 0, n, r.blocksize, packed, 0, absmax, 0);
  } else {
    const buf = new Float32Array(Math.min(CHUNK, n));
    for (let s = 0; s < n; s += CHUNK) {
      const e = Math.min(s + CHUNK, n);
      toF32(input, r.dtype, s, e, buf);
      quantizeRangeF32(r.quantType, buf, 0, e - s, r.blocksize, packed, s >>> 1, absmax, s / r.blocksize);
    }
  }
  return finish(r, shape, packed, absmax);
}

/** Output of one Quantizer4bit.push/finish call: the packed bytes and absmax of the blocks completed. */
export interface Quantized4bitChunk {
  /** Element index (in the whole tensor) of the first element covered by this chunk. */
  start: number;
  /** Number of elements covered. */
  length: number;
  packed: Uint8Array;
  absmax: Float32Array;
}

export interface Quantizer4bitOptions {
  quantType?: QuantType;
  blocksize?: number;
  /** dtype of Uint16Array chunks ("bfloat16" | "float16"); Float32Array chunks are always values. */
  dtype?: FloatDType;
}

/**
 * Streaming 4-bit quantizer: push chunks of any length (Float32Array values or bf16/f16 bit patterns),
 * get back the packed bytes and absmax of every block completed so far; `finish()` flushes the last
 * (partial) block. Only less than one block of input is buffered; chunks are not copied otherwise.
 * The concatenation of all emitted `packed` / `absmax` equals `quantize4bit` of the concatenated input.
 */
export class Quantizer4bit {
  readonly quantType: QuantType;
  readonly blocksize: number;
  readonly dtype: FloatDType;
  private readonly carry: Float32Array;
  private carryLen = 0;
  private pos = 0;
  private done = false;
  private scratch: Float32Array | undefined;

  constructor(options: Quantizer4bitOptions = {}) {
    this.quantType = checkQuantType(options.quantType ?? "nf4", "options.quantType");
    this.blocksize = checkBlocksize4(options.blocksize ?? 64, "options.blocksize");
    this.dtype = checkDType(options.dtype ?? "float32", "options.dtype");
    this.carry = new Float32Array(this.blocksize);
  }

  /** Number of elements pushed so far. */
  get length(): number {
    return this.pos + this.carryLen;
  }

  push(chunk: Float32Array | Uint16Array): Quantized4bitChunk {
    if (this.done) throw new Nf4Error("STREAM_FINISHED", "Quantizer4bit.push: the stream was already finished");
    if (chunk instanceof Uint16Array) {
      if (this.dtype === "float32") {
        throw new Nf4Error(
          "INVALID_DTYPE",
          `chunk: a Uint16Array chunk needs options.dtype "bfloat16" or "float16" in the Quantizer4bit constructor, got "float32"`,
        );
      }
    } else if (!(chunk instanceof Float32Array)) {
      throw new Nf4Error("INVALID_ARGUMENT", `chunk: expected a Float32Array or Uint16Array, got ${describe(chunk)}`);
    }
    const bs = this.blocksize;
    const start = this.pos;
    const nBlocks = Math.floor((this.carryLen + chunk.length) / bs);
    const out: Quantized4bitChunk = {
      start,
      length: nBlocks * bs,
      packed: new Uint8Array((nBlocks * bs) / 2),
      absmax: new Float32Array(nBlocks),
    };
    let blocksDone = 0;
    if (chunk instanceof Float32Array) {
      blocksDone = this.feed(chunk, out, blocksDone);
    } else {
      // bf16/f16: convert at most CHUNK elements at a time into a reused scratch buffer
      this.scratch ??= new Float32Array(CHUNK);
      for (let s = 0; s < chunk.length; s += CHUNK) {
        const e = Math.min(s + CHUNK, chunk.length);
        const f32 = this.scratch.subarray(0, e - s);
        toF32(chunk, this.dtype, s, e, f32);
        blocksDone = this.feed(f32, out, blocksDone);
      }
    }
    this.pos += nBlocks * bs;
    return out;
  }

  /** Quantizes the carry + `f32` blocks into `out` from block `blocksDone`; keeps the remainder. */
  private feed(f32: Float32Array, out: Quantized4bitChunk, blocksDone: number): number {
    const bs = this.blocksize;
    let used = 0;
    let done = blocksDone;
    if (this.carryLen > 0) {
      const need = bs - this.carryLen;
      if (f32.length < need) {
        this.carry.set(f32, this.carryLen);
        this.carryLen += f32.length;
        return done;
      }
      this.carry.set(f32.subarray(0, need), this.carryLen);
      quantizeRangeF32(this.quantType, this.carry, 0, bs, bs, out.packed, (done * bs) / 2, out.absmax, done);
      used = need;
      done++;
      this.carryLen = 0;
    }
    const full = Math.floor((f32.length - used) / bs) * bs;
    quantizeRangeF32(this.quantType, f32, used, used + full, bs, out.packed, (done * bs) / 2, out.absmax, done);
    done += full / bs;
    used += full;
    const rest = f32.length - used;
    if (rest > 0) {
      this.carry.set(f32.subarray(used), 0);
      this.carryLen = rest;
    }
    return done;
  }

  /** Flushes the final partial block (if any) and closes the stream. */
  finish(): Quantized4bitChunk {
    if (this.done) throw new Nf4Error("STREAM_FINISHED", "Quantizer4bit.finish: the stream was already finished");
    this.done = true;
    const n = this.carryLen;
    const packed = new Uint8Array(Math.ceil(n / 2));
    const absmax = new Float32Array(n > 0 ? 1 : 0);
    if (n > 0) quantizeRangeF32(this.quantType, this.carry, 0, n, this.blocksize, packed, 0, absmax, 0);
    const start = this.pos;
    this.pos += n;
    this.carryLen = 0;
    return { start, length: n, packed, absmax };
  }
}

/**
 * Quantizes a tensor given as an iterable of chunks (e.g. rows or slices read from a file) into one
 * QuantState4bit, without ever holding the input as one array. `options.shape` is required (it gives n,
 * so output buffers are allocated once); the chunks must add up to n elements.
 */
export function quantize4bitChunks(
  chunks: Iterable<Float32Array | Uint16Array>,
  options: Quantize4bitOptions & { shape: number[] },
): QuantState4bit {
  const n = checkShape(options?.shape, "options.shape");
  const probe = options.dtype === "bfloat16" || options.dtype === "float16" ? new Uint16Array(0) : new Float32Array(0);
  const r = resolveOptions(probe, options);
  const q = new Quantizer4bit({ quantType: r.quantType, blocksize: r.blocksize, dtype: r.dtype });
  const packed = new Uint8Array(Math.ceil(n / 2));
  const absmax = new Float32Array(Math.ceil(n / r.blocksize));
  const put = (c: Quantized4bitChunk): void => {
    if (c.start + c.length > n) {
      throw new Nf4Error(
        "LENGTH_MISMATCH",
        `chunks: more than the ${n} elements of options.shape ${describe(options.shape)}`,
      );
    }
    packed.set(c.packed, c.start >>> 1);
    absmax.set(c.absmax, c.start / r.blocksize);
  };
  for (const chunk of chunks) {
    if (q.length + chunk.length > n) {
      throw new Nf4Error(
        "LENGTH_MISMATCH",
        `chunks: more than the ${n} elements of options.shape ${describe(options.shape)}`,
      );
    }
    put(q.push(chunk));
  }
  put(q.finish());
  if (q.length !== n) {
    throw new Nf4Error(
      "LENGTH_MISMATCH",
      `chunks: got ${q.length} elements, options.shape ${describe(options.shape)} has ${n}`,
    );
  }
  return finish(r, options.shape, packed, absmax);
}
