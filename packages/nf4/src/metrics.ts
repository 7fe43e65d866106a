import { Nf4Error } from "./errors";
import { describe } from "./internal/validate";

type Values = ArrayLike<number>;

function check(a: Values, b: Values): void {
  if (a == null || b == null || typeof a.length !== "number" || typeof b.length !== "number") {
    throw new Nf4Error(
      "INVALID_ARGUMENT",
      `reference/approx: expected array-likes of numbers, got ${describe(a)} and ${describe(b)}`,
    );
  }
  if (a.length !== b.length) {
    throw new Nf4Error("LENGTH_MISMATCH", `approx: expected length ${a.length} (as reference), got ${b.length}`);
  }
}

/** mean |A − A'| (float64 accumulation). */
export function meanAbsError(reference: Values, approx: Values): number {
  check(reference, approx);
  let s = 0;
  for (let i = 0; i < reference.length; i++) s += Math.abs(reference[i] - approx[i]);
  return s / reference.length;
}

/** bitsandbytes' relative error: mean(|A − A'| / (|A| + 1e-8)). */
export function meanRelError(reference: Values, approx: Values): number {
  check(reference, approx);
  let s = 0;
  for (let i = 0; i < reference.length; i++) {
    const a = reference[i];
    s += Math.abs(a - approx[i]) / (Math.abs(a) + 1e-8);
  }
  return s / reference.length;
}

/** Signal-to-quantization-noise ratio in dB: 10·log10(Σ A² / Σ (A − A')²) (Infinity if exact). */
export function sqnrDb(reference: Values, approx: Values): number {
  check(reference, approx);
  let sig = 0;
  let noise = 0;
  for (let i = 0; i < reference.length; i++) {
    const a = reference[i];
    const d = a - approx[i];
    sig += a * a;
    noise += d * d;
  }
  return 10 * Math.log10(sig / noise);
}

export interface ErrorMetrics {
  meanAbsError: number;
  meanRelError: number;
  sqnrDb: number;
  maxAbsError: number;
}

/** All metrics in one pass. */
export function errorMetrics(reference: Values, approx: Values): ErrorMetrics {
  check(reference, approx);
  let abs = 0;
  let rel = 0;
  let sig = 0;
  let noise = 0;
  let max = 0;
  for (let i = 0; i < reference.length; i++) {
    const a = reference[i];
    const d = a - approx[i];
    const ad = Math.abs(d);
    abs += ad;
    rel += ad / (Math.abs(a) + 1e-8);
    sig += a * a;
    noise += d * d;
    if (ad > max) max = ad;
  }
  const n = reference.length;
  return { meanAbsError: abs / n, meanRelError: rel / n, sqnrDb: 10 * Math.log10(sig / noise), maxAbsError: max };
}
