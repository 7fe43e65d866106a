/**
 * LoraLinear: PEFT's in-memory layout around a Linear or Linear4bit (base_layer, lora_A.<adapter>,
 * lora_B.<adapter>, lora_dropout.<adapter>, lora_magnitude_vector.<adapter> for DoRA), several named
 * adapters, merge / unmerge into the base weight.
 */
import { dequantize4bit, quantize4bit } from "@qlora/nf4";
import {
  Dropout,
  type Generator,
  Linear,
  Linear4bit,
  Module,
  type Tensor,
  add,
  matmul,
  noGrad,
  sub,
  tensor,
} from "@qlora/tensor";
import type { InitLoraWeights, LoftQConfig } from "./config";
import { doraLinear } from "./dora";
import { LoraError } from "./errors";
import { initLora } from "./init";
import { type LoraBase, baseForward, loraDropoutMask, loraLinear, loraLinearReference } from "./lora-op";

/** A name → module container (torch.nn.ModuleDict): children keyed by adapter name. */
export class ModuleDict<M extends Module = Module> extends Module {
  constructor(entries: Iterable<[string, M]> = []) {
    super();
    for (const [k, m] of entries) this.registerModule(k, m);
  }
  keys(): string[] {
    return [...this.namedChildren()].map(([k]) => k);
  }
  has(name: string): boolean {
    return this.keys().includes(name);
  }
  get(name: string): M {
    return this.child<M>(name);
  }
  set(name: string, m: M): M {
    return this.registerModule(name, m);
  }
  /** A new dict without `name` (Module has no removal; the owner swaps the dict in with setSubmodule). */
  without(name: string): ModuleDict<M> {
    return new ModuleDict<M>([...this.namedChildren()].filter(([k]) => k !== name) as [string, M][]);
  }
}

/** DoRA's magnitude vector m [out] (PEFT's lora_magnitude_vector.<adapter>.weight). */
export class DoraMagnitude extends Module {
  readonly weight: Tensor;
  constructor(values: Tensor) {
    super();
    this.weight = this.registerParameter("weight", values)!;
  }
}

export interface AdapterSettings {
  readonly r: number;
  readonly alpha: number;
  readonly scaling: number;
  readonly dropout: number;
  readonly useDora: boolean;
}

export interface AddAdapterOptions extends AdapterSettings {
  readonly init: InitLoraWeights;
  readonly generator: Generator;
  readonly loftq?: Partial<LoftQConfig>;
  /** Called with a message for lossy operations (re-quantization). Default console.warn. */
  readonly onWarning?: (message: string) => void;
}

/** What a merge into a 4-bit base cost: re-quantization error against the exact f32 merge. */
export interface MergeReport {
  readonly adapter: string;
  readonly requantized: boolean;
  readonly maxAbsError: number;
  readonly meanAbsError: number;
}

export type BaseLayer = Linear | Linear4bit;

export class LoraLinear extends Module {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly settings = new Map<string, AdapterSettings>();
  activeAdapters: string[] = [];
  adaptersDisabled = false;
  readonly mergedAdapters: string[] = [];
  onWarning: (message: string) => void = (m) => console.warn(m);

  constructor(base: BaseLayer) {
    super();
    if (!(base instanceof Linear) && !(base instanceof Linear4bit))
      throw new LoraError("BAD_MODULE", `LoraLinear: the base layer must be a Linear or Linear4bit, got ${base}`);
    this.inFeatures = base.inFeatures;
    this.outFeatures = base.outFeatures;
    this.registerModule("base_layer", base);
    this.registerModule("lora_A", new ModuleDict<Linear>());
    this.registerModule("lora_B", new ModuleDict<Linear>());
    this.registerModule("lora_dropout", new ModuleDict<Dropout>());
    this.registerModule("lora_magnitude_vector", new ModuleDict<DoraMagnitude>());
  }

