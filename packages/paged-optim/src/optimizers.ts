// AdamW, Lion and SGD: each says which state buffers a parameter needs and which update op runs.
import type { Buffer, Tensor } from "@qlora/tensor";
import { OptimError } from "./errors";
import { BLOCK8 } from "./kernels/reference";
import type { OptimizerKernels } from "./kernels/table";
import {
  type NamedParameters,
  Optimizer,
  type ParamGroup,
  type ParamGroupSpec,
  type ParamState,
  type StateLayout,
  type StateOptions,
} from "./optimizer";

function blockwise8bit(numel: number, states: 1 | 2): StateLayout {
  const blocks = Math.ceil(numel / BLOCK8);
  const one: StateLayout = { state1: { dtype: "u8", length: numel }, absmax1: { dtype: "f32", length: blocks } };
  return states === 1
    ? one
    : { ...one, state2: { dtype: "u8", length: numel }, absmax2: { dtype: "f32", length: blocks } };
}

function checkBetas(b: unknown, where: string): void {
  if (
    !Array.isArray(b) ||
    b.length !== 2 ||
    !b.every((x) => typeof x === "number" && Number.isFinite(x) && x >= 0 && x < 1)
  )
    throw new OptimError("BAD_ARGUMENT", `${where}.betas: expected [beta1, beta2] in [0, 1), got ${JSON.stringify(b)}`);
}

export interface AdamWHyperparameters {
  lr: number;
  betas: readonly [number, number];
  eps: number;
  weightDecay: number;
}
export type AdamWOptions = Partial<AdamWHyperparameters> & StateOptions;

/**
 * AdamW. 32-bit state: torch.optim.AdamW (decoupled decay before the step, amsgrad off). `bits: 8`:
 * bitsandbytes' AdamW8bit (blockwise-256 states, signed map for m, unsigned for v, decay after the
 * step) for parameters of ≥ minEightBitSize elements; smaller ones keep the 32-bit torch update.
 * `paged: true`: PagedAdamW / PagedAdamW8bit.
 */
export class AdamW extends Optimizer<AdamWHyperparameters> {
  readonly kind = "AdamW";
  constructor(params: NamedParameters | readonly ParamGroupSpec<AdamWHyperparameters>[], options: AdamWOptions = {}) {
    super(
      params,
      {
        lr: options.lr ?? 1e-3,
        betas: options.betas ?? [0.9, 0.999],
        eps: options.eps ?? 1e-8,
        weightDecay: options.weightDecay ?? 1e-2,
      },
      options,
      ["lr", "betas", "eps", "weightDecay"],
    );
  }
  protected override validateHyper(h: AdamWHyperparameters, where: string): void {
    super.validateHyper(h, where);
    checkBetas(h.betas, where);
    if (typeof h.eps !== "number" || !(h.eps >= 0) || !Number.isFinite(h.eps))
      throw new OptimError("BAD_ARGUMENT", `${where}.eps: expected a finite number ≥ 0, got ${JSON.stringify(h.eps)}`);
  }
  protected stateLayout(numel: number, bits: 8 | 32): StateLayout {
    return bits === 8
      ? blockwise8bit(numel, 2)
      : { exp_avg: { dtype: "f32", length: numel }, exp_avg_sq: { dtype: "f32", length: numel } };
  }
  protected update(
    k: OptimizerKernels,
    p: Tensor,
    g: Buffer,
    s: ParamState,
    q: { signed: Buffer; unsigned: Buffer },
    h: ParamGroup<AdamWHyperparameters>,
  ): void {
    const hyper = {
      lr: h.lr,
      beta1: h.betas[0],
      beta2: h.betas[1],
      eps: h.eps,
      weightDecay: h.weightDecay,
      step: s.step,
    };
    const b = s.buffers;
    if (s.bits === 8)
      k.adamw8bit(
        p.buffer,
        g,
        { ...(b as Required<typeof b>), qmap1: q.signed, qmap2: q.unsigned } as never,
        p.size,
        hyper,
      );
    else k.adamw32(p.buffer, g, b.exp_avg, b.exp_avg_sq, p.size, hyper);
  }
}

export interface LionHyperparameters {
  lr: number;
  betas: readonly [number, number];
  weightDecay: number;
}
export type LionOptions = Partial<LionHyperparameters> & StateOptions;

