export { OptimError, type OptimErrorCode } from "./errors";
export {
  Optimizer,
  PAGED_MIN_ELEMENTS,
  MIN_8BIT_SIZE,
  STATE_FORMAT,
  type NamedParameters,
  type ParamGroupSpec,
  type ParamGroup,
  type BaseHyper,
  type StateOptions,
  type ParamState,
  type OptimizerStateDict,
} from "./optimizer";
export {
  AdamW,
  Lion,
  SGD,
  type AdamWOptions,
  type AdamWHyperparameters,
  type LionOptions,
  type LionHyperparameters,
  type SgdOptions,
  type SgdHyperparameters,
} from "./optimizers";
export { clipGradNorm, type ClipOptions } from "./clip";
export { loraPlusGroups, type LoraPlusOptions } from "./groups";
export { saveStateDict, loadStateDict, parseStateJson, STATE_JSON, STATE_TENSORS, type OptimizerStateJson } from "./io";
export {
  kernelsFor,
  referenceKernels,
  type OptimizerKernels,
  type OptimizerBackendOps,
  type Blockwise8bitBuffers,
} from "./kernels/table";
export * from "./kernels/reference";
export * from "./kernels/scalars";
export { createOptimizer, OPTIMIZER_NAMES, type OptimizerName } from "./factory";
