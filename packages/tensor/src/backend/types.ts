/**
 * The backend boundary. Everything above it (Tensor, autograd, nn) calls only these methods;
 * everything below it (reference.ts, @qlora/cpu-kernels, @qlora/cuda-kernels) implements them.
 *
 * Conventions shared by every op:
 * - Buffers are flat, typed, owned by one backend. Host backends (`reference`, `cpu`) share one
 *   buffer representation (HostBuffer: a typed array), so a host backend may reuse another's
 *   implementation of an op without copies.
 * - Compute ops take contiguous row-major inputs unless a parameter says "strided"; the frontend
 *   calls `copy` (which also casts) to make views contiguous first.
 * - Fused/compute ops read f32 inputs and write f32 outputs (CPU policy: f32 compute, bf16/f16 as
 *   storage); `matmul` also accepts bf16 inputs with f32 accumulation. Index inputs are i32.
 * - Every op allocates and returns fresh output buffers; in-place ops say so in their name.
 * - A backend that lacks an op throws BackendOpError(op, backend).
 *
 * Refinements by the tensor package (additive; each marked "[tensor refinement]" below):
 * 1. dtype rules stated: `unary`, `binary`, `reduce` read f32 and write f32 (comparisons eq/gt/lt write
 *    1/0 as f32); the frontend casts other dtypes with `copy` first. `copy` casts: float→bf16/f16 round to
 *    nearest even; float→i32 truncates toward zero (non-finite → 0); float→u8 truncates then keeps the low
 *    8 bits; →bool is (x ≠ 0).
 * 2. Optional op `copyInPlace` (strided write into an existing buffer: cat/stack/slice-backward). A host
 *    backend that leaves it out gets the reference implementation (host buffers are shared); a device
 *    backend without it throws BackendOpError when it is needed.
 * 3. `adamwStepInPlace` takes f32 param/m/v buffers (grad may be f32 or bf16).
 * 4. Optional `allocState` (optimizer-state allocation a backend may page); AdamW falls back to `alloc`.
 * 5. Optional `addInPlace` (dst[dstView] += alpha·src[srcView]: gradient accumulation, y += s·z). Like
 *    copyInPlace, a host backend that leaves it out gets the reference implementation.
 * 6. `matmul` may accumulate into an existing output: `matmul(a, b, { ..., alpha, beta }, c)` computes
 *    C = alpha·op(A)·op(B) + beta·C in place on c (f32, [batch, m, n]) and returns c.
 * 7. Optional `allocUninit` (like `alloc`, but the contents are unspecified): for outputs an op overwrites
 *    entirely. Host backends hand out recycled buffers from a caching allocator (./host-allocator):
 *    `alloc` zeroes them, `allocUninit` does not. Optional `emptyCache` gives cached buffers back.
 */

/** Element types. Integer tensors are i32 (token ids, positions, labels): the documented index policy
 * (no i64 anywhere: every index input of every op is i32; arithmetic on i32 runs in f32 and is exact
 * below 2^24).
 * i64 data met in files is narrowed with a range check by the loaders. bf16/f16 are stored as
 * Uint16Array bit patterns on the host. `bool` is stored as Uint8Array (0/1). */
export type DType = "f32" | "f16" | "bf16" | "i32" | "u8" | "bool";

export type HostArray = Float32Array | Uint16Array | Int32Array | Uint8Array;

/** An opaque, flat allocation on one device. */
export interface Buffer {
  readonly device: string; // "cpu" for host buffers, "cuda:N" for device buffers
  readonly dtype: DType;
  readonly length: number; // elements
}

/** Host buffers (reference and cpu backends): the data is a typed array of `length` elements. */
export interface HostBuffer extends Buffer {
  readonly device: "cpu";
  readonly data: HostArray;
}

/** A strided view of a buffer, in elements. Broadcasting is a stride of 0. */
export interface StridedView {
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly offset: number;
}

export type UnaryOp =
  | "neg"
  | "exp"
  | "log"
  | "sqrt"
  | "rsqrt"
  | "abs"
  | "sigmoid"
  | "silu"
  | "relu"
  | "tanh"
  | "recip"
  | "square"
  | "sign";
export type BinaryOp = "add" | "sub" | "mul" | "div" | "max" | "min" | "pow" | "eq" | "gt" | "lt";
export type ReduceOp = "sum" | "max" | "min";

