// Tiny, obviously-correct oracles used until/alongside the @qlora/tensor reference backend:
// float64 accumulation, so the only error measured is the kernel's own f32 rounding.
export function naiveMatmul(
  a: ArrayLike<number>, b: ArrayLike<number>,
  o: { batch: number; m: number; k: number; n: number; transA?: boolean; transB?: boolean; aBatchStride?: number; bBatchStride?: number },
): Float64Array {
  const { batch, m, k, n } = o;
  const sa = o.aBatchStride ?? m * k, sb = o.bBatchStride ?? k * n;
  const out = new Float64Array(batch * m * n);
  for (let t = 0; t < batch; t++)
    for (let i = 0; i < m; i++)
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++) {
          const av = a[t * sa + (o.transA ? p * m + i : i * k + p)]!;
          const bv = b[t * sb + (o.transB ? j * k + p : p * n + j)]!;
          s += av * bv;
        }
        out[(t * m + i) * n + j] = s;
      }
  return out;
}

/** Deterministic pseudo-random floats in [-1, 1) (xorshift32), so failures reproduce. */
export function randomF32(length: number, seed: number): Float32Array {
  const out = new Float32Array(length);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

export function randomBytes(length: number, seed: number): Uint8Array {
  const f = randomF32(length, seed);
  return Uint8Array.from(f, (v) => Math.floor((v + 1) * 128) & 255);
}

/** Largest violation ratio of |got - want| <= tol * (1 + |want|) * sqrt(k); <= 1 means within bound. */
export function worstRatio(got: ArrayLike<number>, want: ArrayLike<number>, k: number, tol = 1e-5): number {
  let worst = 0;
  const scale = tol * Math.sqrt(Math.max(k, 1));
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i]! - want[i]!);
    const r = Number.isNaN(d) ? Infinity : d / (scale * (1 + Math.abs(want[i]!)));
    if (r > worst) worst = r;
  }
  return worst;
}
