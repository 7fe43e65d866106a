/**
 * Memory model: a Storage (one backend buffer) is refcounted; every Tensor handle (including views)
 * holds one reference and gives it back on dispose(). tidy(fn) disposes every handle created inside
 * except those returned. A FinalizationRegistry gives references back for handles that were garbage
 * collected without dispose() (a backstop, not the plan). Byte counters are per device.
 */
import { dtypeBytes } from "./backend/reference";
import { sharedHostAllocator } from "./backend/host-allocator";
import { availableBackends } from "./backend/registry";
import type { Backend, Buffer, MemoryStats } from "./backend/types";

const counters = new Map<string, { current: number; peak: number }>();

function counter(device: string): { current: number; peak: number } {
  let c = counters.get(device);
  if (!c) {
    c = { current: 0, peak: 0 };
    counters.set(device, c);
  }
  return c;
}

export class Storage {
  refs = 1;
  freed = false;
  readonly bytes: number;
  constructor(
    readonly buffer: Buffer,
    readonly backend: Backend,
  ) {
    this.bytes = buffer.length * dtypeBytes(buffer.dtype);
    const c = counter(backend.device);
    c.current += this.bytes;
    if (c.current > c.peak) c.peak = c.current;
  }
  retain(): void {
    this.refs++;
  }
  release(): void {
    if (this.freed) return;
    if (--this.refs > 0) return;
    this.freed = true;
    counter(this.backend.device).current -= this.bytes;
    this.backend.free(this.buffer);
  }
}

/** Free bytes kept by the caching allocators on `device` (host backends share one allocator). */
function cachedBytesOn(device: string): number {
  if (device === "cpu") return sharedHostAllocator.stats().cachedBytes;
  let total = 0;
  for (const b of availableBackends()) if (b.device === device) total += b.memoryStats().cachedBytes ?? 0;
  return total;
}

/**
 * Bytes held by live tensor storages on `device` ("cpu", "cuda:0") and their peak since resetPeakMemory;
 * cachedBytes: freed buffers the caching allocator keeps for reuse (see backend/host-allocator.ts).
 */
export function memoryStats(device = "cpu"): Required<MemoryStats> {
  const c = counter(device);
  return { currentBytes: c.current, peakBytes: c.peak, cachedBytes: cachedBytesOn(device) };
}

/** Give the cached free buffers of every backend on `device` back to the system. */
export function emptyCache(device = "cpu"): void {
  if (device === "cpu") sharedHostAllocator.emptyCache();
  for (const b of availableBackends()) if (b.device === device) b.emptyCache?.();
}
export function resetPeakMemory(device = "cpu"): void {
  const c = counter(device);
  c.peak = c.current;
}

export const finalizer = new FinalizationRegistry<Storage>((s) => s.release());

/** Disposable things tracked by scopes (Tensor implements it). */
export interface Tracked {
  dispose(): void;
}
export const scopes: Set<Tracked>[] = [];

export function track(t: Tracked): void {
  if (scopes.length > 0) scopes[scopes.length - 1].add(t);
}
export function untrack(t: Tracked): void {
  for (let i = scopes.length - 1; i >= 0; i--) if (scopes[i].delete(t)) return;
}
/** Remove t from every open scope (keep()): it must then be disposed by hand. */
export function untrackEverywhere(t: Tracked): void {
  for (const s of scopes) s.delete(t);
}
