// PEFT's LoRA math (scripts/make_fixtures.py, plain torch, float64) against this package: forward and
// gradients of LoRA / rsLoRA / DoRA (dense and 4-bit base), every deterministic init, merges.
import { readFileSync } from "node:fs";
import { Generator, Linear, Linear4bit, Module, type Tensor } from "@qlora/tensor";
import { f64Tensor, gradCheckBackend } from "@qlora/tensor/testing";
import { describe, expect, it } from "vitest";
import { LoraLinear, LoraModel, doraLinear, loraLinear, loraScaling, nf4RoundTrip, svdLowRank } from "../src";
import { loftq, olora, pissa } from "../src/init";
import { mat, qr, svd, transpose as transposeMat } from "../src/linalg";

interface T {
  shape: number[];
  data: number[];
}
// biome-ignore lint/suspicious/noExplicitAny: fixture cases mix tensors ({shape, data}) and scalars by key
type Case = Record<string, any>;
const fixture = JSON.parse(readFileSync(new URL("./fixtures/lora_fixtures.json", import.meta.url), "utf8")) as {
  cases: Record<string, Case>;
};
const C = fixture.cases;

const t64 = (v: T, grad = false): Tensor => f64Tensor(v.data, v.shape, grad);

/** max |a − e| / (atol + |e|·rtol) ≤ 1 passes. */
function close(actual: ArrayLike<number>, expected: T, atol: number, rtol = atol): void {
  expect(actual.length).toBe(expected.data.length);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < actual.length; i++) {
    const q = Math.abs(actual[i] - expected.data[i]) / (atol + rtol * Math.abs(expected.data[i]));
    if (!(q <= worst)) {
      worst = q;
      at = i;
    }
  }
  expect(worst, `worst at ${at}: ${actual[at]} vs ${expected.data[at]}`).toBeLessThanOrEqual(1);
}

describe("LoRA forward and backward vs PEFT's math (float64 reference backend)", () => {
  for (const name of ["lora_plain", "lora_dropout", "lora_rslora"]) {
    it(name, () => {
      const c = C[name];
      expect(loraScaling(c.alpha, c.r, c.use_rslora)).toBe(c.scaling);
      const x = t64(c.x, true);
      const A = t64(c.A, true);
      const B = t64(c.B, true);
      const W = t64(c.W);
      const b = t64(c.bias);
      const mask = c.p > 0 ? t64(c.mask) : null;
      const y0 = loraLinear(x, A, B, { base: { kind: "dense", weight: W }, scaling: c.scaling, mask });
      const y = y0.add(b);
      close(y.toTypedArray(), c.y, 1e-12, 1e-10);
      y.backward(t64(c.G));
      close(x.grad!.toTypedArray(), c.dX, 1e-12, 1e-10);
      close(A.grad!.toTypedArray(), c.dA, 1e-12, 1e-10);
      close(B.grad!.toTypedArray(), c.dB, 1e-12, 1e-10);
    });
  }

  it("the LoraLinear layer (eval, so no dropout) gives PEFT's output and delta weight", () => {
    const c = C.lora_rslora;
    const [out, inF] = c.W.shape;
    const base = new Linear(inF, out, { init: { weight: t64(c.W), bias: t64(c.bias) } });
    const layer = new LoraLinear(base);
    layer.addAdapter("default", {
      r: c.r,
      alpha: c.alpha,
      scaling: c.scaling,
      dropout: 0,
      useDora: false,
      init: true,
      generator: new Generator(1),
    });
    layer.loraA.get("default").loadStateDict({ weight: t64(c.A) });
    layer.loraB.get("default").loadStateDict({ weight: t64(c.B) });
    layer.eval();
    const y = layer.forward(t64(c.x));
    close(y.toTypedArray(), c.y, 1e-12, 1e-10);
    close(layer.deltaWeight("default"), c.delta_weight, 1e-6, 1e-6); // f32 result
  });
});

