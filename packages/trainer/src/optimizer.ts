/**
 * The optimizer the trainer drives: anything with this shape (@qlora/paged-optim's optimizers, tensor's AdamW).
 * Before each step the scheduler writes either every parameter group's lr (base: the group's lr when the Trainer
 * was built, as torch's LambdaLR) or, for an optimizer without groups, `lr` (base: args.learningRate).
 */
export interface TrainerOptimizer {
  lr?: number;
  readonly paramGroups?: readonly { lr: number }[];
  step(): void | Promise<void>;
  zeroGrad(): void;
  /** Any JSON-like value whose leaves may be Tensors or typed arrays; saved as JSON + safetensors. */
  stateDict(): unknown;
  loadStateDict(state: unknown): void;
}
