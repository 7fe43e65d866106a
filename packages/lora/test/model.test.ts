import {
  Embedding,
  Generator,
  Linear,
  Linear4bit,
  Module,
  type Tensor,
  checkpoint,
  manualSeed,
  matmul,
  noGrad,
  randn,
  tensor,
} from "@qlora/tensor";
import { describe, expect, it } from "vitest";
import { LoraError, type LoraLinear, LoraModel, ModulesToSaveWrapper } from "../src";
import { HIDDEN, TinyModel } from "./tiny-model";

const input = (seed = 9, rows = 3) => randn([rows, HIDDEN], { generator: new Generator(seed) });
const run = (m: Module, x: Tensor) => Float32Array.from(noGrad(() => (m as TinyModel).forward(x)).toTypedArray());
function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let w = 0;
  for (let i = 0; i < a.length; i++) w = Math.max(w, Math.abs(a[i] - b[i]));
  return w;
}
/** Give every B a non-zero value so the adapter changes the output. */
function perturbB(lm: LoraModel, adapter = "default", seed = 5) {
  const g = new Generator(seed);
  for (const [, layer] of lm.loraLayers()) {
    if (!layer.settings.has(adapter)) continue;
    const B = layer.loraB.get(adapter);
    B.loadStateDict({ weight: randn(B.weight.shape, { generator: g }).mul(0.05) });
  }
}

