/**
 * The LoRA linear: y = base(x) + s·(dropout(x)·Aᵀ)·Bᵀ, with A [r, in], B [out, r] and a frozen base that is
 * either a dense weight W [out, in] or a 4-bit QuantizedWeight (dequantized tile by tile inside
 * matmul4bit, never whole).
 *
 * Three layers, from readable to fast:
 * - `loraLinearReference`: the formula composed from public tensor ops; autograd derives the backward.
 *   The oracle of every test.
 * - `loraForward` / `loraBackward`: the op's explicit forward and backward (what the fused op runs), written
 *   over tensor ops with grad recording off. The backward needs only x (and the dropout mask) and t = x·Aᵀ;
 *   it never materialises a dequantized weight:
 *     dB = s·gᵀ·t,  gt = s·g·B,  dA = gtᵀ·(x∘mask),  dX = base.inputGrad(g) + (gt·A)∘mask.
 * - `loraForwardAccumulate` / `loraBackwardAccumulate`: the same math as accumulating GEMMs (y = base(x), then
 *   y += s·t·Bᵀ with beta = 1; the LoRA part of dX added into the base's input gradient in place): the op's
 *   `cpu` kernel (f32 activations; bf16/f16 take the reference forms).
 * - `loraLinear` / `loraLinearOp`: the op (defineOp) called by LoraLinear layers.
 */
import {
  type OpBackward,
  type OpForward,
  add,
  addInPlace,
  defineOp,
  matmulAccumulate,
  zeros,
  dropoutMask,
  matmul,
  matmul4bit,
  mul,
  noGrad,
  gradRules,
  type Node,
  type QuantizedWeight,
  type Tensor,
} from "@qlora/tensor";
import { LoraError } from "./errors";

/** A frozen base weight: dense W [out, in] (not trained through this op), or 4-bit. */
export type LoraBase =
  | { readonly kind: "dense"; readonly weight: Tensor }
  | { readonly kind: "4bit"; readonly weight: QuantizedWeight };

export interface LoraOpArgs {
  /** null: only the LoRA path (a second adapter added onto an existing y). */
  readonly base: LoraBase | null;
  readonly scaling: number;
  /** Inverted-dropout mask (values 0 or 1/(1−p)), same shape as x; null = no dropout. */
  readonly mask: Tensor | null;
}

export function baseShape(base: LoraBase): readonly [number, number] {
  return base.kind === "dense" ? (base.weight.shape as [number, number]) : base.weight.buffers.shape;
}

function checkShapes(x: Tensor, A: Tensor, B: Tensor, args: LoraOpArgs): void {
  const inF = x.shape[x.ndim - 1];
  if (A.ndim !== 2 || B.ndim !== 2 || A.shape[1] !== inF || B.shape[1] !== A.shape[0])
    throw new LoraError(
      "BAD_SHAPE",
      `loraLinear: x ${JSON.stringify(x.shape)}, lora_A ${JSON.stringify(A.shape)} (expected [r, ${inF}]), lora_B ${JSON.stringify(B.shape)} (expected [out, r])`,
    );
  if (args.base) {
    const [o, i] = baseShape(args.base);
    if (o !== B.shape[0] || i !== inF)
      throw new LoraError(
        "BAD_SHAPE",
        `loraLinear: base weight [${o}, ${i}] does not fit x ${JSON.stringify(x.shape)} and lora_B ${JSON.stringify(B.shape)}`,
      );
  }
  if (args.mask && args.mask.shape.join() !== x.shape.join())
    throw new LoraError(
      "BAD_SHAPE",
      `loraLinear: dropout mask ${JSON.stringify(args.mask.shape)} must match x ${JSON.stringify(x.shape)}`,
    );
}

/** base(x) without bias: x·Wᵀ or the 4-bit matmul. Differentiable in x. */
export function baseForward(x: Tensor, base: LoraBase): Tensor {
  if (base.kind === "4bit") return matmul4bit(x, base.weight);
  const wt = base.weight.transpose(0, 1);
  const y = matmul(x, wt);
  wt.dispose();
  return y;
}

/** Draw an inverted-dropout mask for x from the Philox generator (null when p = 0 or not training). */
export function loraDropoutMask(x: Tensor, p: number, training: boolean): Tensor | null {
  if (!training || p === 0) return null;
  return dropoutMask(x.shape, p, { backend: x.backend });
}

