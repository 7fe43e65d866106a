/**
 * The autograd engine's core, at the bottom of the module graph (it imports no op and no Tensor code, so
 * nothing can form an import cycle through it): the graph node, the grad mode, the gradient-rule registry
 * and `record`, which attaches a node to an op's output. Built-in rules (./grad-rules), checkpoint
 * (./checkpoint) and ops declared with defineOp (./define-op) register their rules here; the backward
 * walk (./autograd) looks them up here.
 */
import { TensorError } from "./errors";
import { untrackEverywhere } from "./memory";
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

/**
 * A gradient rule: the output gradient g and the node → one gradient per input (null where none).
 * Rules run with recording off; they should compute only what `node.inputs[i].requiresGrad` asks for.
 */
export type GradRule = (g: Tensor, node: Node) => (Tensor | null)[];

const rules = new Map<string, GradRule>();

/**
 * Register the gradient rule of op `op`. A second registration of a name throws unless `replace` is set
 * (tests swap a rule to check that the checker catches a wrong one); returns the rule it replaced.
 */
export function registerGradRule(
  op: string,
  rule: GradRule,
  options: { replace?: boolean } = {},
): GradRule | undefined {
  if (typeof op !== "string" || op.length === 0)
    throw new TensorError("BAD_ARGUMENT", "registerGradRule: op must be a non-empty string");
  if (typeof rule !== "function")
    throw new TensorError("BAD_ARGUMENT", `registerGradRule("${op}"): rule must be a function`);
  const prev = rules.get(op);
  if (prev && !options.replace)
    throw new TensorError("DUPLICATE_OP", `registerGradRule: op "${op}" already has a gradient rule`);
  rules.set(op, rule);
  return prev;
}

/** The rule registered for `op`, or undefined. */
export function gradRuleFor(op: string): GradRule | undefined {
  return rules.get(op);
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

/** Attach a node to `out` when recording and some input requires grad. Returns out. */
export function record(
  op: string,
  inputs: readonly Tensor[],
  out: Tensor,
  saved: readonly Tensor[],
  ctx: Record<string, unknown>,
): Tensor {
  if (!gradEnabled || !inputs.some((t) => t.requiresGrad)) return out;
  const kept = saved.map((s) => {
    const a = s._alias();
    untrackEverywhere(a);
    return a;
  });
  out.gradFn = { op, inputs, saved: kept, ctx, released: false };
  out._setRequiresGrad();
  return out;
}
