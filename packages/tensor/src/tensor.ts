/**
 * Tensor: dtype, shape, strides, offset into a refcounted Storage on one backend; views share storage.
 * This file holds the class, creation functions, views and scopes. Compute ops live in ./ops and only
 * call the Backend interface; gradient rules live in ./grad-rules.
 *
 * No import cycle: this file does not import ./ops or ./autograd (they import it). The compute methods
 * (`a.add(b)`, `x.backward()`) call through `tensorMethods`, which ./ops and ./autograd fill when they load
 * (the package index loads both).
 */
import { backendForDevice, getBackend } from "./backend/registry";
import { isF64Backend } from "./backend/reference";
import type { Backend, Buffer, DType, HostArray, StridedView } from "./backend/types";
import { TensorError } from "./errors";
import { bf16BitsToF32, f16BitsToF32 } from "./internal/half";
import { Storage, finalizer, scopes, track, untrack, untrackEverywhere } from "./memory";
import type { Node } from "./graph";
import { record } from "./graph";
import type { BinaryOp, ReduceOp, UnaryOp } from "./backend/types";
import { getGenerator } from "./random";
import type { Generator } from "./random";

export type Shape = readonly number[];
export const DTYPES: readonly DType[] = ["f32", "f16", "bf16", "i32", "u8", "bool"];

export function isFloat(d: DType): boolean {
  return d === "f32" || d === "bf16" || d === "f16";
}
export function numel(shape: Shape): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}
export function contiguousStrides(shape: Shape): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}
function checkShape(shape: Shape, what: string): void {
  for (const s of shape)
    if (!Number.isInteger(s) || s < 0)
      throw new TensorError("BAD_SHAPE", `${what}: shape ${JSON.stringify(shape)} must hold non-negative integers`);
}

let nextId = 1;

export type TensorLike = Tensor | number;

/** @internal the compute methods of Tensor, installed by ./ops and ./autograd when they load. */
export interface TensorMethods {
  binary(op: BinaryOp, a: TensorLike, b: TensorLike): Tensor;
  unary(op: UnaryOp, x: Tensor): Tensor;
  reduce(op: ReduceOp | "mean", x: Tensor, dims: number | readonly number[] | undefined, keepdim: boolean): Tensor;
  matmul(a: Tensor, b: Tensor): Tensor;
  softmax(x: Tensor, dim: number): Tensor;
  logSoftmax(x: Tensor, dim: number): Tensor;
  backward(root: Tensor, grad?: Tensor): void;
  addInPlace(dst: Tensor, src: TensorLike, alpha: number): Tensor;
}
const methods: Partial<TensorMethods> = {};

/** @internal called by ./ops and ./autograd at load. */
export function installTensorMethods(m: Partial<TensorMethods>): void {
  Object.assign(methods, m);
}
function method<K extends keyof TensorMethods>(name: K): TensorMethods[K] {
  const fn = methods[name];
  if (!fn)
    throw new TensorError(
      "NOT_LOADED",
      `Tensor.${name}: the compute ops are not loaded; import from "@qlora/tensor" (its index loads them)`,
    );
  return fn as TensorMethods[K];
}

export class Tensor {
  readonly id = nextId++;
  /** Autograd: the node that produced this tensor (null for leaves). */
  gradFn: Node | null = null;
  /** Accumulated gradient (leaves with requiresGrad only). */
  grad: Tensor | null = null;
  private _requiresGrad = false;
  private _disposed = false;
  private _postAccumulateGradHooks: ((param: Tensor) => void)[] | undefined;

  /** @internal use the creation functions; takes over one reference of `storage`. */
  constructor(
    readonly storage: Storage,
    readonly shape: readonly number[],
    readonly strides: readonly number[],
    readonly offset: number,
    readonly dtype: DType,
  ) {
    finalizer.register(this, storage, this);
    track(this);
  }

