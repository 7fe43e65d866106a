import { describe, expect, it } from "vitest";
import { dequantize4bit, quantize4bit } from "@qlora/nf4";
import { Dropout, Embedding, Linear, RMSNorm } from "../src/nn/layers";
import { Linear4bit } from "../src/nn/linear4bit";
import { Module } from "../src/nn/module";
import { memoryStats } from "../src/memory";
import * as ops from "../src/ops";
import { AdamW } from "../src/optim";
import { manualSeed } from "../src/random";
import { randn, tensor, tidy } from "../src/tensor";
import type { Tensor } from "../src/tensor";
import { be64, gradCheck, randomValues, t64 } from "./helpers";

class Block extends Module {
  readonly norm = this.registerModule("norm", new RMSNorm(8));
  readonly up = this.registerModule("up", new Linear(8, 16));
  readonly down = this.registerModule("down", new Linear(16, 8, { bias: false }));
  readonly drop = this.registerModule("drop", new Dropout(0.1));
  forward(x: Tensor): Tensor {
    return tidy(() => {
      const h = this.norm.forward(x);
      const u = this.up.forward(h).silu();
      return x.add(this.down.forward(this.drop.forward(u)));
    });
  }
}
class Net extends Module {
  readonly emb = this.registerModule("embed", new Embedding(11, 8));
  readonly block = this.registerModule("layers0", new Block());
  readonly head = this.registerModule("lm_head", new Linear(8, 11, { bias: false }));
  forward(ids: Tensor): Tensor {
    return tidy(() => this.head.forward(this.block.forward(this.emb.forward(ids))));
  }
}

describe("nn.Module", () => {
  it("dotted names, parameters, train/eval, stateDict/loadStateDict", () => {
    manualSeed(1);
    const net = new Net();
    const names = Object.keys(net.stateDict());
    expect(names).toEqual([
      "embed.weight",
      "layers0.norm.weight",
      "layers0.up.weight",
      "layers0.up.bias",
      "layers0.down.weight",
      "lm_head.weight",
    ]);
    expect(net.parameters().every((p) => p.requiresGrad)).toBe(true);
    net.eval();
    expect(net.block.drop.training).toBe(false);
    net.train();
    expect(net.block.drop.training).toBe(true);
    manualSeed(2);
    const other = new Net();
    other.loadStateDict(net.stateDict());
    const a = net.stateDict();
    const b = other.stateDict();
    for (const k of names) expect(b[k].toArray()).toEqual(a[k].toArray());
    expect(() => other.loadStateDict({ "embed.weight": a["embed.weight"] })).toThrow(/missing keys/);
    const r = other.loadStateDict({ ...a, extra: a["embed.weight"] }, { strict: false });
    expect(r.unexpectedKeys).toEqual(["extra"]);
    net.dispose();
    other.dispose();
  });
  it("Linear = x·Wᵀ + b; Embedding gathers; RMSNorm; Dropout is identity in eval", () => {
    const lin = new Linear(3, 2);
    const x = tensor([[1, 2, 3]]);
    const y = lin.forward(x).toArray();
    const w = lin.weight.toArray();
    const b = lin.bias!.toArray();
    expect(y[0]).toBeCloseTo(w[0] + 2 * w[1] + 3 * w[2] + b[0], 5);
    expect(y[1]).toBeCloseTo(w[3] + 2 * w[4] + 3 * w[5] + b[1], 5);
    const emb = new Embedding(4, 2);
    expect(emb.forward(tensor([3], { dtype: "i32" })).toArray()).toEqual(emb.weight.toArray().slice(6, 8));
    const n = new RMSNorm(2, 0).forward(tensor([3, 4])).toArray();
    expect(n[0]).toBeCloseTo(3 / Math.sqrt(12.5), 6);
    const d = new Dropout(0.5);
    d.eval();
    expect(d.forward(x).toArray()).toEqual([1, 2, 3]);
  });
});

