// The fused LoRA rank-r accumulate (csrc/kernels/lora.cu) as the backend reaches it: matmul with an output
// (C = α·op(A)·op(B) + β·C) and inner dimension ≤ 64 → the addon's loraAccumulate. Without a GPU: the routing
// decisions and the addon's argument checks. With one (GPU bundle, scripts/gpu-check.sh): parity with the reference
// backend on odd shapes, f32 and bf16, every β case, and the lora.linear op on the cuda backend vs its reference.
import { loraLinearOp } from "@qlora/lora";
import {
  type Backend,
  Linear4bit,
  type MatmulOptions,
  type QuantizedWeight,
  referenceBackend,
  tensor,
} from "@qlora/tensor";
import { describe, expect, it } from "vitest";
import { type CudaBackend, createCudaBackend, cudaDeviceStatus } from "./index";
import { LORA_MAX_RANK, loraAccumulatePlan, loraRouteEnabled } from "./lora-route";
import { tryLoadNative } from "./native";

const status = cudaDeviceStatus();
const title = (what: string) => (status.available ? what : `${what} (skipped: no CUDA device: ${status.reason})`);

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32) * 2 - 1;
  };
}
const values = (n: number, seed: number) => {
  const r = lcg(seed);
  return Float32Array.from({ length: n }, r);
};

describe("loraAccumulatePlan: which accumulating matmuls take the fused rank-r kernel", () => {
  const base = { batch: 1, m: 300, n: 257 };
  it("inner dimension 1..64, A not transposed: the kernel, B layout from transB", () => {
    for (const k of [1, 16, 33, LORA_MAX_RANK]) {
      expect(loraAccumulatePlan({ ...base, k, transB: true })).toEqual({ rows: 300, n: 257, r: k, bTransposed: true });
      expect(loraAccumulatePlan({ ...base, k })).toEqual({ rows: 300, n: 257, r: k, bTransposed: false });
    }
  });
  it("inner dimension above 64, zero, or a transposed A: the GEMM path", () => {
    expect(loraAccumulatePlan({ ...base, k: LORA_MAX_RANK + 1 })).toBeNull();
    expect(loraAccumulatePlan({ ...base, k: 0 })).toBeNull();
    expect(loraAccumulatePlan({ ...base, k: 16, transA: true })).toBeNull();
  });
  it("a batch folds into rows only when B is shared (bBatchStride 0) and A is dense", () => {
    const o: MatmulOptions = { batch: 3, m: 7, n: 9, k: 4, bBatchStride: 0 };
    expect(loraAccumulatePlan(o)).toEqual({ rows: 21, n: 9, r: 4, bTransposed: false });
    expect(loraAccumulatePlan({ ...o, aBatchStride: 28 })).toEqual({ rows: 21, n: 9, r: 4, bTransposed: false });
    expect(loraAccumulatePlan({ ...o, bBatchStride: undefined })).toBeNull(); // one B per batch matrix
    expect(loraAccumulatePlan({ ...o, aBatchStride: 0 })).toBeNull(); // A broadcast over the batch
  });
  it("QLORA_CUDA_LORA=unfused turns the route off", () => {
    expect(loraRouteEnabled({})).toBe(true);
    expect(loraRouteEnabled({ QLORA_CUDA_LORA: "unfused" })).toBe(false);
  });
});

describe.skipIf(!status.addonLoaded)("the addon's loraAccumulate checks its arguments before any launch", () => {
  const call = (...args: unknown[]) => (tryLoadNative().native!.loraAccumulate as (...a: unknown[]) => void)(...args);
  it("is exported", () => {
    expect(typeof tryLoadNative().native!.loraAccumulate).toBe("function");
  });
  it("dtype f32 or bf16 only, rank 1..64, booleans and integers where expected, known handles", () => {
    expect(() => call(1, 2, 1, true, 4, 4, 4, 1, 3)).toThrow(/dtype must be f32 \(0\) or bf16 \(2\)/);
    expect(() => call(1, 2, 0, true, 4, 4, 65, 1, 3)).toThrow(RangeError);
    expect(() => call(1, 2, 0, true, 4, 4, 65, 1, 3)).toThrow(/r: expected an integer in \[1, 64\]/);
    expect(() => call(1, 2, 0, true, 4, 4, 0, 1, 3)).toThrow(/r: expected an integer in \[1, 64\]/);
    expect(() => call(1, 2, 0, "yes", 4, 4, 4, 1, 3)).toThrow(/bTransposed: expected a boolean/);
    expect(() => call(1, 2, 0, true, -1, 4, 4, 1, 3)).toThrow(/m: expected an integer/);
    expect(() => call(1, 2, 0, true, 4, 4.5, 4, 1, 3)).toThrow(/n: expected an integer/);
    expect(() => call(1, 2, 0, true, 4, 4, 4, "s", 3)).toThrow(/scale: expected a number/);
    expect(() => call(4242, 2, 0, true, 4, 4, 4, 1, 3)).toThrow(/t: unknown or freed buffer handle 4242/);
  });
});

