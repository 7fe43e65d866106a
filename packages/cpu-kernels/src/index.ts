export { loadNative, CpuKernelsLoadError, type NativeModule } from "./load";
export { CpuKernelsError } from "./errors";
export {
  cpuBackend,
  createCpuBackend,
  registerCpuBackend,
  cpuBackendInfo,
  COMPUTE_OPS,
  type ComputeOp,
  type CpuBackendInfo,
  type CreateCpuBackendOptions,
} from "./backend";
export { createGemmOps, nativeQuantWeight, type GemmNative, type NativeQuantWeight } from "./gemm";
export { MAX_THREADS, setThreads, getThreads } from "./threads";
export { createOptimizerOps, optimizerOpsOf, type OptimizerOps, type OptimNative } from "./optim";
export { createQuantizeOp, quantizeNative, quantizeOpsOf, type QuantizeNative } from "./quantize";