  get backend(): Backend {
    return this.storage.backend;
  }
  get device(): string {
    return this.storage.backend.device;
  }
  get buffer(): Buffer {
    return this.storage.buffer;
  }
  get ndim(): number {
    return this.shape.length;
  }
  get size(): number {
    return numel(this.shape);
  }
  get disposed(): boolean {
    return this._disposed;
  }
  get isLeaf(): boolean {
    return this.gradFn === null;
  }
  get requiresGrad(): boolean {
    return this._requiresGrad;
  }
  set requiresGrad(v: boolean) {
    if (!this.isLeaf && !v)
      throw new TensorError("NOT_LEAF", "requiresGrad can only be cleared on leaf tensors; use detach()");
    if (v && !isFloat(this.dtype))
      throw new TensorError("BAD_DTYPE", `only float tensors can require gradients, this one is ${this.dtype}`);
    this._requiresGrad = v;
  }
  /** @internal mark a non-leaf output of a recorded op. */
  _setRequiresGrad(): void {
    this._requiresGrad = true;
  }

  /** The strided view this tensor reads from its buffer. */
  get stridedView(): StridedView {
    return { shape: this.shape, strides: this.strides, offset: this.offset };
  }
  isContiguous(): boolean {
    const c = contiguousStrides(this.shape);
    for (let i = 0; i < this.shape.length; i++) if (this.shape[i] !== 1 && this.strides[i] !== c[i]) return false;
    return true;
  }
  /** Contiguous, at offset 0, and exactly as long as the buffer: compute ops can take the buffer as is. */
  isDense(): boolean {
    return this.offset === 0 && this.isContiguous() && this.buffer.length === this.size;
  }

  assertAlive(what = "tensor"): void {
    if (this._disposed || this.storage.freed)
      throw new TensorError("DISPOSED", `${what}: tensor #${this.id} ${JSON.stringify(this.shape)} was disposed`);
  }

  /** Give this handle's storage reference back. Idempotent. Views keep the storage alive. */
  dispose(): void {
    if (this._disposed) return;
    this._disposed = true;
    finalizer.unregister(this);
    untrack(this);
    this.storage.release();
  }

  /** @internal a new handle with the same storage (one more reference), no autograd history. */
  _alias(shape: Shape = this.shape, strides: Shape = this.strides, offset = this.offset): Tensor {
    this.assertAlive();
    this.storage.retain();
    return new Tensor(this.storage, [...shape], [...strides], offset, this.dtype);
  }

  /** A new handle sharing storage, cut from the autograd graph. */
  detach(): Tensor {
    return this._alias();
  }

  // ---- reading ----
  /** Values as a typed array (bf16/f16 decoded to Float32Array). Synchronous copy to the host. */
  toTypedArray(): Float32Array | Float64Array | Int32Array | Uint8Array {
    this.assertAlive("toTypedArray");
    let buf = this.buffer;
    let temp: Buffer | null = null;
    if (!this.isDense()) {
      temp = this.backend.copy(this.buffer, this.stridedView, this.dtype);
      buf = temp;
    }
    const h = this.backend.toHost(buf) as HostArray | Float64Array;
    if (temp) this.backend.free(temp);
    if (this.dtype === "bf16" || this.dtype === "f16") {
      const dec = this.dtype === "bf16" ? bf16BitsToF32 : f16BitsToF32;
      const out = new Float32Array(h.length);
      for (let i = 0; i < h.length; i++) out[i] = dec(h[i]);
      return out;
    }
    return h as Float32Array | Float64Array | Int32Array | Uint8Array;
  }
  /** The raw host data in the storage dtype (bf16/f16 as Uint16Array bit patterns), contiguous. */
  toHost(): HostArray {
    this.assertAlive("toHost");
    if (this.isDense()) return this.backend.toHost(this.buffer);
    const temp = this.backend.copy(this.buffer, this.stridedView, this.dtype);
    const h = this.backend.toHost(temp);
    this.backend.free(temp);
    return h;
  }
  toArray(): number[] {
    return Array.from(this.toTypedArray());
  }
  item(): number {
    if (this.size !== 1) throw new TensorError("BAD_SHAPE", `item(): tensor has ${this.size} elements, expected 1`);
    return this.toTypedArray()[0];
  }

