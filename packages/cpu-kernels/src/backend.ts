// The `cpu` backend: host buffers shared with the reference backend (same allocator, same memory
// counters), native GEMM-family ops (gemm.ts) and native fused ops (fused.ts). Ops that neither
// implements natively are delegated to the reference backend explicitly: they are listed in
// `CpuBackendInfo.delegatedOps` (and the README), never silently.
import { type Backend, referenceBackend, registerBackend } from "@qlora/tensor";
import { fusedOps } from "./fused";
import { createGemmOps, gemmNative } from "./gemm";
import { gemvHalfNative, routeHalfGemv } from "./gemv-half";
import { loadNative, type NativeModule } from "./load";
import { optimizerOpsOf } from "./optim";
import { quantizeOpsOf } from "./quantize";

/** Every compute op of the Backend interface (memory ops always come from the shared host allocator). */
export const COMPUTE_OPS = [
  "copy",
  "copyInPlace",
  "addInPlace",
  "fill",
  "unary",
  "binary",
  "reduce",
  "matmul",
  "matmul4bit",
  "matmul4bitInputGrad",
  "rmsNorm",
  "rmsNormBackward",
  "rope",
  "attention",
  "attentionBackward",
  "softmax",
  "softmaxBackward",
  "crossEntropy",
  "crossEntropyBackward",
  "crossEntropyGradInPlace",
  "swiglu",
  "swigluBackward",
  "dropoutMask",
  "embedding",
  "embeddingBackward",
  "adamwStepInPlace",
] as const satisfies readonly (keyof Backend)[];
export type ComputeOp = (typeof COMPUTE_OPS)[number];

export interface CpuBackendInfo {
  /** true when the native addon loaded; false means `backend` is the reference backend. */
  readonly native: boolean;
  /** Why the addon did not load (node-gyp-build's message), when it did not. */
  readonly reason?: string;
  /** Ops served by native code. */
  readonly nativeOps: readonly ComputeOp[];
  /** Ops the cpu backend delegates to the reference implementation (no native kernel yet). */
  readonly delegatedOps: readonly ComputeOp[];
}

export interface CreateCpuBackendOptions {
  /** Loads the addon (default: loadNative, i.e. $QLORA_CPU_KERNELS_PATH or node-gyp-build). */
  readonly loader?: () => NativeModule;
  /** Receives the single fallback warning (default: process.emitWarning, once per process). */
  readonly warn?: (message: string) => void;
  /** Native fused ops to compose (default: fused.ts `fusedOps`). */
  readonly fused?: Partial<Backend>;
}

let warnedOnce = false;
function defaultWarn(message: string): void {
  if (warnedOnce) return;
  warnedOnce = true;
  process.emitWarning(message, { code: "QLORA_CPU_KERNELS_FALLBACK" });
}

const infos = new WeakMap<Backend, CpuBackendInfo>();

/** Which ops of `backend` are native/delegated; undefined for a backend not made by createCpuBackend. */
export function cpuBackendInfo(backend: Backend = cpuBackend): CpuBackendInfo | undefined {
  return infos.get(backend);
}

/**
 * Builds the `cpu` backend. If the native addon cannot be loaded this never throws: it warns exactly
 * once (with the loader's reason) and returns the reference backend, so callers keep working.
 */
export function createCpuBackend(options: CreateCpuBackendOptions = {}): Backend {
  let native: NativeModule;
  let gemm: ReturnType<typeof createGemmOps>;
  try {
    native = (options.loader ?? loadNative)();
    gemm = createGemmOps(gemmNative(native), referenceBackend);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    (options.warn ?? defaultWarn)(
      `@qlora/cpu-kernels: native CPU kernels unavailable, falling back to the reference backend: ${reason}`,
    );
    infos.set(referenceBackend, { native: false, reason, nativeOps: [], delegatedOps: [...COMPUTE_OPS] });
    return referenceBackend;
  }
  const nativeOps: Partial<Backend> = { ...gemm, ...(options.fused ?? fusedOps) };
  // f32 rows (m ≤ 4) x a bf16/f16 weight: the skinny kernel reads the weight as stored (gemv-half.ts).
  const gemvHalf = gemvHalfNative(native);
  if (gemvHalf) nativeOps.matmul = routeHalfGemv(gemvHalf, gemm.matmul, referenceBackend);
  const delegatedOps = COMPUTE_OPS.filter((op) => typeof nativeOps[op] !== "function");
  const delegated: Partial<Backend> = {};
  for (const op of delegatedOps)
    (delegated as Record<string, unknown>)[op] = referenceBackend[op]?.bind(referenceBackend);
  const r = referenceBackend;
  const backend: Backend = {
    ...delegated,
    ...nativeOps,
    // Optimizer update ops for @qlora/paged-optim (methods beyond the Backend interface; csrc/optim.cc).
    ...optimizerOpsOf(native),
    // Quantize on load (csrc/quantize_nf4.cc), into buffers of the shared host allocator.
    ...quantizeOpsOf(native, r),
    name: "cpu",
    device: "cpu",
    alloc: (dtype, length) => r.alloc(dtype, length),
    allocUninit: (dtype, length) => r.allocUninit!(dtype, length),
    emptyCache: () => r.emptyCache?.(),
    free: (buffer) => r.free(buffer),
    fromHost: (data, dtype) => r.fromHost(data, dtype),
    toHost: (buffer) => r.toHost(buffer),
    memoryStats: () => r.memoryStats(),
    resetPeak: () => r.resetPeak(),
  } as Backend;
  infos.set(backend, { native: true, nativeOps: COMPUTE_OPS.filter((op) => !delegatedOps.includes(op)), delegatedOps });
  return backend;
}

/** The process-wide cpu backend (the reference backend, after one warning, if the addon is missing). */
export const cpuBackend: Backend = createCpuBackend();

/** Registers `cpuBackend` with @qlora/tensor at priority 10 (cuda 20 > cpu 10 > reference 0).
 * Returns false (registers nothing) when the addon did not load: the reference backend stays default. */
export function registerCpuBackend(priority = 10): boolean {
  if (cpuBackendInfo(cpuBackend)?.native !== true) return false;
  registerBackend(cpuBackend, priority);
  return true;
}
