import { CudaUnavailableError } from "./errors";
import { type NativeCuda, type NativeDeviceStatus, tryLoadNative } from "./native";

export interface CudaDeviceStatus {
  readonly available: boolean;
  /** Why no device is usable ("" when available): the CUDA runtime's own words, or "addon not built". */
  readonly reason: string;
  /** cudaError_t of cudaGetDeviceCount (35, 100, ...), 0 when fine, -1 when the addon is not built. */
  readonly code: number;
  readonly addonLoaded: boolean;
  readonly device?: Omit<NativeDeviceStatus, "available" | "reason" | "code">;
}

/** Probes for a usable CUDA device. Never throws; safe on machines without a GPU or driver. */
export function cudaDeviceStatus(): CudaDeviceStatus {
  const { native, error } = tryLoadNative();
  if (!native) return { available: false, reason: error!, code: -1, addonLoaded: false };
  const s = native.deviceStatus();
  const { available, reason, code, ...device } = s;
  return { available, reason: available ? "" : reason, code, addonLoaded: true, device };
}

/** The addon, when a device is usable; otherwise throws CudaUnavailableError with the runtime's reason. */
export function requireCuda(): NativeCuda {
  const status = cudaDeviceStatus();
  if (!status.available) throw new CudaUnavailableError(status.reason, status.code);
  return tryLoadNative().native!;
}