  // ---- views (no copies) ----
  reshape(...shapeArg: (number | Shape)[]): Tensor {
    const shape = resolveShape(flatShape(shapeArg), this.size, "reshape");
    if (!this.isContiguous()) {
      const c = this.contiguous();
      const r = c.reshape(shape);
      c.dispose();
      return r;
    }
    const out = this._alias(shape, contiguousStrides(shape), this.offset);
    return record("reshape", [this], out, [], { inShape: this.shape });
  }
  view(...shapeArg: (number | Shape)[]): Tensor {
    if (!this.isContiguous())
      throw new TensorError(
        "NOT_CONTIGUOUS",
        `view(): tensor ${JSON.stringify(this.shape)} is not contiguous; use reshape() or contiguous()`,
      );
    return this.reshape(...shapeArg);
  }
  flatten(): Tensor {
    return this.reshape([this.size]);
  }
  permute(...dimsArg: (number | Shape)[]): Tensor {
    const dims = flatShape(dimsArg).map((d) => normDim(d, this.ndim, "permute"));
    if (dims.length !== this.ndim || new Set(dims).size !== dims.length)
      throw new TensorError("BAD_DIMS", `permute(${dims}): expected a permutation of 0..${this.ndim - 1}`);
    const out = this._alias(
      dims.map((d) => this.shape[d]),
      dims.map((d) => this.strides[d]),
      this.offset,
    );
    const inverse = new Array<number>(dims.length);
    dims.forEach((d, i) => {
      inverse[d] = i;
    });
    return record("permute", [this], out, [], { inverse });
  }
  transpose(d0 = -2, d1 = -1): Tensor {
    const a = normDim(d0, this.ndim, "transpose");
    const b = normDim(d1, this.ndim, "transpose");
    const dims = [...Array(this.ndim).keys()];
    dims[a] = b;
    dims[b] = a;
    return this.permute(dims);
  }
  get T(): Tensor {
    return this.transpose(-2, -1);
  }
  /** Elements [start, start+length) along dim, as a view. */
  narrow(dim: number, start: number, length: number): Tensor {
    const d = normDim(dim, this.ndim, "narrow");
    if (start < 0) start += this.shape[d];
    if (
      !Number.isInteger(start) ||
      !Number.isInteger(length) ||
      start < 0 ||
      length < 0 ||
      start + length > this.shape[d]
    ) {
      throw new TensorError(
        "BAD_RANGE",
        `narrow(dim ${dim}, start ${start}, length ${length}) is outside size ${this.shape[d]}`,
      );
    }
    const shape = [...this.shape];
    shape[d] = length;
    const out = this._alias(shape, this.strides, this.offset + start * this.strides[d]);
    return record("narrow", [this], out, [], { dim: d, start, inShape: this.shape });
  }
  /** Python-style slice [start, end) along dim (negative indices count from the end). */
  slice(dim: number, start = 0, end?: number): Tensor {
    const d = normDim(dim, this.ndim, "slice");
    const size = this.shape[d];
    let s = start < 0 ? start + size : start;
    let e = end === undefined ? size : end < 0 ? end + size : end;
    s = Math.min(Math.max(s, 0), size);
    e = Math.min(Math.max(e, s), size);
    return this.narrow(d, s, e - s);
  }
  expand(...shapeArg: (number | Shape)[]): Tensor {
    const shape = flatShape(shapeArg);
    if (shape.length < this.ndim)
      throw new TensorError("BAD_SHAPE", `expand(${shape}): fewer dims than the tensor ${JSON.stringify(this.shape)}`);
    const lead = shape.length - this.ndim;
    const strides = new Array<number>(shape.length);
    const outShape = new Array<number>(shape.length);
    for (let i = 0; i < shape.length; i++) {
      const src = i - lead;
      const want = shape[i] === -1 && src >= 0 ? this.shape[src] : shape[i];
      outShape[i] = want;
      if (src < 0) strides[i] = 0;
      else if (this.shape[src] === want) strides[i] = this.strides[src];
      else if (this.shape[src] === 1) strides[i] = 0;
      else
        throw new TensorError(
          "BAD_SHAPE",
          `expand: cannot expand ${JSON.stringify(this.shape)} to ${JSON.stringify(shape)}`,
        );
    }
    const out = this._alias(outShape, strides, this.offset);
    return record("expand", [this], out, [], { inShape: this.shape });
  }
  squeeze(dim?: number): Tensor {
    if (dim === undefined) return this.reshape(this.shape.filter((s) => s !== 1));
    const d = normDim(dim, this.ndim, "squeeze");
    if (this.shape[d] !== 1) return this.reshape(this.shape);
    const shape = [...this.shape];
    shape.splice(d, 1);
    const strides = [...this.strides];
    strides.splice(d, 1);
    const out = this._alias(shape, strides, this.offset);
    return record("reshape", [this], out, [], { inShape: this.shape });
  }
  unsqueeze(dim: number): Tensor {
    const d = normDim(dim, this.ndim + 1, "unsqueeze");
    const shape = [...this.shape];
    shape.splice(d, 0, 1);
    const strides = [...this.strides];
    strides.splice(d, 0, d < this.ndim ? this.strides[d] * this.shape[d] : 1);
    const out = this._alias(shape, strides, this.offset);
    return record("reshape", [this], out, [], { inShape: this.shape });
  }
  /** This tensor if already contiguous (as a new handle), else a contiguous copy. */
  contiguous(): Tensor {
    this.assertAlive("contiguous");
    if (this.isContiguous()) return record("identity", [this], this._alias(), [], {});
    const buf = this.backend.copy(this.buffer, this.stridedView, this.dtype);
    return record("identity", [this], fromBuffer(buf, this.backend, this.shape, this.dtype), [], {});
  }
  /** Clone into fresh storage (differentiable). */
  clone(): Tensor {
    this.assertAlive("clone");
    const buf = this.backend.copy(this.buffer, this.stridedView, this.dtype);
    return record("identity", [this], fromBuffer(buf, this.backend, this.shape, this.dtype), [], {});
  }