describe("injection", () => {
  it("wraps the targeted linears with PEFT's in-memory names; only adapters train; a no-op at init", () => {
    const model = new TinyModel();
    const x = input();
    const before = run(model, x);
    const lm = LoraModel.inject(model, { r: 4, lora_alpha: 8, target_modules: ["q_proj", "v_proj"] });
    expect(lm.loraLayers().map(([n]) => n)).toEqual([
      "model.layers.0.self_attn.q_proj",
      "model.layers.0.self_attn.v_proj",
      "model.layers.1.self_attn.q_proj",
      "model.layers.1.self_attn.v_proj",
    ]);
    const names = [...model.namedParameters()].map(([n]) => n);
    expect(names).toContain("model.layers.0.self_attn.q_proj.base_layer.weight");
    expect(names).toContain("model.layers.0.self_attn.q_proj.base_layer.bias");
    expect(names).toContain("model.layers.0.self_attn.q_proj.lora_A.default.weight");
    expect(names).toContain("model.layers.1.self_attn.v_proj.lora_B.default.weight");
    expect(lm.trainableParameters().map(([n]) => n)).toEqual(names.filter((n) => n.includes(".lora_")));
    const layer = model.getSubmodule<LoraLinear>("model.layers.0.self_attn.q_proj");
    expect(layer.loraA.get("default").weight.shape).toEqual([4, HIDDEN]);
    expect(layer.loraB.get("default").weight.shape).toEqual([HIDDEN, 4]);
    expect([...layer.namedModules()].map(([n]) => n)).toContain("lora_dropout.default");
    expect(maxDiff(run(model, x), before)).toBe(0); // B = 0
  });

  it('"all-linear" skips lm_head; Linear4bit bases are wrapped too; rank/alpha patterns apply per module', () => {
    const model = new TinyModel(2, 2, true);
    const lm = LoraModel.inject(model, {
      r: 8,
      lora_alpha: 16,
      target_modules: "all-linear",
      rank_pattern: { "layers\\.1\\.mlp\\..*": 2 },
      alpha_pattern: { o_proj: 4 },
    });
    const layers = new Map(lm.loraLayers());
    expect(layers.size).toBe(12);
    expect(layers.has("lm_head")).toBe(false);
    expect(layers.get("model.layers.0.self_attn.q_proj")!.baseLayer).toBeInstanceOf(Linear4bit);
    expect(layers.get("model.layers.0.self_attn.k_proj")!.baseLayer).toBeInstanceOf(Linear);
    expect(layers.get("model.layers.1.mlp.up_proj")!.settingsOf("default")).toMatchObject({
      r: 2,
      alpha: 16,
      scaling: 8,
    });
    expect(layers.get("model.layers.0.self_attn.o_proj")!.settingsOf("default")).toMatchObject({
      r: 8,
      alpha: 4,
      scaling: 0.5,
    });
    expect(lm.configs.get("default")!.target_modules).toContain("model.layers.1.mlp.down_proj");
  });

  it("typed errors: no match, a non-linear target, bad adapter names", () => {
    expect(() => LoraModel.inject(new TinyModel(), { target_modules: ["nothing"] })).toThrow(LoraError);
    expect(() => LoraModel.inject(new TinyModel(), { target_modules: ["nothing"] })).toThrow(
      /target_modules: \["nothing"\] matched no/,
    );
    expect(() => LoraModel.inject(new TinyModel(), { target_modules: ["self_attn"] })).toThrow(
      /"model.layers.0.self_attn" \(Attn\) is not supported/,
    );
    // a rejected target leaves the model untouched (nothing half-injected)
    const m = new TinyModel();
    expect(() => LoraModel.inject(m, { target_modules: ["q_proj", "self_attn"] })).toThrow(/not supported/);
    expect(() => LoraModel.inject(m, { r: 65, target_modules: ["q_proj"], init_lora_weights: "pissa" })).toThrow(
      /LoraConfig.r: 65 for "model.layers.0.self_attn.q_proj" exceeds min\(in, out\) = 64/,
    );
    expect([...m.namedParameters()].some(([n]) => n.includes("lora_") || n.includes("base_layer"))).toBe(false);
    const lm = LoraModel.inject(new TinyModel(), { target_modules: ["q_proj"] });
    expect(() => lm.addAdapter("default", { target_modules: ["q_proj"] })).toThrow(/already exists/);
    expect(() => lm.addAdapter("a.b", { target_modules: ["q_proj"] })).toThrow(/contain no "\."/);
    expect(() => lm.setAdapter("missing")).toThrow(/adapter "missing" does not exist/);
  });

  it("fan_in_fan_out on Linear targets is set to false with a warning (PEFT's rule)", () => {
    const warnings: string[] = [];
    const lm = LoraModel.inject(
      new TinyModel(),
      { target_modules: ["q_proj"], fan_in_fan_out: true },
      { onWarning: (w) => warnings.push(w) },
    );
    expect(lm.configs.get("default")!.fan_in_fan_out).toBe(false);
    expect(warnings[0]).toMatch(/fan_in_fan_out is true/);
  });

  it("backward reaches only the active adapter's A and B (base frozen)", () => {
    const model = new TinyModel();
    const lm = LoraModel.inject(model, { r: 4, target_modules: ["q_proj", "up_proj"] });
    perturbB(lm);
    const y = (model as TinyModel).forward(input());
    y.sum().backward();
    for (const [n, p] of model.namedParameters()) {
      if (n.includes(".lora_")) expect(p.grad, n).not.toBeNull();
      else expect(p.grad, n).toBeNull();
    }
    expect(
      lm.loraLayers().every(([, l]) =>
        l.loraA
          .get("default")
          .weight.grad!.toTypedArray()
          .some((v) => v !== 0),
      ),
    ).toBe(true);
  });

  it("a dense base weight someone unfroze still gets its gradient (composed path instead of the fused op)", () => {
    const model = new TinyModel();
    const lm = LoraModel.inject(model, { r: 4, target_modules: ["q_proj"] });
    perturbB(lm);
    const layer = lm.loraLayers()[0][1];
    const W = (layer.baseLayer as Linear).weight;
    W.requiresGrad = true;
    const y = (model as TinyModel).forward(input());
    y.sum().backward();
    expect(W.grad).not.toBeNull();
    expect(layer.loraA.get("default").weight.grad).not.toBeNull();
  });

  it("under checkpoint() the gradients are the same", () => {
    const model = new TinyModel();
    const lm = LoraModel.inject(model, { r: 4, target_modules: ["q_proj"], lora_dropout: 0.2 });
    perturbB(lm);
    const x = input();
    const A = lm.loraLayers()[0][1].loraA.get("default").weight;
    const grad = (ckpt: boolean) => {
      const y = ckpt ? checkpoint((t) => (model as TinyModel).forward(t), x) : (model as TinyModel).forward(x);
      y.sum().backward();
      const g = Float32Array.from(A.grad!.toTypedArray());
      model.zeroGrad();
      return g;
    };
    const plain = withSeed(() => grad(false));
    const ck = withSeed(() => grad(true));
    expect(maxDiff(plain, ck)).toBeLessThan(1e-6);
  });
});

function withSeed<T>(fn: () => T): T {
  manualSeed(42);
  return fn();
}

