/**
 * Compute ops on Tensors. Each op: make inputs dense f32 (backend `copy`), call one Backend method, wrap
 * the result, cast back to the input's storage dtype where PyTorch would, and record the autograd node.
 * Gradient rules are in ./grad-rules (one table keyed by the op names used here).
 */
import { isGradEnabled, record } from "./graph";
import type {
  AttentionLayout,
  Backend,
  BinaryOp,
  Buffer,
  DType,
  QuantizedWeightBuffers,
  ReduceOp,
  StridedView,
  UnaryOp,
} from "./backend/types";
import { BackendOpError } from "./backend/types";
import { referenceBackend } from "./backend/reference";
import { TensorError } from "./errors";
import {
  contiguousStrides,
  dropoutMask,
  fromBuffer,
  installTensorMethods,
  isFloat,
  normDim,
  numel,
  Tensor,
  zeros,
} from "./tensor";
import type { Shape, TensorLike } from "./tensor";

export type { TensorLike } from "./tensor";

// ---------------------------------------------------------------- helpers

/** A dense handle of t in `dtype` (an alias when t already is; else a copy). Caller disposes it. */
export function dense(t: Tensor, dtype: DType = "f32"): Tensor {
  t.assertAlive();
  if (t.dtype === dtype && t.isDense()) return t._alias();
  return fromBuffer(t.backend.copy(t.buffer, t.stridedView, dtype), t.backend, t.shape, dtype);
}

/** t in `dtype` (t itself when it already is; else a copy, and t is disposed). */
export function castRaw(t: Tensor, dtype: DType): Tensor {
  if (t.dtype === dtype) return t;
  const out = fromBuffer(t.backend.copy(t.buffer, t.stridedView, dtype), t.backend, t.shape, dtype);
  t.dispose();
  return out;
}

function sameDevice(what: string, ...ts: Tensor[]): Backend {
  const be = ts[0].backend;
  for (const t of ts) {
    t.assertAlive(what);
    if (t.device !== be.device)
      throw new TensorError(
        "DEVICE_MISMATCH",
        `${what}: tensors are on different devices (${be.device} and ${t.device})`,
      );
  }
  return be;
}

export function broadcastShapes(a: Shape, b: Shape, what = "broadcast"): number[] {
  const n = Math.max(a.length, b.length);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1;
    const y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1)
      throw new TensorError(
        "BAD_SHAPE",
        `${what}: shapes ${JSON.stringify(a)} and ${JSON.stringify(b)} do not broadcast`,
      );
    out[i] = x === 1 ? y : x;
  }
  return out;
}

/** The strided view that reads t broadcast to `shape` (same rank as shape; stride 0 on broadcast dims). */
export function broadcastView(t: Tensor, shape: Shape): StridedView {
  const lead = shape.length - t.ndim;
  const strides = shape.map((s, i) => (i < lead || t.shape[i - lead] !== s ? 0 : t.strides[i - lead]));
  return { shape, strides, offset: t.offset };
}

function scalarLike(v: number, ref: Tensor): Tensor {
  return fromBuffer(ref.backend.fill("f32", 1, v), ref.backend, [], "f32");
}

/** The optional copyInPlace op: host backends fall back to the reference implementation. */
export function copyInPlace(be: Backend, dst: Buffer, dstView: StridedView, src: Buffer, srcView: StridedView): void {
  if (be.copyInPlace) {
    be.copyInPlace(dst, dstView, src, srcView);
    return;
  }
  if (be.device === "cpu") {
    referenceBackend.copyInPlace!(dst, dstView, src, srcView);
    return;
  }
  throw new BackendOpError("copyInPlace", be.name);
}

/** Sum g over broadcast dims so it has `shape` (the backward of broadcasting). */
export function sumToShape(g: Tensor, shape: Shape): Tensor {
  if (g.shape.join() === shape.join()) return g._alias();
  const lead = g.ndim - shape.length;
  const dims: number[] = [];
  for (let i = 0; i < g.ndim; i++) if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) dims.push(i);
  const s = dims.length ? sum(g, dims, true) : g._alias();
  const r = s.reshape(shape);
  s.dispose();
  return r;
}

// ---------------------------------------------------------------- elementwise

/** The result dtype of a binary op (PyTorch's promotion over our dtypes). */
export function promote(a: TensorLike, b: TensorLike): DType {
  if (a instanceof Tensor && b instanceof Tensor) {
    const fa = isFloat(a.dtype);
    const fb = isFloat(b.dtype);
    if (fa && fb) return a.dtype === b.dtype ? a.dtype : "f32";
    if (fa) return a.dtype;
    if (fb) return b.dtype;
    return "i32";
  }
  const t = (a instanceof Tensor ? a : b) as Tensor;
  const v = (a instanceof Tensor ? b : a) as number;
  if (isFloat(t.dtype)) return t.dtype;
  return Number.isInteger(v) ? "i32" : "f32";
}

