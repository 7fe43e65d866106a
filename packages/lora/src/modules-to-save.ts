/**
 * modules_to_save: PEFT's ModulesToSaveWrapper keeps the original module and one fully trainable copy per
 * adapter (in-memory names `<path>.original_module.*` and `<path>.modules_to_save.<adapter>.*`); forward
 * runs the active adapter's copy.
 */
import { Linear4bit, Module, Tensor, keep, noGrad } from "@qlora/tensor";
import { LoraError } from "./errors";
import { ModuleDict } from "./layer";

type Forwardable = Module & { forward(...args: unknown[]): unknown };

/** A deep copy of a module tree with fresh parameter/buffer storage (copy.deepcopy for Modules). */
export function cloneModule<M extends Module>(m: M, path = "module"): M {
  const memo = new Map<unknown, unknown>();
  const walk = (v: unknown): unknown => {
    if (v === null || typeof v !== "object") return v;
    if (memo.has(v)) return memo.get(v);
    if (v instanceof Tensor) {
      const c = keep(noGrad(() => v.detach().clone()));
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

export class ModulesToSaveWrapper extends Module {
  activeAdapter: string | null = null;
  adaptersDisabled = false;

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
  addAdapter(name: string, path: string): void {
    if (this.copies.has(name))
      throw new LoraError("BAD_ADAPTER", `modules_to_save "${path}" already has adapter "${name}"`);
    this.copies.set(name, cloneModule(this.originalModule, path));
    if (this.activeAdapter === null) this.activeAdapter = name;
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
