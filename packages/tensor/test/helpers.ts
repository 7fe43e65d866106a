import { createReferenceBackend } from "../src/backend/reference";
import type { Backend } from "../src/backend/types";
import { noGrad } from "../src/autograd";
import { Generator } from "../src/random";
import { fromBuffer, type Tensor } from "../src/tensor";

/** The f64 test-mode reference backend: f32 buffers are Float64Array (double-precision math). */
export const be64: Backend = createReferenceBackend({ f64: true });

/** A float64-valued tensor on be64 (values not rounded to f32). */
export function t64(values: ArrayLike<number>, shape: readonly number[], requiresGrad = false): Tensor {
  const t = fromBuffer(be64.fromHost(Float64Array.from(values) as unknown as Float32Array, "f32"), be64, shape, "f32");
  if (requiresGrad) t.requiresGrad = true;
  return t;
}

export function randomValues(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  const u = new Generator(seed).uniform(n);
  return Float64Array.from(u, (v) => lo + (hi - lo) * v);
}

export interface GradInput {
  readonly values: ArrayLike<number>;
  readonly shape: readonly number[];
  /** false: a constant input (no gradient checked). */
  readonly grad?: boolean;
}

/**
 * Central finite differences in float64: L = Σ fn(x)·w with a fixed random w; compares the autograd
 * gradient of every element of every differentiable input with (L(x+h) − L(x−h)) / 2h, h = 1e-6.
 * Returns the worst |analytic − numeric| / (1 + |numeric|).
 */
export function gradCheck(fn: (...xs: Tensor[]) => Tensor, inputs: readonly GradInput[], seed = 99): number {
  const h = 1e-6;
  let w: Tensor | null = null;
  const loss = (xs: Tensor[]): Tensor => {
    const y = fn(...xs);
    if (!w) w = t64(randomValues(y.size, seed, 0.5, 1.5), y.shape);
    const p = y.mul(w);
    const l = p.sum();
    y.dispose();
    p.dispose();
    return l;
  };
  const xs = inputs.map((inp) => t64(inp.values, inp.shape, inp.grad !== false));
  const L = loss(xs);
  L.backward();
  L.dispose();
  let worst = 0;
  inputs.forEach((inp, i) => {
    if (inp.grad === false) return;
    const analytic = xs[i].grad!.toTypedArray();
    const base = Float64Array.from(inp.values);
    for (let j = 0; j < base.length; j++) {
      const at = (delta: number): number =>
        noGrad(() => {
          const v = base.slice();
          v[j] += delta;
          const ys = xs.map((x, k) => (k === i ? t64(v, inp.shape) : x.detach()));
          const l = loss(ys);
          const r = l.item();
          l.dispose();
          for (const y of ys) y.dispose();
          return r;
        });
      const numeric = (at(h) - at(-h)) / (2 * h);
      const err = Math.abs(analytic[j] - numeric) / (1 + Math.abs(numeric));
      if (!(err <= worst)) worst = err;
      if (Number.isNaN(err)) worst = NaN;
    }
  });
  xs.forEach((x) => {
    x.grad?.dispose();
    x.dispose();
  });
  (w as Tensor | null)?.dispose();
  return worst;
}