const COMPARE = new Set<BinaryOp>(["eq", "gt", "lt"]);

export function binary(op: BinaryOp, a: TensorLike, b: TensorLike): Tensor {
  if (!(a instanceof Tensor) && !(b instanceof Tensor))
    throw new TensorError("BAD_ARGUMENT", `${op}: at least one operand must be a Tensor`);
  const ref = (a instanceof Tensor ? a : b) as Tensor;
  const A = a instanceof Tensor ? a : scalarLike(a, ref);
  const B = b instanceof Tensor ? b : scalarLike(b, ref);
  const be = sameDevice(op, A, B);
  const outDtype: DType = COMPARE.has(op) ? "bool" : promote(a, b);
  const shape = broadcastShapes(A.shape, B.shape, op);
  const Af = A.dtype === "f32" ? A : dense(A);
  const Bf = B.dtype === "f32" ? B : dense(B);
  const buf = be.binary(op, Af.buffer, broadcastView(Af, shape), Bf.buffer, broadcastView(Bf, shape), shape);
  if (Af !== A) Af.dispose();
  if (Bf !== B) Bf.dispose();
  const out = castRaw(fromBuffer(buf, be, shape, "f32"), outDtype);
  let res = out;
  if (!COMPARE.has(op) && isFloat(outDtype)) {
    const saved = op === "add" || op === "sub" ? [] : op === "pow" ? [A, B, out] : [A, B];
    res = record(op, [A, B], out, saved, {});
  }
  if (A !== a) A.dispose();
  if (B !== b) B.dispose();
  return res;
}

export const add = (a: TensorLike, b: TensorLike): Tensor => binary("add", a, b);
export const sub = (a: TensorLike, b: TensorLike): Tensor => binary("sub", a, b);
export const mul = (a: TensorLike, b: TensorLike): Tensor => binary("mul", a, b);
export const div = (a: TensorLike, b: TensorLike): Tensor => binary("div", a, b);
export const pow = (a: TensorLike, b: TensorLike): Tensor => binary("pow", a, b);
export const maximum = (a: TensorLike, b: TensorLike): Tensor => binary("max", a, b);
export const minimum = (a: TensorLike, b: TensorLike): Tensor => binary("min", a, b);
export const eq = (a: TensorLike, b: TensorLike): Tensor => binary("eq", a, b);
export const gt = (a: TensorLike, b: TensorLike): Tensor => binary("gt", a, b);
export const lt = (a: TensorLike, b: TensorLike): Tensor => binary("lt", a, b);

const SAVE_OUT = new Set<UnaryOp>(["exp", "sqrt", "rsqrt", "sigmoid", "tanh", "recip"]);
const SAVE_IN = new Set<UnaryOp>(["log", "abs", "silu", "relu", "square"]);

export function unary(op: UnaryOp, x: Tensor): Tensor {
  x.assertAlive(op);
  const xf = dense(x);
  const buf = x.backend.unary(op, xf.buffer, x.size);
  xf.dispose();
  const out = castRaw(fromBuffer(buf, x.backend, x.shape, "f32"), isFloat(x.dtype) ? x.dtype : "f32");
  return record(op, [x], out, SAVE_OUT.has(op) ? [out] : SAVE_IN.has(op) ? [x] : [], {});
}

/** The optional addInPlace op: host backends fall back to the reference implementation. */
function addInPlaceRaw(be: Backend, dst: Tensor, src: Buffer, srcView: StridedView, alpha: number): void {
  if (be.addInPlace) be.addInPlace(dst.buffer, dst.stridedView, src, srcView, alpha);
  else if (be.device === "cpu") referenceBackend.addInPlace!(dst.buffer, dst.stridedView, src, srcView, alpha);
  else throw new BackendOpError("addInPlace", be.name);
}

/**
 * dst += alpha · src in place (src broadcast to dst's shape; no new buffer for dst). Not recorded by
 * autograd: it throws while recording if dst or src requires grad (use it under noGrad, for gradient
 * accumulation and optimizer-like updates). Returns dst.
 */
