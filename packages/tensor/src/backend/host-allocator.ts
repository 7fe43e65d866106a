/**
 * The caching host allocator behind the host backends (reference, and cpu which shares its buffers).
 * Freed buffers go back to size-classed free lists and are handed out again as they are: an op that
 * overwrites its whole output takes one without zeroing (Backend.allocUninit); `alloc` zeroes it.
 * Why: on these VMs first-touching fresh memory runs at ≈ 0.3 GB/s (page faults) and a freed typed array
 * is only returned when the garbage collector runs, so a training step that allocated its activations
 * afresh paid the page faults every step and the process RSS grew by the step's whole footprint.
 *
 * Size classes: 4 per power of two (≤ 25% slack) from 4 KiB up; smaller requests are plain typed arrays
 * (V8 serves them cheaply and they do not fault pages). The cache is capped (default 2 GiB, or
 * $QLORA_HOST_CACHE_BYTES): a buffer freed while the cache is full is left to the garbage collector.
 */

const MIN_POOLED_BYTES = 4096;
const DEFAULT_CAP = 2 * 1024 ** 3;

export interface HostAllocatorStats {
  /** Bytes of pooled-size buffers handed out and not freed yet (size-class bytes). */
  readonly inUseBytes: number;
  /** Bytes sitting in the free lists. */
  readonly cachedBytes: number;
  /** Peak of inUseBytes + cachedBytes: what the allocator holds at most. */
  readonly peakReservedBytes: number;
  readonly capBytes: number;
  /** Requests served from the free lists / by a fresh allocation (pooled sizes only). */
  readonly reused: number;
  readonly fresh: number;
}

/** The size class (bytes) a request of `bytes` is served from; requests below 4 KiB are not pooled. */
export function sizeClass(bytes: number): number {
  if (bytes < MIN_POOLED_BYTES) return bytes;
  const p = 2 ** Math.floor(Math.log2(bytes));
  const step = p / 4;
  return Math.ceil(bytes / step) * step;
}

function envCap(): number {
  const g = globalThis as { process?: { env?: Record<string, string | undefined> } };
  const v = Number(g.process?.env?.QLORA_HOST_CACHE_BYTES);
  return Number.isFinite(v) && v >= 0 ? v : DEFAULT_CAP;
}

export class HostAllocator {
  private readonly lists = new Map<number, ArrayBuffer[]>();
  private readonly owned = new WeakSet<ArrayBuffer>();
  private inUse = 0;
  private cached = 0;
  private peak = 0;
  private reused = 0;
  private fresh = 0;

  constructor(private capBytes = envCap()) {}

  /**
   * An ArrayBuffer of at least `bytes` bytes. `recycled` tells whether it may hold old data (a fresh one
   * is zero). Requests under 4 KiB get a fresh, unpooled buffer.
   */
  take(bytes: number): { buffer: ArrayBuffer; recycled: boolean } {
    const cls = sizeClass(bytes);
    if (cls < MIN_POOLED_BYTES) return { buffer: new ArrayBuffer(bytes), recycled: false };
    const list = this.lists.get(cls);
    let buffer = list?.pop();
    const recycled = buffer !== undefined;
    if (buffer) {
      this.cached -= cls;
      this.reused++;
    } else {
      buffer = new ArrayBuffer(cls);
      this.owned.add(buffer);
      this.fresh++;
    }
    this.inUse += cls;
    this.peak = Math.max(this.peak, this.inUse + this.cached);
    return { buffer, recycled };
  }

  /** Give a buffer from take() back (others are ignored: they belong to the garbage collector). */
  give(buffer: ArrayBuffer): void {
    if (!this.owned.has(buffer)) return;
    const cls = buffer.byteLength;
    this.inUse -= cls;
    if (this.cached + cls > this.capBytes) {
      this.owned.delete(buffer); // over the cap: let the GC have it
      return;
    }
    let list = this.lists.get(cls);
    if (!list) {
      list = [];
      this.lists.set(cls, list);
    }
    list.push(buffer);
    this.cached += cls;
  }

  /** Drop every cached buffer (the garbage collector returns the memory). */
  emptyCache(): void {
    for (const list of this.lists.values()) for (const b of list) this.owned.delete(b);
    this.lists.clear();
    this.cached = 0;
  }

  /** Change the cap; shrinks the cache to it at once. */
  setCap(bytes: number): void {
    this.capBytes = bytes;
    if (this.cached > bytes) this.emptyCache();
  }

  resetPeak(): void {
    this.peak = this.inUse + this.cached;
  }

  stats(): HostAllocatorStats {
    return {
      inUseBytes: this.inUse,
      cachedBytes: this.cached,
      peakReservedBytes: this.peak,
      capBytes: this.capBytes,
      reused: this.reused,
      fresh: this.fresh,
    };
  }
}

/** The process-wide allocator every host backend draws from unless given its own. */
export const sharedHostAllocator = new HostAllocator();
