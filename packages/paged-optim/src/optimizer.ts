// The optimizer core shared by AdamW, Lion and SGD: parameters and their state keyed by NAME (so a
// reloaded model resumes), parameter groups with their own hyperparameters, state allocation (paged,
// 8-bit or 32-bit by bitsandbytes' thresholds) and the state dict. Subclasses only say which state
// buffers a parameter needs and which update op runs.
import { DYNAMIC_MAP_SIGNED, DYNAMIC_MAP_UNSIGNED } from "@qlora/nf4";
import { type Backend, type Buffer, type DType, dtypeBytes, type HostArray, type Tensor } from "@qlora/tensor";
import { OptimError } from "./errors";
import { loadStateDict, saveStateDict } from "./io";
import { kernelsFor, type OptimizerKernels } from "./kernels/table";

/** bitsandbytes: only parameters with at least this many elements get paged state. */
export const PAGED_MIN_ELEMENTS = 100_000;
/** bitsandbytes' `min_8bit_size`: smaller parameters keep 32-bit state in an 8-bit optimizer. */
export const MIN_8BIT_SIZE = 4096;

/** Named parameters: `model.namedParameters()` (filtered to trainable ones), an array of pairs, or a record. */
export type NamedParameters = Iterable<readonly [string, Tensor]> | Readonly<Record<string, Tensor>>;

/** A group of parameters with hyperparameters that override the optimizer's defaults. */
export type ParamGroupSpec<H> = { readonly params: NamedParameters } & Partial<H>;

/** A parameter group as the optimizer holds it: names plus live (mutable) hyperparameters. */
export type ParamGroup<H> = H & { readonly names: readonly string[] };

/** The hyperparameters every optimizer has (a scheduler sets `lr`). */
export interface BaseHyper {
  lr: number;
  weightDecay: number;
}

export interface StateOptions {
  /** 8: bitsandbytes 8-bit blockwise states (where the optimizer has them); default 32. */
  readonly bits?: 8 | 32;
  /** Put states of parameters with ≥ 1e5 elements through `Backend.allocState` (CUDA: managed memory). */
  readonly paged?: boolean;
  /** Parameters smaller than this keep 32-bit state in an 8-bit optimizer (default 4096). */
  readonly minEightBitSize?: number;
}

/** One parameter's state: the step count and its buffers (names as in torch / bitsandbytes). */
export interface ParamState {
  step: number;
  readonly bits: 8 | 32;
  readonly paged: boolean;
  readonly buffers: Record<string, Buffer>;
}

/** Host copies of an optimizer's state: what `save` writes and `loadStateDict` reads. */
export interface OptimizerStateDict {
  /**
   * Where loadStateDict(dir) read it from (not enumerable: not part of the state); mismatch errors name it.
   */
  readonly source?: string;
  readonly format: typeof STATE_FORMAT;
  readonly optimizer: string;
  readonly options: { readonly bits: 8 | 32; readonly paged: boolean; readonly minEightBitSize: number };
  readonly paramGroups: readonly { readonly names: readonly string[]; readonly hyper: Record<string, unknown> }[];
  readonly state: Readonly<
    Record<
      string,
      {
        readonly step: number;
        readonly bits: 8 | 32;
        readonly tensors: Readonly<Record<string, { readonly dtype: DType; readonly data: HostArray }>>;
      }
    >
  >;
}

export const STATE_FORMAT = "qlora.optimizer/1";

/** The buffers one parameter's state needs: name → dtype and length. */
export type StateLayout = Record<string, { readonly dtype: DType; readonly length: number }>;

