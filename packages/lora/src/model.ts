/**
 * LoraModel: inject adapters into any Module tree over Linear / Linear4bit (PEFT's inject_adapter), with
 * several named adapters (add / set / disable / delete), merge / unmerge, mergeAndUnload and unload, and the
 * adapter's state dict under PEFT's keys (`base_model.model.<module>.lora_A.weight`, ...).
 */
import { Embedding, type Generator, Linear, Linear4bit, type Module, type Tensor, getGenerator } from "@qlora/tensor";
import { type LoraConfig, type LoraConfigInput, loraConfig } from "./config";
import { LoraError } from "./errors";
import { type LoraLinear as LoraLinearT, LoraLinear, type MergeReport } from "./layer";
import { isTargeted, loraScaling, rankAndAlpha, resolveTargetModules } from "./match";
import { ModulesToSaveWrapper, tiedWeight } from "./modules-to-save";

export const PEFT_PREFIX = "base_model.model.";

export interface InjectOptions {
  /** Default "default" (saved at the top of an adapter directory; others go to sub-folders). */
  readonly adapterName?: string;
  /** Random draws for A (and B with init false); default the global Philox generator. */
  readonly generator?: Generator;
  /** Excluded from "all-linear" (the output head); default "lm_head", null for none. */
  readonly outputHead?: string | null;
  /** For target_modules null: the architecture's default targets (e.g. "llama"). */
  readonly modelType?: string;
  /** Lossy-operation warnings (re-quantization). Default console.warn. */
  readonly onWarning?: (message: string) => void;
}

function isLinear(m: Module): m is Linear | Linear4bit {
  return m instanceof Linear || m instanceof Linear4bit;
}

/** Module names that live inside an adapter wrapper (never targets themselves). */
function insideWrapper(name: string, wrappers: readonly string[]): boolean {
  return wrappers.some((w) => name.startsWith(`${w}.`));
}

function matchesModuleToSave(list: readonly string[] | null, key: string): boolean {
  return !!list && list.some((n) => key === n || key.endsWith(`.${n}`));
}

/**
 * The config as PEFT records it after keeping a tie (its modules_to_tie): a listed head is saved as the embedding it
 * reads, so modules_to_save names the embedding (listed once).
 */
function withTiedNames(config: LoraConfig, retied: ReadonlyMap<string, string>): LoraConfig {
  const renamed = (n: string) => {
    for (const [key, source] of retied) if (key === n || key.endsWith(`.${n}`)) return source.split(".").at(-1)!;
    return n;
  };
  const list = [...new Set((config.modules_to_save ?? []).map(renamed))];
  return Object.freeze({ ...config, modules_to_save: list });
}

/** Why `m` cannot take a LoRA adapter, in the user's terms (a tied head, an embedding, another module). */
function unsupportedTarget(key: string, m: Module): LoraError {
  const what =
    tiedWeight(m) !== null
      ? "is tied to the input embedding (tie_word_embeddings), and LoRA on a tied head is not supported"
      : m instanceof Embedding
        ? "is an embedding, and LoRA on embeddings (PEFT's lora_embedding_A/B) is not supported"
        : `(${m.constructor.name}) is not supported`;
  return new LoraError(
    "BAD_MODULE",
    `target module "${key}" ${what}; only Linear and Linear4bit layers can get LoRA adapters (list "${key.split(".").at(-1)}" in modules_to_save to train it in full)`,
  );
}

/** The module's own `weight` parameter (a wrapped module's original one), or null. */
function ownWeight(m: Module): Tensor | null {
  const base = m instanceof ModulesToSaveWrapper ? m.originalModule : m;
  return [...base.namedParameters()].find(([n]) => n === "weight")?.[1] ?? null;
}

/** Names of the heads tied to `m`'s weight (modules with a `weight` of `m`'s and no parameter of their own). */
function headsTiedTo(modules: readonly [string, Module][], m: Module): string[] {
  const own = ownWeight(m);
  if (own === null) return [];
  const seen = [own, ...(m instanceof ModulesToSaveWrapper && m.weight ? [m.weight] : [])];
  return modules.filter(([, h]) => h !== m && seen.includes(tiedWeight(h) as Tensor)).map(([n]) => n);
}

/** The module whose own weight a tied head reads (the input embedding of an lm_head), or null. */
function tieSource(modules: readonly [string, Module][], head: Module): [string, Module] | null {
  const w = tiedWeight(head);
  if (w === null) return null;
  return (
    modules.find(
      ([, m]) => m !== head && (ownWeight(m) === w || (m instanceof ModulesToSaveWrapper && m.weight === w)),
    ) ?? null
  );
}

