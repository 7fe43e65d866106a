import { f64Tensor, gradCheckBackend } from "../src/testing/gradcheck";
import type { Backend } from "../src/backend/types";
import type { Tensor } from "../src/tensor";

export { gradCheck, randomValues } from "../src/testing/gradcheck";
export type { GradInput } from "../src/testing/gradcheck";

/** The f64 test-mode reference backend: f32 buffers are Float64Array (double-precision math). */
export const be64: Backend = gradCheckBackend;

/** A float64-valued tensor on be64 (values not rounded to f32). */
export function t64(values: ArrayLike<number>, shape: readonly number[], requiresGrad = false): Tensor {
  return f64Tensor(values, shape, requiresGrad);
}
