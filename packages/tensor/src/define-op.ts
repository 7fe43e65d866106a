/**
 * defineOp: the public way for any package to declare an autograd op. An op has a reference forward
 * (TypeScript over Tensor ops and Backend methods: readable, the oracle), a backward, and optional kernels
 * per backend name ("cpu", "cuda") that replace the forward and/or backward on tensors of that backend.
 * The op is one node in the graph: its forward runs with recording off inside a tidy scope (intermediates
 * are freed; only what ctx.save() keeps survives until backward). Under checkpoint() the op is simply run
 * again during backward, like any built-in op. Walkthrough: docs/adding-an-op.md.
 */
import type { Backend } from "./backend/types";
import { TensorError } from "./errors";
import { gradRuleFor, isGradEnabled, noGrad, record, registerGradRule } from "./graph";
import type { Node } from "./graph";
import { dense } from "./ops";
import { Tensor, tidy } from "./tensor";

/** What a forward (reference or kernel) sees besides its inputs. */
export interface ForwardContext {
  /** The backend of the first input: kernels are looked up by its name. */
  readonly backend: Backend;
  /** Whether input i requires grad (so a forward can skip saving what no backward will need). */
  needsGrad(i: number): boolean;
  /** Keep tensors for backward (the op holds its own references; they are freed after backward). */
  save(...tensors: Tensor[]): void;
  /** Non-tensor values for backward (shapes, counts, flags). */
  readonly data: Record<string, unknown>;
}

/** What a backward (reference or kernel) sees. */
export interface BackwardContext<A> {
  readonly backend: Backend;
  /** The op's inputs (read their shape/dtype/requiresGrad; their values may have been freed). */
  readonly inputs: readonly Tensor[];
  readonly attrs: A;
  /** Tensors given to ctx.save() in forward, in order. */
  readonly saved: readonly Tensor[];
  readonly data: Record<string, unknown>;
  /** Whether input i needs a gradient: compute only those (null for the others). */
  needsGrad(i: number): boolean;
}

export type OpForward<A> = (inputs: readonly Tensor[], attrs: A, ctx: ForwardContext) => Tensor;
/** One gradient per input (null where not needed), each of its input's shape. */
export type OpBackward<A> = (grad: Tensor, ctx: BackwardContext<A>) => readonly (Tensor | null)[];

export interface OpKernels<A> {
  /** Must save the same tensors (ctx.save) as the reference forward, so either backward can run. */
  readonly forward?: OpForward<A>;
  readonly backward?: OpBackward<A>;
}

export interface OpDefinition<A> {
  /** Unique, namespaced by package by convention ("lora.linear", "tensor.swiglu"). */
  readonly name: string;
  readonly forward: OpForward<A>;
  /** Omit for a non-differentiable op (its output then never requires grad). */
  readonly backward?: OpBackward<A>;
  /** Per backend name. */
  readonly kernels?: Readonly<Record<string, OpKernels<A>>>;
}

/** Which implementation to run: the backend's kernels where declared ("auto"), or the reference. */
export type OpImplementation = "auto" | "reference";

export interface DefinedOp<A> {
  (inputs: readonly Tensor[], attrs: A): Tensor;
  readonly opName: string;
  /** Run with the given implementation choice (parity tests compare "reference" with "auto"). */
  run(inputs: readonly Tensor[], attrs: A, implementation: OpImplementation): Tensor;
  /** Backend names that have a kernel for this op. */
  readonly kernelBackends: readonly string[];
}

interface OpNodeCtx<A> {
  readonly attrs: A;
  readonly data: Record<string, unknown>;
  readonly backend: Backend;
  readonly implementation: OpImplementation;
}

const definedNames = new Set<string>();

