import { checkState } from "./dequantize";
import { Nf4Error } from "./errors";
import { checkBlocksize4, checkShape, describe } from "./internal/validate";
import { quantStateJson } from "./serialize";
import type { QuantState4bit } from "./types";

export interface StorageOptions {
  /** Default 64. */
  blocksize?: number;
  /** Default false. */
  doubleQuant?: boolean;
  /** Also count the 64-byte quant_map and (nested) the 1024-byte nested_quant_map tensors. Default false. */
  includeMaps?: boolean;
}

/** Byte counts of a 4-bit tensor, per bitsandbytes tensor. */
export interface StorageBreakdown {
  numel: number;
  /** `weight`: ceil(n/2). */
  packed: number;
  /** `weight.absmax`: 4·nBlocks (float32) or nBlocks (uint8 when double-quantized). */
  absmax: number;
  /** `weight.nested_absmax`: 4·ceil(nBlocks/256) (double quant only). */
  nestedAbsmax: number;
  /** `weight.quant_map` (64) + `weight.nested_quant_map` (1024): only with includeMaps. */
  maps: number;
  /** The quant_state JSON bytes: only from storageOfState (exact), else 0. */
  json: number;
  total: number;
  /** 8·total / numel (NaN for an empty tensor). */
  bitsPerParam: number;
}

/**
 * Exact storage of a 4-bit tensor of `shape` (a shape array or an element count). Counted by default:
 * packed codes + absmax (+ nested absmax) — the payload behind the 4.5 / ≈4.127 bits/param figures at
 * blocksize 64. Not counted unless asked: the 16/256-entry code maps (`includeMaps`); never counted here:
 * the JSON (see storageOfState), the float32 `nested_offset` lives in that JSON.
 */
export function storageBytes(shape: number[] | number, options: StorageOptions = {}): StorageBreakdown {
  let n: number;
  if (typeof shape === "number") {
    if (!Number.isSafeInteger(shape) || shape < 0) {
      throw new Nf4Error(
        "INVALID_SHAPE",
        `shape: expected a non-negative integer element count, got ${describe(shape)}`,
      );
    }
    n = shape;
  } else {
    n = checkShape(shape, "shape");
  }
  const bs = checkBlocksize4(options.blocksize ?? 64, "options.blocksize");
  const dq = options.doubleQuant ?? false;
  const nb = Math.ceil(n / bs);
  const packed = Math.ceil(n / 2);
  const absmax = dq ? nb : 4 * nb;
  const nestedAbsmax = dq ? 4 * Math.ceil(nb / 256) : 0;
  const maps = options.includeMaps ? 64 + (dq ? 1024 : 0) : 0;
  const total = packed + absmax + nestedAbsmax + maps;
  return { numel: n, packed, absmax, nestedAbsmax, maps, json: 0, total, bitsPerParam: (8 * total) / n };
}

/** Every byte packQuantState(state) writes (uint8 storage): payload, both maps and the exact JSON length. */
export function storageOfState(state: QuantState4bit): StorageBreakdown {
  const n = checkState(state);
  const dq = !(state.absmax instanceof Float32Array);
  const s = storageBytes(n, { blocksize: state.blocksize, doubleQuant: dq, includeMaps: true });
  const json = new TextEncoder().encode(quantStateJson(state)).length;
  const total = s.total + json;
  return { ...s, json, total, bitsPerParam: (8 * total) / n };
}
