/**
 * Early stopping (transformers' EarlyStoppingCallback): after each evaluation, stop when the metric has not improved
 * by more than `threshold` for `patience` evaluations in a row. Its counter is saved in checkpoints.
 */
import type { TrainerPlugin } from "../plugin";

export interface EarlyStoppingOptions {
  readonly patience: number;
  readonly threshold?: number;
  readonly metric?: string;
  readonly greaterIsBetter?: boolean;
}

export function earlyStopping(o: EarlyStoppingOptions): TrainerPlugin {
  const metric = o.metric ?? "eval_loss";
  let best: number | null = null;
  let bestStep = 0;
  let bad = 0;
  return {
    name: "early-stopping",
    hooks: {
      "eval:end"(ctx) {
        const v = ctx.metrics?.[metric];
        if (v === undefined || !Number.isFinite(v)) return;
        const gain = best === null ? Number.POSITIVE_INFINITY : o.greaterIsBetter ? v - best : best - v;
        if (gain > (o.threshold ?? 0)) {
          best = v;
          bestStep = ctx.state.globalStep;
          bad = 0;
        } else if (++bad >= o.patience) {
          ctx.control.stop(
            `early stopping: ${metric} did not improve for ${bad} evaluation${bad === 1 ? "" : "s"} (best ${Number(best?.toPrecision(6))} at step ${bestStep})`,
          );
        }
      },
    },
    stateDict: () => ({ best, bestStep, bad }),
    loadStateDict(s) {
      ({ best, bad } = s as { best: number | null; bad: number });
      bestStep = (s as { bestStep?: number }).bestStep ?? 0; // absent in checkpoints written before it was kept
    },
  };
}
