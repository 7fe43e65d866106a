import { availableBackends, registerBackend } from "@qlora/tensor";
import { type CudaBackend, type CudaBackendOptions, createCudaBackend } from "./backend";
import { cudaDeviceStatus } from "./device";

export type RegisterCudaResult =
  | { readonly registered: true; readonly backend: CudaBackend }
  | { readonly registered: false; readonly reason: string };

let warned = false;

/**
 * Registers the cuda backend with @qlora/tensor (priority 20, above cpu 10) when a device is usable.
 * Otherwise registers nothing, returns the runtime's reason and emits ONE process warning (per process;
 * `quiet: true` suppresses it), so the tensor runtime keeps using the CPU/reference backend.
 */
/** What tensors fall back to: the highest-priority registered backend (the TypeScript reference if cpu is not). */
function fallbackName(): string {
  const name = availableBackends()[0]?.name ?? "reference";
  return name === "reference" ? "TypeScript reference (register the native cpu backend for speed)" : name;
}

export function registerCudaBackend(
  options: CudaBackendOptions & { readonly quiet?: boolean } = {},
): RegisterCudaResult {
  const status = cudaDeviceStatus();
  if (!status.available) {
    if (!options.quiet && !warned) {
      warned = true;
      process.emitWarning(`CUDA backend unavailable, using the ${fallbackName()} backend: ${status.reason}`, {
        code: "QLORA_CUDA_UNAVAILABLE",
      });
    }
    return { registered: false, reason: status.reason };
  }
  const backend = createCudaBackend(options);
  registerBackend(backend, 20);
  return { registered: true, backend };
}
