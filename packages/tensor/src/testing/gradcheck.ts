/**
 * Finite-difference gradient checks in float64, usable by any package (framework-free): the function runs
 * on a reference backend in f64 test mode (f32 buffers held as Float64Array), so central differences with
 * h = 1e-6 are accurate to ~1e-9 and a wrong rule stands out by orders of magnitude.
 */
import { noGrad } from "../autograd";
import { createReferenceBackend } from "../backend/reference";
import type { Backend } from "../backend/types";
import { Generator } from "../random";
import { fromBuffer, type Tensor } from "../tensor";

/** The f64 test-mode reference backend gradCheck runs on (f32 buffers are Float64Array). */
export const gradCheckBackend: Backend = createReferenceBackend({ f64: true });

/** A float64-valued f32 tensor on gradCheckBackend (values not rounded to f32). */
export function f64Tensor(values: ArrayLike<number>, shape: readonly number[], requiresGrad = false): Tensor {
  const data = Float64Array.from(values) as unknown as Float32Array;
  const t = fromBuffer(gradCheckBackend.fromHost(data, "f32"), gradCheckBackend, shape, "f32");
  if (requiresGrad) t.requiresGrad = true;
  return t;
}

/** n values uniform in [lo, hi) from a Philox generator (reproducible test inputs). */
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
 * Returns the worst |analytic − numeric| / (1 + |numeric|) (NaN if any is NaN). Typical pass: < 1e-7.
 */
export function gradCheck(fn: (...xs: Tensor[]) => Tensor, inputs: readonly GradInput[], seed = 99): number {
  const h = 1e-6;
  let w: Tensor | null = null;
  const loss = (xs: Tensor[]): Tensor => {
    const y = fn(...xs);
    if (!w) w = f64Tensor(randomValues(y.size, seed, 0.5, 1.5), y.shape);
    const p = y.mul(w);
    const l = p.sum();
    y.dispose();
    p.dispose();
    return l;
  };
  const xs = inputs.map((inp) => f64Tensor(inp.values, inp.shape, inp.grad !== false));
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
          const ys = xs.map((x, k) => (k === i ? f64Tensor(v, inp.shape) : x.detach()));
          const l = loss(ys);
          const r = l.item();
          l.dispose();
          for (const y of ys) y.dispose();
          return r;
        });
      const numeric = (at(h) - at(-h)) / (2 * h);
      const err = Math.abs(analytic[j] - numeric) / (1 + Math.abs(numeric));
      if (!(err <= worst)) worst = err;
      if (Number.isNaN(err)) worst = Number.NaN;
    }
  });
  for (const x of xs) {
    x.grad?.dispose();
    x.dispose();
  }
  (w as Tensor | null)?.dispose();
  return worst;
}
