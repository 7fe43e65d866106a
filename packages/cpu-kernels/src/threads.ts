// The native thread pool size (csrc/pool.cc). Default: all hardware threads, or $QLORA_THREADS.
import { CpuKernelsError } from "./errors";
import { loadNative } from "./load";

interface PoolNative {
  getThreads(): number;
  setThreads(n: number): void;
}

/** The most threads the native pool runs (csrc/pool.cc kMaxThreads). */
export const MAX_THREADS = 1024;

/** Sets the number of threads the native kernels use (an integer in [1, MAX_THREADS]). */
export function setThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1 || n > MAX_THREADS)
    throw new CpuKernelsError("BAD_ARGUMENT", `setThreads: n must be an integer in [1, ${MAX_THREADS}], got ${n}`);
  (loadNative() as unknown as PoolNative).setThreads(n);
}

/** The number of threads the native kernels use. */
export function getThreads(): number {
  return (loadNative() as unknown as PoolNative).getThreads();
}
