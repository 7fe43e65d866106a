/**
 * linearCrossEntropy(hidden [N, H], weight [V, H], labels [N]) = Σ over non-ignored rows of
 * crossEntropy(hidden · weightᵀ) (+ zLoss·lse²), without ever holding the [N, V] logits.
 *
 * Rows are processed chunk by chunk: logits_c = hidden_c · Wᵀ ([chunk, V], f32), then one fused pass
 * (Backend.crossEntropyGradInPlace) gives each row's loss and, when a gradient is wanted, overwrites
 * logits_c with d(loss)/d(logits_c); then dHidden_c = dlogits_c · W and dW += dlogits_cᵀ · hidden_c.
 * The gradients are computed during the forward (the loss is a sum, so backward only scales them by
 * the incoming scalar): 3 GEMMs per chunk instead of 4 with a recomputing backward, and the only
 * buffers that outlive a chunk are dHidden [N, H] and dW [V, H] (each the size of what it is the
 * gradient of). A frozen head (weight.requiresGrad false) skips the dW GEMM; a frozen input skips dH.
 * The weight may be f32, bf16 or f16: it is handed to matmul as stored (converted tile by tile).
 *
 * Returns the loss SUM and the count of non-ignored tokens, so gradient accumulation can normalise by
 * the total token count of all micro-batches (divide once, at the end).
 */
import { BackendOpError } from "../backend/types";
import type { Backend, Buffer, CrossEntropyGradOptions } from "../backend/types";
import { referenceBackend } from "../backend/reference";
import { defineOp } from "../define-op";
import { TensorError } from "../errors";
import { addInPlace, copyInPlace, dense, eq, sub, sum } from "../ops";
import { fromBuffer, Tensor } from "../tensor";

export interface LinearCrossEntropyOptions {
  /** Rows of logits computed at once (default 1024): peak memory grows with chunkSize × vocab. */
  readonly chunkSize?: number;
  /** Label value that contributes no loss and no gradient (default -100, as in PyTorch / Hugging Face). */
  readonly ignoreIndex?: number;
  /** Weight of the z-loss zLoss·lse² per non-ignored row (default 0; PaLM used 1e-4). */
  readonly zLoss?: number;
}

export interface LinearCrossEntropyResult {
  /** Σ over non-ignored rows of (lse − logit[label] + zLoss·lse²): f32 scalar, differentiable. */
  readonly loss: Tensor;
  /** Number of rows whose label is not ignoreIndex: f32 scalar, not differentiable. */
  readonly tokens: Tensor;
}

interface Attrs {
  readonly chunkSize: number;
  readonly ignoreIndex: number;
  readonly zLoss: number;
}

/** One chunk's loss (and, with grad, its dlogits written over logits) on any backend. */
export function crossEntropyChunk(
  be: Backend,
  logits: Buffer,
  labels: Buffer,
  rows: number,
  vocab: number,
  o: CrossEntropyGradOptions,
): Buffer {
  if (be.crossEntropyGradInPlace) return be.crossEntropyGradInPlace(logits, labels, rows, vocab, o);
  if (be.device === "cpu") return referenceBackend.crossEntropyGradInPlace!(logits, labels, rows, vocab, o);
  // a device backend without the fused op: crossEntropy (+ its backward with dloss = 1), exact for zLoss 0
  if (o.zLoss !== 0) throw new BackendOpError("crossEntropyGradInPlace (zLoss > 0)", be.name);
  const { loss, lse } = be.crossEntropy(logits, labels, rows, vocab, o.ignoreIndex);
  if (o.grad) {
    const ones = be.fill("f32", rows, 1);
    const d = be.crossEntropyBackward(ones, logits, labels, lse, rows, vocab, o.ignoreIndex);
    const all = { shape: [rows * vocab], strides: [1], offset: 0 };
    copyInPlace(be, logits, all, d, all);
    be.free(d);
    be.free(ones);
  }
  be.free(lse);
  return loss;
}

