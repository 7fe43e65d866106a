/**
 * When the backend's accumulating matmul (C = α·op(A)·op(B) + β·C) goes to the fused LoRA rank-r kernel
 * (csrc/kernels/lora.cu through the addon's `loraAccumulate`) instead of a GEMM into a temporary plus an add.
 * The kernel computes y[rows, n] += s · t[rows, r] · op(B) with r ≤ 64, t row-major and B stored [n, r]
 * (op = ᵀ) or [r, n]: the LoRA up-projection (y += s·(x·Aᵀ)·Bᵀ) and the LoRA part of the input gradient
 * (dx += (s·g·B)·A). A batch folds into rows only when B is shared by every batch matrix.
 */
import type { MatmulOptions } from "@qlora/tensor";

/** The kernel's limit on the inner dimension (its shared tiles hold r ≤ 64). */
export const LORA_MAX_RANK = 64;

export interface LoraAccumulatePlan {
  /** Rows of t and y (batch folded in). */
  readonly rows: number;
  readonly n: number;
  /** The inner dimension (the LoRA rank). */
  readonly r: number;
  /** B stored [n, r] (MatmulOptions.transB). */
  readonly bTransposed: boolean;
}

/** The kernel's launch for these options, or null when the general GEMM path must run. */
export function loraAccumulatePlan(o: MatmulOptions): LoraAccumulatePlan | null {
  if (!Number.isInteger(o.k) || o.k < 1 || o.k > LORA_MAX_RANK || o.transA) return null;
  const aStride = o.aBatchStride ?? o.m * o.k;
  const bStride = o.bBatchStride ?? o.k * o.n;
  if (o.batch !== 1 && !(bStride === 0 && aStride === o.m * o.k)) return null;
  return { rows: o.batch * o.m, n: o.n, r: o.k, bTransposed: !!o.transB };
}

/** QLORA_CUDA_LORA=unfused (read once by createCudaBackend) sends every accumulate through the GEMM path. */
export function loraRouteEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.QLORA_CUDA_LORA !== "unfused";
}