describe("several adapters", () => {
  it("add / set / disable / delete", () => {
    const model = new TinyModel();
    const x = input();
    const base = run(model, x);
    const lm = LoraModel.inject(model, { r: 4, target_modules: ["q_proj"] });
    perturbB(lm, "default", 5);
    lm.addAdapter("second", { r: 2, lora_alpha: 4, target_modules: ["q_proj", "v_proj"] });
    perturbB(lm, "second", 6);
    expect(lm.activeAdapters).toEqual(["default"]);
    const yDefault = run(model, x);
    expect(maxDiff(yDefault, base)).toBeGreaterThan(1e-4);
    // only the active adapter is trainable
    const trainable = lm.trainableParameters().map(([n]) => n);
    expect(trainable.every((n) => n.includes(".default."))).toBe(true);
    lm.setAdapter("second");
    expect(lm.trainableParameters().every(([n]) => n.includes(".second."))).toBe(true);
    const ySecond = run(model, x);
    expect(maxDiff(ySecond, yDefault)).toBeGreaterThan(1e-4);
    lm.setAdapter(["default", "second"]);
    const yBoth = run(model, x);
    expect(maxDiff(yBoth, ySecond)).toBeGreaterThan(1e-4);
    expect(
      maxDiff(
        lm.withAdaptersDisabled(() => run(model, x)),
        base,
      ),
    ).toBe(0);
    expect(maxDiff(run(model, x), yBoth)).toBe(0);
    lm.deleteAdapter("second");
    expect(lm.adapterNames).toEqual(["default"]);
    expect([...model.namedParameters()].some(([n]) => n.includes(".second."))).toBe(false);
    expect(lm.loraLayers().map(([n]) => n)).toContain("model.layers.0.self_attn.v_proj"); // wrapper stays, empty
    expect(maxDiff(run(model, x), yDefault)).toBe(0);
    expect(() => lm.addAdapter("third", { target_modules: ["q_proj"], bias: "all" })).toThrow(
      /only one adapter may train biases/,
    );
  });
});

