import type { Tensor } from "@qlora/tensor";
import { OptimError } from "./errors";
import type { NamedParameters } from "./optimizer";

export interface LoraPlusOptions {
  /** Learning rate of the A matrices (and every other parameter). */
  readonly lr: number;
  /** LoRA+ (Hayou et al. 2024): B matrices train at lr · ratio (PEFT's `loraplus_lr_ratio`, typically 16). */
  readonly ratio: number;
  readonly weightDecay?: number;
  /** Which parameters are "B" (default: a `lora_B` or `lora_embedding_B` path segment, as PEFT). */
  readonly isB?: (name: string) => boolean;
}

const DEFAULT_IS_B = (name: string) => /(^|\.)(lora_B|lora_embedding_B)(\.|$)/.test(name);

/** Two parameter groups chosen by name: everything else at lr, the B matrices at lr · ratio. */
export function loraPlusGroups(
  params: NamedParameters,
  options: LoraPlusOptions,
): [
  { params: [string, Tensor][]; lr: number; weightDecay?: number },
  { params: [string, Tensor][]; lr: number; weightDecay?: number },
] {
  if (!(options.ratio > 0) || !Number.isFinite(options.ratio))
    throw new OptimError("BAD_ARGUMENT", `loraPlusGroups: ratio must be a finite number > 0, got ${options.ratio}`);
  const isB = options.isB ?? DEFAULT_IS_B;
  const pairs: [string, Tensor][] =
    Symbol.iterator in (params as object)
      ? [...(params as Iterable<readonly [string, Tensor]>)].map(([n, t]) => [n, t])
      : Object.entries(params as Record<string, Tensor>);
  const wd = options.weightDecay === undefined ? {} : { weightDecay: options.weightDecay };
  return [
    { params: pairs.filter(([n]) => !isB(n)), lr: options.lr, ...wd },
    { params: pairs.filter(([n]) => isB(n)), lr: options.lr * options.ratio, ...wd },
  ];
}
