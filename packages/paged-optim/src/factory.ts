import { OptimError } from "./errors";
import type { NamedParameters, ParamGroupSpec } from "./optimizer";
import {
  AdamW,
  type AdamWHyperparameters,
  type AdamWOptions,
  Lion,
  type LionHyperparameters,
  type LionOptions,
  SGD,
  type SgdHyperparameters,
  type SgdOptions,
} from "./optimizers";

/** Hugging Face `TrainingArguments.optim` names (and Axolotl's) this package implements. */
export const OPTIMIZER_NAMES = [
  "adamw_torch",
  "adamw_torch_fused",
  "adamw_hf",
  "adamw_8bit",
  "adamw_bnb_8bit",
  "paged_adamw_32bit",
  "paged_adamw_8bit",
  "lion_32bit",
  "lion_8bit",
  "paged_lion_32bit",
  "paged_lion_8bit",
  "sgd",
] as const;
export type OptimizerName = (typeof OPTIMIZER_NAMES)[number];

type Params<H> = NamedParameters | readonly ParamGroupSpec<H>[];

/**
 * The optimizer a training config names (`optim: paged_adamw_8bit`), with the caller's hyperparameters.
 * bits / paged come from the name; `options` may not contradict it.
 */
export function createOptimizer(
  name: string,
  params: Params<AdamWHyperparameters> | Params<LionHyperparameters> | Params<SgdHyperparameters>,
  options: Omit<AdamWOptions, "bits" | "paged"> | Omit<LionOptions, "bits" | "paged"> | SgdOptions = {},
): AdamW | Lion | SGD {
  if (!(OPTIMIZER_NAMES as readonly string[]).includes(name))
    throw new OptimError("BAD_ARGUMENT", `optimizer "${name}": expected one of ${OPTIMIZER_NAMES.join(", ")}`);
  const o = options as Record<string, unknown>;
  if ("bits" in o || "paged" in o)
    throw new OptimError("BAD_ARGUMENT", `optimizer "${name}": bits and paged come from the name, not from options`);
  const paged = name.startsWith("paged_");
  const bits = name.includes("8bit") ? 8 : 32;
  if (name.includes("lion")) return new Lion(params as Params<LionHyperparameters>, { ...o, bits, paged });
  if (name === "sgd") return new SGD(params as Params<SgdHyperparameters>, o);
  return new AdamW(params as Params<AdamWHyperparameters>, { ...o, bits, paged });
}
