// LoRA on a model loaded by @qlora/models with NF4 on load (the QLoRA setup): all-linear adapters over
// Linear4bit layers train (loss goes down with plain SGD on A/B), the 4-bit base stays frozen, and
// unload() gives back the base model.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadModel } from "@qlora/models";
import { Generator, Linear4bit, type Module, addInPlace, noGrad, tensor } from "@qlora/tensor";
import { afterAll, describe, expect, it } from "vitest";
import { LoraModel } from "../src";
import { writeTinyLlama } from "./tiny-llama";

const tmp = mkdtempSync(join(tmpdir(), "qlora-lora-qlora-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe("QLoRA: LoRA over an NF4-loaded model", () => {
  it("all-linear adapters over Linear4bit train; base frozen; unload restores the base", async () => {
    const dir = join(tmp, "tiny");
    const { info } = await writeTinyLlama(dir, 11);
    const { model } = await loadModel(dir); // NF4 + double quant on load, lm_head kept dense
    const root = model as unknown as Module;
    expect(root.getSubmodule("model.layers.0.self_attn.q_proj")).toBeInstanceOf(Linear4bit);
    const lm = LoraModel.inject(
      root,
      { r: 8, lora_alpha: 16, target_modules: "all-linear" },
      { generator: new Generator(2) },
    );
    expect(lm.loraLayers().length).toBe(14);
    const gen = new Generator(3);
    const ids = Int32Array.from(gen.uniform(2 * 12), (u) => Math.floor(u * info.vocabSize));
    const inputIds = tensor(ids, { shape: [2, 12], dtype: "i32" });
    const lossOf = () => model.forward({ inputIds, labels: inputIds }).loss!;
    const base = noGrad(() => lossOf().item());
    const params = lm.trainableParameters().map(([, p]) => p);
    let last = base;
    for (let step = 0; step < 8; step++) {
      const loss = lossOf();
      last = loss.item();
      loss.backward();
      noGrad(() => {
        for (const p of params) {
          addInPlace(p, p.grad!, -0.5);
          p.grad!.dispose();
          p.grad = null;
        }
      });
    }
    expect(last).toBeLessThan(base - 0.05);
    for (const [n, p] of root.namedParameters()) if (!n.includes(".lora_")) expect(p.grad, n).toBeNull();
    const withAdapter = noGrad(() => lossOf().item());
    const unloaded = lm.unload();
    expect([...unloaded.namedParameters()].some(([n]) => n.includes("lora_"))).toBe(false);
    expect(unloaded.getSubmodule("model.layers.0.self_attn.q_proj")).toBeInstanceOf(Linear4bit);
    expect(noGrad(() => lossOf().item())).toBeCloseTo(base, 5);
    expect(withAdapter).toBeLessThan(base);
  });
});
