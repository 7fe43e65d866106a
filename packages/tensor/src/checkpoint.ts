/**
 * Gradient checkpointing: run fn without keeping its graph (only the inputs are saved); during backward,
 * fn is run again with grad enabled (and the random generator rewound, so dropout masks repeat) and
 * backpropagated. Parameters used inside fn receive gradients as usual. fn must return one Tensor.
 * Ops declared with defineOp inside fn are recomputed like any other op.
 */
import { backward } from "./autograd";
import { enableGrad, isGradEnabled, noGrad, registerGradRule } from "./graph";
import type { Node } from "./graph";
import { getGenerator, setGenerator } from "./random";
import type { Generator } from "./random";
import { keep } from "./tensor";
import type { Tensor } from "./tensor";

export function checkpoint(fn: (...inputs: Tensor[]) => Tensor, ...inputs: Tensor[]): Tensor {
  if (!isGradEnabled()) return fn(...inputs);
  const gen: Generator = getGenerator().clone();
  const out = noGrad(() => fn(...inputs));
  const node: Node = {
    op: "checkpoint",
    inputs,
    saved: inputs.map((t) => keep(t._alias())),
    ctx: { fn, gen },
    released: false,
  };
  out.gradFn = node;
  out._setRequiresGrad();
  return out;
}

/** The checkpoint rule: recompute with the generator rewound and backprop into detached inputs. */
function checkpointBackward(g: Tensor, node: Node): (Tensor | null)[] {
  const fn = node.ctx.fn as (...inputs: Tensor[]) => Tensor;
  const genNow = getGenerator();
  setGenerator((node.ctx.gen as Generator).clone());
  const detached = node.saved.map((s, i) => {
    const d = keep(s._alias());
    if (node.inputs[i].requiresGrad) d.requiresGrad = true;
    return d;
  });
  try {
    enableGrad(() => {
      const out = fn(...detached);
      if (out.requiresGrad) backward(out, g);
      out.dispose();
    });
  } finally {
    setGenerator(genNow);
  }
  return detached.map((d) => {
    const gr = d.grad;
    d.grad = null;
    d.dispose();
    return gr;
  });
}

registerGradRule("checkpoint", checkpointBackward);
