import { cpuBackend, cpuBackendInfo } from "@qlora/cpu-kernels";
import {
  type Backend,
  Linear4bit,
  type Tensor,
  dropoutMask,
  manualSeed,
  referenceBackend,
  tensor,
} from "@qlora/tensor";
import { f64Tensor, gradCheck, gradCheckBackend, randomValues } from "@qlora/tensor/testing";
import { describe, expect, it } from "vitest";
import { LoraError } from "./errors";
import {
  type LoraBase,
  loraBackward,
  loraBackwardAccumulate,
  loraForward,
  loraForwardAccumulate,
  loraLinear,
  loraLinearOp,
  loraLinearReference,
} from "./lora-op";

const TOL = 1e-7;
const M = 5;
const IN = 7;
const OUT = 6;
const R = 3;

describe("lora.linear: finite-difference gradients (float64)", () => {
  it("dense base, no dropout: dX, dA, dB", () => {
    const W = f64Tensor(randomValues(OUT * IN, 11), [OUT, IN]);
    const err = gradCheck(
      (x, a, b) => loraLinear(x, a, b, { base: { kind: "dense", weight: W }, scaling: 1.7, mask: null }),
      [
        { values: randomValues(M * IN, 1), shape: [M, IN] },
        { values: randomValues(R * IN, 2), shape: [R, IN] },
        { values: randomValues(OUT * R, 3), shape: [OUT, R] },
      ],
    );
    expect(err).toBeLessThan(TOL);
    W.dispose();
  });
  it("dense base, 3-D x, with a dropout mask (a constant input)", () => {
    const W = f64Tensor(randomValues(OUT * IN, 12), [OUT, IN]);
    const maskValues = Array.from(randomValues(2 * M * IN, 4), (u) => (u > 0 ? 1 / 0.7 : 0));
    const err = gradCheck(
      (x, a, b, mask) => loraLinear(x, a, b, { base: { kind: "dense", weight: W }, scaling: 0.5, mask }),
      [
        { values: randomValues(2 * M * IN, 5), shape: [2, M, IN] },
        { values: randomValues(R * IN, 6), shape: [R, IN] },
        { values: randomValues(OUT * R, 7), shape: [OUT, R] },
        { values: maskValues, shape: [2, M, IN], grad: false },
      ],
    );
    expect(err).toBeLessThan(TOL);
    W.dispose();
  });
  it("no base (a second adapter's path)", () => {
    const err = gradCheck(
      (x, a, b) => loraLinear(x, a, b, { base: null, scaling: 2, mask: null }),
      [
        { values: randomValues(M * IN, 8), shape: [M, IN] },
        { values: randomValues(R * IN, 9), shape: [R, IN] },
        { values: randomValues(OUT * R, 10), shape: [OUT, R] },
      ],
    );
    expect(err).toBeLessThan(TOL);
  });
  it("4-bit base: dX includes the base's input gradient", () => {
    const w = Float32Array.from(randomValues(OUT * 64, 13));
    const lin = Linear4bit.fromWeight({ values: w, shape: [OUT, 64] }, { backend: gradCheckBackend });
    const base: LoraBase = { kind: "4bit", weight: lin.quantizedWeight };
    const err = gradCheck(
      (x, a, b) => loraLinear(x, a, b, { base, scaling: 1.3, mask: null }),
      [
        { values: randomValues(3 * 64, 14), shape: [3, 64] },
        { values: randomValues(R * 64, 15), shape: [R, 64] },
        { values: randomValues(OUT * R, 16), shape: [OUT, R] },
      ],
    );
    expect(err).toBeLessThan(TOL);
    lin.dispose();
  });
});

function grads(fn: () => Tensor, ts: Tensor[], g: Tensor): Float32Array[] {
  const y = fn();
  y.backward(g);
  const out = ts.map((t) => Float32Array.from(t.grad!.toTypedArray()));
  for (const t of ts) {
    t.grad?.dispose();
    t.grad = null;
  }
  y.dispose();
  return out;
}

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let w = 0;
  for (let i = 0; i < a.length; i++) w = Math.max(w, Math.abs(a[i] - b[i]));
  return w;
}

