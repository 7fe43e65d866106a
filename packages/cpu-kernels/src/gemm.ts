// Owned by the GEMM engineer: matmul, matmul4bit, matmul4bitInputGrad over the native addon.
import type { Backend } from "@qlora/tensor";

export const gemmOps: Partial<Backend> = {};