/** `M` is the wrapped model's type (a CausalLM from @qlora/models, say): `model`, mergeAndUnload and unload keep it. */
export class LoraModel<M extends Module = Module> {
  readonly configs = new Map<string, LoraConfig>();
  private active: string[] = [];
  private disabled = false;
  private readonly onWarning: (message: string) => void;

  private constructor(
    readonly model: M,
    options: InjectOptions,
  ) {
    this.onWarning = options.onWarning ?? ((m) => console.warn(m));
  }

  /** get_peft_model: inject the first adapter into `model` (modified in place) and freeze all but it. */
  static inject<M extends Module>(
    model: M,
    config: LoraConfig | LoraConfigInput,
    options: InjectOptions = {},
  ): LoraModel<M> {
    const lm = new LoraModel(model, options);
    lm.addAdapter(options.adapterName ?? "default", config, options);
    return lm;
  }

  get activeAdapters(): readonly string[] {
    return this.active;
  }
  get adapterNames(): string[] {
    return [...this.configs.keys()];
  }

  /** [dotted name, layer] of every LoRA layer. */
  loraLayers(): [string, LoraLinearT][] {
    return [...this.model.namedModules()].filter((e): e is [string, LoraLinearT] => e[1] instanceof LoraLinear);
  }
  private wrappers(): [string, ModulesToSaveWrapper][] {
    return [...this.model.namedModules()].filter(
      (e): e is [string, ModulesToSaveWrapper] => e[1] instanceof ModulesToSaveWrapper,
    );
  }

  addAdapter(name: string, configInput: LoraConfig | LoraConfigInput, options: InjectOptions = {}): void {
    const config = loraConfig(configInput);
    if (this.configs.has(name)) throw new LoraError("BAD_ADAPTER", `adapter "${name}" already exists`);
    if (!name || name.includes("."))
      throw new LoraError("BAD_ADAPTER", `adapter name "${name}" must be non-empty and contain no "."`);
    const biasUsers = [...this.configs.values(), config].filter((c) => c.bias !== "none");
    if (this.configs.size > 0 && biasUsers.length > 0)
      throw new LoraError(
        "BAD_CONFIG",
        `LoraConfig.bias: only one adapter may train biases; with several adapters set bias to "none" for all (adapter "${name}")`,
      );
    const all = [...this.model.namedModules()];
    const wrapperNames = all
      .filter(([, m]) => m instanceof LoraLinear || m instanceof ModulesToSaveWrapper)
      .map(([n]) => n);
    const candidates = all.filter(([n]) => n !== "" && !insideWrapper(n, wrapperNames));
    const linearNames = candidates.filter(([, m]) => isLinear(m) || m instanceof LoraLinear).map(([n]) => n);
    const target = resolveTargetModules(config, linearNames, options);
    if (config.fan_in_fan_out)
      // PEFT's rule for nn.Linear targets: weights here are always [out, in]
      this.onWarning(
        `LoraConfig.fan_in_fan_out is true but the targets are Linear layers ([out, in]); setting it to false`,
      );
    const resolved: LoraConfig = Object.freeze({ ...config, target_modules: target, fan_in_fan_out: false });
    const gen = options.generator ?? getGenerator();
    // plan first, so that a rejected target leaves the model untouched
    const toSave: [string, Module][] = [];
    const targets: [string, Module, { r: number; alpha: number }][] = [];
    for (const [key, m] of candidates) {
      if (matchesModuleToSave(resolved.modules_to_save, key)) toSave.push([key, m]);
      else if (isTargeted(resolved, key)) {
        if (!(m instanceof LoraLinear) && !isLinear(m)) throw unsupportedTarget(key, m);
        const ra = rankAndAlpha(resolved, key);
        const l = m as LoraLinearT | Linear | Linear4bit;
        const dataInit = typeof resolved.init_lora_weights === "string" && resolved.init_lora_weights !== "gaussian";
        if (dataInit && ra.r > Math.min(l.inFeatures, l.outFeatures))
          throw new LoraError(
            "BAD_CONFIG",
            `LoraConfig.r: ${ra.r} for "${key}" exceeds min(in, out) = ${Math.min(l.inFeatures, l.outFeatures)}, which init_lora_weights=${JSON.stringify(resolved.init_lora_weights)} needs`,
          );
        targets.push([key, m, ra]);
      }
    }
    for (const n of resolved.modules_to_save ?? [])
      if (!toSave.some(([key]) => key === n || key.endsWith(`.${n}`)))
        this.onWarning(
          `LoraConfig.modules_to_save: "${n}" matches no module of the model; nothing is trained or saved for it (adapter "${name}")`,
        );
    const retied = new Map<string, string>();
    const readBase = this.resolveTies(toSave, candidates, resolved, name, retied);
    if (targets.length === 0)
      throw new LoraError(
        "NO_TARGET",
        `LoraConfig.target_modules: ${JSON.stringify(config.target_modules)} matched no Linear/Linear4bit module of the model (adapter "${name}")`,
      );
    const undo: (() => void)[] = [];
    try {
      for (const [key, m] of toSave) {
        const w = m instanceof ModulesToSaveWrapper ? m : new ModulesToSaveWrapper(m);
        if (w !== m) {
          this.model.setSubmodule(key, w);
          undo.push(() => this.model.setSubmodule(key, m));
        }
        if (readBase.has(key)) w.tiedHeadsReadBase = true;
        w.addAdapter(name, key);
        undo.push(() => w.deleteAdapter(name));
      }
      for (const [key, m, { r, alpha }] of targets) {
        let layer: LoraLinearT;
        if (m instanceof LoraLinear) layer = m;
        else {
          layer = new LoraLinear(m as Linear | Linear4bit);
          this.model.setSubmodule(key, layer);
          undo.push(() => this.model.setSubmodule(key, layer.baseLayer));
        }
        layer.onWarning = this.onWarning;
        layer.addAdapter(name, {
          r,
          alpha,
          scaling: loraScaling(alpha, r, resolved.use_rslora),
          dropout: resolved.lora_dropout,
          useDora: resolved.use_dora,
          init: resolved.init_lora_weights,
          generator: gen,
          loftq: resolved.loftq_config,
          onWarning: this.onWarning,
        });
        undo.push(() => layer.deleteAdapter(name));
      }
    } catch (e) {
      for (const u of undo.reverse()) u();
      throw e;
    }
    this.configs.set(name, retied.size ? withTiedNames(resolved, retied) : resolved);
    // the new dropout modules take the model's mode: no LoRA dropout on a model in eval mode until it is trained
    this.model.train(this.model.training);
    if (this.active.length === 0) this.active = [name];
    this.setAdapter(this.active);
  }