/** A frozen 4-bit weight as it sits on the backend: bitsandbytes layout (see @qlora/nf4). */
export interface QuantizedWeightBuffers {
  readonly quantType: "nf4" | "fp4";
  readonly blocksize: number;
  /** [outFeatures, inFeatures] = [n, k] of the logical weight W. */
  readonly shape: readonly [number, number];
  /** Packed codes, u8, ceil(n*k/2): element 2j in the high nibble. */
  readonly codes: Buffer;
  /** Either f32 absmax per block, or double-quantized absmax (u8 index into `code`, 256-blocks). */
  readonly absmax:
    | { readonly kind: "f32"; readonly values: Buffer }
    | {
        readonly kind: "nested";
        readonly qabsmax: Buffer; // u8 [nBlocks]
        readonly code: Buffer; // f32 [256], signed dynamic map
        readonly nestedAbsmax: Buffer; // f32 [ceil(nBlocks/256)]
        readonly nestedBlocksize: number; // 256
        readonly offset: number; // float32 value
      };
}

/** Options of `Backend.quantize4bit`. */
export interface QuantizeWeightOptions {
  readonly quantType: "nf4" | "fp4";
  /** 32 … 4096, a power of two (bitsandbytes' 4-bit blocksizes). */
  readonly blocksize: number;
  readonly doubleQuant: boolean;
  /** What the input holds: f32 values (Float32Array) or bf16/f16 bit patterns (Uint16Array). */
  readonly dtype: "f32" | "bf16" | "f16";
  /** [outFeatures, inFeatures]; n·k must equal the input length. */
  readonly shape: readonly [number, number];
}

export interface MatmulOptions {
  readonly batch: number;
  readonly m: number;
  readonly k: number;
  readonly n: number;
  /** A is stored [k, m] per batch instead of [m, k]. */
  readonly transA?: boolean;
  /** B is stored [n, k] per batch instead of [k, n] (the nn.Linear weight layout). */
  readonly transB?: boolean;
  /** Elements between consecutive batch matrices; 0 broadcasts one matrix over the batch.
   * Default: the matrix size (m*k or k*n). */
  readonly aBatchStride?: number;
  readonly bBatchStride?: number;
  /** [tensor refinement] Scale of op(A)·op(B) (default 1). */
  readonly alpha?: number;
  /** [tensor refinement] Scale of the existing C when an output buffer is passed (default 0: C is
   * overwritten, its old contents never read, so NaN garbage does not leak in). */
  readonly beta?: number;
}

export interface AttentionOptions {
  readonly batch: number;
  readonly heads: number; // query heads
  readonly kvHeads: number; // heads % kvHeads === 0 (grouped-query attention)
  readonly seq: number;
  readonly headDim: number;
  readonly scale: number; // usually 1/sqrt(headDim)
  /** Optional i32 [batch, seq]: tokens attend only within equal segment ids (packed sequences). */
  readonly segmentIds?: Buffer;
  /** [runtime refinement] Keys/values per sequence (default seq; kvSeq ≥ seq). The queries are the LAST seq
   * positions: query i sits at kvSeq − seq + i and attends keys j ≤ kvSeq − seq + i (a KV cache: keys =
   * cached + new). segmentIds need kvSeq = seq. k/v (and dk/dv) have kvSeq rows per head. */
  readonly kvSeq?: number;
  /** [runtime refinement] Memory layout of q, k, v, out (and dout, dq, dk, dv): "bhsd" (default) is
   * [batch, heads, seq, d]; "bshd" is [batch, seq, heads, d], rope's layout and what the q/k/v projections
   * produce, so a decoder layer needs no transposed copies. lse is [batch, heads, seq] in both. */
  readonly layout?: AttentionLayout;
  /** [runtime refinement] Sliding-window attention (Mistral's `sliding_window`): a query at position p
   * attends only keys p − window < j ≤ p (the last `window` positions, itself included), as Hugging
   * Face's causal mask with a sliding window. 0 or absent: plain causal. */
  readonly window?: number;
}

export type AttentionLayout = "bhsd" | "bshd";

export interface RopeOptions {
  readonly batch: number;
  readonly seq: number;
  readonly heads: number;
  readonly headDim: number;
  readonly theta: number;
  /** Rotate by -angle: the backward of rope (its transpose). */
  readonly inverse?: boolean;
}

export interface AdamWOptions {
  readonly lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  readonly step: number; // 1-based, for bias correction
}

/** Options of `crossEntropyGradInPlace` (one row chunk of `linearCrossEntropy`). */
export interface CrossEntropyGradOptions {
  readonly ignoreIndex: number;
  /** Weight of the z-loss term zLoss·lse² added to each non-ignored row (0: plain cross-entropy). */
  readonly zLoss: number;
  /** Also overwrite logits with the gradient of the summed loss (else logits are left as they are). */
  readonly grad: boolean;
}

