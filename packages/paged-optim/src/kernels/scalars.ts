// The per-step scalars of each update, rounded to f32 once on the host. Every kernel (TypeScript
// reference, native) receives these exact values, so host-side math (pow, sqrt in double) can never
// make two backends disagree.
const f = Math.fround;

/** torch.optim.AdamW (single-tensor and foreach paths, torch 1.13): scalars as torch casts them. */
export interface AdamW32Scalars {
  readonly decay: number; // 1 − lr·wd
  readonly beta1: number;
  readonly oneMinusBeta1: number;
  readonly beta2: number;
  readonly oneMinusBeta2: number;
  readonly eps: number;
  readonly bc2Sqrt: number; // sqrt(1 − β2^t)
  readonly negStepSize: number; // −lr / (1 − β1^t)
}

export interface AdamWHyper {
  readonly lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  /** 1-based step of this parameter. */
  readonly step: number;
}

/** Python computes `1 − β`, `lr/bc1`, ... in double; torch casts each scalar to f32 at the op. */
export function adamw32Scalars(h: AdamWHyper): AdamW32Scalars {
  const bc1 = 1 - h.beta1 ** h.step;
  const bc2 = 1 - h.beta2 ** h.step;
  return {
    decay: f(1 - h.lr * h.weightDecay),
    beta1: f(h.beta1),
    oneMinusBeta1: f(1 - h.beta1),
    beta2: f(h.beta2),
    oneMinusBeta2: f(1 - h.beta2),
    eps: f(h.eps),
    bc2Sqrt: f(Math.sqrt(bc2)),
    negStepSize: f(-(h.lr / bc1)),
  };
}

/** bitsandbytes kOptimizerStatic8bit2StateBlockwise (spec §8.4): f32 kernel arithmetic, host scalars in double. */
export interface AdamW8bitScalars {
  readonly beta1: number;
  readonly oneMinusBeta1: number; // 1.0f − β1 in f32, as the kernel computes it
  readonly beta2: number;
  readonly oneMinusBeta2: number;
  readonly c2Eps: number; // sqrt(1 − β2^t)·eps
  readonly stepSize: number; // −lr·sqrt(1 − β2^t) / (1 − β1^t)
  /** 1 − lr·wd, applied after the step; exactly 1 (skipped) when wd = 0. */
  readonly decay: number;
}

export function adamw8bitScalars(h: AdamWHyper): AdamW8bitScalars {
  const c1 = 1 - h.beta1 ** h.step;
  const c2 = Math.sqrt(1 - h.beta2 ** h.step);
  return {
    beta1: f(h.beta1),
    oneMinusBeta1: f(1 - f(h.beta1)),
    beta2: f(h.beta2),
    oneMinusBeta2: f(1 - f(h.beta2)),
    c2Eps: f(f(c2) * f(h.eps)),
    stepSize: f((-h.lr * c2) / c1),
    decay: h.weightDecay > 0 ? f(1 - h.lr * h.weightDecay) : 1,
  };
}

export interface LionHyper {
  readonly lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly weightDecay: number;
}

/** Lion (Chen et al. 2023; lion-pytorch and bitsandbytes ≥ 0.50 order: decoupled decay first). */
export interface LionScalars {
  readonly decay: number;
  readonly beta1: number;
  readonly oneMinusBeta1: number;
  readonly beta2: number;
  readonly oneMinusBeta2: number;
  readonly negLr: number;
}

export function lionScalars(h: LionHyper): LionScalars {
  return {
    decay: f(1 - h.lr * h.weightDecay),
    beta1: f(h.beta1),
    oneMinusBeta1: f(1 - h.beta1),
    beta2: f(h.beta2),
    oneMinusBeta2: f(1 - h.beta2),
    negLr: f(-h.lr),
  };
}

export interface SgdHyper {
  readonly lr: number;
  readonly momentum: number;
  readonly dampening: number;
  readonly nesterov: boolean;
  readonly weightDecay: number;
}

/** torch.optim.SGD (coupled L2 weight decay added to the gradient). */
export interface SgdScalars {
  readonly weightDecay: number;
  readonly momentum: number;
  readonly oneMinusDampening: number;
  readonly nesterov: boolean;
  readonly negLr: number;
  /** The momentum buffer is empty: it becomes a copy of the (decayed) gradient, as in torch. */
  readonly first: boolean;
}

export function sgdScalars(h: SgdHyper, first: boolean): SgdScalars {
  return {
    weightDecay: f(h.weightDecay),
    momentum: f(h.momentum),
    oneMinusDampening: f(1 - h.dampening),
    nesterov: h.nesterov,
    negLr: f(-h.lr),
    first,
  };
}
