/** Base class of every error this package throws on purpose (machine-readable `code`). */
export class CudaKernelsError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "CudaKernelsError";
  }
}

/** No usable CUDA device: carries the runtime's own reason (e.g. cudaGetDeviceCount's error string). */
export class CudaUnavailableError extends CudaKernelsError {
  constructor(
    readonly reason: string,
    /** cudaError_t of the probe (35: driver too old or absent, 100: no device), or -1 when the addon is not built. */
    readonly cudaCode: number,
  ) {
    super("CUDA_UNAVAILABLE", `no CUDA device: ${reason}`);
    this.name = "CudaUnavailableError";
  }
}