export function addInPlace(dst: Tensor, src: TensorLike, alpha = 1): Tensor {
  dst.assertAlive("addInPlace dst");
  if (!isFloat(dst.dtype))
    throw new TensorError("BAD_DTYPE", `addInPlace: dst must be a float tensor, got ${dst.dtype}`);
  if (isGradEnabled() && (dst.requiresGrad || (src instanceof Tensor && src.requiresGrad)))
    throw new TensorError(
      "IN_PLACE_GRAD",
      "addInPlace: an in-place update of a tensor that requires grad is not recorded; run it under noGrad()",
    );
  const S = src instanceof Tensor ? src : scalarLike(src, dst);
  const be = sameDevice("addInPlace", dst, S);
  const shape = broadcastShapes(dst.shape, S.shape, "addInPlace");
  if (shape.join() !== dst.shape.join())
    throw new TensorError(
      "BAD_SHAPE",
      `addInPlace: src ${JSON.stringify(S.shape)} does not broadcast to dst ${JSON.stringify(dst.shape)}`,
    );
  addInPlaceRaw(be, dst, S.buffer, broadcastView(S, dst.shape), alpha);
  if (S !== src) S.dispose();
  return dst;
}

// ---------------------------------------------------------------- reductions

function normDims(x: Tensor, dims: number | readonly number[] | undefined, what: string): number[] {
  if (dims === undefined) return [...Array(x.ndim).keys()];
  const list = typeof dims === "number" ? [dims] : [...dims];
  if (list.length === 0) return [...Array(x.ndim).keys()];
  return [...new Set(list.map((d) => normDim(d, x.ndim, what)))].sort((p, q) => q - p);
}

function reduceRaw(op: ReduceOp, x: Tensor, dims: number[]): Tensor {
  let cur = dense(x);
  const shape = [...x.shape];
  for (const d of dims) {
    const outer = numel(shape.slice(0, d));
    const inner = numel(shape.slice(d + 1));
    const buf = x.backend.reduce(op, cur.buffer, outer, shape[d], inner);
    shape[d] = 1;
    cur.dispose();
    cur = fromBuffer(buf, x.backend, shape, "f32");
  }
  return cur; // keepdim shape
}

/** Drop size-1 dims of a contiguous tensor (no copy). */
function squeezeDims(t: Tensor, dims: number[]): Tensor {
  const shape = t.shape.filter((_, i) => !dims.includes(i));
  const r = t._alias(shape, contiguousStrides(shape), t.offset);
  t.dispose();
  return r;
}

/** Sum over dims (all when omitted); i32/bool inputs sum to f32. */
export function sum(x: Tensor, dims?: number | readonly number[], keepdim = false): Tensor {
  const ds = normDims(x, dims, "sum");
  let out = reduceRaw("sum", x, ds);
  if (!keepdim) out = squeezeDims(out, ds);
  out = castRaw(out, isFloat(x.dtype) ? x.dtype : "f32");
  return record("sum", [x], out, [], { inShape: x.shape, dims: ds, keepdim });
}

export function mean(x: Tensor, dims?: number | readonly number[], keepdim = false): Tensor {
  const ds = normDims(x, dims, "mean");
  const count = ds.reduce((a, d) => a * x.shape[d], 1);
  const s = sum(x, ds, keepdim);
  const r = mul(s, 1 / count);
  s.dispose();
  return r;
}

function extreme(op: "max" | "min", x: Tensor, dims: number | readonly number[] | undefined, keepdim: boolean): Tensor {
  const ds = normDims(x, dims, op);
  const kept = reduceRaw(op, x, ds);
  const out = castRaw(keepdim ? kept._alias() : squeezeDims(kept._alias(), ds), isFloat(x.dtype) ? x.dtype : "f32");
  const r = record("amax", [x], out, [x, kept], { dims: ds, keepdim });
  kept.dispose();
  return r;
}
/** Max over dims (amax semantics: ties share the gradient equally). */
export function max(x: Tensor, dims?: number | readonly number[], keepdim = false): Tensor {
  return extreme("max", x, dims, keepdim);
}
export function min(x: Tensor, dims?: number | readonly number[], keepdim = false): Tensor {
  return extreme("min", x, dims, keepdim);
}

// ---------------------------------------------------------------- matmul

interface Operand {
  buf: Buffer;
  trans: boolean;
  batchStride: number;
  temp: Tensor | null;
}