describe("merge / unmerge / mergeAndUnload", () => {
  it("dense: merged forward equals the adapter forward; unmerge restores the weights; mergeAndUnload returns plain Linears", () => {
    const model = new TinyModel();
    const x = input();
    const lm = LoraModel.inject(model, { r: 4, lora_alpha: 8, target_modules: ["q_proj", "down_proj"] });
    perturbB(lm);
    const w0 = Float32Array.from(
      model.getSubmodule<LoraLinear>("model.layers.0.self_attn.q_proj").baseLayer.stateDict().weight.toTypedArray(),
    );
    const y = run(model, x);
    const reports = lm.merge();
    expect(reports).toHaveLength(4);
    expect(reports.every((r) => !r.requantized)).toBe(true);
    expect(maxDiff(run(model, x), y)).toBeLessThan(1e-5);
    const wMerged = model
      .getSubmodule<LoraLinear>("model.layers.0.self_attn.q_proj")
      .baseLayer.stateDict()
      .weight.toTypedArray();
    expect(maxDiff(wMerged, w0)).toBeGreaterThan(1e-4);
    lm.unmerge();
    expect(
      maxDiff(
        model.getSubmodule<LoraLinear>("model.layers.0.self_attn.q_proj").baseLayer.stateDict().weight.toTypedArray(),
        w0,
      ),
    ).toBeLessThan(1e-6);
    const { model: plain, reports: r2 } = lm.mergeAndUnload();
    expect(r2).toHaveLength(4);
    expect(plain.getSubmodule("model.layers.0.self_attn.q_proj")).toBeInstanceOf(Linear);
    expect([...plain.namedParameters()].some(([n]) => n.includes("lora_") || n.includes("base_layer"))).toBe(false);
    expect(maxDiff(run(plain, x), y)).toBeLessThan(1e-5);
  });

  it("4-bit: dequantize, add, re-quantize; warns and reports the measured error", () => {
    const model = new TinyModel(3, 1, true);
    const x = input();
    const warnings: string[] = [];
    const lm = LoraModel.inject(
      model,
      { r: 4, lora_alpha: 8, target_modules: ["q_proj"] },
      { onWarning: (m) => warnings.push(m) },
    );
    perturbB(lm);
    const layer = model.getSubmodule<LoraLinear>("model.layers.0.self_attn.q_proj");
    const exact = (() => {
      const w = layer.baseWeightValues();
      const d = layer.deltaWeight("default");
      return w.map((v, i) => v + d[i]);
    })();
    const y = run(model, x);
    const [rep] = lm.merge();
    expect(rep.requantized).toBe(true);
    expect(warnings).toEqual([expect.stringMatching(/^LoraModel: merging re-quantized 1 4-bit weight; /)]);
    const after = (layer.baseLayer as Linear4bit).dequantizedWeight().toTypedArray();
    let max = 0;
    let sum = 0;
    for (let i = 0; i < after.length; i++) {
      const e = Math.abs(after[i] - exact[i]);
      max = Math.max(max, e);
      sum += e;
    }
    expect(rep.maxAbsError).toBeCloseTo(max, 7);
    expect(rep.meanAbsError).toBeCloseTo(sum / after.length, 7);
    expect(rep.maxAbsError).toBeGreaterThan(0);
    // the merged 4-bit model is close to the adapter model (NF4 rounding of W + ΔW)
    const yMerged = run(model, x);
    expect(maxDiff(yMerged, y)).toBeLessThan(0.5);
    expect(maxDiff(yMerged, y)).toBeGreaterThan(0);
  });

  it("4-bit: one warning per merge / unmerge call, however many layers were re-quantized", () => {
    const model = new TinyModel(3, 3, true);
    const warnings: string[] = [];
    const lm = LoraModel.inject(
      model,
      { r: 4, lora_alpha: 8, target_modules: ["q_proj", "v_proj", "k_proj"] },
      { onWarning: (m) => warnings.push(m) },
    );
    perturbB(lm);
    const reports = lm.merge();
    // q/v are 4-bit (re-quantized), k is dense (exact): 3 layers × 2 quantized targets
    expect(reports.filter((r) => r.requantized)).toHaveLength(6);
    expect(reports.filter((r) => !r.requantized)).toHaveLength(3);
    const max = Math.max(...reports.map((r) => r.maxAbsError));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^LoraModel: merging re-quantized 6 4-bit weights; generations may differ/);
    expect(warnings[0]).toContain(`max |error| ${max.toExponential(3)}`);
    lm.unmerge();
    expect(warnings).toHaveLength(2);
    expect(warnings[1]).toMatch(/^LoraModel: unmerging re-quantized 6 4-bit weights/);
    // mergeAndUnload is one call too
    const { reports: r2 } = lm.mergeAndUnload();
    expect(r2).toHaveLength(9);
    expect(warnings).toHaveLength(3);
  });

  it("safe merge refuses non-finite results and leaves the base unchanged", () => {
    const model = new TinyModel();
    const lm = LoraModel.inject(model, { r: 2, target_modules: ["q_proj"] });
    const layer = lm.loraLayers()[0][1];
    layer.loraB.get("default").loadStateDict({
      weight: tensor(new Float32Array(HIDDEN * 2).fill(Number.POSITIVE_INFINITY), { shape: [HIDDEN, 2] }),
    });
    const w0 = Float32Array.from((layer.baseLayer as Linear).weight.toTypedArray());
    expect(() => layer.merge({ safeMerge: true })).toThrow(/non-finite/);
    expect(maxDiff((layer.baseLayer as Linear).weight.toTypedArray(), w0)).toBe(0);
  });
});

