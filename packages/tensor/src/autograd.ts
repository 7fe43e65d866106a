/**
 * Reverse-mode autograd: ops record a Node (op name, inputs, saved tensors, ctx) on their output (./graph);
 * backward() walks the nodes in reverse topological order and applies each op's rule from the engine's
 * registry (./graph; the built-in rules of ./grad-rules are registered when this module loads). Saved
 * tensors are disposed as soon as their node has run (the graph is then freed: a second backward through
 * it throws, as in PyTorch without retain_graph).
 *
 * Gradients accumulate in place where that is safe: into a leaf's existing `.grad` (which the engine owns
 * exclusively) and into a node's pending fan-in gradient when nothing else shares its storage.
 * Post-accumulate-grad hooks of a leaf run once per backward, right after its last contribution.
 */
import { TensorError } from "./errors";
import { builtinGradRules } from "./grad-rules";
import { gradRuleFor, noGrad, registerGradRule } from "./graph";
import type { Node } from "./graph";
import { addInPlace } from "./ops";
import { fromBuffer, installTensorMethods, keep } from "./tensor";
import type { Tensor } from "./tensor";

export { noGrad, enableGrad, isGradEnabled } from "./graph";
export type { Node } from "./graph";

for (const [op, rule] of Object.entries(builtinGradRules)) registerGradRule(op, rule);

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

/** True when t is the only handle on its storage, covers it densely in f32, and its backend can add in
 * place (host backends always can; a device backend only if it implements addInPlace): safe to add into. */
function exclusivelyOwned(t: Tensor): boolean {
  return (
    t.storage.refs === 1 &&
    t.dtype === "f32" &&
    t.isDense() &&
    (t.device === "cpu" || t.backend.addInPlace !== undefined)
  );
}

/**
 * leaf.grad += g without a new buffer when the leaf already has a gradient; the first gradient is taken
 * over as is when this backward owns it exclusively, else copied (a later in-place accumulation must not
 * write into a tensor someone else holds, e.g. the gradient passed to backward()).
 */
function accumulateLeaf(leaf: Tensor, g: Tensor): void {
  if (leaf.grad && exclusivelyOwned(leaf.grad)) {
    addInPlace(leaf.grad, g);
    g.dispose();
  } else if (leaf.grad) {
    // a gradient assigned from outside (shared storage) or not f32: never written into
    const sum = leaf.grad.add(g);
    leaf.grad.dispose();
    g.dispose();
    leaf.grad = keep(sum);
  } else if (g.storage.refs === 1 && g.isDense()) leaf.grad = keep(g);
  else {
    leaf.grad = keep(g.clone());
    g.dispose();
  }
}

/** One backward walk: how many contributions each leaf still waits for, and leaves nested walks touched. */
interface Frame {
  readonly pending: Map<Tensor, number>;
  readonly touched: Set<Tensor>;
  readonly fired: Set<Tensor>;
  /** Leaves that received a gradient (outermost frame; nested walks record here too). */
  readonly received: Set<Tensor>;
}
const frames: Frame[] = [];

function runHooks(leaf: Tensor, frame: Frame): void {
  // as in PyTorch: no hook for a leaf that got no gradient in this backward (e.g. only through sign())
  if (frame.fired.has(leaf) || !frame.received.has(leaf)) return;
  frame.fired.add(leaf);
  leaf._runPostAccumulateGradHooks();
}

/** A leaf received a contribution: run its hooks when it was its last one in the outermost walk. */
function contributed(leaf: Tensor): void {
  const frame = frames[frames.length - 1];
  const left = (frame.pending.get(leaf) ?? 1) - 1;
  frame.pending.set(leaf, left);
  if (left > 0) return;
  if (frames.length === 1) runHooks(leaf, frame);
  else frames[0].touched.add(leaf); // inside a checkpoint recomputation: the outer walk decides
}

/** After each node of the outermost walk: hooks of leaves that nested walks completed. */
function flushTouched(frame: Frame): void {
  for (const leaf of frame.touched) if ((frame.pending.get(leaf) ?? 0) <= 0) runHooks(leaf, frame);
  frame.touched.clear();
}

function countLeafContributions(order: readonly Node[]): Map<Tensor, number> {
  const pending = new Map<Tensor, number>();
  for (const node of order)
    for (const input of node.inputs)
      if (input.requiresGrad && !input.gradFn) pending.set(input, (pending.get(input) ?? 0) + 1);
  return pending;
}

/** prev + gi for a node's fan-in: in place into prev when this walk owns it exclusively. */
function fanIn(prev: Tensor, gi: Tensor): Tensor {
  if (exclusivelyOwned(prev)) {
    addInPlace(prev, gi);
    gi.dispose();
    return prev;
  }
  const s = prev.add(gi);
  prev.dispose();
  gi.dispose();
  return s;
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
  const order = topo(root);
  const frame: Frame = {
    pending: countLeafContributions(order),
    touched: new Set(),
    fired: new Set(),
    received: frames.length > 0 ? frames[0].received : new Set(),
  };
  if (!root.gradFn) frame.pending.set(root, 1);
  frames.push(frame);
  try {
    if (!root.gradFn) {
      noGrad(() => accumulateLeaf(root, g0));
      frame.received.add(root);
      contributed(root);
      return;
    }
    walk(order, root.gradFn, g0, frame);
  } finally {
    frames.pop();
  }
}

function walk(order: readonly Node[], rootNode: Node, g0: Tensor, frame: Frame): void {
  const grads = new Map<Node, Tensor>();
  grads.set(rootNode, g0);
  try {
    noGrad(() => {
      for (const node of order) {
        runNode(node, grads);
        if (frames.length === 1) flushTouched(frame);
      }
    });
  } finally {
    for (const t of grads.values()) t.dispose();
  }
}

function runNode(node: Node, grads: Map<Node, Tensor>): void {
  if (node.released)
    throw new TensorError(
      "GRAPH_FREED",
      `backward(): the graph through op "${node.op}" was already freed by an earlier backward`,
    );
  const g = grads.get(node);
  grads.delete(node);
  if (!g) {
    releaseNode(node);
    for (const input of node.inputs) if (input.requiresGrad && !input.gradFn) contributed(input);
    return;
  }
  const rule = gradRuleFor(node.op);
  if (!rule)
    throw new TensorError(
      "NO_GRAD_RULE",
      `backward(): no gradient rule is registered for op "${node.op}" (declare it with defineOp)`,
    );
  const inGrads = rule(g, node);
  releaseNode(node);
  const owned = new Set<Tensor>();
  for (let i = 0; i < node.inputs.length; i++) {
    const input = node.inputs[i];
    let gi = inGrads[i];
    if (!input.requiresGrad) {
      if (gi && gi !== g && !owned.has(gi)) gi.dispose();
      continue;
    }
    if (!gi) {
      if (!input.gradFn) contributed(input);
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
      grads.set(input.gradFn, prev ? fanIn(prev, gi) : gi);
    } else {
      accumulateLeaf(input, gi);
      frames[0].received.add(input);
      contributed(input);
    }
  }
  for (const t of inGrads) if (t && t !== g && !owned.has(t) && !t.disposed) t.dispose();
  g.dispose();
}

installTensorMethods({ backward });
