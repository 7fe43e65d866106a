/**
 * Module: named parameters, buffers and children; train/eval; stateDict with PyTorch's dotted names.
 * Parameters and buffers are owned by the module (kept out of tidy scopes; `dispose()` frees them).
 */
import { copyInPlace } from "../ops";
import { TensorError } from "../errors";
import { keep, type Tensor } from "../tensor";

export interface LoadResult {
  readonly missingKeys: string[];
  readonly unexpectedKeys: string[];
}

export class Module {
  training = true;
  private readonly _parameters = new Map<string, Tensor | null>();
  private readonly _buffers = new Map<string, Tensor | null>();
  private readonly _modules = new Map<string, Module>();

  /** Register (or replace) a parameter; it requires grad unless `requiresGrad` is false. */
  registerParameter(name: string, t: Tensor | null, requiresGrad = true): Tensor | null {
    checkName(name);
    const old = this._parameters.get(name);
    if (old && old !== t) old.dispose();
    if (t) {
      keep(t);
      if (t.requiresGrad !== requiresGrad) t.requiresGrad = requiresGrad;
    }
    this._parameters.set(name, t);
    return t;
  }
  registerBuffer(name: string, t: Tensor | null): Tensor | null {
    checkName(name);
    const old = this._buffers.get(name);
    if (old && old !== t) old.dispose();
    if (t) keep(t);
    this._buffers.set(name, t);
    return t;
  }
  registerModule<M extends Module>(name: string, m: M): M {
    checkName(name);
    this._modules.set(name, m);
    return m;
  }

  *namedChildren(): Iterable<[string, Module]> {
    yield* this._modules;
  }

  /**
   * The registered child called `name`. Forward passes read children through this (not through a field
   * captured at construction), so replacing a child with `setSubmodule` (LoRA injection) takes effect.
   */
  child<M extends Module = Module>(name: string): M {
    const m = this._modules.get(name);
    if (!m) throw new TensorError("NO_SUBMODULE", `${this.constructor.name} has no child "${name}"`);
    return m as M;
  }

  /** The module at a dotted path ("model.layers.0.self_attn.q_proj"); "" is this module. */
  getSubmodule<M extends Module = Module>(path: string): M {
    let m: Module = this;
    if (path === "") return m as M;
    const parts = path.split(".");
    for (let i = 0; i < parts.length; i++) {
      const next = m._modules.get(parts[i]);
      if (!next)
        throw new TensorError(
          "NO_SUBMODULE",
          `getSubmodule("${path}"): "${parts.slice(0, i).join(".") || "<root>"}" has no child "${parts[i]}"`,
        );
      m = next;
    }
    return m as M;
  }

  /** Replace the module at a dotted path (its parent must exist; the old child is returned, not disposed). */
  setSubmodule(path: string, module: Module): Module {
    const dot = path.lastIndexOf(".");
    const parent = this.getSubmodule(dot < 0 ? "" : path.slice(0, dot));
    const name = path.slice(dot + 1);
    const old = parent._modules.get(name);
    if (!old) throw new TensorError("NO_SUBMODULE", `setSubmodule("${path}"): no module to replace at that path`);
    parent._modules.set(name, module);
    return old;
  }
  *namedModules(prefix = ""): Iterable<[string, Module]> {
    yield [prefix, this];
    for (const [n, m] of this._modules) yield* m.namedModules(prefix ? `${prefix}.${n}` : n);
  }
  *namedParameters(prefix = ""): Iterable<[string, Tensor]> {
    for (const [n, p] of this._parameters) if (p) yield [prefix ? `${prefix}.${n}` : n, p];
    for (const [n, m] of this._modules) yield* m.namedParameters(prefix ? `${prefix}.${n}` : n);
  }
  parameters(): Tensor[] {
    return [...this.namedParameters()].map(([, p]) => p);
  }
  *namedBuffers(prefix = ""): Iterable<[string, Tensor]> {
    for (const [n, b] of this._buffers) if (b) yield [prefix ? `${prefix}.${n}` : n, b];
    for (const [n, m] of this._modules) yield* m.namedBuffers(prefix ? `${prefix}.${n}` : n);
  }