function toPairs(params: NamedParameters, where: string): (readonly [string, Tensor])[] {
  if (params === null || typeof params !== "object")
    throw new OptimError("BAD_ARGUMENT", `${where}: expected named parameters (pairs or a record), got ${params}`);
  const pairs =
    Symbol.iterator in params
      ? [...(params as Iterable<readonly [string, Tensor]>)]
      : Object.entries(params as Record<string, Tensor>);
  for (const pair of pairs) {
    if (!Array.isArray(pair) || typeof pair[0] !== "string" || typeof pair[1] !== "object" || pair[1] === null)
      throw new OptimError(
        "BAD_ARGUMENT",
        `${where}: expected [name, tensor] pairs (e.g. model.namedParameters()), got ${describe(pair)}`,
      );
  }
  return pairs;
}

/** A short description of a bad argument (a tensor's JSON is its whole buffer: megabytes in an error message). */
function describe(x: unknown): string {
  if (x === null || typeof x !== "object") return String(x);
  const name = x.constructor?.name ?? "object";
  if (Array.isArray(x)) return `an array of ${x.length}`;
  const shape = (x as { shape?: unknown }).shape;
  return Array.isArray(shape) ? `a ${name} of shape [${shape.join(", ")}]` : `a ${name}`;
}

function isGroupSpec(x: unknown): x is ParamGroupSpec<unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x) && "params" in x;
}

export abstract class Optimizer<H extends BaseHyper> {
  readonly paramGroups: ParamGroup<H>[] = [];
  readonly bits: 8 | 32;
  readonly paged: boolean;
  readonly minEightBitSize: number;
  private readonly params = new Map<string, Tensor>();
  private readonly state = new Map<string, ParamState>();
  private readonly qmaps = new Map<Backend, { signed: Buffer; unsigned: Buffer }>();

  /** The name written into state dicts ("AdamW", "Lion", "SGD"). */
  abstract readonly kind: string;

  constructor(
    params: NamedParameters | readonly ParamGroupSpec<H>[],
    defaults: H,
    options: StateOptions,
    /** Keys of H a group may override (validated); the rest of a group spec is rejected. */
    private readonly hyperKeys: readonly (keyof H & string)[],
  ) {
    this.bits = options.bits ?? 32;
    if (this.bits !== 8 && this.bits !== 32)
      throw new OptimError("BAD_ARGUMENT", `options.bits: expected 8 or 32, got ${options.bits}`);
    this.paged = options.paged ?? false;
    this.minEightBitSize = options.minEightBitSize ?? MIN_8BIT_SIZE;
    if (!Number.isInteger(this.minEightBitSize) || this.minEightBitSize < 0)
      throw new OptimError(
        "BAD_ARGUMENT",
        `options.minEightBitSize: expected a non-negative integer, got ${options.minEightBitSize}`,
      );
    const specs: ParamGroupSpec<H>[] =
      Array.isArray(params) && params.length > 0 && params.every(isGroupSpec)
        ? [...(params as readonly ParamGroupSpec<H>[])]
        : [{ params: params as NamedParameters } as ParamGroupSpec<H>];
    const owner = new Map<Tensor, string>();
    specs.forEach((spec, gi) => {
      const where = specs.length > 1 ? `paramGroups[${gi}]` : "params";
      const names: string[] = [];
      for (const [name, p] of toPairs(spec.params, specs.length > 1 ? `${where}.params` : "params")) {
        this.checkParam(name, p, where, owner);
        names.push(name);
        this.params.set(name, p);
        owner.set(p, name);
      }
      const hyper = { ...defaults } as H;
      for (const [k, v] of Object.entries(spec)) {
        if (k === "params") continue;
        if (!(this.hyperKeys as readonly string[]).includes(k))
          throw new OptimError(
            "BAD_ARGUMENT",
            `${where}.${k}: not a hyperparameter of ${this.constructor.name} (expected one of ${this.hyperKeys.join(", ")})`,
          );
        (hyper as Record<string, unknown>)[k] = v;
      }
      this.validateHyper(hyper, where);
      this.paramGroups.push({ ...hyper, names });
    });
  }