/** dst += src (same length, f32): the backend's matmul accumulation was not available. */
function accumulate(be: Backend, dst: Buffer, src: Buffer): void {
  const v = { shape: [dst.length], strides: [1], offset: 0 };
  if (be.addInPlace) be.addInPlace(dst, v, src, v, 1);
  else if (be.device === "cpu") referenceBackend.addInPlace!(dst, v, src, v, 1);
  else throw new BackendOpError("addInPlace", be.name);
}

export const linearCrossEntropyOp = defineOp<Attrs>({
  name: "tensor.linearCrossEntropy",
  forward([hidden, weight, labels], attrs, ctx) {
    const be = ctx.backend;
    const [V, H] = weight.shape;
    const N = labels.size;
    const hf = dense(hidden);
    const wd = dense(weight, weight.dtype); // as stored: matmul converts it tile by tile
    const lf = dense(labels, "i32");
    const wantDH = ctx.needsGrad(0);
    const wantDW = ctx.needsGrad(1);
    const grad = wantDH || wantDW;
    // every buffer is owned by a Tensor at once: the forward runs in a tidy scope, so an error in a later
    // chunk (a bad label) frees what earlier chunks allocated
    const own = (buf: Buffer, shape: readonly number[]) => fromBuffer(buf, be, shape, buf.dtype);
    const lossRows = own(be.alloc("f32", N), [N]);
    const dH = wantDH ? own(be.alloc("f32", N * H), hidden.shape) : null;
    let dW: Tensor | null = null;
    const o = { ignoreIndex: attrs.ignoreIndex, zLoss: attrs.zLoss, grad };
    for (let r0 = 0; r0 < N; r0 += attrs.chunkSize) {
      const c = Math.min(attrs.chunkSize, N - r0);
      const hc = own(be.copy(hf.buffer, { shape: [c, H], strides: [H, 1], offset: r0 * H }, "f32"), [c, H]);
      const lc = own(be.copy(lf.buffer, { shape: [c], strides: [1], offset: r0 }, "i32"), [c]);
      const logits = own(be.matmul(hc.buffer, wd.buffer, { batch: 1, m: c, k: H, n: V, transB: true }), [c, V]);
      const loss = own(crossEntropyChunk(be, logits.buffer, lc.buffer, c, V, o), [c]);
      const rowsOf = (n: number, offset: number) => ({ shape: [n], strides: [1], offset });
      copyInPlace(be, lossRows.buffer, rowsOf(c, r0), loss.buffer, rowsOf(c, 0));
      if (dH) {
        const dHc = own(be.matmul(logits.buffer, wd.buffer, { batch: 1, m: c, k: V, n: H }), [c, H]);
        const rows = { shape: [c, H], strides: [H, 1], offset: 0 };
        copyInPlace(be, dH.buffer, { ...rows, offset: r0 * H }, dHc.buffer, rows);
        dHc.dispose();
      }
      if (wantDW) {
        const opts = { batch: 1, m: V, k: c, n: H, transA: true };
        if (dW === null) dW = own(be.matmul(logits.buffer, hc.buffer, opts), [V, H]);
        else {
          const r = be.matmul(logits.buffer, hc.buffer, { ...opts, beta: 1 }, dW.buffer);
          if (r !== dW.buffer) {
            // a backend without accumulation returned a fresh product: add it in
            const fresh = own(r, [V, H]);
            accumulate(be, dW.buffer, r);
            fresh.dispose();
          }
        }
      }
      for (const t of [loss, lc, logits, hc]) t.dispose();
    }
    hf.dispose();
    wd.dispose();
    lf.dispose();
    if (dH) ctx.save(dH);
    if (wantDW) ctx.save(dW ?? own(be.alloc("f32", V * H), weight.shape));
    ctx.data.savedDH = wantDH;
    return sum(lossRows);
  },
  backward(g, ctx) {
    // The loss is a sum: its gradients were computed in forward; scale them by the incoming scalar, in
    // place (the node owns them: no second [V, H] buffer). Reading g costs one scalar transfer.
    const scale = g.item();
    const savedDH = ctx.data.savedDH === true;
    const dH = savedDH ? ctx.saved[0] : null;
    const dW = ctx.saved[savedDH ? 1 : 0] ?? null;
    const scaled = (t: Tensor | null, i: number): Tensor | null => {
      if (!t || !ctx.needsGrad(i)) return null;
      if (scale !== 1) addInPlace(t, t, scale - 1); // t += (g − 1)·t, elementwise: t = g·t
      return t._alias();
    };
    return [scaled(dH, 0), scaled(dW, 1), null];
  },
});