  train(mode = true): this {
    for (const [, m] of this.namedModules()) m.training = mode;
    return this;
  }
  eval(): this {
    return this.train(false);
  }

  /** Hook for modules whose state is not plain tensors (Linear4bit's packed weight). */
  protected saveExtraState(_prefix: string, _out: Record<string, Tensor>): void {}
  /** Load what saveExtraState wrote; add the keys used to `used`. */
  protected loadExtraState(
    _prefix: string,
    _sd: Record<string, Tensor>,
    _used: Set<string>,
    _missing: string[],
  ): void {}

  /**
   * name → Tensor (parameters, then buffers, recursively; dotted names as in PyTorch). The contract, for
   * every module (Linear4bit's packed 4-bit state included): the tensors are the module's own, not copies;
   * every call returns the same tensor objects while the state is unchanged; they stay valid until the
   * module replaces them (loadStateDict) or is disposed; callers never dispose them, and a call allocates
   * no tensor memory.
   */
  stateDict(): Record<string, Tensor> {
    const out: Record<string, Tensor> = {};
    for (const [name, m] of this.namedModules()) {
      const pre = name ? `${name}.` : "";
      for (const [n, p] of m._parameters) if (p) out[pre + n] = p;
      for (const [n, b] of m._buffers) if (b) out[pre + n] = b;
      m.saveExtraState(pre, out);
    }
    return out;
  }

  /** Copy values in place (cast and moved as needed). strict (default): missing or unexpected keys throw. */
  loadStateDict(sd: Record<string, Tensor>, options: { strict?: boolean } = {}): LoadResult {
    const used = new Set<string>();
    const missing: string[] = [];
    for (const [name, m] of this.namedModules()) {
      const pre = name ? `${name}.` : "";
      for (const map of [m._parameters, m._buffers]) {
        for (const [n, own] of map) {
          if (!own) continue;
          const key = pre + n;
          const src = sd[key];
          if (!src) {
            missing.push(key);
            continue;
          }
          used.add(key);
          if (src.shape.join() !== own.shape.join())
            throw new TensorError(
              "STATE_SHAPE",
              `loadStateDict: "${key}" has shape ${JSON.stringify(src.shape)}, the module expects ${JSON.stringify(own.shape)}`,
            );
          const moved = src.device === own.device ? src._alias() : src.toDevice(own.device);
          copyInPlace(own.backend, own.buffer, own.stridedView, moved.buffer, moved.stridedView);
          moved.dispose();
        }
      }
      m.loadExtraState(pre, sd, used, missing);
    }
    const unexpected = Object.keys(sd).filter((k) => !used.has(k));
    if ((options.strict ?? true) && (missing.length || unexpected.length)) {
      throw new TensorError(
        "STATE_KEYS",
        `loadStateDict: missing keys [${missing.join(", ")}], unexpected keys [${unexpected.join(", ")}]`,
      );
    }
    return { missingKeys: missing, unexpectedKeys: unexpected };
  }

  /** Drop every parameter's .grad. */
  zeroGrad(): void {
    for (const p of this.parameters()) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  /** Free parameters, buffers and grads, recursively. */
  dispose(): void {
    for (const [, m] of this.namedModules()) {
      for (const p of m._parameters.values()) {
        p?.grad?.dispose();
        p?.dispose();
      }
      for (const b of m._buffers.values()) b?.dispose();
      m.disposeExtra();
    }
  }
  protected disposeExtra(): void {}
}

function checkName(name: string): void {
  if (!name || name.includes("."))
    throw new TensorError("BAD_NAME", `module member name "${name}" must be non-empty and contain no "."`);
}