  private checkParam(name: string, p: Tensor, where: string, owner: Map<Tensor, string>): void {
    if (this.params.has(name))
      throw new OptimError("DUPLICATE_PARAM", `${where}: parameter name "${name}" appears twice`);
    const other = owner.get(p);
    if (other !== undefined)
      throw new OptimError("DUPLICATE_PARAM", `${where}: "${name}" is the same tensor as "${other}"`);
    if (p.dtype !== "f32" || !p.isDense())
      throw new OptimError(
        "BAD_PARAM",
        `${where}: parameter "${name}" must be a dense f32 tensor, got ${p.dtype} ${JSON.stringify(p.shape)}${p.isDense() ? "" : " (a view)"}${p.requiresGrad ? "" : "; it does not require gradients: pass only the trainable parameters (filter namedParameters() by requiresGrad)"}`,
      );
  }

  /** Throws OptimError naming the field when a hyperparameter is out of range. */
  protected validateHyper(h: H, where: string): void {
    const check = (key: string, ok: (v: number) => boolean, expected: string) => {
      const v = (h as unknown as Record<string, unknown>)[key];
      if (typeof v !== "number" || !ok(v))
        throw new OptimError("BAD_ARGUMENT", `${where}.${key}: expected ${expected}, got ${JSON.stringify(v)}`);
    };
    check("lr", (v) => Number.isFinite(v) && v >= 0, "a finite learning rate ≥ 0");
    check("weightDecay", (v) => Number.isFinite(v) && v >= 0, "a finite weight decay ≥ 0");
  }

  /** The buffers a parameter of `numel` elements needs, by state width. */
  protected abstract stateLayout(numel: number, bits: 8 | 32): StateLayout;
  /** Runs this optimizer's update op on one parameter (step already incremented). */
  protected abstract update(
    k: OptimizerKernels,
    p: Tensor,
    grad: Buffer,
    s: ParamState,
    qmaps: { signed: Buffer; unsigned: Buffer },
    group: ParamGroup<H>,
  ): void;
  /** Whether this optimizer has an 8-bit form at all (SGD: no). */
  protected get has8bit(): boolean {
    return true;
  }

  /** The parameter registered under `name`. */
  param(name: string): Tensor {
    const p = this.params.get(name);
    if (!p) throw new OptimError("BAD_ARGUMENT", `no parameter named "${name}" in this optimizer`);
    return p;
  }

  /** Names of all parameters, group by group. */
  get names(): string[] {
    return this.paramGroups.flatMap((g) => [...g.names]);
  }

  /** A parameter's state (undefined before its first update): step, width, paging and buffers. */
  stateOf(name: string): Readonly<ParamState> | undefined {
    return this.state.get(name);
  }

  /** Bytes held by optimizer state (all parameters, all buffers; the shared 8-bit maps not counted). */
  stateBytes(): number {
    let bytes = 0;
    for (const s of this.state.values())
      for (const b of Object.values(s.buffers)) bytes += b.length * dtypeBytes(b.dtype);
    return bytes;
  }

  /** 8-bit for this parameter? (an 8-bit optimizer, and at least minEightBitSize elements) */
  private widthFor(numel: number): 8 | 32 {
    return this.bits === 8 && this.has8bit && numel >= this.minEightBitSize ? 8 : 32;
  }

  private allocate(p: Tensor, bits: 8 | 32): ParamState {
    const be = p.backend;
    const paged = this.paged && p.size >= PAGED_MIN_ELEMENTS;
    const buffers: Record<string, Buffer> = {};
    for (const [key, { dtype, length }] of Object.entries(this.stateLayout(p.size, bits))) {
      // Only the per-element states are paged (bitsandbytes: absmax and maps stay ordinary device memory).
      const perElement = length === p.size;
      buffers[key] = paged && perElement && be.allocState ? be.allocState(dtype, length) : be.alloc(dtype, length);
    }
    return { step: 0, bits, paged, buffers };
  }

