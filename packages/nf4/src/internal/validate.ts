import { Nf4Error } from "../errors";
import type { FloatDType, QuantType } from "../types";

/** 4-bit blocksizes of `quantize_4bit` (spec §2.1). */
export const BLOCKSIZES_4BIT: readonly number[] = [32, 64, 128, 256, 512, 1024, 2048, 4096];
/** 8-bit blocksizes of CUDA `quantize_blockwise` (spec §2.1). */
export const BLOCKSIZES_8BIT: readonly number[] = [64, 128, 256, 512, 1024, 2048, 4096];

export function describe(v: unknown): string {
  if (typeof v === "string") return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(describe).join(", ")}]`;
  if (v === null || typeof v !== "object") return String(v);
  return Object.prototype.toString.call(v).slice(8, -1);
}

export function checkBlocksize4(bs: unknown, arg = "blocksize"): number {
  if (typeof bs !== "number" || !BLOCKSIZES_4BIT.includes(bs)) {
    throw new Nf4Error(
      "INVALID_BLOCKSIZE",
      `${arg}: expected one of ${BLOCKSIZES_4BIT.join(", ")}, got ${describe(bs)}`,
    );
  }
  return bs;
}

export function checkBlocksize8(bs: unknown, arg = "blocksize"): number {
  if (typeof bs !== "number" || !BLOCKSIZES_8BIT.includes(bs)) {
    throw new Nf4Error(
      "INVALID_BLOCKSIZE",
      `${arg}: expected one of ${BLOCKSIZES_8BIT.join(", ")}, got ${describe(bs)}`,
    );
  }
  return bs;
}

export function checkQuantType(t: unknown, arg = "quantType"): QuantType {
  if (t !== "nf4" && t !== "fp4") {
    throw new Nf4Error("INVALID_QUANT_TYPE", `${arg}: expected "nf4" or "fp4", got ${describe(t)}`);
  }
  return t;
}

export function checkDType(t: unknown, arg = "dtype"): FloatDType {
  if (t !== "float32" && t !== "float16" && t !== "bfloat16") {
    throw new Nf4Error("INVALID_DTYPE", `${arg}: expected "float32", "float16" or "bfloat16", got ${describe(t)}`);
  }
  return t;
}

/** Validates a shape (array of non-negative safe integers) and returns its element count. */
export function checkShape(shape: unknown, arg = "shape"): number {
  if (!Array.isArray(shape)) {
    throw new Nf4Error("INVALID_SHAPE", `${arg}: expected an array of non-negative integers, got ${describe(shape)}`);
  }
  let n = 1;
  for (let i = 0; i < shape.length; i++) {
    const d: unknown = shape[i];
    if (typeof d !== "number" || !Number.isSafeInteger(d) || d < 0) {
      throw new Nf4Error(
        "INVALID_SHAPE",
        `${arg}[${i}]: expected a non-negative integer, got ${describe(d)} (shape ${describe(shape)})`,
      );
    }
    n *= d;
  }
  if (!Number.isSafeInteger(n)) {
    throw new Nf4Error("INVALID_SHAPE", `${arg}: element count of ${describe(shape)} is not a safe integer`);
  }
  return n;
}