function operand(t: Tensor, batch: number[], dtype: DType): Operand {
  const r = t.ndim;
  const rows = t.shape[r - 2];
  const cols = t.shape[r - 1];
  const sr = t.strides[r - 2];
  const sc = t.strides[r - 1];
  let trans: boolean | null = null;
  if ((sc === 1 || cols === 1) && (sr === cols || rows === 1)) trans = false;
  else if ((sr === 1 || rows === 1) && (sc === rows || cols === 1)) trans = true;
  const tb = t.shape.slice(0, r - 2);
  const B = numel(batch);
  const tbN = numel(tb);
  let batchStride: number | null = null;
  if (B === 1 || tbN === 1) batchStride = 0;
  else if (tbN === B) {
    let ok = true;
    let expect = rows * cols;
    for (let i = tb.length - 1; i >= 0; i--) {
      if (tb[i] !== 1 && t.strides[i] !== expect) ok = false;
      expect *= tb[i];
    }
    if (ok) batchStride = rows * cols;
  }
  if (t.dtype === dtype && t.offset === 0 && trans !== null && batchStride !== null)
    return { buf: t.buffer, trans, batchStride, temp: null };
  if (tbN === 1 || B === 1) {
    const m = fromBuffer(
      t.backend.copy(t.buffer, { shape: [rows, cols], strides: [sr, sc], offset: t.offset }, dtype),
      t.backend,
      [rows, cols],
      dtype,
    );
    return { buf: m.buffer, trans: false, batchStride: 0, temp: m };
  }
  const v = broadcastView(t, [...batch, rows, cols]);
  const m = fromBuffer(t.backend.copy(t.buffer, v, dtype), t.backend, v.shape, dtype);
  return { buf: m.buffer, trans: false, batchStride: rows * cols, temp: m };
}

function matmulRaw(a: Tensor, b: Tensor): Tensor {
  const be = sameDevice("matmul", a, b);
  const m = a.shape[a.ndim - 2];
  const k = a.shape[a.ndim - 1];
  const n = b.shape[b.ndim - 1];
  if (b.shape[b.ndim - 2] !== k)
    throw new TensorError(
      "BAD_SHAPE",
      `matmul: ${JSON.stringify(a.shape)} @ ${JSON.stringify(b.shape)}: inner sizes ${k} and ${b.shape[b.ndim - 2]} differ`,
    );
  const batch = broadcastShapes(a.shape.slice(0, -2), b.shape.slice(0, -2), "matmul batch");
  // each operand keeps bf16 storage, and f16 storage against an f32 operand (f32 activations × a bf16/f16
  // weight: the backend converts tile by tile, never the whole weight); anything else is read as f32
  const dtype: DType = a.dtype === "bf16" && b.dtype === "bf16" ? "bf16" : "f32";
  const keep = (t: Tensor, other: Tensor): DType =>
    t.dtype === "bf16" || (t.dtype === "f16" && other.dtype === "f32") ? t.dtype : "f32";
  const A = operand(a, batch, keep(a, b));
  const Bo = operand(b, batch, keep(b, a));
  let B = numel(batch);
  let M = m;
  let aStride = A.batchStride;
  if (b.ndim === 2 && !A.trans && B > 1 && A.batchStride === m * k) {
    // fold the batch of a into its rows: one [B·m, k] @ [k, n]
    M = B * m;
    B = 1;
    aStride = 0;
  }
  const buf = be.matmul(A.buf, Bo.buf, {
    batch: B,
    m: M,
    k,
    n,
    transA: A.trans,
    transB: Bo.trans,
    aBatchStride: aStride,
    bBatchStride: Bo.batchStride,
  });
  A.temp?.dispose();
  Bo.temp?.dispose();
  const out = fromBuffer(buf, be, [...batch, m, n], "f32");
  return dtype === "bf16" ? castRaw(out, "bf16") : out;
}

/**
 * C = alpha·(a @ b) + beta·C in place on c (no new output buffer): a [..., m, k], b [k, n] or [..., k, n]
 * with the batch dims of c, c dense f32 [..., m, n]. Transposed views of a and b are read without copies.
 * Not recorded by autograd (throws while recording if an operand requires grad): it is the building block
 * of fused forwards and backwards (y += s·(x·Aᵀ)·Bᵀ in a LoRA op declared with defineOp).
 */