describe("modules_to_save and bias", () => {
  it("modules_to_save: a trainable copy per adapter runs in forward; the original stays", () => {
    const model = new TinyModel();
    const x = input();
    const lm = LoraModel.inject(model, { r: 2, target_modules: ["q_proj"], modules_to_save: ["lm_head"] });
    const w = model.getSubmodule("lm_head");
    expect(w).toBeInstanceOf(ModulesToSaveWrapper);
    const names = lm.trainableParameters().map(([n]) => n);
    expect(names).toContain("lm_head.modules_to_save.default.weight");
    expect(names).not.toContain("lm_head.original_module.weight");
    const y0 = run(model, x);
    const copy = (w as ModulesToSaveWrapper).copies.get("default") as Linear;
    copy.loadStateDict({ weight: copy.weight.mul(2) });
    const y1 = run(model, x);
    expect(
      maxDiff(
        y1,
        y0.map((v) => 2 * v),
      ),
    ).toBeLessThan(1e-5);
    expect(
      maxDiff(
        lm.withAdaptersDisabled(() => run(model, x)),
        y0,
      ),
    ).toBeLessThan(1e-6);
    const { model: plain } = lm.mergeAndUnload();
    expect(plain.getSubmodule("lm_head")).toBe(copy);
  });
  it("modules_to_save copies of a bf16 module are f32, trainable master weights (the original stays bf16)", () => {
    const model = new TinyModel();
    const head = model.getSubmodule<Linear>("lm_head");
    const bf16 = new Linear(HIDDEN, 10, {
      bias: false,
      init: { weight: noGrad(() => head.weight.detach().to("bf16")) },
    });
    model.setSubmodule("lm_head", bf16);
    const lm = LoraModel.inject(model, { r: 2, target_modules: ["q_proj"], modules_to_save: ["lm_head"] });
    const w = model.getSubmodule<ModulesToSaveWrapper>("lm_head");
    const copy = w.copies.get("default") as Linear;
    expect(copy.weight.dtype).toBe("f32");
    expect(copy.weight.requiresGrad).toBe(true);
    expect((w.originalModule as Linear).weight.dtype).toBe("bf16");
    expect(maxDiff(copy.weight.toTypedArray(), bf16.weight.to("f32").toTypedArray())).toBe(0);
    expect(lm.trainableParameters().every(([, p]) => p.dtype === "f32")).toBe(true);
  });

  it("a tied output head in modules_to_save gets an untied trainable Linear copy, with a warning naming the tie", () => {
    // lm_head tied to a [10, HIDDEN] matrix owned elsewhere (CausalLM's TiedLmHead: a weight, no parameter)
    const { model, embed: shared } = tiedModel();
    const x = input();
    const y0 = run(model, x);
    const warnings: string[] = [];
    const lm = LoraModel.inject(
      model,
      { r: 2, target_modules: ["q_proj"], modules_to_save: ["lm_head"] },
      { onWarning: (m) => warnings.push(m) },
    );
    expect(warnings).toEqual([expect.stringContaining('modules_to_save: "lm_head" is tied to the input embedding')]);
    const copy = model.getSubmodule<ModulesToSaveWrapper>("lm_head").copies.get("default") as Linear;
    expect(copy).toBeInstanceOf(Linear);
    expect(copy.weight).not.toBe(shared.weight);
    expect(lm.trainableParameters().map(([n]) => n)).toContain("lm_head.modules_to_save.default.weight");
    expect(maxDiff(run(model, x), y0)).toBeLessThan(1e-6);
    // training the copy leaves the shared matrix alone
    copy.loadStateDict({ weight: copy.weight.mul(2) });
    expect(maxDiff(shared.weight.toTypedArray(), copy.weight.mul(0.5).toTypedArray())).toBeLessThan(1e-6);
    expect(maxDiff(run(model, x), y0)).toBeGreaterThan(1e-3);
  });

  /** TinyModel whose lm_head reads the weight of a Linear "embed" (as CausalLM's TiedLmHead reads embed_tokens). */
  function tiedModel(): { model: TinyModel; embed: Linear } {
    const model = new TinyModel();
    const embed = model.getSubmodule<Linear>("lm_head");
    model.registerModule("embed", embed);
    const head = new (class TiedHead extends Module {
      get weight(): Tensor {
        return (model.getSubmodule("embed") as unknown as { weight: Tensor }).weight;
      }
      forward(x: Tensor) {
        return matmul(x, this.weight.transpose(0, 1));
      }
    })();
    model.setSubmodule("lm_head", head);
    return { model, embed };
  }

  it("a tied embedding in modules_to_save: the head keeps the base matrix (PEFT without ensure_weight_tying), untied on unload", () => {
    const { model, embed } = tiedModel();
    const x = input();
    const y0 = run(model, x);
    const warnings: string[] = [];
    const lm = LoraModel.inject(
      model,
      { r: 2, target_modules: ["q_proj"], modules_to_save: ["embed"] },
      { onWarning: (m) => warnings.push(m) },
    );
    expect(warnings).toEqual([
      expect.stringContaining(
        '"embed" is tied to "lm_head" (tie_word_embeddings); adapter "default" trains an f32 copy for the input side only',
      ),
    ]);
    const copy = model.getSubmodule<ModulesToSaveWrapper>("embed").copies.get("default") as Linear;
    copy.loadStateDict({ weight: copy.weight.mul(2) });
    expect(maxDiff(run(model, x), y0)).toBe(0);
    // unload: the embedding is the trained copy, the head an untied frozen Linear over the base matrix
    lm.unload();
    expect(model.getSubmodule("embed")).toBe(copy);
    const head = model.getSubmodule<Linear>("lm_head");
    expect(head).toBeInstanceOf(Linear);
    expect(head.weight).toBe(embed.weight);
    expect(head.weight.requiresGrad).toBe(false);
    expect(maxDiff(run(model, x), y0)).toBe(0);
  });

  it("ensure_weight_tying: the head reads the embedding's trained copy; listing the head means its embedding", () => {
    for (const listed of ["embed", "lm_head"]) {
      const { model, embed } = tiedModel();
      const x = input();
      const y0 = run(model, x);
      const warnings: string[] = [];
      const lm = LoraModel.inject(
        model,
        { r: 2, target_modules: ["q_proj"], modules_to_save: [listed], ensure_weight_tying: true },
        { onWarning: (m) => warnings.push(m) },
      );
      expect(model.getSubmodule("lm_head")).not.toBeInstanceOf(ModulesToSaveWrapper);
      const wrapper = model.getSubmodule<ModulesToSaveWrapper>("embed");
      expect(wrapper).toBeInstanceOf(ModulesToSaveWrapper);
      expect(lm.trainableParameters().map(([n]) => n)).toContain("embed.modules_to_save.default.weight");
      expect(warnings.length, listed).toBe(listed === "lm_head" ? 1 : 0);
      // recorded as PEFT does (modules_to_tie): the embedding is what is saved, so it is what modules_to_save names
      expect(lm.configs.get("default")!.modules_to_save).toEqual(["embed"]);
      const copy = wrapper.copies.get("default") as Linear;
      copy.loadStateDict({ weight: copy.weight.mul(2) });
      const y1 = run(model, x);
      expect(maxDiff(y1, y0)).toBeGreaterThan(1e-3);
      expect(maxDiff(embed.weight.toTypedArray(), copy.weight.mul(0.5).toTypedArray())).toBeLessThan(1e-6);
      // unload keeps the tie: the head reads the embedding module, now the copy
      lm.unload();
      expect(maxDiff(run(model, x), y1)).toBe(0);
    }
    // no tie to keep: said, and nothing else changes
    const warnings: string[] = [];
    LoraModel.inject(
      new TinyModel(),
      { r: 2, target_modules: ["q_proj"], modules_to_save: ["lm_head"], ensure_weight_tying: true },
      { onWarning: (m) => warnings.push(m) },
    );
    expect(warnings).toEqual([
      expect.stringContaining("LoraConfig.ensure_weight_tying: no module in modules_to_save is tied"),
    ]);
  });

  it("a tied head or an embedding as a LoRA target is refused in the user's terms", () => {
    const { model } = tiedModel();
    expect(() => LoraModel.inject(model, { r: 2, target_modules: ["lm_head"] })).toThrow(
      'target module "lm_head" is tied to the input embedding (tie_word_embeddings), and LoRA on a tied head is not supported; only Linear and Linear4bit layers can get LoRA adapters (list "lm_head" in modules_to_save to train it in full)',
    );
    const withEmbedding = new TinyModel();
    withEmbedding.registerModule("tok", new Embedding(10, HIDDEN));
    expect(() => LoraModel.inject(withEmbedding, { r: 2, target_modules: ["q_proj", "tok"] })).toThrow(
      'target module "tok" is an embedding, and LoRA on embeddings (PEFT\'s lora_embedding_A/B) is not supported',
    );
  });

  it("adapters that disagree on ensure_weight_tying over one tied embedding are refused", () => {
    const { model } = tiedModel();
    const lm = LoraModel.inject(
      model,
      { r: 2, target_modules: ["q_proj"], modules_to_save: ["embed"] },
      { onWarning: () => {} },
    );
    expect(() =>
      lm.addAdapter("other", {
        r: 2,
        target_modules: ["q_proj"],
        modules_to_save: ["embed"],
        ensure_weight_tying: true,
      }),
    ).toThrow(
      'LoraConfig.ensure_weight_tying: adapter "other" says true but "embed" already carries an adapter trained with false',
    );
  });

  it("a wrapped module exposes its active copy's weight (a tied head follows it); unmatched names warn", () => {
    const model = new TinyModel();
    const warnings: string[] = [];
    LoraModel.inject(
      model,
      { r: 2, target_modules: ["q_proj"], modules_to_save: ["lm_head", "score"] },
      { onWarning: (m) => warnings.push(m) },
    );
    const w = model.getSubmodule<ModulesToSaveWrapper>("lm_head");
    expect(w.weight).toBe((w.copies.get("default") as Linear).weight);
    w.adaptersDisabled = true;
    expect(w.weight).toBe((w.originalModule as Linear).weight);
    expect(warnings).toEqual([
      'LoraConfig.modules_to_save: "score" matches no module of the model; nothing is trained or saved for it (adapter "default")',
    ]);
  });

  it('bias "all" / "lora_only" make those biases trainable', () => {
    const all = LoraModel.inject(new TinyModel(), { r: 2, target_modules: ["q_proj"], bias: "all" });
    expect(all.trainableParameters().map(([n]) => n)).toContain("model.layers.0.self_attn.k_proj.bias");
    const only = LoraModel.inject(new TinyModel(), { r: 2, target_modules: ["q_proj"], bias: "lora_only" });
    const names = only.trainableParameters().map(([n]) => n);
    expect(names).toContain("model.layers.0.self_attn.q_proj.base_layer.bias");
    expect(names).not.toContain("model.layers.0.self_attn.k_proj.bias");
  });
});

