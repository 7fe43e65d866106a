/**
 * Packing by best-fit-decreasing: examples sorted by length (longest first) each go into the fullest bin that still
 * has room, or a new bin. Bins keep per-example boundaries, so the collator restarts position ids and gives each
 * example its own segment id: attention never crosses examples and the per-example loss equals the unpacked one.
 */
import { TrainerError } from "../errors";

/** Bins of example indices (each bin's total length ≤ capacity). Deterministic: ties keep index order. */
export function packBestFitDecreasing(lengths: ArrayLike<number>, capacity: number): number[][] {
  const order = Array.from({ length: lengths.length }, (_, i) => i).sort((a, b) => lengths[b] - lengths[a] || a - b);
  const bins: { items: number[]; free: number }[] = [];
  // Free space → bins with that much free space; best fit = smallest free ≥ length. Lengths are small integers,
  // so a bucket array indexed by free space keeps this O(n · capacity) in the worst case and fast in practice.
  const byFree: number[][] = Array.from({ length: capacity + 1 }, () => []);
  for (const i of order) {
    const len = lengths[i];
    if (len > capacity || len <= 0)
      throw new TrainerError("PACKING", `packing: example ${i} has ${len} tokens, capacity is ${capacity}`);
    let chosen = -1;
    for (let f = len; f <= capacity; f++) {
      const bucket = byFree[f];
      if (bucket.length) {
        chosen = bucket.shift() as number;
        break;
      }
    }
    if (chosen < 0) {
      chosen = bins.length;
      bins.push({ items: [], free: capacity });
    }
    const bin = bins[chosen];
    bin.items.push(i);
    bin.free -= len;
    byFree[bin.free].push(chosen);
    byFree[bin.free].sort((a, b) => a - b);
  }
  return bins.map((b) => b.items);
}