export function matmulAccumulate(c: Tensor, a: Tensor, b: Tensor, alpha = 1, beta = 1): Tensor {
  const be = sameDevice("matmulAccumulate", c, a, b);
  if (isGradEnabled() && (c.requiresGrad || a.requiresGrad || b.requiresGrad))
    throw new TensorError(
      "IN_PLACE_GRAD",
      "matmulAccumulate: an in-place update is not recorded by autograd; run it under noGrad() or inside a defineOp forward/backward",
    );
  if (c.dtype !== "f32" || !c.isDense())
    throw new TensorError(
      "BAD_ARGUMENT",
      `matmulAccumulate: c must be a dense f32 tensor, got ${c.dtype}${c.isDense() ? "" : " (a view)"}`,
    );
  if (a.ndim < 2 || b.ndim < 2)
    throw new TensorError("BAD_SHAPE", "matmulAccumulate: a and b must have at least 2 dims");
  const m = a.shape[a.ndim - 2];
  const k = a.shape[a.ndim - 1];
  const n = b.shape[b.ndim - 1];
  const batch = broadcastShapes(a.shape.slice(0, -2), b.shape.slice(0, -2), "matmulAccumulate batch");
  const want = [...batch, m, n];
  if (b.shape[b.ndim - 2] !== k || c.shape.join() !== want.join())
    throw new TensorError(
      "BAD_SHAPE",
      `matmulAccumulate: ${JSON.stringify(a.shape)} @ ${JSON.stringify(b.shape)} into c ${JSON.stringify(c.shape)}: expected c ${JSON.stringify(want)} and matching inner sizes`,
    );
  const dtype: DType = a.dtype === "bf16" && b.dtype === "bf16" ? "bf16" : "f32";
  const A = operand(a, batch, dtype);
  const B = operand(b, batch, dtype);
  let nb = numel(batch);
  let M = m;
  let aStride = A.batchStride;
  if (b.ndim === 2 && !A.trans && nb > 1 && A.batchStride === m * k) {
    M = nb * m; // fold the batch of a into its rows
    nb = 1;
    aStride = 0;
  }
  const opts = {
    batch: nb,
    m: M,
    k,
    n,
    transA: A.trans,
    transB: B.trans,
    aBatchStride: aStride,
    bBatchStride: B.batchStride,
  };
  try {
    be.matmul(A.buf, B.buf, { ...opts, alpha, beta }, c.buffer);
  } finally {
    A.temp?.dispose();
    B.temp?.dispose();
  }
  return c;
}

/** Batched matmul with broadcasting batch dims; 1-D operands as in torch.matmul. */
export function matmul(a: Tensor, b: Tensor): Tensor {
  if (a.ndim === 0 || b.ndim === 0) throw new TensorError("BAD_SHAPE", "matmul: operands must have at least 1 dim");
  if (a.ndim === 1) {
    const a2 = a.unsqueeze(0);
    const r = matmul(a2, b);
    const out = r.squeeze(-2);
    a2.dispose();
    r.dispose();
    return out;
  }
  if (b.ndim === 1) {
    const b2 = b.unsqueeze(-1);
    const r = matmul(a, b2);
    const out = r.squeeze(-1);
    b2.dispose();
    r.dispose();
    return out;
  }
  const out = matmulRaw(a, b);
  return record("matmul", [a, b], out, [a, b], {});
}

// ---------------------------------------------------------------- softmax family

function lastDimOp(x: Tensor, dim: number, what: string, fn: (x: Tensor) => Tensor): Tensor {
  const d = normDim(dim, x.ndim, what);
  if (d === x.ndim - 1) return fn(x);
  const t = x.transpose(d, -1);
  const r = fn(t);
  const out = r.transpose(d, -1);
  t.dispose();
  r.dispose();
  return out;
}

export function softmax(x: Tensor, dim = -1): Tensor {
  return lastDimOp(x, dim, "softmax", (x) => {
    const n = x.shape[x.ndim - 1];
    const xf = dense(x);
    const buf = x.backend.softmax(xf.buffer, x.size / n, n);
    xf.dispose();
    const out = castRaw(fromBuffer(buf, x.backend, x.shape, "f32"), isFloat(x.dtype) ? x.dtype : "f32");
    return record("softmax", [x], out, [out], {});
  });
}

/** log(softmax(x)) = x − max − log Σ exp(x − max), composed from differentiable ops. */
export function logSoftmax(x: Tensor, dim = -1): Tensor {
  const m = max(x.detach(), dim, true);
  const shifted = sub(x, m);
  const e = unary("exp", shifted);
  const s = sum(e, dim, true);
  const l = unary("log", s);
  const out = sub(shifted, l);
  for (const t of [m, shifted, e, s, l]) t.dispose();
  return out;
}

// ---------------------------------------------------------------- fused ops

function requireDtype(t: Tensor, what: string, ...ok: DType[]): void {
  if (!ok.includes(t.dtype)) throw new TensorError("BAD_DTYPE", `${what}: expected ${ok.join(" or ")}, got ${t.dtype}`);
}

