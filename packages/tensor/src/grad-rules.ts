/**
 * Gradient rules of the built-in ops: one table keyed by op name (tinygrad's pm_gradient, micrograd's
 * _backward), registered into the engine's registry (./graph) by ./autograd when it loads. Each rule gets
 * the output gradient g and the node (inputs, saved tensors, ctx) and returns one gradient per input
 * (null where none, and null for every input that does not require grad: no work for frozen inputs).
 * Rules run with recording off and build their results from Tensor ops or the backend's backward
 * kernels. The engine disposes what a rule returns once it has been accumulated.
 * Ops declared with defineOp (./define-op) and checkpoint (./checkpoint) register their own rules.
 */
import type { GradRule, Node } from "./graph";
import type { AttentionOptions, Buffer, RopeOptions } from "./backend/types";
import { add, dense, div, eq, gt, lt, mul, padNarrow, sub, sumToShape, unary, matmul } from "./ops";
import type { QuantizedWeight } from "./ops";
import { fromBuffer } from "./tensor";
import type { Tensor, Shape } from "./tensor";

type Rule = GradRule;

const needs = (node: Node, i: number): boolean => node.inputs[i].requiresGrad;

/** Dispose intermediates, return the result. */
function done<T>(result: T, ...temps: Tensor[]): T {
  for (const t of temps) t.dispose();
  return result;
}

function unaryRule(f: (g: Tensor, s: Tensor) => Tensor): Rule {
  return (g, node) => [f(g, node.saved[0])];
}

function binaryRule(fa: ((g: Tensor, n: Node) => Tensor) | null, fb: ((g: Tensor, n: Node) => Tensor) | null): Rule {
  return (g, node) => {
    const [a, b] = node.inputs;
    const out: (Tensor | null)[] = [null, null];
    if (fa && needs(node, 0)) {
      const t = fa(g, node);
      out[0] = done(sumToShape(t, a.shape), t);
    }
    if (fb && needs(node, 1)) {
      const t = fb(g, node);
      out[1] = done(sumToShape(t, b.shape), t);
    }
    return out;
  };
}

function minmaxRule(cmp: "gt" | "lt"): Rule {
  // ties share the gradient equally (torch.maximum semantics).
  const maskFor = (x: Tensor, y: Tensor): Tensor => {
    const c = cmp === "gt" ? gt(x, y) : lt(x, y);
    const e = eq(x, y);
    const half = mul(e, 0.5);
    return done(add(c, half), c, e, half);
  };
  return binaryRule(
    (g, n) => {
      const m = maskFor(n.saved[0], n.saved[1]);
      return done(mul(g, m), m);
    },
    (g, n) => {
      const m = maskFor(n.saved[1], n.saved[0]);
      return done(mul(g, m), m);
    },
  );
}

