import { describe, expect, it } from "vitest";
import "../src/index"; // loads the backward engine and the built-in gradient rules
import { referenceBackend } from "../src/backend/reference";
import type { Backend } from "../src/backend/types";
import { swiglu } from "../src/fused/swiglu";
import * as ops from "../src/ops";
import { randn, type Tensor, tidy } from "../src/tensor";

/** The reference backend with every call counted (and rmsNormBackward's options recorded). */
function countingBackend(): { be: Backend; calls: Map<string, number>; rmsOptions: unknown[] } {
  const calls = new Map<string, number>();
  const rmsOptions: unknown[] = [];
  const be: Record<string, unknown> = { name: "counting", device: "cpu" };
  for (const [k, v] of Object.entries(referenceBackend)) {
    if (typeof v !== "function") continue;
    be[k] = (...args: unknown[]) => {
      calls.set(k, (calls.get(k) ?? 0) + 1);
      if (k === "rmsNormBackward") rmsOptions.push(args[6]);
      return (v as (...a: unknown[]) => unknown).apply(referenceBackend, args);
    };
  }
  return { be: be as unknown as Backend, calls, rmsOptions };
}

/** A decoder-MLP-like block: RMSNorm → (frozen W + trainable LoRA A·B) for gate/up → swiglu → down. */
function block(be: Backend, frozenNorm: boolean) {
  const p = (shape: number[], trainable: boolean): Tensor => randn(shape, { backend: be, requiresGrad: trainable });
  const norm = p([32], !frozenNorm);
  const wg = p([48, 32], false);
  const wu = p([48, 32], false);
  const wd = p([32, 48], false);
  const a = p([4, 32], true);
  const b = p([48, 4], true);
  const forward = (x: Tensor) =>
    tidy(() => {
      const h = ops.rmsNorm(x, norm);
      const lora = ops.matmul(ops.matmul(h, a.T), b.T);
      const g = ops.matmul(h, wg.T).add(lora);
      const u = ops.matmul(h, wu.T);
      return ops.matmul(swiglu(g, u), wd.T).sum();
    });
  return { forward, norm, a, b };
}

describe("no work for frozen inputs", () => {
  it("a frozen RMSNorm weight: its gradient is not computed; frozen linears get no weight-gradient matmul", () => {
    const { be, calls, rmsOptions } = countingBackend();
    const { forward, norm, a, b } = block(be, true);
    const x = randn([6, 32], { backend: be, requiresGrad: true }); // the previous layer's output
    const loss = forward(x);
    calls.clear();
    loss.backward();
    expect(norm.grad).toBeNull();
    expect(a.grad).not.toBeNull();
    expect(b.grad).not.toBeNull();
    // rmsNormBackward asked for dx only
    expect(calls.get("rmsNormBackward")).toBe(1);
    expect(rmsOptions).toEqual([{ weightGrad: false }]);
    // matmuls in backward: down (dX), up (dX), gate (dX), LoRA B (dX, dB), LoRA A (dX, dA) = 7;
    // with the three frozen weights' gradients it would be 10
    expect(calls.get("matmul")).toBe(7);
    expect(calls.get("swigluBackward")).toBe(1);
  });
  it("the same block with a trainable norm computes the norm weight's gradient", () => {
    const { be, calls, rmsOptions } = countingBackend();
    const { forward, norm } = block(be, false);
    const loss = forward(randn([6, 32], { backend: be, requiresGrad: true }));
    calls.clear();
    loss.backward();
    expect(norm.grad).not.toBeNull();
    expect(rmsOptions).toEqual([{ weightGrad: true }]);
    expect(calls.get("matmul")).toBe(7);
  });
  it("a graph with only frozen inputs records nothing and its backward does no work", () => {
    const { be, calls } = countingBackend();
    const w = randn([8, 8], { backend: be });
    const x = randn([3, 8], { backend: be });
    const y = ops.matmul(x, w).sum();
    expect(y.requiresGrad).toBe(false);
    expect(y.gradFn).toBeNull();
    calls.clear();
    expect(() => y.backward()).toThrow(/does not require grad/);
    expect(calls.size).toBe(0);
  });
});