  get baseLayer(): BaseLayer {
    return this.child<BaseLayer>("base_layer");
  }
  get loraA(): ModuleDict<Linear> {
    return this.child("lora_A");
  }
  get loraB(): ModuleDict<Linear> {
    return this.child("lora_B");
  }
  get loraDropout(): ModuleDict<Dropout> {
    return this.child("lora_dropout");
  }
  get magnitude(): ModuleDict<DoraMagnitude> {
    return this.child("lora_magnitude_vector");
  }
  get isQuantized(): boolean {
    return this.baseLayer instanceof Linear4bit;
  }
  get merged(): boolean {
    return this.mergedAdapters.length > 0;
  }

  /** The frozen base as the op sees it. */
  base(): LoraBase {
    const b = this.baseLayer;
    return b instanceof Linear4bit ? { kind: "4bit", weight: b.quantizedWeight } : { kind: "dense", weight: b.weight };
  }

  /** The base weight [out, in] as f32 values (dequantized for 4-bit). For init, merge and DoRA norms. */
  baseWeightValues(): Float32Array {
    const b = this.baseLayer;
    if (b instanceof Linear4bit) return dequantize4bit(b.quantState, "float32") as Float32Array;
    return Float32Array.from(b.weight.toTypedArray());
  }

  addAdapter(name: string, o: AddAdapterOptions): void {
    if (!name || name.includes("."))
      throw new LoraError("BAD_ADAPTER", `adapter name "${name}" must be non-empty and contain no "."`);
    if (this.settings.has(name)) throw new LoraError("BAD_ADAPTER", `adapter "${name}" already exists on this layer`);
    if (o.onWarning) this.onWarning = o.onWarning;
    const be =
      this.baseLayer instanceof Linear4bit ? this.baseLayer.quantizedWeight.backend : this.baseLayer.weight.backend;
    const init = initLora({
      method: o.init,
      r: o.r,
      inFeatures: this.inFeatures,
      outFeatures: this.outFeatures,
      scaling: o.scaling,
      generator: o.generator,
      weight: () => this.baseWeightValues(),
      loftq: o.loftq,
    });
    const A = new Linear(this.inFeatures, o.r, {
      bias: false,
      init: { weight: tensor(init.a, { shape: [o.r, this.inFeatures], backend: be }) },
    });
    const B = new Linear(o.r, this.outFeatures, {
      bias: false,
      init: { weight: tensor(init.b, { shape: [this.outFeatures, o.r], backend: be }) },
    });
    this.loraA.set(name, A);
    this.loraB.set(name, B);
    this.loraDropout.set(name, new Dropout(o.dropout));
    this.settings.set(name, { r: o.r, alpha: o.alpha, scaling: o.scaling, dropout: o.dropout, useDora: o.useDora });
    if (init.baseWeight) this.setBaseWeight(init.baseWeight, `init_lora_weights=${JSON.stringify(o.init)}`);
    if (o.useDora) this.magnitude.set(name, new DoraMagnitude(tensor(this.doraWeightNorm(name), { backend: be })));
    if (this.activeAdapters.length === 0) this.activeAdapters = [name];
  }

  deleteAdapter(name: string): void {
    if (!this.settings.has(name)) throw new LoraError("BAD_ADAPTER", `adapter "${name}" does not exist on this layer`);
    if (this.mergedAdapters.includes(name))
      throw new LoraError(
        "BAD_ADAPTER",
        `adapter "${name}" is merged into the base weight; unmerge it before deleting`,
      );
    for (const key of ["lora_A", "lora_B", "lora_dropout", "lora_magnitude_vector"]) {
      const d = this.child<ModuleDict>(key);
      if (!d.has(name)) continue;
      const gone = d.get(name);
      this.setSubmodule(key, d.without(name));
      gone.dispose();
    }
    this.settings.delete(name);
    this.activeAdapters = this.activeAdapters.filter((a) => a !== name);
  }

