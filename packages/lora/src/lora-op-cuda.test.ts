// The lora.linear op's `cuda` kernel entry, checked without a GPU: a reference backend named "cuda" stands in for
// @qlora/cuda-kernels' backend (kernels are looked up by backend name). The entry runs the accumulating forms, so
// the two rank-r products reach Backend.matmul with an output to accumulate into and inner dimension r — the calls
// the cuda backend routes to its fused LoRA kernel (csrc/kernels/lora.cu, r ≤ 64). The real cuda backend runs the
// same comparison in packages/cuda-kernels/src/lora-accumulate.test.ts (GPU bundle; skipped without a device).
import { type Backend, type MatmulOptions, createReferenceBackend, referenceBackend, tensor } from "@qlora/tensor";
import { randomValues } from "@qlora/tensor/testing";
import { describe, expect, it } from "vitest";
import { loraLinearOp } from "./lora-op";

const IN = 37;
const OUT = 29;
const R = 5;
const ROWS = 11;

function maxAbs(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe("lora.linear: the cuda kernel entry", () => {
  it("is declared", () => {
    expect(loraLinearOp.kernelBackends).toContain("cuda");
  });

  it("matches the reference (forward, dX, dA, dB) and accumulates the rank-r products into y and dX", () => {
    const cuda = createReferenceBackend({ name: "cuda" });
    const accumulating: { k: number; transA: boolean; transB: boolean; beta: number }[] = [];
    const matmul = cuda.matmul.bind(cuda);
    (cuda as { matmul: Backend["matmul"] }).matmul = (a, b, o: MatmulOptions, out) => {
      if (out) accumulating.push({ k: o.k, transA: !!o.transA, transB: !!o.transB, beta: o.beta ?? 0 });
      return matmul(a, b, o, out);
    };
    const mk = (n: number, seed: number) => Float32Array.from(randomValues(n, seed));
    const run = (be: Backend, impl: "auto" | "reference") => {
      const shapes = [
        [ROWS, IN],
        [R, IN],
        [OUT, R],
      ];
      const ts = shapes.map((shape, i) =>
        tensor(mk(shape[0] * shape[1], 41 + i), { shape, backend: be, requiresGrad: true }),
      );
      const W = tensor(mk(OUT * IN, 44), { shape: [OUT, IN], backend: be });
      const y = loraLinearOp.run(ts, { base: { kind: "dense", weight: W }, scaling: 0.75 }, impl);
      y.backward(tensor(mk(ROWS * OUT, 45), { shape: [ROWS, OUT], backend: be }));
      return [y, ...ts.map((t) => t.grad!)].map((t) => Float32Array.from(t.toTypedArray()));
    };
    const k = run(cuda, "auto");
    const r = run(referenceBackend, "reference");
    for (let i = 0; i < 4; i++) expect(maxAbs(k[i], r[i])).toBeLessThan(1e-5);
    // up-projection y += s·t·Bᵀ (B stored [out, r]) and the input gradient dX += gt·A (A stored [r, in])
    expect(accumulating).toContainEqual({ k: R, transA: false, transB: true, beta: 1 });
    expect(accumulating).toContainEqual({ k: R, transA: false, transB: false, beta: 1 });
  });
});
