// Owned by the fused-ops engineer: attention, norms, rope, softmax, cross-entropy, swiglu,
// embedding, adamw, elementwise/reduce/copy over the native addon.
import type { Backend } from "@qlora/tensor";

export const fusedOps: Partial<Backend> = {};