/**
 * Lion (Chen et al. 2023): p ← p·(1 − lr·wd) − lr·sign(β1·m + (1−β1)·g); m ← β2·m + (1−β2)·g.
 * Defaults as lion-pytorch / bitsandbytes: lr 1e-4, betas (0.9, 0.99), wd 0. `bits: 8`: momentum in
 * bitsandbytes' 8-bit blockwise state (signed map).
 */
export class Lion extends Optimizer<LionHyperparameters> {
  readonly kind = "Lion";
  constructor(params: NamedParameters | readonly ParamGroupSpec<LionHyperparameters>[], options: LionOptions = {}) {
    super(
      params,
      { lr: options.lr ?? 1e-4, betas: options.betas ?? [0.9, 0.99], weightDecay: options.weightDecay ?? 0 },
      options,
      ["lr", "betas", "weightDecay"],
    );
  }
  protected override validateHyper(h: LionHyperparameters, where: string): void {
    super.validateHyper(h, where);
    checkBetas(h.betas, where);
  }
  protected stateLayout(numel: number, bits: 8 | 32): StateLayout {
    return bits === 8 ? blockwise8bit(numel, 1) : { exp_avg: { dtype: "f32", length: numel } };
  }
  protected update(
    k: OptimizerKernels,
    p: Tensor,
    g: Buffer,
    s: ParamState,
    q: { signed: Buffer; unsigned: Buffer },
    h: ParamGroup<LionHyperparameters>,
  ): void {
    const hyper = { lr: h.lr, beta1: h.betas[0], beta2: h.betas[1], weightDecay: h.weightDecay };
    if (s.bits === 8)
      k.lion8bit(p.buffer, g, { state1: s.buffers.state1, absmax1: s.buffers.absmax1, qmap1: q.signed }, p.size, hyper);
    else k.lion32(p.buffer, g, s.buffers.exp_avg, p.size, hyper);
  }
}

export interface SgdHyperparameters {
  lr: number;
  momentum: number;
  dampening: number;
  nesterov: boolean;
  weightDecay: number;
}
export type SgdOptions = Partial<SgdHyperparameters> & Pick<StateOptions, "paged">;

/** torch.optim.SGD with momentum (dampening, Nesterov, coupled L2 weight decay); 32-bit state only. */
export class SGD extends Optimizer<SgdHyperparameters> {
  readonly kind = "SGD";
  constructor(params: NamedParameters | readonly ParamGroupSpec<SgdHyperparameters>[], options: SgdOptions = {}) {
    super(
      params,
      {
        lr: options.lr ?? 1e-3,
        momentum: options.momentum ?? 0,
        dampening: options.dampening ?? 0,
        nesterov: options.nesterov ?? false,
        weightDecay: options.weightDecay ?? 0,
      },
      { paged: options.paged },
      ["lr", "momentum", "dampening", "nesterov", "weightDecay"],
    );
  }
  protected override get has8bit(): boolean {
    return false;
  }
  protected override validateHyper(h: SgdHyperparameters, where: string): void {
    super.validateHyper(h, where);
    if (typeof h.momentum !== "number" || !(h.momentum >= 0) || !Number.isFinite(h.momentum))
      throw new OptimError("BAD_ARGUMENT", `${where}.momentum: expected a finite number ≥ 0, got ${h.momentum}`);
    if (typeof h.dampening !== "number" || !Number.isFinite(h.dampening))
      throw new OptimError("BAD_ARGUMENT", `${where}.dampening: expected a finite number, got ${h.dampening}`);
    if (typeof h.nesterov !== "boolean")
      throw new OptimError("BAD_ARGUMENT", `${where}.nesterov: expected a boolean, got ${h.nesterov}`);
    if (h.nesterov && (h.momentum <= 0 || h.dampening !== 0))
      throw new OptimError(
        "BAD_ARGUMENT",
        `${where}.nesterov: Nesterov momentum requires momentum > 0 and dampening 0`,
      );
  }
  protected stateLayout(numel: number): StateLayout {
    return { momentum_buffer: { dtype: "f32", length: numel } };
  }
  protected update(
    k: OptimizerKernels,
    p: Tensor,
    g: Buffer,
    s: ParamState,
    _q: unknown,
    h: ParamGroup<SgdHyperparameters>,
  ): void {
    const hyper = {
      lr: h.lr,
      momentum: h.momentum,
      dampening: h.dampening,
      nesterov: h.nesterov,
      weightDecay: h.weightDecay,
    };
    k.sgd(p.buffer, g, h.momentum !== 0 ? s.buffers.momentum_buffer : null, p.size, hyper, s.step === 1);
  }
}
