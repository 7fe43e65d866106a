/**
 * Learning-rate schedules as pure functions of the optimizer step, with the formulas of Hugging Face
 * transformers' `optimization.py` (`get_*_schedule_with_warmup`): each returns the multiplier of the base lr.
 * A schedule is a function of the step only, so resuming needs nothing but the global step.
 */
import { TrainerError } from "./errors";

export type SchedulerName =
  | "constant"
  | "constant_with_warmup"
  | "linear"
  | "cosine"
  | "cosine_with_min_lr"
  | "warmup_stable_decay";

export interface SchedulerOptions {
  readonly name: SchedulerName;
  readonly totalSteps: number;
  /** Warmup as a step count; wins over warmupRatio. */
  readonly warmupSteps?: number;
  /** Warmup as a fraction of totalSteps (ceil, as transformers' get_warmup_steps). */
  readonly warmupRatio?: number;
  /** cosine: number of cosine waves (default 0.5: one half wave down to 0). */
  readonly numCycles?: number;
  /**
   * cosine_with_min_lr (required) and cosine (optional; Axolotl's cosine_min_lr_ratio): floor as a rate of the base
   * lr (minLrRate) or as an absolute lr (minLr, needs baseLr). Other schedules refuse them.
   */
  readonly minLrRate?: number;
  readonly minLr?: number;
  readonly baseLr?: number;
  /** warmup_stable_decay: decay steps or ratio (default 0.1 of totalSteps); decay shape "linear" | "cosine" | "1-sqrt". */
  readonly decaySteps?: number;
  readonly decayRatio?: number;
  readonly decayType?: "linear" | "cosine" | "1-sqrt";
  readonly minLrRatio?: number;
}

/** Resolve warmup steps: explicit steps, else ceil(ratio · total), else 0. */
export function warmupSteps(o: Pick<SchedulerOptions, "warmupSteps" | "warmupRatio" | "totalSteps">): number {
  if (o.warmupSteps !== undefined && o.warmupSteps > 0) return o.warmupSteps;
  if (o.warmupRatio !== undefined) {
    if (!(o.warmupRatio >= 0 && o.warmupRatio <= 1))
      throw new TrainerError("BAD_ARGUMENT", `warmupRatio must be in [0, 1], got ${o.warmupRatio}`);
    return Math.ceil(o.totalSteps * o.warmupRatio);
  }
  return 0;
}

/** The multiplier function lambda(step) for a schedule. */
export function createSchedule(o: SchedulerOptions): (step: number) => number {
  if (!(Number.isInteger(o.totalSteps) && o.totalSteps > 0))
    throw new TrainerError("BAD_ARGUMENT", `scheduler: totalSteps must be a positive integer, got ${o.totalSteps}`);
  if ((o.minLrRate !== undefined || o.minLr !== undefined) && o.name !== "cosine" && o.name !== "cosine_with_min_lr")
    throw new TrainerError(
      "BAD_ARGUMENT",
      `scheduler: minLrRate / minLr apply to cosine and cosine_with_min_lr, not to ${o.name} (warmup_stable_decay takes minLrRatio)`,
    );
  const warm = warmupSteps(o);
  const total = o.totalSteps;
  const ramp = (s: number) => s / Math.max(1, warm);
  switch (o.name) {
    case "constant":
      return () => 1;
    case "constant_with_warmup":
      return (s) => (s < warm ? ramp(s) : 1);
    case "linear":
      return (s) => (s < warm ? ramp(s) : Math.max(0, (total - s) / Math.max(1, total - warm)));
    case "cosine":
      // Axolotl's cosine_min_lr_ratio: the same curve, decaying to the floor instead of 0.
      return cosine(
        warm,
        total,
        o.numCycles ?? 0.5,
        o.minLrRate === undefined && o.minLr === undefined ? 0 : minRate(o),
      );
    case "cosine_with_min_lr":
      return cosine(warm, total, o.numCycles ?? 0.5, minRate(o));
    case "warmup_stable_decay":
      return warmupStableDecay(o, warm);
    default:
      throw new TrainerError(
        "BAD_ARGUMENT",
        `scheduler: unknown name "${(o as { name: string }).name}"; expected constant, constant_with_warmup, linear, cosine, cosine_with_min_lr or warmup_stable_decay`,
      );
  }
}

function minRate(o: SchedulerOptions): number {
  const rate = o.minLrRate ?? (o.minLr !== undefined && o.baseLr ? o.minLr / o.baseLr : undefined);
  if (rate === undefined)
    throw new TrainerError("BAD_ARGUMENT", `${o.name} needs minLrRate, or minLr together with baseLr`);
  if (!(rate >= 0 && rate <= 1))
    throw new TrainerError("BAD_ARGUMENT", `${o.name}: the min lr rate must be in [0, 1], got ${rate}`);
  return rate;
}

function cosine(warm: number, total: number, cycles: number, floor: number): (s: number) => number {
  return (s) => {
    if (s < warm) return s / Math.max(1, warm);
    const progress = (s - warm) / Math.max(1, total - warm);
    const c = 0.5 * (1 + Math.cos(Math.PI * cycles * 2 * progress));
    // transformers' cosine clamps at 0; the min-lr variant interpolates between the floor and 1.
    return floor === 0 ? Math.max(0, c) : Math.max(0, c * (1 - floor) + floor);
  };
}

/** transformers' _get_wsd_scheduler_lambda with the stable phase filling the steps between warmup and decay. */
function warmupStableDecay(o: SchedulerOptions, warm: number): (s: number) => number {
  const decay = o.decaySteps ?? Math.ceil(o.totalSteps * (o.decayRatio ?? 0.1));
  const stable = Math.max(0, o.totalSteps - warm - decay);
  const minRatio = o.minLrRatio ?? 0;
  const type = o.decayType ?? "cosine";
  const floor = (f: number) => Math.max(0, f * (1 - minRatio) + minRatio);
  return (s) => {
    if (s < warm) return floor(s / Math.max(1, warm));
    if (s < warm + stable) return 1;
    if (s < warm + stable + decay) {
      const p = (s - warm - stable) / Math.max(1, decay);
      const f =
        type === "linear" ? 1 - p : type === "1-sqrt" ? 1 - Math.sqrt(p) : 0.5 * (1 + Math.cos(Math.PI * 2 * 0.5 * p));
      return floor(f);
    }
    return minRatio;
  };
}