/** y = base(x) + s·(dropout(x)·Aᵀ)·Bᵀ from public ops, with t = dropout(x)·Aᵀ kept for the caller. */
function composedForward(x: Tensor, A: Tensor, B: Tensor, args: LoraOpArgs): { y: Tensor; t: Tensor } {
  const xd = args.mask ? mul(x, args.mask) : x;
  const at = A.transpose(0, 1);
  const t = matmul(xd, at);
  const bt = B.transpose(0, 1);
  const l = matmul(t, bt);
  // readable form: a separate LoRA output and an add (the cpu kernel accumulates into y instead)
  const ls = mul(l, args.scaling);
  let y = ls;
  if (args.base) {
    const yb = baseForward(x, args.base);
    y = add(yb, ls);
    yb.dispose();
    ls.dispose();
  }
  for (const h of [at, bt, l]) h.dispose();
  if (xd !== x) xd.dispose();
  return { y, t };
}

/** The formula from public ops; autograd gives the gradients. */
export function loraLinearReference(x: Tensor, A: Tensor, B: Tensor, args: LoraOpArgs): Tensor {
  checkShapes(x, A, B, args);
  const { y, t } = composedForward(x, A, B, args);
  t.dispose();
  return y;
}

export interface LoraSaved {
  readonly x: Tensor;
  readonly mask: Tensor | null;
  /** t = dropout(x)·Aᵀ [..., r] */
  readonly t: Tensor;
}

/** Forward without recording: returns y and what backward needs (x, the mask, t). */
export function loraForward(x: Tensor, A: Tensor, B: Tensor, args: LoraOpArgs): { y: Tensor; t: Tensor } {
  checkShapes(x, A, B, args);
  return noGrad(() => composedForward(x, A, B, args));
}

/** Which gradients to compute (frozen inputs cost nothing). */
export interface LoraNeeds {
  readonly x: boolean;
  readonly A: boolean;
  readonly B: boolean;
}

/** Backward from the output gradient g [..., out]: [dX, dA, dB] (null where not needed). */
export function loraBackward(
  g: Tensor,
  saved: LoraSaved,
  A: Tensor,
  B: Tensor,
  args: LoraOpArgs,
  needs: LoraNeeds,
): [Tensor | null, Tensor | null, Tensor | null] {
  return noGrad(() => {
    const out = g.shape[g.ndim - 1];
    const r = A.shape[0];
    const inF = A.shape[1];
    const g2 = g.reshape([-1, out]);
    const t2 = saved.t.reshape([-1, r]);
    let dB: Tensor | null = null;
    if (needs.B) {
      const gT = g2.transpose(0, 1);
      const p = matmul(gT, t2); // [out, r]
      dB = mul(p, args.scaling);
      gT.dispose();
      p.dispose();
    }
    let dA: Tensor | null = null;
    let dX: Tensor | null = null;
    if (needs.A || needs.x) {
      const gB = matmul(g2, B); // [M, r]
      const gt = mul(gB, args.scaling);
      gB.dispose();
      if (needs.A) {
        const x2 = saved.x.reshape([-1, inF]);
        const xd = saved.mask ? mulMask(x2, saved.mask) : x2;
        const gtT = gt.transpose(0, 1);
        dA = matmul(gtT, xd); // [r, in]
        gtT.dispose();
        if (xd !== x2) xd.dispose();
        x2.dispose();
      }
      if (needs.x) {
        const lx2 = matmul(gt, A); // [M, in]
        const lx = lx2.reshape(saved.x.shape);
        lx2.dispose();
        const lxm = saved.mask ? mul(lx, saved.mask) : lx;
        if (lxm !== lx) lx.dispose();
        if (args.base) {
          const bx = baseInputGrad(g, args.base);
          dX = add(bx, lxm); // readable form (the cpu kernel adds into bx in place)
          bx.dispose();
          lxm.dispose();
        } else dX = lxm;
      }
      gt.dispose();
    }
    g2.dispose();
    t2.dispose();
    return [dX, dA, dB];
  });
}

