/** A small AdamW (torch.optim.AdamW semantics) over backend.adamwStepInPlace; params must be dense f32. */
import type { AdamWOptions } from "./backend/types";
import { TensorError } from "./errors";
import { dense } from "./ops";
import { fromBuffer, keep, zerosLike } from "./tensor";
import type { Tensor } from "./tensor";

/** Zero f32 state shaped like p: through the backend's allocState (which may page it) when it has one. */
function stateLike(p: Tensor): Tensor {
  const be = p.backend;
  return be.allocState ? fromBuffer(be.allocState("f32", p.size), be, p.shape, "f32") : zerosLike(p, "f32");
}

export interface AdamWConfig {
  readonly lr?: number;
  readonly betas?: readonly [number, number];
  readonly eps?: number;
  readonly weightDecay?: number;
}

export class AdamW {
  lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  stepCount = 0;
  private readonly state = new Map<Tensor, { m: Tensor; v: Tensor }>();

  constructor(
    readonly params: readonly Tensor[],
    config: AdamWConfig = {},
  ) {
    this.lr = config.lr ?? 1e-3;
    [this.beta1, this.beta2] = config.betas ?? [0.9, 0.999];
    this.eps = config.eps ?? 1e-8;
    this.weightDecay = config.weightDecay ?? 0.01;
    for (const p of params) {
      if (p.dtype !== "f32" || !p.isDense())
        throw new TensorError("BAD_PARAM", `AdamW: parameter ${p} must be a dense f32 tensor`);
    }
  }

  /** One update of every parameter that has a .grad (in place). */
  step(): void {
    this.stepCount++;
    const opts: AdamWOptions = {
      lr: this.lr,
      beta1: this.beta1,
      beta2: this.beta2,
      eps: this.eps,
      weightDecay: this.weightDecay,
      step: this.stepCount,
    };
    for (const p of this.params) {
      if (!p.grad) continue;
      let s = this.state.get(p);
      if (!s) {
        s = { m: keep(stateLike(p)), v: keep(stateLike(p)) };
        this.state.set(p, s);
      }
      const g = dense(p.grad, p.grad.dtype === "bf16" ? "bf16" : "f32");
      p.backend.adamwStepInPlace(p.buffer, g.buffer, s.m.buffer, s.v.buffer, p.size, opts);
      g.dispose();
    }
  }

  zeroGrad(): void {
    for (const p of this.params) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  dispose(): void {
    for (const s of this.state.values()) {
      s.m.dispose();
      s.v.dispose();
    }
    this.state.clear();
  }
}