  /** Replace the base weight values (dense: in place; 4-bit: re-quantized into a new Linear4bit). */
  setBaseWeight(values: Float32Array, why: string, options: { warn?: boolean } = {}): MergeReport | null {
    const b = this.baseLayer;
    if (b instanceof Linear) {
      const t = tensor(values, { shape: [this.outFeatures, this.inFeatures], backend: b.weight.backend });
      b.loadStateDict({ weight: t }, { strict: false });
      t.dispose();
      return null;
    }
    const st = b.quantState;
    const state = quantize4bit(values, {
      quantType: st.quantType,
      blocksize: st.blocksize,
      doubleQuant: !(st.absmax instanceof Float32Array),
      shape: [...st.shape],
      dtype: st.dtype,
    });
    const back = dequantize4bit(state, "float32") as Float32Array;
    let maxErr = 0;
    let sumErr = 0;
    for (let i = 0; i < back.length; i++) {
      const e = Math.abs(back[i] - values[i]);
      if (e > maxErr) maxErr = e;
      sumErr += e;
    }
    const bias = b.bias ? noGrad(() => b.bias!.detach().clone()) : null;
    const nb = new Linear4bit(state, { backend: b.quantizedWeight.backend, bias });
    if (b.bias?.requiresGrad && nb.bias) nb.bias.requiresGrad = true;
    this.setSubmodule("base_layer", nb);
    b.dispose();
    const report = { adapter: why, requantized: true, maxAbsError: maxErr, meanAbsError: sumErr / back.length };
    if (options.warn ?? true)
      this.onWarning(
        `LoraLinear: ${why} re-quantized the 4-bit base weight; generations may differ from the unquantized result (max |error| ${maxErr.toExponential(3)}, mean ${report.meanAbsError.toExponential(3)})`,
      );
    return report;
  }

  /** s·B·A [out, in] as f32 values (one backend GEMM). */
  deltaWeight(name: string): Float32Array {
    const s = this.settingsOf(name);
    const A = this.loraA.get(name).weight;
    const B = this.loraB.get(name).weight;
    return noGrad(() => {
      const ba = matmul(B, A);
      const d = ba.mul(s.scaling);
      const out = Float32Array.from(d.toTypedArray());
      ba.dispose();
      d.dispose();
      return out;
    });
  }

  /** Row norms ‖W + s·B·A‖ over the input dim [out] (DoRA; the base dequantized for 4-bit). */
  doraWeightNorm(name: string): Float32Array {
    const w = this.baseWeightValues();
    const d = this.deltaWeight(name);
    const out = new Float32Array(this.outFeatures);
    for (let i = 0; i < this.outFeatures; i++) {
      let s = 0;
      for (let j = 0; j < this.inFeatures; j++) {
        const v = w[i * this.inFeatures + j] + d[i * this.inFeatures + j];
        s += v * v;
      }
      out[i] = Math.sqrt(s);
    }
    return out;
  }

  settingsOf(name: string): AdapterSettings {
    const s = this.settings.get(name);
    if (!s)
      throw new LoraError(
        "BAD_ADAPTER",
        `adapter "${name}" does not exist on this layer (has: ${[...this.settings.keys()].join(", ") || "none"})`,
      );
    return s;
  }

  forward(x: Tensor): Tensor {
    if (this.adaptersDisabled) {
      if (this.merged) this.unmerge();
      return this.baseLayer.forward(x);
    }
    if (this.merged) return this.baseLayer.forward(x);
    const active = this.activeAdapters.filter((a) => this.settings.has(a));
    if (active.length === 0) return this.baseLayer.forward(x);
    let y: Tensor | null = null;
    const bias = this.baseLayer.bias;
    for (const name of active) {
      const s = this.settingsOf(name);
      const A = this.loraA.get(name).weight;
      const B = this.loraB.get(name).weight;
      const training = this.loraDropout.get(name).training;
      const mask = loraDropoutMask(x, s.dropout, training);
      let next: Tensor;
      if (s.useDora) {
        const yd = doraLinear(x, A, B, this.magnitude.get(name).weight, {
          base: this.base(),
          scaling: s.scaling,
          mask,
          weightNorm: () => this.doraWeightNorm(name),
        });
        if (y) {
          // a DoRA adapter after another one: add its change (PEFT adds onto the running result)
          const yb = baseForward(x, this.base());
          const delta = sub(yd, yb);
          next = add(y, delta);
          for (const h of [yd, yb, delta]) h.dispose();
        } else next = yd;
      } else {
        const base = y ? null : this.base();
        // the fused op treats the base as frozen; a dense base someone unfroze goes through the composed
        // reference so that autograd also gives the base weight its gradient
        const op = base?.kind === "dense" && base.weight.requiresGrad ? loraLinearReference : loraLinear;
        next = op(x, A, B, { base, scaling: s.scaling, mask });
        if (y) {
          const sum = add(y, next);
          next.dispose();
          next = sum;
        }
      }
      mask?.dispose();
      y?.dispose();
      y = next;
    }
    if (bias) {
      const out = add(y!, bias);
      y!.dispose();
      return out;
    }
    return y!;
  }