describe("DoRA vs PEFT's math", () => {
  for (const name of ["dora_dense", "dora_dense_dropout", "dora_4bit"]) {
    it(`${name}: forward, dX, dA, dB, dm`, () => {
      const c = C[name];
      const [out, inF] = c.W.shape;
      let base: Linear | Linear4bit;
      if (c.quantized) {
        // our NF4 of the original weight must be the dequantized weight the script fed PEFT's math
        base = Linear4bit.fromWeight(
          { values: Float32Array.from(c.W_original.data), shape: [out, inF] },
          { backend: gradCheckBackend },
        );
        close(base.dequantizedWeight().toTypedArray(), c.W, 1e-12, 0);
      } else base = new Linear(inF, out, { init: { weight: t64(c.W) } });
      const layer = new LoraLinear(base);
      layer.addAdapter("default", {
        r: c.r,
        alpha: c.alpha,
        scaling: c.scaling,
        dropout: 0,
        useDora: true,
        init: true,
        generator: new Generator(1),
      });
      layer.loraA.get("default").loadStateDict({ weight: t64(c.A) });
      layer.loraB.get("default").loadStateDict({ weight: t64(c.B) });
      // the magnitude is initialised to ‖W + s·B·A‖ per row (computed with the adapter's current A, B)
      close(layer.doraWeightNorm("default"), c.m_init, 1e-6, 1e-6);
      const x = t64(c.x, true);
      const A = layer.loraA.get("default").weight;
      const B = layer.loraB.get("default").weight;
      const m = t64(c.m, true);
      const mask = c.p > 0 ? t64(c.mask) : null;
      const yd = doraLinear(x, A, B, m, {
        base: layer.base(),
        scaling: c.scaling,
        mask,
        weightNorm: () => Float64Array.from(layer.doraWeightNorm("default")) as unknown as Float32Array,
      });
      const y = yd.add(t64(c.bias));
      close(y.toTypedArray(), c.y, 1e-6, 1e-6); // the norm is an f32 computation
      y.backward(t64(c.G));
      close(x.grad!.toTypedArray(), c.dX, 1e-6, 1e-5);
      close(A.grad!.toTypedArray(), c.dA, 1e-6, 1e-5);
      close(B.grad!.toTypedArray(), c.dB, 1e-6, 1e-5);
      close(m.grad!.toTypedArray(), c.dm, 1e-6, 1e-5);
    });
  }
  it("DoRA merge = (m/‖W+sBA‖)·(W+sBA), and unmerge restores W (dense)", () => {
    const c = C.dora_dense;
    const [out, inF] = c.W.shape;
    const base = new Linear(inF, out, { init: { weight: t64(c.W), bias: t64(c.bias) } });
    const layer = new LoraLinear(base);
    layer.addAdapter("default", {
      r: c.r,
      alpha: c.alpha,
      scaling: c.scaling,
      dropout: 0,
      useDora: true,
      init: true,
      generator: new Generator(1),
    });
    layer.loraA.get("default").loadStateDict({ weight: t64(c.A) });
    layer.loraB.get("default").loadStateDict({ weight: t64(c.B) });
    layer.magnitude.get("default").loadStateDict({ weight: t64(c.m) });
    layer.merge();
    close((layer.baseLayer as Linear).weight.toTypedArray(), c.merged, 1e-6, 1e-5);
    layer.unmerge();
    close((layer.baseLayer as Linear).weight.toTypedArray(), c.W, 1e-6, 1e-5);
  });
});

