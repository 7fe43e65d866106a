export { CudaKernelsError, CudaUnavailableError } from "./errors";
export { cudaDeviceStatus, requireCuda } from "./device";
export type { CudaDeviceStatus } from "./device";
export { createCudaBackend, CudaBuffer } from "./backend";
export type { CudaBackend, CudaBackendOptions } from "./backend";
export { registerCudaBackend } from "./register";
export type { RegisterCudaResult } from "./register";
export type { NativeMemoryStats, NativeDeviceStatus } from "./native";
