export { CudaKernelsError, CudaUnavailableError } from "./errors";
export { cudaDeviceStatus, requireCuda } from "./device";
export type { CudaDeviceStatus } from "./device";
export { createCudaBackend, CudaBuffer } from "./backend";
export type { CudaBackend, CudaBackendOptions } from "./backend";
export { registerCudaBackend } from "./register";
export type { RegisterCudaResult } from "./register";
export type { NativeMemoryStats, NativeDeviceStatus } from "./native";
export {
  DEFAULT_NCCL_LIBRARIES,
  DEFAULT_NCCL_TIMEOUT_MS,
  NcclCommunicator,
  type NcclArray,
  type NcclAvailability,
  type NcclCommunicatorOptions,
  type NcclHandle,
  type NcclReduceOp,
  createNcclCommunicator,
  ncclAvailability,
} from "./nccl";
export {
  DEFAULT_MASTER_PORT,
  type RendezvousEnv,
  type RendezvousOptions,
  rendezvous,
  rendezvousFromEnv,
} from "./rendezvous";
export { LORA_MAX_RANK, type LoraAccumulatePlan, loraAccumulatePlan } from "./lora-route";
