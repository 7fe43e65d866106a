import type { Tensor } from "@qlora/tensor";
import { OptimError } from "./errors";
import { kernelsFor } from "./kernels/table";
import type { NamedParameters } from "./optimizer";

export interface ClipOptions {
  /** Added to the norm before dividing (torch.nn.utils.clip_grad_norm_: 1e-6). */
  readonly eps?: number;
}

/**
 * Global L2 norm of all gradients, accumulated in f64 in one pass over each gradient; if it exceeds
 * maxNorm every gradient is scaled in place by maxNorm / (norm + 1e-6) (torch's clip_grad_norm_ rule).
 * Returns the norm before clipping. A non-finite norm is returned as is and nothing is scaled: the
 * caller decides (skip the step; the 8-bit optimizers already leave elements with a non-finite
 * gradient untouched).
 */
export function clipGradNorm(
  params: NamedParameters | Iterable<Tensor> | { readonly names: readonly string[]; param(name: string): Tensor },
  maxNorm: number,
  options: ClipOptions = {},
): number {
  if (typeof maxNorm !== "number" || !(maxNorm > 0))
    throw new OptimError("BAD_ARGUMENT", `maxNorm: expected a number > 0, got ${JSON.stringify(maxNorm)}`);
  const owners = paramsWithGrads(params);
  let sum = 0;
  for (const p of owners) sum += kernelsFor(p.backend).sumSquares(p.grad!.buffer, p.size);
  const norm = Math.sqrt(sum);
  const coef = maxNorm / (norm + (options.eps ?? 1e-6));
  if (Number.isFinite(norm) && coef < 1)
    for (const p of owners) {
      const g = p.grad!;
      const k = kernelsFor(p.backend);
      if (k.scale) k.scale(g.buffer, g.size, coef);
      else {
        // A device backend without the in-place kernel: one elementwise multiply into a new gradient.
        p.grad = g.mul(Math.fround(coef));
        g.dispose();
      }
    }
  return norm;
}

function paramsWithGrads(
  params: NamedParameters | Iterable<Tensor> | { readonly names: readonly string[]; param(name: string): Tensor },
): Tensor[] {
  let tensors: Tensor[];
  if (typeof (params as { param?: unknown }).param === "function") {
    const o = params as { names: readonly string[]; param(name: string): Tensor };
    tensors = o.names.map((n) => o.param(n));
  } else if (Symbol.iterator in (params as object)) {
    tensors = [...(params as Iterable<Tensor | readonly [string, Tensor]>)].map((x) =>
      Array.isArray(x) ? (x[1] as Tensor) : (x as Tensor),
    );
  } else tensors = Object.values(params as Record<string, Tensor>);
  const owners: Tensor[] = [];
  for (const p of tensors) {
    const g = p.grad;
    if (!g) continue;
    if (g.dtype !== "f32" || !g.isDense())
      throw new OptimError(
        "BAD_PARAM",
        `clipGradNorm: gradients must be dense f32 (got ${g.dtype} ${JSON.stringify(g.shape)}${g.isDense() ? "" : ", a view"})`,
      );
    owners.push(p);
  }
  return owners;
}