  /** `.to("bf16")` casts; `.to("cpu")`/`.to("cuda:0")` moves (a new handle if nothing changes). */
  to(target: DType | string): Tensor {
    if ((DTYPES as readonly string[]).includes(target)) return this.cast(target as DType);
    return this.toDevice(target);
  }
  cast(dtype: DType): Tensor {
    this.assertAlive("cast");
    if (dtype === this.dtype) return record("identity", [this], this._alias(), [], {});
    const buf = this.backend.copy(this.buffer, this.stridedView, dtype);
    const out = fromBuffer(buf, this.backend, this.shape, dtype);
    return isFloat(dtype) ? record("cast", [this], out, [], { dtype: this.dtype }) : out;
  }
  toDevice(device: string): Tensor {
    this.assertAlive("to");
    if (device === this.device) return record("identity", [this], this._alias(), [], {});
    return this.toBackend(backendForDevice(device));
  }
  /** Move to a specific backend (e.g. reference → cpu on the same host). */
  toBackend(backend: Backend): Tensor {
    this.assertAlive("toBackend");
    if (backend === this.backend) return record("identity", [this], this._alias(), [], {});
    let src = this.buffer;
    let temp: Buffer | null = null;
    if (!this.isDense()) {
      temp = this.backend.copy(this.buffer, this.stridedView, this.dtype);
      src = temp;
    }
    let host = this.backend.toHost(src);
    if (temp) this.backend.free(temp);
    // an f64-mode reference backend hands out Float64Array for f32: narrow it unless the target is f64 too
    if (this.dtype === "f32" && !(host instanceof Float32Array) && !isF64Backend(backend))
      host = Float32Array.from(host as ArrayLike<number>);
    const out = fromBuffer(backend.fromHost(host, this.dtype), backend, this.shape, this.dtype);
    return record("toBackend", [this], out, [], { backend: this.backend });
  }

