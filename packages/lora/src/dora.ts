/**
 * DoRA (peft/tuners/lora/dora.py DoraLinearLayer): with m the magnitude vector [out] and
 * n = ‖W + s·B·A‖ per output row (detached from the graph, DoRA paper §4.3), the layer output
 * without bias is
 *   base(x) + (m/n − 1)·base(x̃) + (m/n)·s·B·A·x̃,   x̃ = dropout(x),
 * which without dropout is (m/n)·(base(x) + s·B·A·x): one base product instead of two.
 * For a 4-bit base the norm needs the dequantized weight: it is computed (by the caller's weightNorm) and
 * dropped; nothing dequantized is saved for backward.
 */
import { type Tensor, add, matmul, mul, noGrad, sub, tensor } from "@qlora/tensor";
import { type LoraBase, baseForward } from "./lora-op";

export interface DoraArgs {
  readonly base: LoraBase;
  readonly scaling: number;
  readonly mask: Tensor | null;
  /** ‖W + s·B·A‖ per output row, f32 [out]; treated as a constant. */
  readonly weightNorm: () => Float32Array;
}

/** The DoRA layer output without the base bias. Differentiable in x, A, B and m. */
export function doraLinear(x: Tensor, A: Tensor, B: Tensor, m: Tensor, args: DoraArgs): Tensor {
  const norm = noGrad(() => tensor(args.weightNorm(), { backend: m.backend }));
  const scale = m.div(norm); // [out], broadcast over rows
  norm.dispose();
  const xd = args.mask ? mul(x, args.mask) : x;
  const at = A.transpose(0, 1);
  const bt = B.transpose(0, 1);
  const t = matmul(xd, at);
  const l = matmul(t, bt);
  const ls = mul(l, args.scaling);
  const temps: Tensor[] = [at, bt, t, l, ls];
  let y: Tensor;
  const yb = baseForward(x, args.base);
  temps.push(yb);
  if (!args.mask) {
    const sum = add(yb, ls);
    y = mul(sum, scale);
    temps.push(sum);
  } else {
    const ybd = baseForward(xd, args.base);
    const sm1 = sub(scale, 1);
    const a = mul(ybd, sm1);
    const b = mul(ls, scale);
    const ab = add(a, b);
    y = add(yb, ab);
    temps.push(ybd, sm1, a, b, ab, xd);
  }
  for (const h of temps) h.dispose();
  scale.dispose();
  return y;
}