  /**
   * Add the active (or named) adapters' ΔW into the base weight. 4-bit: dequantize, add, re-quantize, warn
   * (warn false: the report carries the error and the caller says it once, as LoraModel.merge does).
   */
  merge(options: { adapterNames?: readonly string[]; safeMerge?: boolean; warn?: boolean } = {}): MergeReport[] {
    const names = options.adapterNames ?? this.activeAdapters;
    const reports: MergeReport[] = [];
    for (const name of names) {
      if (this.mergedAdapters.includes(name)) continue;
      this.settingsOf(name);
      const w = this.baseWeightValues();
      const merged = this.mergedWeight(name, w);
      if (options.safeMerge && !merged.every(Number.isFinite))
        throw new LoraError(
          "NOT_MERGEABLE",
          `merge: adapter "${name}" produces non-finite weights; the base was left unchanged`,
        );
      const r = this.setBaseWeight(merged, `merging adapter "${name}"`, { warn: options.warn });
      reports.push(
        r ? { ...r, adapter: name } : { adapter: name, requantized: false, maxAbsError: 0, meanAbsError: 0 },
      );
      this.mergedAdapters.push(name);
    }
    return reports;
  }

  /** Subtract merged adapters in reverse order (lossy again for a 4-bit base). warn false: the caller reports. */
  unmerge(options: { warn?: boolean } = {}): MergeReport[] {
    const reports: MergeReport[] = [];
    while (this.mergedAdapters.length) {
      const name = this.mergedAdapters.pop()!;
      const w = this.baseWeightValues();
      const s = this.settingsOf(name);
      let values: Float32Array;
      if (s.useDora) {
        // merged = (m/‖W+ΔW‖)·(W+ΔW)  →  W = merged·‖W+ΔW‖/m − ΔW, with the norm cached at merge time
        const norm = this.doraMergeNorms.get(name)!;
        const m = Float32Array.from(this.magnitude.get(name).weight.toTypedArray());
        const d = this.deltaWeight(name);
        values = new Float32Array(w.length);
        for (let i = 0; i < this.outFeatures; i++)
          for (let j = 0; j < this.inFeatures; j++) {
            const k = i * this.inFeatures + j;
            values[k] = (w[k] * norm[i]) / m[i] - d[k];
          }
        this.doraMergeNorms.delete(name);
      } else {
        const d = this.deltaWeight(name);
        values = new Float32Array(w.length);
        for (let i = 0; i < w.length; i++) values[i] = w[i] - d[i];
      }
      const r = this.setBaseWeight(values, `unmerging adapter "${name}"`, { warn: options.warn });
      reports.push(
        r ? { ...r, adapter: name } : { adapter: name, requantized: false, maxAbsError: 0, meanAbsError: 0 },
      );
    }
    return reports;
  }

  private readonly doraMergeNorms = new Map<string, Float32Array>();

  /** W + ΔW, or DoRA's (m/‖W+ΔW‖)·(W+ΔW). */
  private mergedWeight(name: string, w: Float32Array): Float32Array {
    const d = this.deltaWeight(name);
    const out = new Float32Array(w.length);
    for (let i = 0; i < w.length; i++) out[i] = w[i] + d[i];
    if (!this.settingsOf(name).useDora) return out;
    const norm = this.doraWeightNorm(name);
    this.doraMergeNorms.set(name, norm);
    const m = this.magnitude.get(name).weight.toTypedArray();
    for (let i = 0; i < this.outFeatures; i++) {
      const f = m[i] / norm[i];
      for (let j = 0; j < this.inFeatures; j++) out[i * this.inFeatures + j] *= f;
    }
    return out;
  }
}
