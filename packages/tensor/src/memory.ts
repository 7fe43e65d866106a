/**
 * Memory model: a Storage (one backend buffer) is refcounted; every Tensor handle (including views)
 * holds one reference and gives it back on dispose(). tidy(fn) disposes every handle created inside
 * except those returned. A FinalizationRegistry gives references back for handles that were garbage
 * collected without dispose() (a backstop, not the plan). Byte counters are per device.
 */
import { dtypeBytes } from "./backend/reference";
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

/** Bytes held by live tensor storages on `device` ("cpu", "cuda:0"), and the peak since resetPeak. */
export function memoryStats(device = "cpu"): MemoryStats {
  const c = counter(device);
  return { currentBytes: c.current, peakBytes: c.peak };
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
