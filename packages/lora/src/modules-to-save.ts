/**
 * modules_to_save: PEFT's ModulesToSaveWrapper keeps the original module and one fully trainable copy per
 * adapter (in-memory names `<path>.original_module.*` and `<path>.modules_to_save.<adapter>.*`); forward
 * runs the active adapter's copy. The copy's floating-point tensors are f32 (master weights: the optimizers
 * update f32 only, as transformers trains a bf16 checkpoint's trainable weights in f32 without mixed
 * precision). A tied output head (a module with a `weight` but no parameter of its own: lm_head with
 * tie_word_embeddings) gets an untied Linear copy initialised from the shared matrix, which is what PEFT's
 * deepcopy of a tied nn.Linear gives (ensure_weight_tying false). A wrapped embedding hands a head tied to it the
 * active copy (the tie kept: ensure_weight_tying true), or with `tiedHeadsReadBase` the base matrix, as a
 * transformers head holding the original Parameter keeps it under PEFT without ensure_weight_tying.
 */
import { Linear, Linear4bit, Module, Tensor, keep, noGrad } from "@qlora/tensor";
import { LoraError } from "./errors";
import { ModuleDict } from "./layer";

type Forwardable = Module & { forward(...args: unknown[]): unknown };

/** f32 copy of a bf16/f16 tensor, a plain clone otherwise (grad-free, owned by the caller). */
function copyTensor(v: Tensor, upcast: boolean): Tensor {
  return noGrad(() => {
    const d = v.detach();
    return upcast && (v.dtype === "bf16" || v.dtype === "f16") ? d.cast("f32") : d.clone();
  });
}

/**
 * A deep copy of a module tree with fresh parameter/buffer storage (copy.deepcopy for Modules). With
 * `upcast`, bf16/f16 tensors become f32 (trainable master weights).
 */
export function cloneModule<M extends Module>(m: M, path = "module", options: { upcast?: boolean } = {}): M {
  const memo = new Map<unknown, unknown>();
  const walk = (v: unknown): unknown => {
    if (v === null || typeof v !== "object") return v;
    if (memo.has(v)) return memo.get(v);
    if (v instanceof Tensor) {
      const c = keep(copyTensor(v, options.upcast ?? false));
      if (v.requiresGrad) c.requiresGrad = true;
      memo.set(v, c);
      return c;
    }
    if (v instanceof Linear4bit)
      throw new LoraError(
        "BAD_MODULE",
        `modules_to_save: "${path}" is a 4-bit layer; a quantized module cannot be trained in full`,
      );
    if (v instanceof Map) {
      const c = new Map();
      memo.set(v, c);
      for (const [k, x] of v) c.set(k, walk(x));
      return c;
    }
    if (v instanceof Module) {
      const c = Object.create(Object.getPrototypeOf(v)) as Record<string, unknown>;
      memo.set(v, c);
      for (const k of Object.keys(v)) c[k] = walk((v as unknown as Record<string, unknown>)[k]);
      return c;
    }
    return v; // backends, generators, plain settings: shared
  };
  return walk(m) as M;
}

/** The shared 2-D weight of a module that has a `weight` but no parameter of its own (a tied lm_head), or null. */
export function tiedWeight(m: Module): Tensor | null {
  if ([...m.namedParameters()].length > 0) return null;
  let w: unknown;
  try {
    w = (m as { weight?: unknown }).weight;
  } catch {
    return null;
  }
  return w instanceof Tensor && w.shape.length === 2 ? w : null;
}

export class ModulesToSaveWrapper extends Module {
  activeAdapter: string | null = null;
  adaptersDisabled = false;
  /** A head tied to this module reads the original's weight, not the active copy's (ensure_weight_tying false). */
  tiedHeadsReadBase = false;

  constructor(original: Module) {
    super();
    if (typeof (original as Forwardable).forward !== "function")
      throw new LoraError("BAD_MODULE", `modules_to_save: ${original.constructor.name} has no forward()`);
    this.registerModule("original_module", original);
    this.registerModule("modules_to_save", new ModuleDict());
  }
  get originalModule(): Module {
    return this.child("original_module");
  }
  get copies(): ModuleDict {
    return this.child("modules_to_save");
  }
  /**
   * Add adapter `name`'s trainable copy (f32). Returns "untied" when the original is a tied head whose copy
   * is a separate Linear (the caller says so: the tie no longer holds for this adapter).
   */
  addAdapter(name: string, path: string): "copied" | "untied" {
    if (this.copies.has(name))
      throw new LoraError("BAD_ADAPTER", `modules_to_save "${path}" already has adapter "${name}"`);
    const tied = tiedWeight(this.originalModule);
    if (tied) {
      const [out, inF] = tied.shape;
      const w = keep(copyTensor(tied, true));
      this.copies.set(name, new Linear(inF, out, { bias: false, init: { weight: w } }));
    } else this.copies.set(name, cloneModule(this.originalModule, path, { upcast: true }));
    if (this.activeAdapter === null) this.activeAdapter = name;
    return tied ? "untied" : "copied";
  }
  /**
   * The weight of the module forward runs (PEFT's ModulesToSaveWrapper.weight), which a tied output head reads when
   * the embedding it is tied to is wrapped; the original's with `tiedHeadsReadBase`.
   */
  get weight(): Tensor | undefined {
    const w = ((this.tiedHeadsReadBase ? this.originalModule : this.current()) as { weight?: unknown }).weight;
    return w instanceof Tensor ? w : undefined;
  }
  deleteAdapter(name: string): void {
    if (!this.copies.has(name)) return;
    const gone = this.copies.get(name);
    this.setSubmodule("modules_to_save", this.copies.without(name));
    gone.dispose();
    if (this.activeAdapter === name) this.activeAdapter = this.copies.keys()[0] ?? null;
  }
  /** The module forward runs: the active adapter's copy, or the original when disabled / none. */
  current(): Module {
    if (this.adaptersDisabled || this.activeAdapter === null || !this.copies.has(this.activeAdapter))
      return this.originalModule;
    return this.copies.get(this.activeAdapter);
  }
  forward(...args: unknown[]): unknown {
    return (this.current() as Forwardable).forward(...args);
  }
}