describe("data-dependent inits over the base", () => {
  it("pissa / olora on a dense base: base + s·B·A reproduces the original weight", () => {
    for (const init of ["pissa", "olora", "pissa_niter_2"] as const) {
      const model = new TinyModel(4);
      const x = input();
      const y0 = run(model, x);
      const lm = LoraModel.inject(model, { r: 4, lora_alpha: 8, target_modules: ["q_proj"], init_lora_weights: init });
      // the principal part moved into the adapter: the output is unchanged, the base weight is not
      expect(maxDiff(run(model, x), y0), init).toBeLessThan(1e-4);
      expect(
        maxDiff(
          lm.withAdaptersDisabled(() => run(model, x)),
          y0,
        ),
        init,
      ).toBeGreaterThan(1e-3);
    }
  });
  it("olora on a 4-bit base: dequantize, split, re-quantize the residual (warned, output close)", () => {
    const model = new TinyModel(5, 1, true);
    const x = input();
    const y0 = run(model, x);
    const warnings: string[] = [];
    LoraModel.inject(
      model,
      { r: 4, lora_alpha: 8, target_modules: ["q_proj"], init_lora_weights: "olora" },
      { onWarning: (w) => warnings.push(w) },
    );
    expect(warnings.some((w) => w.includes('init_lora_weights="olora" re-quantized the 4-bit base weight'))).toBe(true);
    expect(model.getSubmodule<LoraLinear>("model.layers.0.self_attn.q_proj").baseLayer).toBeInstanceOf(Linear4bit);
    expect(maxDiff(run(model, x), y0)).toBeLessThan(0.5);
  });
  it("loftq on a dense base: the base becomes the NF4-dequantized residual; base + B·A approximates W better than NF4 alone", () => {
    const model = new TinyModel(6);
    const q = model.getSubmodule<Linear>("model.layers.0.self_attn.q_proj");
    const w = Float32Array.from(q.weight.toTypedArray());
    const lm = LoraModel.inject(model, {
      r: 8,
      lora_alpha: 8,
      target_modules: ["q_proj"],
      init_lora_weights: "loftq",
      loftq_config: { loftq_bits: 4, loftq_iter: 2 },
    });
    const layer = lm.loraLayers()[0][1];
    const base = layer.baseWeightValues();
    const delta = layer.deltaWeight("default"); // s = alpha/r = 1, as LoftQ assumes
    let errLoftq = 0;
    let errNf4 = 0;
    const nf4 = Linear4bit.fromWeight({ values: w, shape: [HIDDEN, HIDDEN] })
      .dequantizedWeight()
      .toTypedArray();
    for (let i = 0; i < w.length; i++) {
      errLoftq += (w[i] - base[i] - delta[i]) ** 2;
      errNf4 += (w[i] - nf4[i]) ** 2;
    }
    expect(errLoftq).toBeLessThan(0.8 * errNf4);
  });
});