function checkArgs(hidden: Tensor, weight: Tensor, labels: Tensor, attrs: Attrs): void {
  const what = "linearCrossEntropy";
  if (!(hidden instanceof Tensor) || !(weight instanceof Tensor) || !(labels instanceof Tensor))
    throw new TensorError("BAD_ARGUMENT", `${what}: hidden, weight and labels must be Tensors`);
  if (weight.ndim !== 2)
    throw new TensorError("BAD_SHAPE", `${what}: weight must be [vocab, hidden], got ${JSON.stringify(weight.shape)}`);
  const [V, H] = weight.shape;
  if (hidden.ndim < 1 || hidden.shape[hidden.ndim - 1] !== H)
    throw new TensorError(
      "BAD_SHAPE",
      `${what}: hidden ${JSON.stringify(hidden.shape)} must end in the weight's hidden size ${H} (weight ${JSON.stringify(weight.shape)})`,
    );
  if (labels.dtype !== "i32") throw new TensorError("BAD_DTYPE", `${what}: labels must be i32, got ${labels.dtype}`);
  if (labels.size * H !== hidden.size)
    throw new TensorError(
      "BAD_SHAPE",
      `${what}: labels ${JSON.stringify(labels.shape)} must have one entry per row of hidden ${JSON.stringify(hidden.shape)}`,
    );
  if (!["f32", "bf16", "f16"].includes(weight.dtype))
    throw new TensorError("BAD_DTYPE", `${what}: weight must be f32, bf16 or f16, got ${weight.dtype}`);
  if (!["f32", "bf16", "f16"].includes(hidden.dtype))
    throw new TensorError("BAD_DTYPE", `${what}: hidden must be f32, bf16 or f16, got ${hidden.dtype}`);
  if (!Number.isInteger(attrs.chunkSize) || attrs.chunkSize < 1)
    throw new TensorError("BAD_ARGUMENT", `${what}: chunkSize must be a positive integer, got ${attrs.chunkSize}`);
  if (!Number.isInteger(attrs.ignoreIndex))
    throw new TensorError("BAD_ARGUMENT", `${what}: ignoreIndex must be an integer, got ${attrs.ignoreIndex}`);
  if (!(attrs.zLoss >= 0) || !Number.isFinite(attrs.zLoss))
    throw new TensorError("BAD_ARGUMENT", `${what}: zLoss must be a finite number >= 0, got ${attrs.zLoss}`);
  if (V < 1) throw new TensorError("BAD_SHAPE", `${what}: vocab must be at least 1`);
}

/**
 * Chunked lm-head + cross-entropy: `hidden` [..., H] (f32), `weight` [V, H] (f32/bf16/f16), `labels` [...]
 * (i32, ignoreIndex where no loss). Returns the loss sum and the token count; `loss.backward()` gives
 * dHidden and (unless the weight is frozen) dWeight. Mean loss: `loss.div(tokens)`.
 */
export function linearCrossEntropy(
  hidden: Tensor,
  weight: Tensor,
  labels: Tensor,
  options: LinearCrossEntropyOptions = {},
): LinearCrossEntropyResult {
  const attrs: Attrs = {
    chunkSize: options.chunkSize ?? 1024,
    ignoreIndex: options.ignoreIndex ?? -100,
    zLoss: options.zLoss ?? 0,
  };
  checkArgs(hidden, weight, labels, attrs);
  const loss = linearCrossEntropyOp([hidden, weight, labels], attrs);
  const ignored = eq(labels, attrs.ignoreIndex);
  const nIgnored = sum(ignored);
  const tokens = sub(labels.size, nIgnored);
  ignored.dispose();
  nIgnored.dispose();
  return { loss, tokens };
}
