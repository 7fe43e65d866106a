export * from "./backend/types";
export { referenceBackend, createReferenceBackend, dtypeBytes } from "./backend/reference";
export type { ReferenceBackendOptions } from "./backend/reference";
export {
  checkQuantizeWeightArgs,
  quantizeWeightOnHost,
  NESTED_QUANT_MAP,
} from "./backend/quantize-weight";
export {
  registerBackend,
  unregisterBackend,
  getBackend,
  availableBackends,
  backendChoice,
  setDefaultBackend,
  backendForDevice,
} from "./backend/registry";
export { TensorError } from "./errors";
export { Generator, philox4x32, manualSeed, getGenerator } from "./random";
export {
  Tensor,
  tensor,
  fromArray,
  zeros,
  empty,
  ones,
  full,
  zerosLike,
  onesLike,
  arange,
  rand,
  randn,
  dropoutMask,
  tidy,
  keep,
  dispose,
  isFloat,
  numel,
  DTYPES,
} from "./tensor";
export type { Shape, CreateOptions, RandomOptions } from "./tensor";
export { memoryStats, resetPeakMemory, emptyCache } from "./memory";
export { HostAllocator, sizeClass, sharedHostAllocator } from "./backend/host-allocator";
export type { HostAllocatorStats } from "./backend/host-allocator";
export { noGrad, enableGrad, isGradEnabled, backward, freeGraph } from "./autograd";
export { checkpoint } from "./checkpoint";
export { registerGradRule, gradRuleFor } from "./graph";
export type { Node, GradRule } from "./graph";
export { gradRules } from "./grad-rules";
export { defineOp } from "./define-op";
export type {
  DefinedOp,
  OpDefinition,
  OpKernels,
  OpForward,
  OpBackward,
  ForwardContext,
  BackwardContext,
  OpImplementation,
} from "./define-op";
export { swiglu, swigluOp } from "./fused/swiglu";
export { linearCrossEntropy, linearCrossEntropyOp } from "./fused/linear-cross-entropy";
export type { LinearCrossEntropyOptions, LinearCrossEntropyResult } from "./fused/linear-cross-entropy";
export {
  add,
  sub,
  mul,
  div,
  pow,
  maximum,
  minimum,
  eq,
  gt,
  lt,
  unary,
  binary,
  sum,
  mean,
  max,
  min,
  matmul,
  softmax,
  logSoftmax,
  rmsNorm,
  rope,
  attention,
  crossEntropy,
  embedding,
  matmul4bit,
  addInPlace,
  matmulAccumulate,
  dropout,
  cat,
  stack,
  broadcastShapes,
} from "./ops";
export type { TensorLike, AttentionArgs, CrossEntropyArgs, QuantizedWeight } from "./ops";
export { Module } from "./nn/module";
export type { LoadResult } from "./nn/module";
export { ModuleList } from "./nn/containers";
export { Linear, Embedding, RMSNorm, Dropout } from "./nn/layers";
export type { LayerOptions } from "./nn/layers";
export { Linear4bit } from "./nn/linear4bit";
export type { Linear4bitOptions } from "./nn/linear4bit";
export { AdamW } from "./optim";
export type { AdamWConfig } from "./optim";
