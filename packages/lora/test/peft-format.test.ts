import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, cpSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openSafetensors } from "@qlora/formats";
import { Generator, type Module, type Tensor, noGrad, randn } from "@qlora/tensor";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import {
  LoraError,
  type LoraLinear,
  LoraModel,
  adapterStateDict,
  loadAdapter,
  readAdapterConfig,
  saveAdapter,
} from "../src";
import { HIDDEN, TinyModel } from "./tiny-model";

const tmp = mkdtempSync(join(tmpdir(), "qlora-lora-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;

const input = () => randn([3, HIDDEN], { generator: new Generator(9) });
const run = (m: Module, x: Tensor) => Float32Array.from(noGrad(() => (m as TinyModel).forward(x)).toTypedArray());
function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let w = 0;
  for (let i = 0; i < a.length; i++) w = Math.max(w, Math.abs(a[i] - b[i]));
  return w;
}
function perturb(lm: LoraModel, adapter: string, seed: number) {
  const g = new Generator(seed);
  for (const [, layer] of lm.loraLayers()) {
    if (!layer.settings.has(adapter)) continue;
    const B = layer.loraB.get(adapter);
    B.loadStateDict({ weight: randn(B.weight.shape, { generator: g }).mul(0.05) });
  }
}

describe("PEFT adapter directory: save", () => {
  it("writes PEFT's keys, shapes, F32, metadata and config; non-default adapters in sub-folders; reload is exact", async () => {
    const model = new TinyModel();
    const lm = LoraModel.inject(model, {
      r: 4,
      lora_alpha: 8,
      target_modules: ["q_proj", "v_proj"],
      modules_to_save: ["lm_head"],
    });
    perturb(lm, "default", 3);
    lm.addAdapter("dora", { r: 2, lora_alpha: 4, target_modules: ["q_proj"], use_dora: true, use_rslora: true });
    perturb(lm, "dora", 4);
    const x = input();
    const y = run(model, x);
    const dir = join(tmp, "save");
    const written = await saveAdapter(lm, dir, { baseModelNameOrPath: "tiny" });
    expect(written).toEqual([dir, join(dir, "dora")]);
    expect(readdirSync(dir).sort()).toEqual(["adapter_config.json", "adapter_model.safetensors", "dora"]);
    const f = await openSafetensors(join(dir, "adapter_model.safetensors"));
    expect(f.metadata).toEqual({ format: "pt" });
    expect([...f.names].sort()).toEqual([
      "base_model.model.lm_head.weight",
      "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
      "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
      "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
      "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
      "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight",
      "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight",
      "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight",
      "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight",
    ]);
    expect(f.info("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")).toMatchObject({
      dtype: "F32",
      shape: [4, HIDDEN],
    });
    expect(f.info("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")).toMatchObject({
      dtype: "F32",
      shape: [HIDDEN, 4],
    });
    expect(f.info("base_model.model.lm_head.weight")).toMatchObject({ dtype: "F32", shape: [10, HIDDEN] });
    await f.close();
    const d = await openSafetensors(join(dir, "dora", "adapter_model.safetensors"));
    expect(d.names).toContain("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector");
    expect(d.info("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector").shape).toEqual([HIDDEN]);
    await d.close();
    const cfg = JSON.parse(readFileSync(join(dir, "adapter_config.json"), "utf8"));
    expect(cfg).toMatchObject({
      peft_type: "LORA",
      r: 4,
      lora_alpha: 8,
      inference_mode: true,
      base_model_name_or_path: "tiny",
      modules_to_save: ["lm_head"],
      task_type: null,
    });
    expect(cfg.target_modules).toEqual(["q_proj", "v_proj"]);
    expect((await readAdapterConfig(join(dir, "dora"))).use_dora).toBe(true);
    // load both into a fresh model with the same base weights: identical outputs
    const fresh = new TinyModel();
    const lm2 = await loadAdapter(fresh, dir, { isTrainable: true });
    await loadAdapter(lm2, join(dir, "dora"), { adapterName: "dora" });
    expect(lm2.adapterNames).toEqual(["default", "dora"]);
    expect(maxDiff(run(fresh, x), y)).toBe(0);
    lm.setAdapter("dora");
    lm2.setAdapter("dora");
    expect(maxDiff(run(fresh, x), run(model, x))).toBe(0);
    expect(Object.keys(adapterStateDict(lm2, "dora")).length).toBe(6);
    // isTrainable: the active adapter trains; the one loaded without it (inference mode) stays frozen
    expect(lm2.trainableParameters().length).toBe(0); // "dora" is active and was loaded for inference
    lm2.setAdapter("default");
    expect(lm2.trainableParameters().map(([n]) => n)).toContain(
      "model.layers.0.self_attn.q_proj.lora_A.default.weight",
    );
  });
});

describe("PEFT adapter directory: loaded for inference", () => {
  it("runs in eval mode (PEFT's load_adapter): an adapter trained with lora_dropout computes deterministically", async () => {
    const lm = LoraModel.inject(new TinyModel(), { r: 4, target_modules: ["q_proj"], lora_dropout: 0.5 });
    perturb(lm, "default", 3);
    const dir = join(tmp, "with-dropout");
    await saveAdapter(lm, dir);
    const fresh = new TinyModel();
    await loadAdapter(fresh, dir);
    expect([...fresh.namedModules()].every(([, m]) => !m.training)).toBe(true);
    const x = input();
    const a = run(fresh, x);
    expect(maxDiff(run(fresh, x), a)).toBe(0);
    // what the adapter computes without dropout: the trained model in eval mode
    lm.model.eval();
    expect(maxDiff(run(lm.model, x), a)).toBe(0);
    // injected into a model in eval mode (as loadModel returns it), the new dropout modules are in eval mode too
    const evalModel = new TinyModel().eval();
    LoraModel.inject(evalModel, { r: 4, target_modules: ["q_proj"], lora_dropout: 0.5 });
    expect([...evalModel.namedModules()].every(([, m]) => !m.training)).toBe(true);
    // loaded to train, it stays in training mode (dropout on), as PEFT's is_trainable
    const trainable = new TinyModel();
    await loadAdapter(trainable, dir, { isTrainable: true });
    expect([...trainable.namedModules()].some(([, m]) => m.training)).toBe(true);
  });
});

describe("PEFT adapter directory: task_type", () => {
  it("taskType fills a missing task_type (CAUSAL_LM for AutoPeftModelForCausalLM); the config's own wins; bad values write nothing", async () => {
    const lm = LoraModel.inject(new TinyModel(), { r: 2, target_modules: ["q_proj"] });
    const dir = join(tmp, "task");
    await saveAdapter(lm, dir, { taskType: "CAUSAL_LM" });
    expect(JSON.parse(readFileSync(join(dir, "adapter_config.json"), "utf8")).task_type).toBe("CAUSAL_LM");
    expect((await readAdapterConfig(dir)).task_type).toBe("CAUSAL_LM");
    const own = LoraModel.inject(new TinyModel(), { r: 2, target_modules: ["q_proj"], task_type: "SEQ_CLS" });
    await saveAdapter(own, join(tmp, "task2"), { taskType: "CAUSAL_LM" });
    expect(JSON.parse(readFileSync(join(tmp, "task2", "adapter_config.json"), "utf8")).task_type).toBe("SEQ_CLS");
    await expect(saveAdapter(lm, join(tmp, "task3"), { taskType: "LM" })).rejects.toThrow(/LoraConfig.task_type/);
    expect(readdirSync(join(tmp, "task3"))).toEqual([]);
  });
});

describe("PEFT adapter directory: load one written by Python PEFT (fixture built byte for byte to the format)", () => {
  const expected = JSON.parse(readFileSync(join(FIXTURES, "expected_peft_adapter.json"), "utf8")) as Record<
    string,
    Record<string, { dtype: string; shape: number[]; data: number[] }>
  >;
  it("loads F32 'default' and the BF16 DoRA/rsLoRA/rank_pattern adapter from its sub-folder", async () => {
    const model = new TinyModel();
    const lm = await loadAdapter(model, join(FIXTURES, "peft_adapter"));
    await loadAdapter(lm, join(FIXTURES, "peft_adapter", "second"), { adapterName: "second" });
    for (const adapter of ["default", "second"]) {
      const sd = adapterStateDict(lm, adapter);
      expect(Object.keys(sd).sort()).toEqual(Object.keys(expected[adapter]).sort());
      for (const [k, v] of Object.entries(expected[adapter])) {
        expect(sd[k].shape, k).toEqual(v.shape);
        expect(maxDiff(sd[k].toTypedArray(), v.data), k).toBe(0);
      }
    }
    const q1 = model.getSubmodule<LoraLinear>("model.layers.1.self_attn.q_proj");
    expect(q1.settingsOf("second")).toMatchObject({ r: 3, alpha: 4, scaling: 4 / Math.sqrt(3), useDora: true });
    expect(q1.settingsOf("default")).toMatchObject({ r: 4, alpha: 8, scaling: 2, dropout: 0.05 });
    expect(lm.trainableParameters()).toEqual([]); // loaded for inference unless isTrainable
    // the forward with the loaded adapter = the base with W + s·B·A merged (plain LoRA)
    model.eval();
    const x = input();
    const y = run(model, x);
    lm.merge({ adapterNames: ["default"] });
    expect(maxDiff(run(model, x), y)).toBeLessThan(1e-5);
  });
  it("mismatched files are LoraErrors naming the file and key", async () => {
    const bad = join(tmp, "bad");
    cpSync(join(FIXTURES, "peft_adapter"), bad, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(bad, "adapter_config.json"), "utf8"));
    writeFileSync(join(bad, "adapter_config.json"), JSON.stringify({ ...cfg, r: 8 }));
    await expect(loadAdapter(new TinyModel(), bad)).rejects.toThrow(
      /adapter_model.safetensors: "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" has shape \[4,64\], the model expects \[8,64\]/,
    );
    writeFileSync(join(bad, "adapter_config.json"), JSON.stringify({ ...cfg, target_modules: ["q_proj"] }));
    await expect(loadAdapter(new TinyModel(), bad)).rejects.toThrow(
      /unexpected \[base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight/,
    );
    writeFileSync(join(bad, "adapter_config.json"), JSON.stringify({ ...cfg, target_modules: ["nonexistent_proj"] }));
    await expect(loadAdapter(new TinyModel(), bad)).rejects.toThrow(
      /bad\/adapter_config.json: LoraConfig.target_modules: .*matched no/,
    );
    writeFileSync(join(bad, "adapter_config.json"), "{ not json");
    await expect(loadAdapter(new TinyModel(), bad)).rejects.toThrow(/bad\/adapter_config.json: not valid JSON/);
    rmSync(join(bad, "adapter_model.safetensors"));
    writeFileSync(join(bad, "adapter_config.json"), JSON.stringify(cfg));
    await expect(loadAdapter(new TinyModel(), bad)).rejects.toThrow(/adapter_model.safetensors: not found/);
    writeFileSync(join(bad, "adapter_model.safetensors"), new Uint8Array([1, 2, 3]));
    await expect(loadAdapter(new TinyModel(), bad)).rejects.toThrow(LoraError);
  });
  it("fuzz: mutated adapter files load or fail with a LoraError, never another throw", async () => {
    const src = readFileSync(join(FIXTURES, "peft_adapter", "adapter_model.safetensors"));
    const cfgText = readFileSync(join(FIXTURES, "peft_adapter", "adapter_config.json"), "utf8");
    const dir = join(tmp, "fuzz");
    cpSync(join(FIXTURES, "peft_adapter"), dir, { recursive: true });
    const model = new TinyModel();
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.nat({ max: src.length + 8 }), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 6,
        }),
        fc.nat({ max: src.length }),
        fc.boolean(),
        async (edits, cut, mutateConfig) => {
          const bytes = Uint8Array.from(src);
          for (const [at, v] of edits) if (at < bytes.length) bytes[at] = v;
          writeFileSync(
            join(dir, "adapter_model.safetensors"),
            mutateConfig ? src : bytes.subarray(0, cut < 64 ? src.length : cut),
          );
          const cfg = mutateConfig
            ? cfgText.slice(0, edits[0][0] % cfgText.length) +
              String.fromCharCode(edits[0][1]) +
              cfgText.slice((edits[0][0] % cfgText.length) + 1)
            : cfgText;
          writeFileSync(join(dir, "adapter_config.json"), cfg);
          try {
            const lm = await loadAdapter(model, dir);
            lm.unload();
          } catch (e) {
            if (!(e instanceof LoraError)) throw e;
          }
          // a failed load leaves no adapter behind (the next iteration injects afresh)
          expect([...model.namedParameters()].some(([n]) => n.includes("lora_"))).toBe(false);
        },
      ),
      { numRuns: 120 },
    );
  });
});