export interface MemoryStats {
  readonly currentBytes: number;
  readonly peakBytes: number;
  /** [tensor refinement] Bytes held by the caching allocator's free lists (not in use, not returned). */
  readonly cachedBytes?: number;
}

export interface Backend {
  readonly name: string; // "reference" | "cpu" | "cuda"
  readonly device: string; // "cpu" | "cuda:0"

  // ---- memory ----
  alloc(dtype: DType, length: number): Buffer; // zero-filled
  /** [tensor refinement] A buffer whose contents are unspecified (recycled): for fully overwritten outputs. */
  allocUninit?(dtype: DType, length: number): Buffer;
  /** [tensor refinement] Give every cached (free) buffer back to the system. */
  emptyCache?(): void;
  /** [tensor refinement] Zero-filled buffer for optimizer state; a backend may page it (CUDA: managed
   * memory for ≥ 1e5 elements). Optional: without it, optimizers use `alloc`. Released with `free`. */
  allocState?(dtype: DType, length: number): Buffer;
  /**
   * [tensor refinement] An f32 inverted-dropout mask over elements [offset, offset + length) of the Philox stream of
   * `seed` (offset a multiple of 4): `scale` where the element's uniform is ≥ p, else 0 (random.ts holds the exact
   * mapping). Optional: without it the mask is drawn on the host by the Generator and uploaded.
   */
  dropoutMask?(seed: number, offset: number, length: number, p: number, scale: number): Buffer;
  free(buffer: Buffer): void;
  fromHost(data: HostArray, dtype: DType): Buffer; // copies
  toHost(buffer: Buffer): HostArray; // copies
  memoryStats(): MemoryStats;
  resetPeak(): void;

  // ---- primitives (a closed list) ----
  /** Strided gather + dtype cast into a new contiguous buffer of shape view.shape. */
  copy(src: Buffer, view: StridedView, dtype: DType): Buffer;
  /** [tensor refinement] Strided scatter: for every index of srcView.shape (== dstView.shape),
   * dst[dstView] = cast(src[srcView]) to dst's dtype. In place on dst; optional (see header). */
  copyInPlace?(dst: Buffer, dstView: StridedView, src: Buffer, srcView: StridedView): void;
  fill(dtype: DType, length: number, value: number): Buffer;
  unary(op: UnaryOp, x: Buffer, length: number): Buffer;
  /** Strided, broadcasting: out has shape `shape`, a and b are read through their views (same rank). */
  binary(op: BinaryOp, a: Buffer, aView: StridedView, b: Buffer, bView: StridedView, shape: readonly number[]): Buffer;
  /** Reduce the middle axis of a contiguous [outer, size, inner] array → [outer, inner]. */
  reduce(op: ReduceOp, x: Buffer, outer: number, size: number, inner: number): Buffer;
  /** out[b] = op(A[b]) · op(B[b]), f32 (or bf16) inputs, f32 output [batch, m, n]. [runtime refinement] A and
   * B need not share a dtype (f32 activations × bf16 weight): a backend converts tile by tile while it
   * packs, never a whole operand. */
  matmul(a: Buffer, b: Buffer, options: MatmulOptions, out?: Buffer): Buffer;
  /** [tensor refinement] With `out`: out = alpha·op(A)·op(B) + beta·out in place (see MatmulOptions), returned.
   * Optional `addInPlace`: dst[dstView] += alpha · src[srcView] in place (same shape; src may broadcast
   * through stride 0; src read as float, dst f32/bf16/f16); see the header. */
  addInPlace?(dst: Buffer, dstView: StridedView, src: Buffer, srcView: StridedView, alpha: number): void;