/** RMSNorm over the last dim: x · rsqrt(mean(x²) + eps) · weight. */
export function rmsNorm(x: Tensor, weight: Tensor, eps = 1e-6): Tensor {
  const dim = x.shape[x.ndim - 1];
  if (weight.ndim !== 1 || weight.shape[0] !== dim)
    throw new TensorError("BAD_SHAPE", `rmsNorm: weight ${JSON.stringify(weight.shape)} must be [${dim}]`);
  const be = sameDevice("rmsNorm", x, weight);
  const xf = dense(x);
  const wf = dense(weight);
  const rows = x.size / dim;
  const { y, rstd } = be.rmsNorm(xf.buffer, wf.buffer, rows, dim, eps);
  const r = fromBuffer(rstd, be, [rows], "f32");
  const out = castRaw(fromBuffer(y, be, x.shape, "f32"), isFloat(x.dtype) ? x.dtype : "f32");
  const res = record("rmsNorm", [x, weight], out, [xf, wf, r], { rows, dim });
  xf.dispose();
  wf.dispose();
  r.dispose();
  return res;
}

/** Rotary embedding (HF rotate_half) on x [batch, seq, heads, headDim], positions i32 [batch, seq]. */
export function rope(x: Tensor, positions: Tensor, theta = 10000): Tensor {
  if (x.ndim !== 4)
    throw new TensorError("BAD_SHAPE", `rope: x must be [batch, seq, heads, headDim], got ${JSON.stringify(x.shape)}`);
  requireDtype(positions, "rope positions", "i32");
  const [batch, seq, heads, headDim] = x.shape;
  if (positions.size !== batch * seq)
    throw new TensorError("BAD_SHAPE", `rope: positions ${JSON.stringify(positions.shape)} must be [${batch}, ${seq}]`);
  const be = sameDevice("rope", x, positions);
  const xf = dense(x);
  const pf = dense(positions, "i32");
  const buf = be.rope(xf.buffer, pf.buffer, { batch, seq, heads, headDim, theta });
  xf.dispose();
  const out = castRaw(fromBuffer(buf, be, x.shape, "f32"), isFloat(x.dtype) ? x.dtype : "f32");
  const res = record("rope", [x], out, [pf], { opts: { batch, seq, heads, headDim, theta } });
  pf.dispose();
  return res;
}

export interface AttentionArgs {
  /** Default 1/sqrt(headDim). */
  readonly scale?: number;
  /** i32 [batch, seq]: attend only within equal ids (packed sequences; needs kv length = seq). */
  readonly segmentIds?: Tensor;
  /** Sliding window: a query at position p attends keys p − window < j ≤ p only (Mistral). Default: none. */
  readonly window?: number;
}

/** True when t [b, h, s, d] is the transpose(1, 2) view of a whole dense f32 [b, s, h, d] tensor. */
function isBshdView(t: Tensor): boolean {
  const [b, h, s, d] = t.shape;
  const want = [s * h * d, d, h * d, 1];
  return t.dtype === "f32" && t.offset === 0 && t.shape.every((n, i) => n === 1 || t.strides[i] === want[i]) && b > 0;
}