  private qmapsFor(be: Backend): { signed: Buffer; unsigned: Buffer } {
    let q = this.qmaps.get(be);
    if (!q) {
      q = { signed: be.fromHost(DYNAMIC_MAP_SIGNED, "f32"), unsigned: be.fromHost(DYNAMIC_MAP_UNSIGNED, "f32") };
      this.qmaps.set(be, q);
    }
    return q;
  }

  /** One update of every parameter that has a gradient, in place (parameters without one are skipped). */
  step(): void {
    for (const group of this.paramGroups) {
      for (const name of group.names) {
        const p = this.params.get(name)!;
        const grad = p.grad;
        if (!grad) continue;
        if (grad.size !== p.size || grad.backend !== p.backend)
          throw new OptimError(
            "BAD_PARAM",
            `parameter "${name}": gradient ${JSON.stringify(grad.shape)} on ${grad.backend.name} does not match the parameter ${JSON.stringify(p.shape)} on ${p.backend.name}`,
          );
        let s = this.state.get(name);
        if (!s) {
          s = this.allocate(p, this.widthFor(p.size));
          this.state.set(name, s);
        }
        const dense = grad.dtype === "f32" && grad.isDense() ? grad : grad.cast("f32").contiguous();
        try {
          s.step++;
          this.update(kernelsFor(p.backend), p, dense.buffer, s, this.qmapsFor(p.backend), group);
        } finally {
          if (dense !== grad) dense.dispose();
        }
      }
    }
  }