  /**
   * PEFT's weight-tying rules for modules_to_save on a model whose output head is tied to its input embedding
   * (PEFT's developer guide, "weight tying"): without ensure_weight_tying the listed module gets its own copy and the
   * other keeps the base matrix; with it, the embedding's copy is the one trained and the head reads it (a listed
   * head is replaced by its embedding in `toSave`). Returns the embeddings whose tied heads keep the base matrix.
   */
  private resolveTies(
    toSave: [string, Module][],
    modules: readonly [string, Module][],
    config: LoraConfig,
    name: string,
    retied: Map<string, string>,
  ): Set<string> {
    const readBase = new Set<string>();
    let tiesKept = 0;
    const ensure = config.ensure_weight_tying;
    const train = !config.inference_mode; // said when a copy is made to be trained, not when an adapter is loaded
    for (let i = 0; i < toSave.length; i++) {
      const [key, m] = toSave[i];
      const source = tieSource(modules, m instanceof ModulesToSaveWrapper ? m.originalModule : m);
      // heads listed themselves get their own copy: only the others keep reading the base matrix
      const heads = source ? [] : headsTiedTo(modules, m).filter((h) => !toSave.some(([k]) => k === h));
      const tied = source !== null || headsTiedTo(modules, m).length > 0;
      if (!tied) continue;
      if (m instanceof ModulesToSaveWrapper && m.copies.keys().length > 0 && !source && m.tiedHeadsReadBase === ensure)
        throw new LoraError(
          "BAD_CONFIG",
          `LoraConfig.ensure_weight_tying: adapter "${name}" says ${ensure} but "${key}" already carries an adapter trained with ${!ensure}; adapters sharing a tied module must agree`,
        );
      if (ensure && source) {
        // the head's tie is kept by training its embedding (PEFT's modules_to_tie)
        toSave.splice(i--, 1);
        retied.set(key, source[0]);
        if (!toSave.some(([k]) => k === source[0])) toSave.push(source);
        tiesKept++;
        if (train)
          this.onWarning(
            `LoraConfig.modules_to_save: "${key}" is tied to "${source[0]}" and ensure_weight_tying is true: adapter "${name}" trains one f32 copy of "${source[0]}" that "${key}" reads too, saved as "${PEFT_PREFIX}${source[0]}.weight"`,
          );
      } else if (ensure) tiesKept++;
      else if (source) {
        if (train)
          this.onWarning(
            `LoraConfig.modules_to_save: "${key}" is tied to the input embedding (tie_word_embeddings); adapter "${name}" trains an untied f32 copy of it, saved as "${PEFT_PREFIX}${key}.weight" (PEFT without ensure_weight_tying), and the base embedding stays as it is. A merged model gets its own ${key}.weight and tie_word_embeddings false. To train one matrix for both, set ensure_weight_tying: true (Axolotl: peft_ensure_weight_tying).`,
          );
      } else {
        readBase.add(key);
        if (train && heads.length > 0)
          this.onWarning(
            `LoraConfig.modules_to_save: "${key}" is tied to ${heads.map((h) => `"${h}"`).join(", ")} (tie_word_embeddings); adapter "${name}" trains an f32 copy for the input side only and the output head keeps the base matrix (PEFT without ensure_weight_tying). A merged model gets its own ${heads[0]}.weight and tie_word_embeddings false. To train one matrix for both, set ensure_weight_tying: true (Axolotl: peft_ensure_weight_tying).`,
          );
      }
    }
    if (ensure && tiesKept === 0 && train)
      this.onWarning(
        `LoraConfig.ensure_weight_tying: no module in modules_to_save is tied to another (is tie_word_embeddings false?); it has no effect (adapter "${name}")`,
      );
    return readBase;
  }