function mulMask(x2: Tensor, mask: Tensor): Tensor {
  const m2 = mask.reshape(x2.shape);
  const r = mul(x2, m2);
  m2.dispose();
  return r;
}

/** dX of the base alone: g·W (dense) or the 4-bit input-gradient kernel (bitsandbytes MatMul4Bit.backward). */
export function baseInputGrad(g: Tensor, base: LoraBase): Tensor {
  if (base.kind === "dense") return matmul(g, base.weight);
  // matmul4bit's gradient rule is exactly the backend's input-gradient kernel (no dequantized weight);
  // call it with a node that carries only what the rule reads (the input's shape, the weight, m).
  const w = base.weight;
  const k = w.buffers.shape[1];
  const m = g.size / g.shape[g.ndim - 1];
  const node = {
    op: "matmul4bit",
    inputs: [{ shape: [...g.shape.slice(0, -1), k] }],
    saved: [],
    ctx: { w, m },
    released: false,
  };
  const [dx] = gradRules.matmul4bit(g, node as unknown as Node);
  return dx as Tensor;
}

/** Attributes of the fused op (the dropout mask, when any, is the 4th input). */
export interface LoraLinearAttrs {
  readonly base: LoraBase | null;
  readonly scaling: number;
}

/**
 * The accumulating forward (the op's `cpu` kernel; any backend with Backend.matmul alpha/beta/out runs it):
 * y = base(x) in a fresh buffer, then y += s·t·Bᵀ in place in one GEMM: no separate LoRA output, no add.
 */
export function loraForwardAccumulate(x: Tensor, A: Tensor, B: Tensor, args: LoraOpArgs): { y: Tensor; t: Tensor } {
  checkShapes(x, A, B, args);
  return noGrad(() => {
    const out = B.shape[0];
    const xd = args.mask ? mul(x, args.mask) : x;
    const at = A.transpose(0, 1);
    const t = matmul(xd, at);
    at.dispose();
    if (xd !== x) xd.dispose();
    const y = args.base ? baseForward(x, args.base) : zeros([...x.shape.slice(0, -1), out], { backend: x.backend });
    const y2 = y.reshape([-1, out]);
    const t2 = t.reshape([-1, t.shape[t.ndim - 1]]);
    const bt = B.transpose(0, 1);
    matmulAccumulate(y2, t2, bt, args.scaling, args.base ? 1 : 0);
    for (const h of [y2, t2, bt]) h.dispose();
    return { y, t };
  });
}

/**
 * The accumulating backward: dB = s·gᵀ·t and gt = s·g·B as GEMMs with alpha = s, dA = gtᵀ·x̃, and
 * dX = base.inputGrad(g) with the LoRA path added in place (one GEMM with beta = 1 when there is no mask).
 */
export function loraBackwardAccumulate(
  g: Tensor,
  saved: LoraSaved,
  A: Tensor,
  B: Tensor,
  args: LoraOpArgs,
  needs: LoraNeeds,
): [Tensor | null, Tensor | null, Tensor | null] {
  return noGrad(() => {
    const be = g.backend;
    const [out, r] = B.shape;
    const inF = A.shape[1];
    const g2 = g.reshape([-1, out]);
    const rows = g2.shape[0];
    let dB: Tensor | null = null;
    if (needs.B) {
      const t2 = saved.t.reshape([-1, r]);
      const gT = g2.transpose(0, 1);
      dB = zeros([out, r], { backend: be });
      matmulAccumulate(dB, gT, t2, args.scaling, 0);
      t2.dispose();
      gT.dispose();
    }
    let dA: Tensor | null = null;
    let dX: Tensor | null = null;
    if (needs.A || needs.x) {
      const gt = zeros([rows, r], { backend: be });
      matmulAccumulate(gt, g2, B, args.scaling, 0);
      if (needs.A) {
        const x2 = saved.x.reshape([-1, inF]);
        const xd = saved.mask ? mulMask(x2, saved.mask) : x2;
        const gtT = gt.transpose(0, 1);
        dA = zeros([r, inF], { backend: be });
        matmulAccumulate(dA, gtT, xd, 1, 0);
        gtT.dispose();
        if (xd !== x2) xd.dispose();
        x2.dispose();
      }
      if (needs.x) {
        dX = args.base ? baseInputGrad(g, args.base) : zeros(saved.x.shape, { backend: be });
        const dX2 = dX.reshape([-1, inF]);
        if (!saved.mask) matmulAccumulate(dX2, gt, A, 1, args.base ? 1 : 0);
        else {
          const lx = matmul(gt, A);
          const m2 = saved.mask.reshape([-1, inF]);
          const lxm = mul(lx, m2);
          addInPlace(dX2, lxm);
          for (const h of [lx, m2, lxm]) h.dispose();
        }
        dX2.dispose();
      }
      gt.dispose();
    }
    g2.dispose();
    return [dX, dA, dB];
  });
}