  // ---- compute (see ./ops)
  add(b: TensorLike): Tensor {
    return method("binary")("add", this, b);
  }
  sub(b: TensorLike): Tensor {
    return method("binary")("sub", this, b);
  }
  mul(b: TensorLike): Tensor {
    return method("binary")("mul", this, b);
  }
  div(b: TensorLike): Tensor {
    return method("binary")("div", this, b);
  }
  pow(b: TensorLike): Tensor {
    return method("binary")("pow", this, b);
  }
  maximum(b: TensorLike): Tensor {
    return method("binary")("max", this, b);
  }
  minimum(b: TensorLike): Tensor {
    return method("binary")("min", this, b);
  }
  eq(b: TensorLike): Tensor {
    return method("binary")("eq", this, b);
  }
  gt(b: TensorLike): Tensor {
    return method("binary")("gt", this, b);
  }
  lt(b: TensorLike): Tensor {
    return method("binary")("lt", this, b);
  }
  neg(): Tensor {
    return method("unary")("neg", this);
  }
  exp(): Tensor {
    return method("unary")("exp", this);
  }
  log(): Tensor {
    return method("unary")("log", this);
  }
  sqrt(): Tensor {
    return method("unary")("sqrt", this);
  }
  rsqrt(): Tensor {
    return method("unary")("rsqrt", this);
  }
  abs(): Tensor {
    return method("unary")("abs", this);
  }
  sigmoid(): Tensor {
    return method("unary")("sigmoid", this);
  }
  silu(): Tensor {
    return method("unary")("silu", this);
  }
  relu(): Tensor {
    return method("unary")("relu", this);
  }
  tanh(): Tensor {
    return method("unary")("tanh", this);
  }
  reciprocal(): Tensor {
    return method("unary")("recip", this);
  }
  square(): Tensor {
    return method("unary")("square", this);
  }
  sign(): Tensor {
    return method("unary")("sign", this);
  }
  sum(dims?: number | readonly number[], keepdim = false): Tensor {
    return method("reduce")("sum", this, dims, keepdim);
  }
  mean(dims?: number | readonly number[], keepdim = false): Tensor {
    return method("reduce")("mean", this, dims, keepdim);
  }
  max(dims?: number | readonly number[], keepdim = false): Tensor {
    return method("reduce")("max", this, dims, keepdim);
  }
  min(dims?: number | readonly number[], keepdim = false): Tensor {
    return method("reduce")("min", this, dims, keepdim);
  }
  matmul(b: Tensor): Tensor {
    return method("matmul")(this, b);
  }
  softmax(dim = -1): Tensor {
    return method("softmax")(this, dim);
  }
  logSoftmax(dim = -1): Tensor {
    return method("logSoftmax")(this, dim);
  }

  /** this += alpha · b in place (no new buffer; not recorded: use under noGrad). Returns this. */
  add_(b: TensorLike, alpha = 1): Tensor {
    return method("addInPlace")(this, b, alpha);
  }

  /** Reverse-mode autograd from this tensor (see ./autograd). */
  backward(grad?: Tensor): void {
    method("backward")(this, grad);
  }

  /**
   * Run `hook(this)` after each backward() once this leaf's `.grad` holds its complete gradient for that
   * backward (after its last contribution; before backward returns). For overlapping a gradient's
   * reduce-scatter with the rest of backward, or a fused per-parameter optimizer step.
   * Returns a handle whose remove() unregisters the hook.
   */
  registerPostAccumulateGradHook(hook: (param: Tensor) => void): { remove(): void } {
    if (!this.isLeaf)
      throw new TensorError("NOT_LEAF", "registerPostAccumulateGradHook: only leaf tensors accumulate gradients");
    if (typeof hook !== "function")
      throw new TensorError("BAD_ARGUMENT", "registerPostAccumulateGradHook: hook must be a function");
    if (!this._postAccumulateGradHooks) this._postAccumulateGradHooks = [];
    const hooks = this._postAccumulateGradHooks;
    hooks.push(hook);
    return {
      remove: () => {
        const i = hooks.indexOf(hook);
        if (i >= 0) hooks.splice(i, 1);
      },
    };
  }
  /** @internal called by the backward engine. */
  _runPostAccumulateGradHooks(): void {
    if (this._postAccumulateGradHooks) for (const h of [...this._postAccumulateGradHooks]) h(this);
  }

  toString(): string {
    return `Tensor(${JSON.stringify(this.shape)}, ${this.dtype}, ${this.backend.name}${this.requiresGrad ? ", requiresGrad" : ""})`;
  }
}