describe.skipIf(!status.available)(title("fused LoRA accumulate through cuda matmul vs the reference backend"), () => {
  const be: CudaBackend | undefined = status.available ? createCudaBackend() : undefined;

  const compare = (
    o: MatmulOptions,
    aLen: number,
    bLen: number,
    dtype: "f32" | "bf16",
    withC: boolean,
    seed: number,
  ) => {
    const a = values(aLen, seed);
    const b = values(bLen, seed + 1);
    const c = values(o.batch * o.m * o.n, seed + 2);
    const run = (backend: Backend) => {
      const ab = backend.fromHost(a, "f32");
      const bb = backend.fromHost(b, "f32");
      const [ac, bc] =
        dtype === "bf16"
          ? [ab, bb].map((x, i) => backend.copy(x, { shape: [[aLen, bLen][i]], strides: [1], offset: 0 }, "bf16"))
          : [ab, bb];
      const cb = withC ? backend.fromHost(c, "f32") : undefined;
      const out = backend.matmul(ac, bc, o, cb);
      const host = Float32Array.from(backend.toHost(out) as Float32Array);
      for (const x of new Set([ab, bb, ac, bc, out])) backend.free(x);
      return host;
    };
    const got = run(be!);
    const want = run(referenceBackend);
    expect(got.length).toBe(want.length);
    let worst = 0;
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]) / (1 + Math.abs(want[i])));
    expect(worst).toBeLessThan(1e-5);
  };

  for (const r of [1, 7, 16, 33, 64]) {
    for (const transB of [true, false]) {
      for (const [alpha, beta] of [
        [0.7, 1],
        [1.3, 0],
        [-0.5, 0.25],
      ]) {
        it(`r=${r}, B ${transB ? "[n, r]" : "[r, n]"}, alpha ${alpha}, beta ${beta}, 300×257, f32`, () => {
          compare({ batch: 1, m: 300, n: 257, k: r, transB, alpha, beta }, 300 * r, 257 * r, "f32", true, r * 10 + 1);
        });
      }
    }
    it(`r=${r}, bf16 t and B, y f32, beta 1`, () => {
      compare(
        { batch: 1, m: 129, n: 383, k: r, transB: true, alpha: 0.5, beta: 1 },
        129 * r,
        383 * r,
        "bf16",
        true,
        r + 5,
      );
    });
  }
  it("no output given with alpha ≠ 1: a fresh zeroed result", () => {
    compare({ batch: 1, m: 65, n: 31, k: 8, alpha: 2.5 }, 65 * 8, 31 * 8, "f32", false, 77);
  });
  it("a batch of 3 over a shared B (folded into rows)", () => {
    compare(
      { batch: 3, m: 37, n: 53, k: 12, transB: true, bBatchStride: 0, alpha: 1, beta: 1 },
      3 * 37 * 12,
      53 * 12,
      "f32",
      true,
      91,
    );
  });
  it("inner dimension 65 still right (the GEMM path)", () => {
    compare({ batch: 1, m: 70, n: 45, k: 65, alpha: 0.3, beta: 1 }, 70 * 65, 45 * 65, "f32", true, 93);
  });

  for (const quant of [false, true]) {
    it(`lora.linear on the cuda backend vs the reference op, ${quant ? "NF4" : "dense"} base (forward, dX, dA, dB)`, () => {
      const rows = 301;
      const inF = 256;
      const out = 192;
      const r = 16;
      const run = (backend: Backend, impl: "auto" | "reference") => {
        const shapes = [
          [rows, inF],
          [r, inF],
          [out, r],
        ];
        const ts = shapes.map((shape, i) =>
          tensor(values(shape[0] * shape[1], 200 + i), { shape, backend, requiresGrad: true }),
        );
        const wv = values(out * inF, 210);
        let weight: QuantizedWeight | undefined;
        const W = tensor(wv, { shape: [out, inF], backend });
        if (quant) weight = Linear4bit.fromWeight({ values: wv, shape: [out, inF] }, { backend }).quantizedWeight;
        const baseArg = quant ? { kind: "4bit" as const, weight: weight! } : { kind: "dense" as const, weight: W };
        const y = loraLinearOp.run(ts, { base: baseArg, scaling: 2 }, impl);
        y.backward(tensor(values(rows * out, 211), { shape: [rows, out], backend }));
        return [y, ...ts.map((t) => t.grad!)].map((t) => Float32Array.from(t.toTypedArray()));
      };
      const got = run(be!, "auto");
      const want = run(referenceBackend, "reference");
      for (let i = 0; i < 4; i++) {
        let worst = 0;
        for (let j = 0; j < want[i].length; j++)
          worst = Math.max(worst, Math.abs(got[i][j] - want[i][j]) / (1 + Math.abs(want[i][j])));
        expect(worst, ["y", "dX", "dA", "dB"][i]).toBeLessThan(1e-4);
      }
      expect(loraLinearOp.kernelBackends).toContain("cuda");
    });
  }
});