function opForward(fwd: typeof loraForward): OpForward<LoraLinearAttrs> {
  return ([x, A, B, mask], attrs, ctx) => {
    const { y, t } = fwd(x, A, B, { base: attrs.base, scaling: attrs.scaling, mask: mask ?? null });
    // x and t are the activations kept; A and B are the parameters themselves (aliases, no copy)
    ctx.save(x, t, A, B, ...(mask ? [mask] : []));
    return y;
  };
}

function opBackward(bwd: typeof loraBackward): OpBackward<LoraLinearAttrs> {
  return (g, ctx) => {
    const [x, t, A, B, mask] = ctx.saved;
    const args = { base: ctx.attrs.base, scaling: ctx.attrs.scaling, mask: mask ?? null };
    const gd = g.isDense() && g.dtype === "f32" ? g : g.contiguous();
    const [dX, dA, dB] = bwd(gd, { x, t, mask: mask ?? null }, A, B, args, {
      x: ctx.needsGrad(0),
      A: ctx.needsGrad(1),
      B: ctx.needsGrad(2),
    });
    return ctx.inputs.length === 4 ? [dX, dA, dB, null] : [dX, dA, dB];
  };
}

/**
 * The fused op: one autograd node per LoRA linear. Inputs [x, A, B] or [x, A, B, mask]. Saves x, t = x̃·Aᵀ,
 * the mask and aliases of A and B; never a dequantized weight. Reference: loraForward/loraBackward; `cpu` and
 * `cuda` kernels: the accumulating GEMM forms (the backend's GEMM with alpha/beta; on cuda the fused rank-r kernel).
 */
export const loraLinearOp = defineOp<LoraLinearAttrs>({
  name: "lora.linear",
  forward: opForward(loraForward),
  backward: opBackward(loraBackward),
  kernels: {
    cpu: { forward: opForward(accumulateOr(loraForward)), backward: opBackward(accumulateBackwardOr(loraBackward)) },
    // The same accumulating forms: @qlora/cuda-kernels' matmul with an output sends the rank-r products (y += s·t·Bᵀ,
    // dX += gt·A; inner dimension r ≤ 64) to its fused LoRA kernel (csrc/kernels/lora.cu). Unverified on a GPU.
    cuda: { forward: opForward(accumulateOr(loraForward)), backward: opBackward(accumulateBackwardOr(loraBackward)) },
  },
});

/** The accumulating GEMM writes into an f32 output: a bf16/f16 activation or base takes the reference form. */
function f32Path(x: Tensor, base: LoraBase | null): boolean {
  return x.dtype === "f32" && (base?.kind !== "dense" || base.weight.dtype === "f32");
}
function accumulateOr(fallback: typeof loraForward): typeof loraForward {
  return (x, A, B, args) => (f32Path(x, args.base) ? loraForwardAccumulate : fallback)(x, A, B, args);
}
function accumulateBackwardOr(fallback: typeof loraBackward): typeof loraBackward {
  return (g, saved, A, B, args, needs) =>
    (g.dtype === "f32" && f32Path(saved.x, args.base) ? loraBackwardAccumulate : fallback)(g, saved, A, B, args, needs);
}

/** y = base(x) + s·(dropout(x)·Aᵀ)·Bᵀ through the fused op (x may have any leading dims). */
export function loraLinear(x: Tensor, A: Tensor, B: Tensor, args: LoraOpArgs): Tensor {
  checkShapes(x, A, B, args);
  const inputs = args.mask ? [x, A, B, args.mask] : [x, A, B];
  return loraLinearOp(inputs, { base: args.base, scaling: args.scaling });
}