export function flatShape(args: readonly (number | Shape)[]): number[] {
  if (args.length === 1 && Array.isArray(args[0])) return [...(args[0] as number[])];
  return args as number[];
}
function resolveShape(shape: number[], total: number, what: string): number[] {
  const neg = shape.indexOf(-1);
  if (neg >= 0) {
    const rest = shape.reduce((a, b, i) => (i === neg ? a : a * b), 1);
    if (rest === 0 || total % rest !== 0)
      throw new TensorError("BAD_SHAPE", `${what}: cannot infer -1 in ${JSON.stringify(shape)} for ${total} elements`);
    shape = [...shape];
    shape[neg] = total / rest;
  }
  checkShape(shape, what);
  if (numel(shape) !== total)
    throw new TensorError("BAD_SHAPE", `${what}: shape ${JSON.stringify(shape)} does not hold ${total} elements`);
  return shape;
}
export function normDim(d: number, ndim: number, what: string): number {
  const r = d < 0 ? d + ndim : d;
  if (!Number.isInteger(r) || r < 0 || r >= Math.max(ndim, 1))
    throw new TensorError("BAD_DIMS", `${what}: dim ${d} is out of range for ${ndim} dims`);
  return r;
}

// ---------------------------------------------------------------- creation

export interface CreateOptions {
  readonly dtype?: DType;
  /** "cpu" or "cuda:N": the highest-priority backend on that device. */
  readonly device?: string;
  /** A backend (or its registered name); wins over device. */
  readonly backend?: Backend | string;
  readonly requiresGrad?: boolean;
}

export function resolveBackend(o?: CreateOptions): Backend {
  if (o?.backend !== undefined) return typeof o.backend === "string" ? getBackend(o.backend) : o.backend;
  if (o?.device !== undefined) return backendForDevice(o.device);
  return getBackend();
}

/** @internal wrap a fresh backend buffer (takes ownership). */
export function fromBuffer(buffer: Buffer, backend: Backend, shape: Shape, dtype: DType = buffer.dtype): Tensor {
  return new Tensor(new Storage(buffer, backend), [...shape], contiguousStrides(shape), 0, dtype);
}

function finish(t: Tensor, o?: CreateOptions): Tensor {
  if (o?.requiresGrad) t.requiresGrad = true;
  return t;
}

export function full(shape: Shape, value: number, o?: CreateOptions): Tensor {
  checkShape(shape, "full");
  const be = resolveBackend(o);
  const dtype = o?.dtype ?? "f32";
  return finish(fromBuffer(be.fill(dtype, numel(shape), value), be, shape, dtype), o);
}
export function zeros(shape: Shape, o?: CreateOptions): Tensor {
  checkShape(shape, "zeros");
  const be = resolveBackend(o);
  const dtype = o?.dtype ?? "f32";
  return finish(fromBuffer(be.alloc(dtype, numel(shape)), be, shape, dtype), o);
}
/**
 * A tensor whose contents are unspecified (a recycled buffer from the caching allocator, not zeroed): for an
 * output that is written in full right away, e.g. by matmulAccumulate(c, a, b, 1, 0).
 */
export function empty(shape: Shape, o?: CreateOptions): Tensor {
  checkShape(shape, "empty");
  const be = resolveBackend(o);
  const dtype = o?.dtype ?? "f32";
  const buf = be.allocUninit ? be.allocUninit(dtype, numel(shape)) : be.alloc(dtype, numel(shape));
  return finish(fromBuffer(buf, be, shape, dtype), o);
}
export function ones(shape: Shape, o?: CreateOptions): Tensor {
  return full(shape, 1, o);
}
export function zerosLike(t: Tensor, dtype: DType = t.dtype): Tensor {
  return zeros(t.shape, { backend: t.backend, dtype });
}
export function onesLike(t: Tensor, dtype: DType = t.dtype): Tensor {
  return full(t.shape, 1, { backend: t.backend, dtype });
}