  // ---- fused ops (each has a reference in reference.ts) ----
  /** y[m,n] = x[m,k] · dequant(W)ᵀ, W dequantized tile by tile, never whole. */
  matmul4bit(x: Buffer, w: QuantizedWeightBuffers, m: number): Buffer;
  /** dx[m,k] = dy[m,n] · dequant(W): the input gradient (bitsandbytes MatMul4Bit.backward). */
  matmul4bitInputGrad(dy: Buffer, w: QuantizedWeightBuffers, m: number): Buffer;
  /** [load refinement] Optional: quantize a host weight [n, k] (f32 values, or bf16/f16 bit patterns in a
   * Uint16Array) to bitsandbytes 4-bit into fresh buffers of this backend, byte-exact with @qlora/nf4's
   * quantize4bit (+ doubleQuantize). The input is read as it is (never widened whole). A backend without it
   * leaves quantization to @qlora/nf4 on the host (reference.ts implements it that way). */
  quantize4bit?(input: Float32Array | Uint16Array, options: QuantizeWeightOptions): QuantizedWeightBuffers;
  /** y = x · rsqrt(mean(x²) + eps) · weight over rows of length dim; also returns rstd [rows]. */
  rmsNorm(x: Buffer, weight: Buffer, rows: number, dim: number, eps: number): { y: Buffer; rstd: Buffer };
  rmsNormBackward(
    dy: Buffer,
    x: Buffer,
    weight: Buffer,
    rstd: Buffer,
    rows: number,
    dim: number,
  ): { dx: Buffer; dweight: Buffer };
  /** [tensor refinement] `weightGrad: false` (a frozen weight): dweight is not computed (null). A backend
   * that ignores the option still returns a correct dweight, which the caller drops. */
  rmsNormBackward(
    dy: Buffer,
    x: Buffer,
    weight: Buffer,
    rstd: Buffer,
    rows: number,
    dim: number,
    options: { readonly weightGrad: boolean },
  ): { dx: Buffer; dweight: Buffer | null };
  /** Rotary embedding, Hugging Face "rotate_half" convention, on x [batch, seq, heads, headDim]
   * with positions i32 [batch, seq]. */
  rope(x: Buffer, positions: Buffer, options: RopeOptions): Buffer;
  /** Causal attention: q [batch, heads, seq, d], k/v [batch, kvHeads, kvSeq, d] → out [batch, heads, seq, d]
   * (or all four in the "bshd" layout, see AttentionOptions)
   * and the row log-sum-exp [batch, heads, seq] saved for backward. Never keeps a seq×seq matrix per head. */
  attention(q: Buffer, k: Buffer, v: Buffer, options: AttentionOptions): { out: Buffer; lse: Buffer };
  attentionBackward(
    dout: Buffer,
    q: Buffer,
    k: Buffer,
    v: Buffer,
    out: Buffer,
    lse: Buffer,
    options: AttentionOptions,
  ): { dq: Buffer; dk: Buffer; dv: Buffer };
  softmax(x: Buffer, rows: number, n: number): Buffer;
  softmaxBackward(dy: Buffer, y: Buffer, rows: number, n: number): Buffer;
  /** Per-row loss (0 where label === ignoreIndex) and the row log-sum-exp. */
  crossEntropy(
    logits: Buffer,
    labels: Buffer,
    rows: number,
    vocab: number,
    ignoreIndex: number,
  ): { loss: Buffer; lse: Buffer };
  /** dlogits = dloss[row] · (softmax(logits) − onehot(label)); 0 on ignored rows. */
  crossEntropyBackward(
    dloss: Buffer,
    logits: Buffer,
    labels: Buffer,
    lse: Buffer,
    rows: number,
    vocab: number,
    ignoreIndex: number,
  ): Buffer;
  /** [runtime refinement] Optional, fused loss and gradient of one chunk of logits [rows, vocab] (in place):
   * returns loss [rows] = lse − logits[label] + zLoss·lse² (0 where label === ignoreIndex), and when
   * `options.grad` overwrites logits with d(Σ loss)/d(logits) = (1 + 2·zLoss·lse)·softmax(logits) −
   * onehot(label) (0 on ignored rows), so a chunk never holds logits and their gradient at once. Host
   * backends without it get the reference implementation; a device backend without it is served by
   * crossEntropy + crossEntropyBackward when zLoss = 0. */
  crossEntropyGradInPlace?(
    logits: Buffer,
    labels: Buffer,
    rows: number,
    vocab: number,
    options: CrossEntropyGradOptions,
  ): Buffer;
  /** silu(gate) · up, elementwise. */
  swiglu(gate: Buffer, up: Buffer, length: number): Buffer;
  swigluBackward(dy: Buffer, gate: Buffer, up: Buffer, length: number): { dgate: Buffer; dup: Buffer };
  /** out[i] = weight[ids[i]] for rows of length dim, f32 out. [runtime refinement] weight may be f32, bf16 or
   * f16: only the gathered rows are converted, never the whole table. */
  embedding(weight: Buffer, ids: Buffer, count: number, dim: number): Buffer;
  /** dweight [vocab, dim] = scatter-add of dy rows at ids. */
  embeddingBackward(dy: Buffer, ids: Buffer, count: number, dim: number, vocab: number): Buffer;
  /** Decoupled-weight-decay Adam, in place on param, m and v (torch.optim.AdamW semantics). */
  adamwStepInPlace(param: Buffer, grad: Buffer, m: Buffer, v: Buffer, length: number, options: AdamWOptions): void;
}

export class BackendOpError extends Error {
  readonly code = "BACKEND_OP_MISSING";
  constructor(
    readonly op: string,
    readonly backend: string,
  ) {
    super(`backend "${backend}" does not implement op "${op}"`);
    this.name = "BackendOpError";
  }
}