export const builtinGradRules: Readonly<Record<string, Rule>> = {
  // ---- views and moves
  identity: (g) => [g],
  reshape: (g, n) => [g.reshape(n.ctx.inShape as Shape)],
  permute: (g, n) => [g.permute(n.ctx.inverse as number[])],
  expand: (g, n) => [sumToShape(g, n.ctx.inShape as Shape)],
  narrow: (g, n) => [padNarrow(g, n.ctx.inShape as Shape, n.ctx.dim as number, n.ctx.start as number)],
  cast: (g) => [g],
  toBackend: (g, n) => [g.toBackend(n.ctx.backend as Tensor["backend"])],
  cat: (g, n) => {
    const dim = n.ctx.dim as number;
    let off = 0;
    return (n.ctx.sizes as number[]).map((s, i) => {
      const r = needs(n, i) ? g.narrow(dim, off, s) : null;
      off += s;
      return r;
    });
  },

  // ---- elementwise binary
  add: binaryRule(
    (g) => g._alias(),
    (g) => g._alias(),
  ),
  sub: binaryRule(
    (g) => g._alias(),
    (g) => unary("neg", g),
  ),
  mul: binaryRule(
    (g, n) => mul(g, n.saved[1]),
    (g, n) => mul(g, n.saved[0]),
  ),
  div: binaryRule(
    (g, n) => div(g, n.saved[1]),
    (g, n) => {
      const [a, b] = n.saved;
      const q = div(a, b);
      const t = div(q, b);
      const r = mul(g, t);
      return done(unary("neg", r), q, t, r);
    },
  ),
  max: minmaxRule("gt"),
  min: minmaxRule("lt"),
  pow: binaryRule(
    (g, n) => {
      const [a, b, y] = n.saved;
      const t = div(y, a); // a^(b-1) = y / a (a ≠ 0)
      const u = mul(t, b);
      return done(mul(g, u), t, u);
    },
    (g, n) => {
      const [a, , y] = n.saved;
      const l = unary("log", a);
      const t = mul(y, l);
      return done(mul(g, t), l, t);
    },
  ),

  // ---- elementwise unary (saved[0] is the input or the output, see ops.unary)
  neg: (g) => [unary("neg", g)],
  exp: unaryRule((g, y) => mul(g, y)),
  log: unaryRule((g, x) => div(g, x)),
  sqrt: unaryRule((g, y) => {
    const t = mul(y, 2);
    return done(div(g, t), t);
  }),
  rsqrt: unaryRule((g, y) => {
    const y3 = mul(y, y);
    const y3b = mul(y3, y);
    const t = mul(y3b, -0.5);
    return done(mul(g, t), y3, y3b, t);
  }),
  abs: unaryRule((g, x) => {
    const s = unary("sign", x);
    return done(mul(g, s), s);
  }),
  sigmoid: unaryRule((g, y) => {
    const one = sub(1, y);
    const t = mul(y, one);
    return done(mul(g, t), one, t);
  }),
  silu: unaryRule((g, x) => {
    const s = unary("sigmoid", x);
    const oneMinus = sub(1, s);
    const xt = mul(x, oneMinus);
    const inner = add(xt, 1);
    const d = mul(s, inner);
    return done(mul(g, d), s, oneMinus, xt, inner, d);
  }),
  relu: unaryRule((g, x) => {
    const m = gt(x, 0);
    return done(mul(g, m), m);
  }),
  tanh: unaryRule((g, y) => {
    const y2 = mul(y, y);
    const t = sub(1, y2);
    return done(mul(g, t), y2, t);
  }),
  recip: unaryRule((g, y) => {
    const y2 = mul(y, y);
    const t = mul(g, y2);
    return done(unary("neg", t), y2, t);
  }),
  square: unaryRule((g, x) => {
    const t = mul(x, 2);
    return done(mul(g, t), t);
  }),
  sign: () => [null],

  // ---- reductions
  sum: (g, n) => {
    const inShape = n.ctx.inShape as Shape;
    const dims = n.ctx.dims as number[];
    const keepShape = inShape.map((s, i) => (dims.includes(i) ? 1 : s));
    const gk = g.reshape(keepShape);
    // the broadcast view itself (no copy of size inShape): consumers read it strided
    return [done(gk.expand(inShape), gk)];
  },
  amax: (g, n) => {
    const [x, kept] = n.saved;
    const dims = n.ctx.dims as number[];
    const mask = eq(x, kept);
    const maskF = mask.cast("f32");
    const count = sumKeep(maskF, dims);
    const gk = g.reshape(kept.shape);
    const share = div(gk, count);
    return [done(mul(maskF, share), mask, maskF, count, gk, share)];
  },

  // ---- matmul
  matmul: (g, n) => {
    const [a, b] = n.saved;
    const out: (Tensor | null)[] = [null, null];
    if (needs(n, 0)) {
      const bt = b.transpose(-1, -2);
      const t = matmul(g, bt);
      out[0] = done(sumToShape(t, a.shape), bt, t);
    }
    if (needs(n, 1)) {
      if (b.ndim === 2 && a.ndim > 2) {
        const k = a.shape[a.ndim - 1];
        const a2 = a.reshape([-1, k]);
        const a2t = a2.transpose(0, 1);
        const g2 = g.reshape([-1, g.shape[g.ndim - 1]]);
        out[1] = done(matmul(a2t, g2), a2, a2t, g2);
      } else {
        const at = a.transpose(-1, -2);
        const t = matmul(at, g);
        out[1] = done(sumToShape(t, b.shape), at, t);
      }
    }
    return out;
  },

  // ---- fused ops: the backend's backward kernels
  softmax: (g, n) => {
    const y = n.saved[0];
    const cols = y.shape[y.ndim - 1];
    const gd = dense(g);
    const yd = dense(y);
    const dx = g.backend.softmaxBackward(gd.buffer, yd.buffer, y.size / cols, cols);
    return [done(fromBuffer(dx, g.backend, y.shape, "f32"), gd, yd)];
  },
  rmsNorm: (g, n) => {
    const [x, w, rstd] = n.saved;
    const { rows, dim } = n.ctx as { rows: number; dim: number };
    const gd = dense(g);
    // a frozen weight: its gradient is not computed (dx comes out of the same pass either way)
    const weightGrad = needs(n, 1);
    const r = g.backend.rmsNormBackward(gd.buffer, x.buffer, w.buffer, rstd.buffer, rows, dim, { weightGrad });
    gd.dispose();
    const dx = fromBuffer(r.dx, g.backend, n.inputs[0].shape, "f32");
    const dw = r.dweight ? fromBuffer(r.dweight, g.backend, [dim], "f32") : null;
    return [needs(n, 0) ? dx : done(null, dx), weightGrad ? dw : dw ? done(null, dw) : null];
  },
  rope: (g, n) => {
    const gd = dense(g);
    const buf = g.backend.rope(gd.buffer, n.saved[0].buffer, { ...(n.ctx.opts as RopeOptions), inverse: true });
    return [done(fromBuffer(buf, g.backend, g.shape, "f32"), gd)];
  },
  attention: (g, n) => {
    const [q, k, v, out, lse, seg] = n.saved;
    const opts = { ...(n.ctx.opts as AttentionOptions), segmentIds: seg?.buffer };
    const be = g.backend;
    // the gradients come back in the forward's layout: bshd buffers are returned as [b, h, s, d] views
    const bshd = opts.layout === "bshd";
    const gl = bshd ? g.transpose(1, 2) : g._alias();
    const gd = dense(gl);
    gl.dispose();
    const r = be.attentionBackward(gd.buffer, q.buffer, k.buffer, v.buffer, out.buffer, lse.buffer, opts);
    gd.dispose();
    const [qShape, kShape] = [n.inputs[0].shape, n.inputs[1].shape];
    const wrap = (buf: Buffer, shape: Shape): Tensor => {
      if (!bshd) return fromBuffer(buf, be, shape, "f32");
      const t = fromBuffer(buf, be, [shape[0], shape[2], shape[1], shape[3]], "f32");
      const view = t.transpose(1, 2);
      t.dispose();
      return view;
    };
    return [wrap(r.dq, qShape), wrap(r.dk, kShape), wrap(r.dv, kShape)];
  },
  crossEntropy: (g, n) => {
    const [x, labels, lse] = n.saved;
    const { rows, vocab, ignoreIndex } = n.ctx as { rows: number; vocab: number; ignoreIndex: number };
    const gd = dense(g);
    const buf = g.backend.crossEntropyBackward(
      gd.buffer,
      x.buffer,
      labels.buffer,
      lse.buffer,
      rows,
      vocab,
      ignoreIndex,
    );
    gd.dispose();
    return [fromBuffer(buf, g.backend, n.inputs[0].shape, "f32")];
  },
  embedding: (g, n) => {
    const ids = n.saved[0];
    const { count, dim, vocab } = n.ctx as { count: number; dim: number; vocab: number };
    const gd = dense(g);
    const buf = g.backend.embeddingBackward(gd.buffer, ids.buffer, count, dim, vocab);
    return [done(fromBuffer(buf, g.backend, [vocab, dim], "f32"), gd)];
  },
  matmul4bit: (g, n) => {
    const { w, m } = n.ctx as { w: QuantizedWeight; m: number };
    const gd = dense(g);
    const buf = w.backend.matmul4bitInputGrad(gd.buffer, w.buffers, m);
    return [done(fromBuffer(buf, w.backend, n.inputs[0].shape, "f32"), gd)];
  },
};

/** The built-in rules (read-only; register new ones with registerGradRule or declare ops with defineOp). */
export const gradRules = builtinGradRules;

function sumKeep(x: Tensor, dims: number[]): Tensor {
  // local import-free keepdim sum via sumToShape
  const shape = x.shape.map((s, i) => (dims.includes(i) ? 1 : s));
  return sumToShape(x, shape);
}
