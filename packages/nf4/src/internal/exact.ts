/**
 * Exact threshold tests on the unrounded product.
 *
 * The kernel compares y = fl32(x·r) with float32 thresholds T. Since x and r are float32, p = x·r is
 * exact in float64, and fl32 is monotonic, so `fl32(p) > T` is equivalent to `p > T'` for a float64
 * T' derived from T: with T+ the next float32 above T and m = (T + T+)/2 (exact in float64),
 * p = m rounds to whichever of T, T+ has an even significand, hence
 *   T even: fl32(p) > T  <=>  p > m
 *   T odd:  fl32(p) > T  <=>  p >= m  <=>  p > prev64(m).
 * This removes the per-element float32 rounding from the hot loops without changing any result.
 */

const f64 = new Float64Array(1);
const u64 = new BigUint64Array(f64.buffer);
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

function nextUp32(t: number): number {
  f32[0] = t;
  if (t === 0) return 1.401298464324817e-45;
  if (t > 0) u32[0] += 1;
  else u32[0] -= 1;
  return f32[0];
}

function prev64(m: number): number {
  f64[0] = m;
  if (m > 0) u64[0] -= 1n;
  else if (m < 0) u64[0] += 1n;
  else return -5e-324;
  return f64[0];
}

/** float64 threshold T' with (p > T') === (fl32(p) > T) for every float64 p (T a float32, not ±Inf/NaN). */
export function exactThreshold(t: number): number {
  f32[0] = t;
  const odd = (u32[0] & 1) === 1;
  const m = (t + nextUp32(t)) / 2;
  return odd ? prev64(m) : m;
}

/** fl32(p) < 0 <=> p < -2^-150 (smaller magnitudes round to -0). */
export const NEG_ROUNDS_TO_NONZERO = -(2 ** -150);