/**
 * Causal attention with grouped-query heads: q [b, h, s, d], k/v [b, kvh, skv, d] → [b, h, s, d], skv ≥ s.
 * The queries are the last s of skv positions (a KV cache: keys = cached + new): query i attends keys
 * j ≤ skv − s + i (and, with `window`, only j > skv − s + i − window). q, k, v may be dense, or all three
 * transpose(1, 2) views of dense [b, s, heads, d] tensors (rope's layout, the projections' output): those are
 * read in place, and the result is then a [b, h, s, d] view of a [b, s, h, d] buffer, so
 * `out.transpose(1, 2).reshape([b, s, h·d])` copies nothing.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, args: AttentionArgs = {}): Tensor {
  if (q.ndim !== 4 || k.ndim !== 4 || v.ndim !== 4)
    throw new TensorError("BAD_SHAPE", "attention: q, k, v must be 4-D [batch, heads, seq, headDim]");
  const [batch, heads, seq, headDim] = q.shape;
  const [, kvHeads, kvSeq] = k.shape;
  if (
    k.shape.join() !== v.shape.join() ||
    k.shape[0] !== batch ||
    kvSeq < seq ||
    k.shape[3] !== headDim ||
    heads % kvHeads !== 0
  ) {
    throw new TensorError(
      "BAD_SHAPE",
      `attention: q ${JSON.stringify(q.shape)}, k ${JSON.stringify(k.shape)}, v ${JSON.stringify(v.shape)} do not fit (k and v equal, heads a multiple of kvHeads, kv length ≥ query length)`,
    );
  }
  const window = args.window ?? 0;
  if (!Number.isInteger(window) || window < 0)
    throw new TensorError(
      "BAD_ARGUMENT",
      `attention: window must be a positive integer (or 0 for none), got ${window}`,
    );
  const be = sameDevice("attention", q, k, v);
  const seg = args.segmentIds ? dense(args.segmentIds, "i32") : undefined;
  if (seg && (seg.size !== batch * seq || kvSeq !== seq)) {
    seg.dispose();
    throw new TensorError(
      "BAD_SHAPE",
      `attention: segmentIds ${JSON.stringify(args.segmentIds!.shape)} must be [${batch}, ${seq}] and need kv length = query length (got ${kvSeq})`,
    );
  }
  const layout: AttentionLayout = [q, k, v].every(isBshdView) ? "bshd" : "bhsd";
  const [qf, kf, vf] = [q, k, v].map((t) => (layout === "bshd" ? t._alias() : dense(t)));
  const scale = args.scale ?? 1 / Math.sqrt(headDim);
  const opts = { batch, heads, kvHeads, seq, kvSeq, headDim, scale, layout, ...(window > 0 ? { window } : {}) };
  const r = be.attention(qf.buffer, kf.buffer, vf.buffer, { ...opts, segmentIds: seg?.buffer });
  const outF = fromBuffer(r.out, be, layout === "bshd" ? [batch, seq, heads, headDim] : q.shape, "f32");
  const lse = fromBuffer(r.lse, be, [batch, heads, seq], "f32");
  const outView = layout === "bshd" ? outF.transpose(1, 2) : outF._alias();
  const out = q.dtype === "f32" ? outView : castRaw(outView, isFloat(q.dtype) ? q.dtype : "f32");
  const saved = [qf, kf, vf, outF, lse, ...(seg ? [seg] : [])];
  const res = record("attention", [q, k, v], out, saved, { opts, hasSeg: !!seg });
  for (const t of saved) t.dispose();
  return res;
}

export interface CrossEntropyArgs {
  readonly ignoreIndex?: number;
  /** "mean" (default): over non-ignored rows; "sum"; "none": per token, labels' shape (0 on ignored tokens). */
  readonly reduction?: "mean" | "sum" | "none";
}

/** Cross-entropy of logits [..., vocab] against i32 labels [...]. */
export function crossEntropy(logits: Tensor, labels: Tensor, args: CrossEntropyArgs = {}): Tensor {
  requireDtype(labels, "crossEntropy labels", "i32");
  const vocab = logits.shape[logits.ndim - 1];
  const rows = logits.size / vocab;
  if (labels.size !== rows)
    throw new TensorError(
      "BAD_SHAPE",
      `crossEntropy: labels ${JSON.stringify(labels.shape)} must have ${rows} elements for logits ${JSON.stringify(logits.shape)}`,
    );
  const ignoreIndex = args.ignoreIndex ?? -100;
  const be = sameDevice("crossEntropy", logits, labels);
  const xf = dense(logits);
  const lf = dense(labels, "i32");
  const r = be.crossEntropy(xf.buffer, lf.buffer, rows, vocab, ignoreIndex);
  const lse = fromBuffer(r.lse, be, [rows], "f32");
  const perRow = record("crossEntropy", [logits], fromBuffer(r.loss, be, [rows], "f32"), [xf, lf, lse], {
    rows,
    vocab,
    ignoreIndex,
  });
  xf.dispose();
  lse.dispose();
  const reduction = args.reduction ?? "mean";
  if (reduction === "none") {
    lf.dispose();
    const shaped = perRow.reshape(labels.shape);
    perRow.dispose();
    return shaped;
  }
  const total = sum(perRow);
  perRow.dispose();
  if (reduction === "sum") {
    lf.dispose();
    return total;
  }
  const ign = eq(lf, ignoreIndex);
  const nIgnored = sum(ign);
  const count = sub(rows, nIgnored);
  const out = div(total, count);
  for (const t of [lf, ign, nIgnored, count, total]) t.dispose();
  return out;
}

/** weight [vocab, dim] gathered at i32 ids [...] → [..., dim]. */
export function embedding(weight: Tensor, ids: Tensor): Tensor {
  requireDtype(ids, "embedding ids", "i32");
  if (weight.ndim !== 2)
    throw new TensorError("BAD_SHAPE", `embedding: weight must be [vocab, dim], got ${JSON.stringify(weight.shape)}`);
  const [vocab, dim] = weight.shape;
  const be = sameDevice("embedding", weight, ids);
  // a bf16/f16 table is handed over as stored: the backend widens the gathered rows only
  const wf = dense(weight, weight.dtype === "bf16" || weight.dtype === "f16" ? weight.dtype : "f32");
  const idf = dense(ids, "i32");
  const out = castRaw(
    fromBuffer(be.embedding(wf.buffer, idf.buffer, ids.size, dim), be, [...ids.shape, dim], "f32"),
    weight.dtype,
  );
  wf.dispose();
  const res = record("embedding", [weight], out, [idf], { count: ids.size, dim, vocab });
  idf.dispose();
  return res;
}