  /** Drops every gradient (set to null, storage released). */
  zeroGrad(): void {
    for (const p of this.params.values()) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  /** Host copies of all state plus group hyperparameters. */
  stateDict(): OptimizerStateDict {
    const state: Record<string, OptimizerStateDict["state"][string]> = {};
    for (const name of this.names) {
      const s = this.state.get(name);
      if (!s) continue;
      const be = this.params.get(name)!.backend;
      const tensors: Record<string, { dtype: DType; data: HostArray }> = {};
      for (const [key, b] of Object.entries(s.buffers)) tensors[key] = { dtype: b.dtype, data: be.toHost(b) };
      state[name] = { step: s.step, bits: s.bits, tensors };
    }
    return {
      format: STATE_FORMAT,
      optimizer: this.kind,
      options: { bits: this.bits, paged: this.paged, minEightBitSize: this.minEightBitSize },
      paramGroups: this.paramGroups.map(({ names, ...hyper }) => ({ names: [...names], hyper: { ...hyper } })),
      state,
    };
  }

  /**
   * Restores state saved by stateDict()/save(), matching parameters by name. Group hyperparameters are
   * restored group by group (the groups must hold the same names). Every parameter with saved state must
   * exist here; with `strict` (default) every saved group and buffer must match exactly.
   */
  loadStateDict(sd: OptimizerStateDict, options: { strict?: boolean } = {}): void {
    const strict = options.strict ?? true;
    const mismatch = (what: string) => new OptimError("STATE_MISMATCH", sd.source ? `${sd.source}: ${what}` : what);
    if (sd.format !== STATE_FORMAT) throw mismatch(`state dict format: expected "${STATE_FORMAT}", got "${sd.format}"`);
    if (sd.optimizer !== this.kind)
      throw mismatch(`state dict was saved by ${sd.optimizer}, this optimizer is ${this.kind}`);
    if (strict && sd.paramGroups.length !== this.paramGroups.length)
      throw mismatch(
        `state dict has ${sd.paramGroups.length} parameter groups, this optimizer ${this.paramGroups.length} (groups come from how the optimizer is built: LoRA+ makes two); build it as the saved run did`,
      );
    // Validate everything before touching any state, so a failed load leaves the optimizer as it was.
    const restored = new Map<string, ParamState>();
    for (const [name, saved] of Object.entries(sd.state)) {
      const p = this.params.get(name);
      if (!p) throw mismatch(`state dict has state for "${name}", which is not a parameter of this optimizer`);
      if (!Number.isInteger(saved.step) || saved.step < 0)
        throw mismatch(`state of "${name}": step must be a non-negative integer`);
      if (saved.bits !== this.widthFor(p.size))
        throw mismatch(
          `state of "${name}" is ${saved.bits}-bit, this optimizer keeps ${this.widthFor(p.size)}-bit state for it`,
        );
      const layout = this.stateLayout(p.size, saved.bits);
      for (const key of Object.keys(saved.tensors))
        if (!(key in layout)) throw mismatch(`state of "${name}": unexpected buffer "${key}"`);
      for (const [key, want] of Object.entries(layout)) {
        const t = saved.tensors[key];
        const arrayOk = want.dtype === "u8" ? t?.data instanceof Uint8Array : t?.data instanceof Float32Array;
        if (!t || t.dtype !== want.dtype || !arrayOk || t.data.length !== want.length)
          throw mismatch(
            `state of "${name}".${key}: expected ${want.dtype}[${want.length}], got ${t ? `${t.dtype}[${t.data.length}]` : "nothing"}`,
          );
      }
      restored.set(name, { step: saved.step, bits: saved.bits, paged: false, buffers: {} });
    }
    sd.paramGroups.forEach((g, i) => {
      const mine = this.paramGroups[i];
      if (!mine) return;
      const same = g.names.length === mine.names.length && g.names.every((n, j) => n === mine.names[j]);
      if (!same && strict) throw mismatch(`paramGroups[${i}]: saved names differ from this optimizer's group`);
      const hyper = { ...mine } as H & { names?: unknown };
      for (const k of this.hyperKeys) if (k in g.hyper) (hyper as Record<string, unknown>)[k] = g.hyper[k];
      this.validateHyper(hyper, `state dict paramGroups[${i}]`);
    });
    // Commit.
    for (const [name, r] of restored) {
      const p = this.params.get(name)!;
      this.freeState(name);
      const s = this.allocate(p, r.bits);
      s.step = r.step;
      for (const [key, b] of Object.entries(s.buffers)) {
        const src = p.backend.fromHost(sd.state[name].tensors[key].data, b.dtype);
        if (p.backend.copyInPlace) {
          // Copy into the (possibly paged) allocation rather than keeping fromHost's ordinary buffer.
          p.backend.copyInPlace(b, flat(b.length), src, flat(b.length));
          p.backend.free(src);
        } else {
          p.backend.free(b);
          s.buffers[key] = src;
        }
      }
      this.state.set(name, s);
    }
    sd.paramGroups.forEach((g, i) => {
      const mine = this.paramGroups[i];
      if (!mine) return;
      for (const k of this.hyperKeys) if (k in g.hyper) (mine as unknown as Record<string, unknown>)[k] = g.hyper[k];
    });
  }

  /** Writes optimizer.safetensors and optimizer.json into `dir` (created if missing; each file atomically). */
  save(dir: string): Promise<void> {
    return saveStateDict(this.stateDict(), dir);
  }

  /** Reads a state written by save() and restores it (see loadStateDict for the matching rules). */
  async load(dir: string, options: { strict?: boolean } = {}): Promise<void> {
    this.loadStateDict(await loadStateDict(dir), options);
  }

  private freeState(name: string): void {
    const s = this.state.get(name);
    if (!s) return;
    const be = this.params.get(name)!.backend;
    for (const b of Object.values(s.buffers)) be.free(b);
    this.state.delete(name);
  }

  /** Frees all state buffers and the 8-bit maps; the optimizer is empty afterwards. */
  dispose(): void {
    for (const name of [...this.state.keys()]) this.freeState(name);
    for (const [be, q] of this.qmaps) {
      be.free(q.signed);
      be.free(q.unsigned);
    }
    this.qmaps.clear();
  }
}

function flat(length: number) {
  return { shape: [length], strides: [1], offset: 0 };
}
