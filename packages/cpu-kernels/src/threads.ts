// The native thread pool size (csrc/pool.cc). Default: all hardware threads, or $QLORA_THREADS.
import { CpuKernelsError } from "./errors";
import { CpuKernelsLoadError, loadNative } from "./load";

interface PoolNative {
  getThreads(): number;
  setThreads(n: number): void;
}

/** The most threads the native pool runs (csrc/pool.cc kMaxThreads). */
export const MAX_THREADS = 1024;

/** The native pool, or null when the addon cannot be loaded (the reference fallback runs on the calling thread). */
function pool(): PoolNative | null {
  try {
    return loadNative() as unknown as PoolNative;
  } catch (e) {
    if (e instanceof CpuKernelsLoadError) return null; // already said once, by the fallback's warning
    throw e;
  }
}

/**
 * Sets the number of threads the native kernels use (an integer in [1, MAX_THREADS]). Without the addon it only
 * checks `n`: the reference fallback has no pool to size.
 */
export function setThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1 || n > MAX_THREADS)
    throw new CpuKernelsError("BAD_ARGUMENT", `setThreads: n must be an integer in [1, ${MAX_THREADS}], got ${n}`);
  pool()?.setThreads(n);
}

/** The number of threads the native kernels use (1 without the addon: the reference fallback's one thread). */
export function getThreads(): number {
  return pool()?.getThreads() ?? 1;
}