/** Declare an op (see the module comment). Names are unique per process. */
export function defineOp<A = undefined>(def: OpDefinition<A>): DefinedOp<A> {
  if (!def || typeof def.name !== "string" || def.name.length === 0)
    throw new TensorError("BAD_ARGUMENT", "defineOp: `name` must be a non-empty string");
  if (typeof def.forward !== "function")
    throw new TensorError("BAD_ARGUMENT", `defineOp("${def.name}"): \`forward\` must be a function`);
  const opName = def.name;
  if (definedNames.has(opName) || gradRuleFor(opName))
    throw new TensorError("DUPLICATE_OP", `defineOp: an op named "${opName}" already exists (names are unique)`);
  definedNames.add(opName);
  const kernels = def.kernels ?? {};
  if (def.backward) registerGradRule(opName, (g, node) => runBackward(def, g, node));

  const run = (inputs: readonly Tensor[], attrs: A, implementation: OpImplementation): Tensor => {
    if (!Array.isArray(inputs) || inputs.length === 0 || !inputs.every((t) => t instanceof Tensor))
      throw new TensorError("BAD_ARGUMENT", `${opName}: inputs must be a non-empty array of Tensors`);
    const backend = inputs[0].backend;
    for (const [i, t] of inputs.entries()) {
      t.assertAlive(`${opName} input ${i}`);
      if (t.device !== backend.device)
        throw new TensorError(
          "DEVICE_MISMATCH",
          `${opName}: input ${i} is on ${t.device}, input 0 on ${backend.device}`,
        );
    }
    const recording = isGradEnabled() && def.backward !== undefined && inputs.some((t) => t.requiresGrad);
    const forward = (implementation === "auto" ? kernels[backend.name]?.forward : undefined) ?? def.forward.bind(def);
    const saved: Tensor[] = [];
    const data: Record<string, unknown> = {};
    const ctx: ForwardContext = {
      backend,
      needsGrad: (i) => recording && inputs[i]?.requiresGrad === true,
      save: (...ts) => {
        if (recording) for (const t of ts) saved.push(t._alias());
      },
      data,
    };
    // the saved aliases are returned from the scope too so tidy keeps them; record() takes its own
    const [out, keepSaved] = tidy(() => {
      let y = noGrad(() => forward(inputs, attrs, ctx));
      if (!(y instanceof Tensor))
        throw new TensorError("BAD_OP_RESULT", `${opName}: forward must return a Tensor, got ${typeof y}`);
      if (inputs.includes(y)) y = y._alias(); // never attach the node to an input
      return [y, saved] as const;
    });
    const res = recording ? record(opName, inputs, out, keepSaved, { attrs, data, backend, implementation }) : out;
    for (const s of keepSaved) s.dispose();
    return res;
  };

  const op = ((inputs: readonly Tensor[], attrs: A) => run(inputs, attrs, "auto")) as DefinedOp<A>;
  Object.defineProperties(op, {
    opName: { value: opName },
    run: { value: run },
    kernelBackends: { value: Object.freeze(Object.keys(kernels)) },
  });
  return op;
}

function runBackward<A>(def: OpDefinition<A>, g: Tensor, node: Node): (Tensor | null)[] {
  const c = node.ctx as unknown as OpNodeCtx<A>;
  const kernel = c.implementation === "auto" ? def.kernels?.[c.backend.name]?.backward : undefined;
  const backward = kernel ?? def.backward!.bind(def);
  const ctx: BackwardContext<A> = {
    backend: c.backend,
    inputs: node.inputs,
    attrs: c.attrs,
    saved: node.saved,
    data: c.data,
    needsGrad: (i) => node.inputs[i]?.requiresGrad === true,
  };
  const grads = tidy(() => {
    // g may arrive as a strided view (e.g. the broadcast gradient of a sum): backwards get it dense
    const r = backward(dense(g), ctx);
    if (!Array.isArray(r) || r.length !== node.inputs.length)
      throw new TensorError(
        "BAD_OP_RESULT",
        `${def.name}: backward must return one gradient (or null) per input (${node.inputs.length}), got ${Array.isArray(r) ? r.length : typeof r}`,
      );
    return [...r];
  });
  return grads.map((gi, i) => {
    if (gi && !node.inputs[i].requiresGrad) {
      gi.dispose(); // computed anyway: dropped (a well-written backward checks needsGrad(i))
      return null;
    }
    return gi;
  });
}