describe("lora.linear: the fused op against the composed reference", () => {
  const native = cpuBackendInfo(cpuBackend)?.native === true;
  const backends: [string, Backend][] = [
    ["reference", referenceBackend],
    ["cpu", cpuBackend],
  ];
  if (!native)
    it.skip(`cpu backend: native addon not loaded (${cpuBackendInfo(cpuBackend)?.reason ?? "unknown"}); the "cpu" cases ran on its reference fallback`, () => {});
  for (const [name, be] of backends) {
    for (const quant of [false, true])
      it(`${name}, ${quant ? "4-bit" : "dense"} base, dropout mask: forward and gradients agree`, () => {
        manualSeed(3);
        const inF = 128;
        const x = tensor(Float32Array.from(randomValues(4 * 9 * inF, 1)), { shape: [4, 9, inF], backend: be });
        const wv = Float32Array.from(randomValues(OUT * inF, 2));
        const lin = Linear4bit.fromWeight({ values: wv, shape: [OUT, inF] }, { backend: be, doubleQuant: true });
        const W = tensor(wv, { shape: [OUT, inF], backend: be });
        const base: LoraBase = quant ? { kind: "4bit", weight: lin.quantizedWeight } : { kind: "dense", weight: W };
        const A = tensor(Float32Array.from(randomValues(R * inF, 3)), {
          shape: [R, inF],
          backend: be,
          requiresGrad: true,
        });
        const B = tensor(Float32Array.from(randomValues(OUT * R, 4)), {
          shape: [OUT, R],
          backend: be,
          requiresGrad: true,
        });
        x.requiresGrad = true;
        const mask = dropoutMask(x.shape, 0.25, { backend: be });
        const g = tensor(Float32Array.from(randomValues(4 * 9 * OUT, 5)), { shape: [4, 9, OUT], backend: be });
        const args = { base, scaling: 0.75, mask };
        const yf = loraLinear(x, A, B, args);
        const yr = loraLinearReference(x, A, B, args);
        expect(maxAbs(yf.toTypedArray(), yr.toTypedArray())).toBeLessThan(1e-5);
        expect(yf.gradFn?.op).toBe("lora.linear");
        yf.dispose();
        yr.dispose();
        const gf = grads(() => loraLinear(x, A, B, args), [x, A, B], g);
        const gr = grads(() => loraLinearReference(x, A, B, args), [x, A, B], g);
        for (let i = 0; i < 3; i++) expect(maxAbs(gf[i], gr[i])).toBeLessThan(1e-4);
        for (const t of [x, W, A, B, mask, g]) t.dispose();
        lin.dispose();
      });
  }
});

describe("lora.linear: what the node keeps", () => {
  it("saves x, t = x·Aᵀ, the mask and aliases of A and B; nothing of the base weight", () => {
    const be = referenceBackend;
    const inF = 64;
    const lin = Linear4bit.fromWeight(
      { values: Float32Array.from(randomValues(OUT * inF, 2)), shape: [OUT, inF] },
      { backend: be },
    );
    const x = tensor(Float32Array.from(randomValues(3 * inF, 1)), { shape: [3, inF], backend: be });
    const A = tensor(Float32Array.from(randomValues(R * inF, 3)), { shape: [R, inF], backend: be, requiresGrad: true });
    const B = tensor(new Float32Array(OUT * R), { shape: [OUT, R], backend: be, requiresGrad: true });
    const mask = dropoutMask(x.shape, 0.1, { backend: be });
    const y = loraLinear(x, A, B, { base: { kind: "4bit", weight: lin.quantizedWeight }, scaling: 1, mask });
    const saved = y.gradFn!.saved;
    expect(saved.map((t) => t.shape.join("x"))).toEqual([
      `3x${inF}`,
      `3x${R}`,
      `${R}x${inF}`,
      `${OUT}x${R}`,
      `3x${inF}`,
    ]);
    expect(saved[2].buffer).toBe(A.buffer); // A and B are aliases of the parameters, not copies
    expect(saved[3].buffer).toBe(B.buffer);
    y.backward(tensor(new Float32Array(3 * OUT).fill(1), { shape: [3, OUT], backend: be }));
    expect(x.grad).toBeNull(); // frozen input: no gradient computed
    expect(A.grad).not.toBeNull();
    for (const t of [x, A, B, mask, y]) t.dispose();
    lin.dispose();
  });
  it("no node (and nothing saved) when no input requires grad", () => {
    const x = tensor([[1, 2]]);
    const A = tensor([[1, 0]]);
    const B = tensor([[2]]);
    const y = loraLinearOp([x, A, B], { base: null, scaling: 1 });
    expect(y.gradFn).toBeNull();
    expect(Array.from(y.toTypedArray())).toEqual([2]);
  });
  it("bad shapes are a LoraError naming lora_A / lora_B", () => {
    const x = tensor([[1, 2, 3]]);
    expect(() => loraLinear(x, tensor([[1, 2]]), tensor([[1]]), { base: null, scaling: 1, mask: null })).toThrow(
      LoraError,
    );
    expect(() => loraLinear(x, tensor([[1, 2]]), tensor([[1]]), { base: null, scaling: 1, mask: null })).toThrow(
      /lora_A/,
    );
  });
});