describe("Linear4bit", () => {
  const configs = [
    { quantType: "nf4", doubleQuant: false, blocksize: 64 },
    { quantType: "nf4", doubleQuant: true, blocksize: 64 },
    { quantType: "fp4", doubleQuant: false, blocksize: 32 },
    { quantType: "fp4", doubleQuant: true, blocksize: 128 },
  ] as const;
  for (const c of configs) {
    it(`${c.quantType} dq=${c.doubleQuant}: forward = dequantize-then-matmul, dX = dY·dequant(W)`, () => {
      const [out, inF] = [24, 40];
      const wv = Float32Array.from(randomValues(out * inF, 7, -0.5, 0.5));
      const state = quantize4bit(wv, {
        quantType: c.quantType,
        doubleQuant: c.doubleQuant,
        blocksize: c.blocksize,
        shape: [out, inF],
      });
      const bias = tensor(Float32Array.from(randomValues(out, 8)));
      const layer = new Linear4bit(state, { bias });
      const W = tensor(dequantize4bit(state, "float32") as Float32Array, { shape: [out, inF] });
      const x = tensor(Float32Array.from(randomValues(3 * 5 * inF, 9)), { shape: [3, 5, inF], requiresGrad: true });
      const y = layer.forward(x);
      const ref = ops.matmul(x.detach(), W.transpose(0, 1)).add(bias);
      const yv = y.toArray();
      const rv = ref.toArray();
      const scale = Math.max(...rv.map(Math.abs));
      yv.forEach((v, i) => {
        expect(Math.abs(v - rv[i])).toBeLessThanOrEqual(1e-5 * scale);
      });
      const dy = tensor(Float32Array.from(randomValues(3 * 5 * out, 10)), { shape: [3, 5, out] });
      y.backward(dy);
      const dx = x.grad!.toArray();
      const dref = ops.matmul(dy, W).toArray();
      const dscale = Math.max(...dref.map(Math.abs));
      dx.forEach((v, i) => {
        expect(Math.abs(v - dref[i])).toBeLessThanOrEqual(1e-5 * dscale);
      });
      expect(layer.parameters().every((p) => !p.requiresGrad)).toBe(true);
      expect(bias.grad).toBeNull();
      layer.dispose();
    });
  }
  it("input gradient matches float64 finite differences", () => {
    const state = quantize4bit(Float32Array.from(randomValues(6 * 32, 11)), {
      shape: [6, 32],
      blocksize: 32,
      doubleQuant: true,
    });
    const layer = new Linear4bit(state, { backend: be64 });
    expect(gradCheck((x) => layer.forward(x), [{ values: randomValues(2 * 32, 12), shape: [2, 32] }])).toBeLessThan(
      1e-7,
    );
    layer.dispose();
  });
  it("fromWeight quantizes; stateDict is the bitsandbytes key set and loads back", () => {
    const w = tensor(Float32Array.from(randomValues(16 * 64, 13)), { shape: [16, 64] });
    const layer = Linear4bit.fromWeight(w, { doubleQuant: true });
    const sd = layer.stateDict();
    expect(Object.keys(sd).sort()).toEqual([
      "weight",
      "weight.absmax",
      "weight.nested_absmax",
      "weight.nested_quant_map",
      "weight.quant_map",
      "weight.quant_state.bitsandbytes__nf4",
    ]);
    expect(sd.weight.dtype).toBe("u8");
    expect(sd.weight.shape).toEqual([512, 1]);
    const other = Linear4bit.fromWeight(randn([16, 64]), { doubleQuant: true });
    other.loadStateDict(sd);
    const x = randn([2, 64]);
    expect(other.forward(x).toArray()).toEqual(layer.forward(x).toArray());
    layer.dispose();
    other.dispose();
  });
});

describe("memory stays flat over 100 training steps (AdamW, reference backend)", () => {
  it("current bytes after step 10 equal current bytes after step 100", () => {
    manualSeed(3);
    const net = new Net();
    const frozen = Linear4bit.fromWeight(randn([8, 8]), { doubleQuant: true });
    const opt = new AdamW(net.parameters(), { lr: 1e-2 });
    const ids = tensor(
      [
        [1, 2, 3, 4, 5, 6],
        [7, 8, 9, 10, 0, 1],
      ],
      { dtype: "i32" },
    );
    const labels = tensor(
      [
        [2, 3, 4, 5, 6, -100],
        [8, 9, 10, 0, 1, -100],
      ],
      { dtype: "i32" },
    );
    let at10 = 0;
    const losses: number[] = [];
    for (let step = 1; step <= 100; step++) {
      const loss = tidy(() => {
        const h = net.emb.forward(ids);
        const h2 = frozen.forward(h);
        const h3 = net.block.forward(h2);
        const logits = net.head.forward(h3);
        return ops.crossEntropy(logits.reshape([-1, 11]), labels.reshape([-1]));
      });
      loss.backward();
      losses.push(loss.item());
      loss.dispose();
      opt.step();
      opt.zeroGrad();
      if (step === 10) at10 = memoryStats("cpu").currentBytes;
    }
    expect(memoryStats("cpu").currentBytes).toBe(at10);
    expect(losses[99]).toBeLessThan(losses[0] * 0.5);
    opt.dispose();
    net.dispose();
    frozen.dispose();
  });
});

void t64;
