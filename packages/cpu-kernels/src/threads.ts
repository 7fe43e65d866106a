// The native thread pool size (csrc/pool.cc). Default: all hardware threads, or $QLORA_THREADS.
import { CpuKernelsError } from "./errors";
import { loadNative } from "./load";

interface PoolNative {
  getThreads(): number;
  setThreads(n: number): void;
}

/** Sets the number of threads the native kernels use (a positive integer). */
export function setThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1)
    throw new CpuKernelsError("BAD_ARGUMENT", `setThreads: n must be a positive integer, got ${n}`);
  (loadNative() as unknown as PoolNative).setThreads(n);
}

/** The number of threads the native kernels use. */
export function getThreads(): number {
  return (loadNative() as unknown as PoolNative).getThreads();
}