/** arange(end) / arange(start, end, step): i32 when every argument is an integer, else f32. */
export function arange(start: number, end?: number, step = 1, o?: CreateOptions): Tensor {
  if (end === undefined) {
    end = start;
    start = 0;
  }
  if (step === 0) throw new TensorError("BAD_ARGUMENT", "arange: step must not be 0");
  const n = Math.max(0, Math.ceil((end - start) / step));
  const allInt = Number.isInteger(start) && Number.isInteger(end) && Number.isInteger(step);
  const dtype = o?.dtype ?? (allInt ? "i32" : "f32");
  const vals = new Array<number>(n);
  for (let i = 0; i < n; i++) vals[i] = start + i * step;
  return tensor(vals, { ...o, dtype });
}

type Nested = number | boolean | readonly Nested[];
function inferShape(data: Nested): number[] {
  const shape: number[] = [];
  let cur: Nested = data;
  while (Array.isArray(cur)) {
    shape.push(cur.length);
    cur = (cur as readonly Nested[])[0];
  }
  return shape;
}

/** A tensor from (nested) arrays or a typed array. Float arrays default to f32, Int32Array to i32, Uint8Array to u8;
 * a Uint16Array is taken as bf16/f16 bit patterns (dtype required). */
export function tensor(data: Nested | ArrayLike<number>, o?: CreateOptions & { shape?: Shape }): Tensor {
  let flat: ArrayLike<number>;
  let shape: number[];
  let dtype: DType | undefined = o?.dtype;
  if (data instanceof Uint16Array) {
    // bf16/f16 bit patterns (as read from a checkpoint): uploaded as they are
    if (dtype !== "bf16" && dtype !== "f16")
      throw new TensorError(
        "BAD_DTYPE",
        `tensor: a Uint16Array holds bf16/f16 bit patterns; pass dtype "bf16" or "f16" (got ${dtype ?? "none"})`,
      );
    shape = o?.shape ? [...o.shape] : [data.length];
    checkShape(shape, "tensor");
    if (numel(shape) !== data.length)
      throw new TensorError("BAD_SHAPE", `tensor: ${data.length} values do not fill shape ${JSON.stringify(shape)}`);
    const be = resolveBackend(o);
    return finish(fromBuffer(be.fromHost(data, dtype), be, shape, dtype), o);
  }
  // typed arrays already in the target dtype are uploaded as they are (fromHost copies): the element-wise
  // conversions below cost ~10 ns per element, seconds for a model's packed 4-bit weights
  const direct =
    (data instanceof Float32Array && (dtype ?? "f32") === "f32") ||
    (data instanceof Int32Array && (dtype ?? "i32") === "i32") ||
    (data instanceof Uint8Array && (dtype ?? "u8") === "u8");
  if (direct) {
    const d = dtype ?? (data instanceof Float32Array ? "f32" : data instanceof Int32Array ? "i32" : "u8");
    shape = o?.shape ? [...o.shape] : [data.length];
    checkShape(shape, "tensor");
    if (numel(shape) !== data.length)
      throw new TensorError("BAD_SHAPE", `tensor: ${data.length} values do not fill shape ${JSON.stringify(shape)}`);
    const be = resolveBackend(o);
    return finish(fromBuffer(be.fromHost(data, d), be, shape, d), o);
  }
  if (ArrayBuffer.isView(data)) {
    flat = data as unknown as ArrayLike<number>;
    shape = o?.shape ? [...o.shape] : [flat.length];
    if (!dtype) dtype = data instanceof Int32Array ? "i32" : data instanceof Uint8Array ? "u8" : "f32";
  } else {
    shape = o?.shape ? [...o.shape] : inferShape(data as Nested);
    flat = (Array.isArray(data) ? (data as Nested[]).flat(Infinity as 1) : [data]).map((v) => Number(v)) as number[];
  }
  checkShape(shape, "tensor");
  if (numel(shape) !== flat.length)
    throw new TensorError("BAD_SHAPE", `tensor: ${flat.length} values do not fill shape ${JSON.stringify(shape)}`);
  dtype = dtype ?? "f32";
  const be = resolveBackend(o);
  // upload as f32/i32/u8 and cast on the backend for half types (the backend owns the rounding)
  let buf: Buffer;
  if (dtype === "bf16" || dtype === "f16") {
    const tmp = be.fromHost(Float32Array.from(flat), "f32");
    buf = be.copy(tmp, { shape: [flat.length], strides: [1], offset: 0 }, dtype);
    be.free(tmp);
  } else {
    const host: HostArray =
      dtype === "f32"
        ? Float32Array.from(flat)
        : dtype === "i32"
          ? Int32Array.from(flat)
          : Uint8Array.from(flat, (v) => (dtype === "bool" ? (v ? 1 : 0) : v));
    buf = be.fromHost(host, dtype);
  }
  return finish(fromBuffer(buf, be, shape, dtype), o);
}
export const fromArray = tensor;