/** A frozen 4-bit weight resident on one backend (see nn/linear4bit). */
export interface QuantizedWeight {
  readonly backend: Backend;
  readonly buffers: QuantizedWeightBuffers;
}

/** y = x · dequant(W)ᵀ for x [..., k]; backward gives dX only. */
export function matmul4bit(x: Tensor, w: QuantizedWeight): Tensor {
  const [n, k] = w.buffers.shape;
  if (x.shape[x.ndim - 1] !== k)
    throw new TensorError("BAD_SHAPE", `matmul4bit: x ${JSON.stringify(x.shape)} must end in ${k}`);
  if (x.device !== w.backend.device)
    throw new TensorError("DEVICE_MISMATCH", `matmul4bit: x is on ${x.device}, weight on ${w.backend.device}`);
  const m = x.size / k;
  const xf = dense(x);
  const out = castRaw(
    fromBuffer(w.backend.matmul4bit(xf.buffer, w.buffers, m), w.backend, [...x.shape.slice(0, -1), n], "f32"),
    isFloat(x.dtype) ? x.dtype : "f32",
  );
  xf.dispose();
  return record("matmul4bit", [x], out, [], { w, m });
}

/** Inverted dropout with a mask from the Philox generator (identity when p = 0 or not training). */
export function dropout(x: Tensor, p: number, training = true): Tensor {
  if (!training || p === 0) return record("identity", [x], x._alias(), [], {});
  const m32 = dropoutMask(x.shape, p, { backend: x.backend });
  const mask = isFloat(x.dtype) && x.dtype !== "f32" ? castRaw(m32, x.dtype) : m32;
  const out = mul(x, mask);
  mask.dispose();
  return out;
}

// ---------------------------------------------------------------- joining

/** Concatenate along dim (uses the optional copyInPlace op). */
export function cat(tensors: readonly Tensor[], dim = 0): Tensor {
  if (tensors.length === 0) throw new TensorError("BAD_ARGUMENT", "cat: needs at least one tensor");
  const first = tensors[0];
  const d = normDim(dim, first.ndim, "cat");
  const be = sameDevice("cat", ...tensors);
  let total = 0;
  for (const t of tensors) {
    if (t.ndim !== first.ndim || t.shape.some((s, i) => i !== d && s !== first.shape[i]))
      throw new TensorError(
        "BAD_SHAPE",
        `cat: shapes ${JSON.stringify(first.shape)} and ${JSON.stringify(t.shape)} differ outside dim ${d}`,
      );
    total += t.shape[d];
  }
  const dtype = tensors.every((t) => t.dtype === first.dtype) ? first.dtype : "f32";
  const shape = [...first.shape];
  shape[d] = total;
  const out = zeros(shape, { backend: be, dtype });
  const strides = contiguousStrides(shape);
  let start = 0;
  const sizes: number[] = [];
  for (const t of tensors) {
    const dstShape = [...t.shape];
    copyInPlace(be, out.buffer, { shape: dstShape, strides, offset: start * strides[d] }, t.buffer, t.stridedView);
    start += t.shape[d];
    sizes.push(t.shape[d]);
  }
  return record("cat", tensors, out, [], { dim: d, sizes });
}

export function stack(tensors: readonly Tensor[], dim = 0): Tensor {
  const d = normDim(dim, (tensors[0]?.ndim ?? 0) + 1, "stack");
  const us = tensors.map((t) => t.unsqueeze(d));
  const out = cat(us, d);
  for (const u of us) u.dispose();
  return out;
}

/** @internal the backward of narrow: zeros of inShape with g written at [start, start+len) along dim. */
export function padNarrow(g: Tensor, inShape: Shape, dim: number, start: number): Tensor {
  const out = zeros(inShape, { backend: g.backend, dtype: "f32" });
  const strides = contiguousStrides(inShape);
  copyInPlace(
    g.backend,
    out.buffer,
    { shape: g.shape, strides, offset: start * strides[dim] },
    g.buffer,
    g.stridedView,
  );
  return out;
}

installTensorMethods({
  binary,
  unary,
  reduce: (op, x, dims, keepdim) =>
    op === "sum" ? sum(x, dims, keepdim) : op === "mean" ? mean(x, dims, keepdim) : extreme(op, x, dims, keepdim),
  matmul,
  softmax,
  logSoftmax,
  addInPlace,
});