  /** Make `names` the active adapters (only they are trainable). */
  setAdapter(names: string | readonly string[]): void {
    const list = typeof names === "string" ? [names] : [...names];
    for (const n of list)
      if (!this.configs.has(n))
        throw new LoraError(
          "BAD_ADAPTER",
          `set_adapter: adapter "${n}" does not exist (have: ${this.adapterNames.join(", ")})`,
        );
    this.active = list;
    for (const [, layer] of this.loraLayers()) layer.activeAdapters = list.filter((n) => layer.settings.has(n));
    for (const [, w] of this.wrappers()) w.activeAdapter = list.find((n) => w.copies.has(n)) ?? null;
    this.markTrainable();
  }

  /** PEFT's _mark_only_adapters_as_trainable + set_adapter: freeze everything, then unfreeze the active adapters. */
  private markTrainable(): void {
    for (const p of this.model.parameters()) if (p.requiresGrad) p.requiresGrad = false;
    // an adapter in inference mode (loaded without isTrainable, as PEFT's inference_mode) stays frozen
    const trains = (n: string) => this.configs.get(n)?.inference_mode !== true;
    for (const [, layer] of this.loraLayers())
      for (const n of layer.activeAdapters.filter(trains)) {
        layer.loraA.get(n).weight.requiresGrad = true;
        layer.loraB.get(n).weight.requiresGrad = true;
        if (layer.magnitude.has(n)) layer.magnitude.get(n).weight.requiresGrad = true;
      }
    for (const [, w] of this.wrappers())
      if (w.activeAdapter && trains(w.activeAdapter))
        for (const p of w.copies.get(w.activeAdapter).parameters()) p.requiresGrad = true;
    const bias =
      this.active
        .filter(trains)
        .map((n) => this.configs.get(n)!.bias)
        .find((b) => b !== "none") ?? "none";
    if (bias === "all")
      for (const [n, p] of this.model.namedParameters())
        if (n.split(".").pop() === "bias" && !n.includes("original_module")) p.requiresGrad = true;
    if (bias === "lora_only")
      for (const [, layer] of this.loraLayers()) {
        const b = layer.baseLayer.bias;
        if (b) b.requiresGrad = true;
      }
  }

  /** Trainable parameters by in-memory name. */
  trainableParameters(): [string, Tensor][] {
    return [...this.model.namedParameters()].filter(([, p]) => p.requiresGrad);
  }

  deleteAdapter(name: string): void {
    if (!this.configs.has(name)) throw new LoraError("BAD_ADAPTER", `delete_adapter: adapter "${name}" does not exist`);
    for (const [, layer] of this.loraLayers()) if (layer.settings.has(name)) layer.deleteAdapter(name);
    for (const [, w] of this.wrappers()) w.deleteAdapter(name);
    this.configs.delete(name);
    const rest = this.active.filter((n) => n !== name);
    this.setAdapter(rest.length ? rest : this.adapterNames.slice(0, 1));
  }