describe("lora.linear: the accumulating (cpu kernel) forms against the reference forms", () => {
  for (const quant of [false, true])
    for (const withMask of [false, true])
      for (const withBase of [true, false])
        it(`${quant ? "4-bit" : "dense"} base${withBase ? "" : " (absent)"}${withMask ? ", dropout mask" : ""}`, () => {
          const be = referenceBackend;
          const inF = 64;
          const x = tensor(Float32Array.from(randomValues(2 * 5 * inF, 21)), { shape: [2, 5, inF], backend: be });
          const wv = Float32Array.from(randomValues(OUT * inF, 22));
          const lin = Linear4bit.fromWeight({ values: wv, shape: [OUT, inF] }, { backend: be });
          const W = tensor(wv, { shape: [OUT, inF], backend: be });
          const base: LoraBase | null = !withBase
            ? null
            : quant
              ? { kind: "4bit", weight: lin.quantizedWeight }
              : { kind: "dense", weight: W };
          const A = tensor(Float32Array.from(randomValues(R * inF, 23)), { shape: [R, inF], backend: be });
          const B = tensor(Float32Array.from(randomValues(OUT * R, 24)), { shape: [OUT, R], backend: be });
          const mask = withMask ? dropoutMask(x.shape, 0.3, { backend: be }) : null;
          const g = tensor(Float32Array.from(randomValues(2 * 5 * OUT, 25)), { shape: [2, 5, OUT], backend: be });
          const args = { base, scaling: 1.25, mask };
          const ref = loraForward(x, A, B, args);
          const acc = loraForwardAccumulate(x, A, B, args);
          expect(maxAbs(acc.y.toTypedArray(), ref.y.toTypedArray())).toBeLessThan(1e-5);
          const needs = { x: true, A: true, B: true };
          const saved = { x, t: ref.t, mask };
          const gr = loraBackward(g, saved, A, B, args, needs);
          const ga = loraBackwardAccumulate(g, saved, A, B, args, needs);
          for (let i = 0; i < 3; i++) expect(maxAbs(ga[i]!.toTypedArray(), gr[i]!.toTypedArray())).toBeLessThan(1e-4);
          const onlyB = loraBackwardAccumulate(g, saved, A, B, args, { x: false, A: false, B: true });
          expect(onlyB[0]).toBeNull();
          expect(onlyB[1]).toBeNull();
          lin.dispose();
        });

  it.skipIf(!(cpuBackendInfo(cpuBackend)?.native === true))(
    "through the op on the native cpu backend (kernel) vs the reference implementation (needs the native addon)",
    () => {
      const inF = 128;
      const mk = (n: number, seed: number) => Float32Array.from(randomValues(n, seed));
      const inputs = [
        { values: mk(7 * inF, 31), shape: [7, inF], requiresGrad: true },
        { values: mk(R * inF, 32), shape: [R, inF], requiresGrad: true },
        { values: mk(OUT * R, 33), shape: [OUT, R], requiresGrad: true },
      ];
      const run = (be: Backend, impl: "auto" | "reference") => {
        const ts = inputs.map((i) => tensor(i.values, { shape: i.shape, backend: be, requiresGrad: true }));
        const W = tensor(mk(OUT * inF, 34), { shape: [OUT, inF], backend: be });
        const y = loraLinearOp.run(ts, { base: { kind: "dense", weight: W }, scaling: 0.5 }, impl);
        y.backward(tensor(mk(7 * OUT, 35), { shape: [7, OUT], backend: be }));
        return [y, ...ts.map((t) => t.grad!)].map((t) => Float32Array.from(t.toTypedArray()));
      };
      const k = run(cpuBackend, "auto");
      const r = run(referenceBackend, "reference");
      for (let i = 0; i < 4; i++) expect(maxAbs(k[i], r[i])).toBeLessThan(1e-4);
      expect(loraLinearOp.kernelBackends).toContain("cpu");
    },
  );
});

describe("lora.linear: bf16 activations and base", () => {
  for (const [name, be] of [
    ["reference", referenceBackend],
    ["cpu", cpuBackend],
  ] as const)
    it(`${name}: a bf16 base weight and bf16 x run (reference form) and match the f32 result to bf16 precision`, () => {
      const inF = 64;
      const xv = Float32Array.from(randomValues(4 * inF, 41));
      const wv = Float32Array.from(randomValues(OUT * inF, 42));
      const A = tensor(Float32Array.from(randomValues(R * inF, 43)), {
        shape: [R, inF],
        backend: be,
        requiresGrad: true,
      });
      const B = tensor(Float32Array.from(randomValues(OUT * R, 44)), {
        shape: [OUT, R],
        backend: be,
        requiresGrad: true,
      });
      const out = (dtype: "f32" | "bf16") => {
        const x = tensor(xv, { shape: [4, inF], backend: be, dtype });
        x.requiresGrad = true;
        const W = tensor(wv, { shape: [OUT, inF], backend: be, dtype });
        const y = loraLinear(x, A, B, { base: { kind: "dense", weight: W }, scaling: 0.5, mask: null });
        y.sum().backward();
        const r = [y, x.grad!, A.grad!].map((t) => Float32Array.from(t.toTypedArray()));
        A.grad = null;
        B.grad = null;
        return r;
      };
      const f = out("f32");
      const h = out("bf16");
      for (let i = 0; i < 3; i++) expect(maxAbs(h[i], f[i])).toBeLessThan(0.1);
    });
});
