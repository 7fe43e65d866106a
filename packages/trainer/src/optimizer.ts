/**
 * The optimizer the trainer drives: anything with this shape (@qlora/paged-optim's optimizers, or an adapter
 * around another). `lr` is written by the scheduler before each step.
 */
export interface TrainerOptimizer {
  lr: number;
  step(): void | Promise<void>;
  zeroGrad(): void;
  /** Any JSON-like value whose leaves may be Tensors or typed arrays; saved as JSON + safetensors. */
  stateDict(): unknown;
  loadStateDict(state: unknown): void;
}