  disableAdapters(): void {
    this.disabled = true;
    for (const [, layer] of this.loraLayers()) layer.adaptersDisabled = true;
    for (const [, w] of this.wrappers()) w.adaptersDisabled = true;
  }
  enableAdapters(): void {
    this.disabled = false;
    for (const [, layer] of this.loraLayers()) layer.adaptersDisabled = false;
    for (const [, w] of this.wrappers()) w.adaptersDisabled = false;
  }
  get adaptersDisabled(): boolean {
    return this.disabled;
  }
  /** Run fn with every adapter disabled (PEFT's disable_adapter() context manager). */
  withAdaptersDisabled<T>(fn: () => T): T {
    const was = this.disabled;
    this.disableAdapters();
    try {
      return fn();
    } finally {
      if (!was) this.enableAdapters();
    }
  }

  /**
   * merge_adapter: add the active (or named) adapters into the base weights. A 4-bit base is dequantized,
   * merged and re-quantized layer by layer; that loss is said once per call (one warning with the count and
   * the worst error), and every layer's figures are in the returned reports.
   */
  merge(options: { adapterNames?: readonly string[]; safeMerge?: boolean } = {}): MergeReport[] {
    const out: MergeReport[] = [];
    for (const [name, layer] of this.loraLayers()) {
      const names = (options.adapterNames ?? this.active).filter((n) => layer.settings.has(n));
      for (const r of layer.merge({ adapterNames: names, safeMerge: options.safeMerge, warn: false }))
        out.push({ ...r, adapter: `${name}:${r.adapter}` });
    }
    this.warnRequantized("merging", out);
    return out;
  }
  unmerge(): MergeReport[] {
    const out: MergeReport[] = [];
    for (const [name, layer] of this.loraLayers())
      for (const r of layer.unmerge({ warn: false })) out.push({ ...r, adapter: `${name}:${r.adapter}` });
    this.warnRequantized("unmerging", out);
    return out;
  }
  private warnRequantized(what: string, reports: readonly MergeReport[]): void {
    const rq = reports.filter((r) => r.requantized);
    if (rq.length === 0) return;
    const max = Math.max(...rq.map((r) => r.maxAbsError));
    const mean = rq.reduce((s, r) => s + r.meanAbsError, 0) / rq.length;
    this.onWarning(
      `LoraModel: ${what} re-quantized ${rq.length} 4-bit weight${rq.length === 1 ? "" : "s"}; generations may differ from the unquantized result (max |error| ${max.toExponential(3)}, mean ${mean.toExponential(3)}). To merge without re-quantizing, dequantize the base first (@qlora/models' dequantizeModel, or load it with quantize: false).`,
    );
  }

  /** merge_and_unload: merge, then put each base layer (and each active modules_to_save copy) back in place. */
  mergeAndUnload(options: { adapterNames?: readonly string[]; safeMerge?: boolean } = {}): {
    model: M;
    reports: MergeReport[];
  } {
    const reports = this.merge(options);
    this.unloadLayers();
    return { model: this.model, reports };
  }
  /** unload: remove every adapter without merging; the base model comes back. */
  unload(): M {
    this.unloadLayers();
    return this.model;
  }
  private unloadLayers(): void {
    for (const [name, layer] of this.loraLayers()) {
      const base = layer.baseLayer;
      layer.mergedAdapters.length = 0; // merged values now belong to the base
      for (const a of [...layer.settings.keys()]) layer.deleteAdapter(a);
      this.model.setSubmodule(name, base);
    }
    const all = [...this.model.namedModules()];
    for (const [name, w] of this.wrappers()) {
      // a head that read the base matrix while the embedding trained its own copy keeps that matrix, untied
      const heads = w.tiedHeadsReadBase && w.current() !== w.originalModule ? headsTiedTo(all, w) : [];
      const base = ownWeight(w);
      this.model.setSubmodule(name, w.current());
      for (const h of heads) {
        const [out, inF] = base!.shape;
        const head = new Linear(inF, out, { bias: false, init: { weight: base! } });
        head.weight.requiresGrad = false;
        this.model.setSubmodule(h, head);
      }
    }
    this.configs.clear();
    this.active = [];
  }
}