export interface RandomOptions extends CreateOptions {
  readonly generator?: Generator;
}
/** Uniform [0, 1) from the Philox generator (see random.ts for the exact mapping). */
export function rand(shape: Shape, o?: RandomOptions): Tensor {
  checkShape(shape, "rand");
  const u = (o?.generator ?? getGenerator()).uniform(numel(shape));
  return tensor(u, { ...o, shape, dtype: o?.dtype ?? "f32" });
}
/** Standard normal (Box-Muller on Philox words). */
export function randn(shape: Shape, o?: RandomOptions): Tensor {
  checkShape(shape, "randn");
  const z = (o?.generator ?? getGenerator()).normal(numel(shape));
  return tensor(z, { ...o, shape, dtype: o?.dtype ?? "f32" });
}
/**
 * Inverted-dropout mask: 1/(1−p) (rounded to f32) where uniform ≥ p, else 0 (f32). A backend with a dropoutMask kernel
 * draws it itself from the generator's (seed, offset); the same numbers either way.
 */
export function dropoutMask(shape: Shape, p: number, o?: RandomOptions): Tensor {
  if (!(p >= 0 && p < 1)) throw new TensorError("BAD_ARGUMENT", `dropoutMask: p must be in [0, 1), got ${p}`);
  checkShape(shape, "dropoutMask");
  const g = o?.generator ?? getGenerator();
  const be = resolveBackend(o);
  const n = numel(shape);
  const scale = Math.fround(1 / (1 - p));
  if (be.dropoutMask) return finish(fromBuffer(be.dropoutMask(g.seed, g.reserve(n), n, p, scale), be, shape, "f32"), o);
  const u = g.uniform(n);
  for (let i = 0; i < u.length; i++) u[i] = u[i] >= p ? scale : 0;
  return tensor(u, { ...o, shape, dtype: "f32" });
}

// ---------------------------------------------------------------- scopes

type Keepable = Tensor | readonly Keepable[] | { readonly [k: string]: Keepable } | unknown;
function collect(x: Keepable, out: Set<Tensor>, depth = 0): void {
  if (depth > 8 || x === null || typeof x !== "object") return;
  if (x instanceof Tensor) {
    out.add(x);
    return;
  }
  if (Array.isArray(x)) for (const v of x) collect(v, out, depth + 1);
  else if (Object.getPrototypeOf(x) === Object.prototype)
    for (const v of Object.values(x as object)) collect(v, out, depth + 1);
}

/**
 * Run fn; dispose every tensor handle created inside except those returned (found in the result, arrays
 * and plain objects). Synchronous functions only. Returned tensors move to the enclosing scope.
 */
export function tidy<T>(fn: () => T): T {
  const scope = new Set<{ dispose(): void }>();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    scopes.splice(scopes.indexOf(scope), 1);
    for (const t of scope) t.dispose();
    throw e;
  }
  scopes.splice(scopes.indexOf(scope), 1);
  const kept = new Set<Tensor>();
  collect(result, kept);
  for (const t of scope) if (!kept.has(t as Tensor)) t.dispose();
  for (const t of kept) if (scope.has(t)) track(t);
  return result;
}

/** Exempt a tensor from every enclosing tidy scope (it must then be disposed by hand). */
export function keep<T extends Tensor>(t: T): T {
  untrackEverywhere(t);
  return t;
}

/** Dispose tensors found in x (arrays, plain objects). */
export function dispose(x: Keepable): void {
  const s = new Set<Tensor>();
  collect(x, s);
  for (const t of s) t.dispose();
}
