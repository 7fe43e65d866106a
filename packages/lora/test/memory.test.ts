import { Generator, Linear4bit, Module, memoryStats, randn, resetPeakMemory, tidy } from "@qlora/tensor";
import { describe, expect, it } from "vitest";
import { type LoraLinear, LoraModel } from "../src";

function model4bit(out: number, inF: number): Module {
  const m = new Module();
  const w = randn([out, inF], { generator: new Generator(1) });
  m.registerModule("proj", Linear4bit.fromWeight(w, { doubleQuant: true }));
  w.dispose();
  return m;
}

describe("memory", () => {
  it("a LoRA training step over a 4-bit base never holds a dequantized weight (peak ≪ out·in·4 bytes)", () => {
    const out = 512;
    const inF = 512;
    const m = model4bit(out, inF);
    const lm = LoraModel.inject(m, { r: 8, target_modules: ["proj"], lora_dropout: 0.1 });
    const layer = lm.loraLayers()[0][1] as LoraLinear;
    const x = randn([4, inF], { generator: new Generator(2) });
    x.requiresGrad = true;
    const step = () =>
      tidy(() => {
        const y = layer.forward(x);
        y.sum().backward();
      });
    step(); // first-touch allocations (caches) out of the way
    const before = memoryStats("cpu").currentBytes;
    resetPeakMemory("cpu");
    step();
    const peak = memoryStats("cpu").peakBytes - before;
    expect(peak).toBeLessThan((out * inF * 4) / 4); // the whole f32 weight would be 1 MiB
    expect(peak).toBeGreaterThan(0);
  });

  it("memory is flat over 40 forward+backward steps (saved tensors freed, grads accumulated in place)", () => {
    const m = model4bit(128, 256);
    const lm = LoraModel.inject(m, { r: 4, target_modules: ["proj"], lora_dropout: 0.2 });
    const layer = lm.loraLayers()[0][1] as LoraLinear;
    const x = randn([3, 5, 256], { generator: new Generator(3) });
    const counts: number[] = [];
    for (let i = 0; i < 40; i++) {
      tidy(() => {
        const y = layer.forward(x);
        y.mul(y).sum().backward();
      });
      counts.push(memoryStats("cpu").currentBytes);
    }
    expect(counts[39]).toBe(counts[4]);
    expect(layer.loraA.get("default").weight.grad).not.toBeNull();
  });
});