describe("initialisations vs PEFT's math", () => {
  const m64 = (v: T) => mat(v.shape[0], v.shape[1], v.data);
  it("pissa: A, B and the residual base", () => {
    const c = C.pissa;
    const r = pissa(m64(c.W), c.r, c.scaling, null, new Generator(1));
    close(svd(m64(c.W)).s, c.S, 1e-12, 1e-10);
    close(r.a, c.A, 1e-6, 1e-5);
    close(r.b, c.B, 1e-6, 1e-5);
    close(r.baseWeight!, c.residual, 1e-6, 1e-5);
  });
  it("pissa_niter_4 (randomized SVD): on a matrix with a decaying spectrum, the same factors as exact pissa", () => {
    // W = Q1·diag(σ)·Q2ᵀ with σ = 10, 6, 3, 2, then 1e-3: the top-4 subspace is well separated (for a flat
    // spectrum a rank-r randomized SVD without oversampling is approximate, in torch.svd_lowrank too)
    const c = C.pissa;
    const [o, i] = c.W.shape;
    const q1 = qr(m64(c.W)).q; // [o, min] orthonormal columns
    const q2 = qr(transposeMat(m64(c.W))).q; // [i, min]
    const k = Math.min(o, i);
    const sig = Array.from({ length: k }, (_, j) => [10, 6, 3, 2][j] ?? 1e-3);
    const w = mat(o, i);
    for (let a = 0; a < o; a++)
      for (let b = 0; b < i; b++) {
        let v = 0;
        for (let j = 0; j < k; j++) v += q1.data[a * k + j] * sig[j] * q2.data[b * k + j];
        w.data[a * i + b] = v;
      }
    const exact = pissa(w, c.r, c.scaling, null, new Generator(1));
    const fast = pissa(w, c.r, c.scaling, 4, new Generator(5));
    const asT = (f: Float32Array): T => ({ shape: [f.length], data: Array.from(f) });
    close(fast.a, asT(exact.a), 1e-5, 1e-4);
    close(fast.b, asT(exact.b), 1e-5, 1e-4);
    close(fast.baseWeight!, asT(exact.baseWeight!), 1e-5, 1e-4);
    const low = svdLowRank(w, c.r, 4, (n) => new Generator(5).normal(n));
    close(low.s, { shape: [4], data: [10, 6, 3, 2] }, 1e-9, 1e-9);
  });
  for (const name of ["olora", "olora_wide"])
    it(`${name}: Q/R factors with LAPACK's signs and the residual base`, () => {
      const c = C[name];
      const r = olora(m64(c.W), c.r, c.scaling);
      close(r.a, c.A, 1e-6, 1e-5);
      close(r.b, c.B, 1e-6, 1e-5);
      close(r.baseWeight!, c.residual, 1e-6, 1e-5);
    });
  for (const name of ["loftq_1", "loftq_2"])
    it(`${name}: A, B and the NF4-dequantized base`, () => {
      const c = C[name];
      const r = loftq(m64(c.W), c.r, c.iters);
      close(r.baseWeight!, c.base, 1e-7, 0);
      close(r.a, c.A, 1e-5, 1e-4);
      close(r.b, c.B, 1e-5, 1e-4);
    });
  it("our NF4 round trip is the script's bitsandbytes-style NF4", () => {
    const c = C.dora_4bit;
    const [o, i] = c.W.shape;
    close(nf4RoundTrip(Float32Array.from(c.W_original.data), [o, i]), c.W, 1e-12, 0);
  });
  it("true (Kaiming-uniform A, zero B), gaussian (A ~ N(0, 1/r), zero B) and false (random B): distributions (PyTorch's RNG stream differs)", () => {
    const model = new Linear(256, 64, { bias: false });
    const lm = LoraModel.inject(wrap(model), { r: 16, target_modules: ["proj"] }, { generator: new Generator(3) });
    const layer = lm.loraLayers()[0][1];
    const a = layer.loraA.get("default").weight.toTypedArray();
    const bound = 1 / Math.sqrt(256);
    expect(Math.max(...Array.from(a, Math.abs))).toBeLessThanOrEqual(bound);
    expect(Math.max(...Array.from(a, Math.abs))).toBeGreaterThan(0.95 * bound);
    const meanSq = Array.from(a).reduce((s, v) => s + v * v, 0) / a.length;
    expect(meanSq).toBeCloseTo((bound * bound) / 3, 4); // var of U(−b, b) = b²/3
    expect(Array.from(layer.loraB.get("default").weight.toTypedArray()).every((v) => v === 0)).toBe(true);
    const lm2 = LoraModel.inject(
      wrap(new Linear(256, 64)),
      { r: 16, target_modules: ["proj"], init_lora_weights: "gaussian" },
      { generator: new Generator(4) },
    );
    const g = lm2.loraLayers()[0][1].loraA.get("default").weight.toTypedArray();
    const std = Math.sqrt(Array.from(g).reduce((s, v) => s + v * v, 0) / g.length);
    expect(std).toBeGreaterThan((1 / 16) * 0.95);
    expect(std).toBeLessThan((1 / 16) * 1.05);
    // false: A and B both keep nn.Linear's default init (B ~ U(±1/√r)): not a no-op
    const lm3 = LoraModel.inject(
      wrap(new Linear(256, 64)),
      { r: 16, target_modules: ["proj"], init_lora_weights: false },
      { generator: new Generator(5) },
    );
    const b3 = Array.from(lm3.loraLayers()[0][1].loraB.get("default").weight.toTypedArray(), Math.abs);
    expect(Math.max(...b3)).toBeLessThanOrEqual(1 / 4);
    expect(Math.max(...b3)).toBeGreaterThan(0.9 / 4);
  });
});

function wrap(lin: Linear): Module {
  const m = new Module();
  m.registerModule("proj", lin);
  return m;
}
