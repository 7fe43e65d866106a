/**
 * Reverse-mode autograd: ops record a Node (op name, inputs, saved tensors, ctx) on their output; backward()
 * walks the nodes in reverse topological order and applies the rule for each op from the one table in
 * ./grad-rules. Saved tensors are disposed as soon as their node has run (the graph is then freed:
 * a second backward through it throws, as in PyTorch without retain_graph).
 */
import { TensorError } from "./errors";
import { gradRules } from "./grad-rules";
import { getGenerator, setGenerator } from "./random";
import type { Generator } from "./random";
import { fromBuffer, keep } from "./tensor";
import type { Tensor } from "./tensor";

export interface Node {
  readonly op: string;
  /** The op's inputs (only their identity, requiresGrad, gradFn, shape and dtype are used). */
  readonly inputs: readonly Tensor[];
  /** Handles kept for backward (own references; disposed after the node runs). */
  readonly saved: Tensor[];
  readonly ctx: Record<string, unknown>;
  released: boolean;
}

let gradEnabled = true;

export function isGradEnabled(): boolean {
  return gradEnabled;
}
/** Run fn without recording the graph. */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}
export function enableGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = true;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/** @internal attach a node to `out` when recording and some input requires grad. Returns out. */
export function record(
  op: string,
  inputs: readonly Tensor[],
  out: Tensor,
  saved: readonly Tensor[],
  ctx: Record<string, unknown>,
): Tensor {
  if (!gradEnabled || !inputs.some((t) => t.requiresGrad)) return out;
  if (!(op in gradRules)) throw new TensorError("NO_GRAD_RULE", `no gradient rule for op "${op}"`);
  const node: Node = { op, inputs, saved: saved.map((s) => keep(s._alias())), ctx, released: false };
  out.gradFn = node;
  out._setRequiresGrad();
  return out;
}

function releaseNode(n: Node): void {
  for (const s of n.saved) s.dispose();
  n.saved.length = 0;
  n.released = true;
}

/** Free a graph without running backward (e.g. a forward whose loss is not needed). */
export function freeGraph(root: Tensor): void {
  for (const n of topo(root)) releaseNode(n);
}

function topo(root: Tensor): Node[] {
  const order: Node[] = [];
  if (!root.gradFn) return order;
  const seen = new Set<Node>();
  const stack: [Node, number][] = [[root.gradFn, 0]];
  seen.add(root.gradFn);
  while (stack.length) {
    const top = stack[stack.length - 1];
    const [node, i] = top;
    if (i < node.inputs.length) {
      top[1]++;
      const child = node.inputs[i].gradFn;
      if (child && !seen.has(child)) {
        seen.add(child);
        stack.push([child, 0]);
      }
    } else {
      stack.pop();
      order.push(node);
    }
  }
  return order.reverse(); // root first
}

function accumulateLeaf(leaf: Tensor, g: Tensor): void {
  if (leaf.grad) {
    const sum = noGrad(() => leaf.grad!.add(g));
    leaf.grad.dispose();
    g.dispose();
    leaf.grad = keep(sum);
  } else leaf.grad = keep(g);
}

/**
 * Backpropagate from `root`. `grad` defaults to ones for a one-element root. Leaf gradients accumulate
 * into `.grad` (kept out of tidy scopes); everything else created here is disposed.
 */
export function backward(root: Tensor, grad?: Tensor): void {
  if (!root.requiresGrad)
    throw new TensorError(
      "NO_GRAD",
      "backward(): the tensor does not require grad (no input of its graph requires grad)",
    );
  let g0: Tensor;
  if (grad) {
    if (grad.shape.join() !== root.shape.join())
      throw new TensorError(
        "BAD_SHAPE",
        `backward(): grad shape ${JSON.stringify(grad.shape)} ≠ tensor shape ${JSON.stringify(root.shape)}`,
      );
    g0 = grad._alias();
  } else {
    if (root.size !== 1)
      throw new TensorError(
        "BAD_SHAPE",
        `backward(): implicit gradient needs a one-element tensor, got ${JSON.stringify(root.shape)}`,
      );
    g0 = fromBuffer(root.backend.fill("f32", 1, 1), root.backend, root.shape, "f32");
  }
  if (!root.gradFn) {
    accumulateLeaf(root, g0);
    return;
  }
  const order = topo(root);
  const grads = new Map<Node, Tensor>();
  grads.set(root.gradFn, g0);
  noGrad(() => {
    for (const node of order) {
      if (node.released)
        throw new TensorError(
          "GRAPH_FREED",
          `backward(): the graph through op "${node.op}" was already freed by an earlier backward`,
        );
      const g = grads.get(node);
      grads.delete(node);
      if (!g) {
        releaseNode(node);
        continue;
      }
      const rule = gradRules[node.op];
      const inGrads = rule(g, node);
      releaseNode(node);
      const owned = new Set<Tensor>();
      for (let i = 0; i < node.inputs.length; i++) {
        const input = node.inputs[i];
        let gi = inGrads[i];
        if (!gi) continue;
        if (!input.requiresGrad) {
          if (gi !== g && !owned.has(gi)) gi.dispose();
          continue;
        }
        if (gi === g || owned.has(gi)) gi = gi._alias();
        owned.add(gi);
        if (gi.shape.join() !== input.shape.join())
          throw new TensorError(
            "GRAD_SHAPE",
            `gradient rule "${node.op}" returned shape ${JSON.stringify(gi.shape)} for input ${i} of shape ${JSON.stringify(input.shape)}`,
          );
        if (gi.dtype !== input.dtype) {
          const c = gi.cast(input.dtype);
          gi.dispose();
          gi = c;
        }
        if (input.gradFn) {
          const prev = grads.get(input.gradFn);
          if (prev) {
            const s = prev.add(gi);
            prev.dispose();
            gi.dispose();
            grads.set(input.gradFn, s);
          } else grads.set(input.gradFn, gi);
        } else accumulateLeaf(input, gi);
      }
      for (const t of inGrads) if (t && t !== g && !owned.has(t) && !t.disposed) t.dispose();
      g.dispose();
    }
  });
  for (const t of grads.values()) t.dispose();
}

/**
 * Gradient checkpointing: run fn without keeping its graph (only the inputs are saved); during backward,
 * fn is run again with grad enabled (and the random generator rewound, so dropout masks repeat) and
 * backpropagated. Parameters used inside fn receive gradients as usual. fn must return one Tensor.
 */
export function checkpoint(fn: (...inputs: Tensor[]) => Tensor, ...inputs: Tensor[]): Tensor {
  if (!gradEnabled) return fn(...inputs);
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

/** @internal the checkpoint rule: recompute and backprop (called by grad-rules). */
export function checkpointBackward(g: Tensor, node: Node): (Tensor | null)[] {
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
      else {
        // nothing inside needs grad
      }
      out.dispose();
    });
  } finally {
    setGenerator(genNow);
  }
  const res = detached.map((d) => {
    const gr = d.grad;
    d.grad = null;
    d.dispose();
    return gr;
  });
  return res;
}
