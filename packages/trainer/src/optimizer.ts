/**
 * The optimizer the trainer drives: anything with this shape (@qlora/paged-optim's optimizers, tensor's AdamW).
 * Before each step the scheduler writes either every parameter group's lr or, for an optimizer without groups,
 * `lr`; the base is that value when the Trainer was built (as torch's LambdaLR), or args.learningRate for an
 * optimizer with neither.
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
