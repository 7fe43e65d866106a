import { describe, expect, it } from "vitest";
import { checkpoint } from "../src/checkpoint";
import { swiglu } from "../src/fused/swiglu";
import { gradRules } from "../src/grad-rules";
import { registerGradRule } from "../src/graph";
import { createReferenceBackend } from "../src/backend/reference";
import type { UnaryOp } from "../src/backend/types";
import * as ops from "../src/ops";
import { manualSeed } from "../src/random";
import type { Tensor } from "../src/tensor";
import { be64, gradCheck, randomValues, t64 } from "./helpers";

// Finite-difference checks run in float64 (the reference backend's f64 test mode): tolerance 1e-7.
const TOL = 1e-7;
const inp = (shape: number[], seed: number, lo = -1, hi = 1, grad = true) => ({
  shape,
  values: randomValues(
    shape.reduce((a, b) => a * b, 1),
    seed,
    lo,
    hi,
  ),
  grad,
});

describe("gradients vs central finite differences (float64)", () => {
  const unaries: [UnaryOp, number, number][] = [
    ["neg", -2, 2],
    ["exp", -2, 2],
    ["log", 0.2, 3],
    ["sqrt", 0.2, 3],
    ["rsqrt", 0.2, 3],
    ["abs", 0.1, 2],
    ["sigmoid", -3, 3],
    ["silu", -3, 3],
    ["relu", 0.1, 2],
    ["tanh", -2, 2],
    ["recip", 0.3, 3],
    ["square", -2, 2],
  ];
  for (const [op, lo, hi] of unaries) {
    it(`unary ${op}`, () => {
      expect(gradCheck((x) => ops.unary(op, x), [inp([3, 4], 1, lo, hi)])).toBeLessThan(TOL);
    });
  }
  it("abs and relu on mixed signs (away from 0)", () => {
    const v = [-1.5, -0.5, 0.7, 2];
    expect(gradCheck((x) => ops.unary("abs", x), [{ values: v, shape: [4] }])).toBeLessThan(TOL);
    expect(gradCheck((x) => ops.unary("relu", x), [{ values: v, shape: [4] }])).toBeLessThan(TOL);
  });
  for (const op of ["add", "sub", "mul", "div", "pow", "max", "min"] as const) {
    it(`binary ${op} with broadcasting [2,3,4] ∘ [3,1]`, () => {
      const a = inp([2, 3, 4], 2, op === "pow" ? 0.3 : -2, 2);
      const b = inp([3, 1], 3, op === "div" || op === "pow" ? 0.5 : -2, 2);
      expect(gradCheck((x, y) => ops.binary(op, x, y), [a, b])).toBeLessThan(TOL);
    });
  }
  it("binary with a scalar operand", () => {
    expect(gradCheck((x) => ops.div(2.5, x), [inp([5], 4, 0.5, 2)])).toBeLessThan(TOL);
    expect(gradCheck((x) => ops.sub(x, 1.25), [inp([5], 4)])).toBeLessThan(TOL);
  });
  it("sum / mean / max over dims, keepdim", () => {
    expect(gradCheck((x) => ops.sum(x, [0, 2]), [inp([2, 3, 4], 5)])).toBeLessThan(TOL);
    expect(gradCheck((x) => ops.mean(x, 1, true), [inp([2, 3, 4], 6)])).toBeLessThan(TOL);
    expect(gradCheck((x) => ops.max(x, -1), [inp([3, 5], 7)])).toBeLessThan(TOL);
    expect(gradCheck((x) => ops.min(x, [0, 1], true), [inp([3, 5], 8)])).toBeLessThan(TOL);
    expect(gradCheck((x) => ops.mean(x), [inp([3, 5], 9)])).toBeLessThan(TOL);
  });
  it("matmul: batched, broadcast batch dims, transposed views, 1-D", () => {
    expect(gradCheck((a, b) => ops.matmul(a, b), [inp([2, 3, 4], 10), inp([4, 5], 11)])).toBeLessThan(TOL);
    expect(gradCheck((a, b) => ops.matmul(a, b), [inp([2, 1, 3, 4], 12), inp([3, 4, 2], 13)])).toBeLessThan(TOL);
    expect(gradCheck((a, b) => ops.matmul(a, b.transpose(-1, -2)), [inp([3, 4], 14), inp([5, 4], 15)])).toBeLessThan(
      TOL,
    );
    expect(gradCheck((a, b) => ops.matmul(a.transpose(0, 1), b), [inp([4, 3], 16), inp([4, 2], 17)])).toBeLessThan(TOL);
    expect(gradCheck((a, b) => ops.matmul(a, b), [inp([4], 18), inp([4, 3], 19)])).toBeLessThan(TOL);
  });
  it("views: reshape, permute, narrow, expand, squeeze/unsqueeze, contiguous, cat, stack", () => {
    expect(gradCheck((x) => x.reshape([4, 6]).permute([1, 0]).contiguous(), [inp([2, 3, 4], 20)])).toBeLessThan(TOL);
    expect(gradCheck((x) => x.narrow(1, 1, 2).mul(x.narrow(1, 0, 2)), [inp([2, 4, 3], 21)])).toBeLessThan(TOL);
    expect(gradCheck((x) => x.unsqueeze(0).expand([3, 2, 4]).squeeze(), [inp([2, 4], 22)])).toBeLessThan(TOL);
    expect(gradCheck((x) => x.slice(-1, 1, -1), [inp([3, 5], 23)])).toBeLessThan(TOL);
    expect(gradCheck((a, b) => ops.cat([a, b, a], 1), [inp([2, 3], 24), inp([2, 1], 25)])).toBeLessThan(TOL);
    expect(gradCheck((a, b) => ops.stack([a, b], 1), [inp([2, 3], 26), inp([2, 3], 27)])).toBeLessThan(TOL);
  });
  it("moves between backends (toBackend) and identity casts", () => {
    const other = createReferenceBackend({ f64: true, name: "reference-f64-b" });
    expect(gradCheck((x) => x.toBackend(other).square().toBackend(be64), [inp([2, 3], 28)])).toBeLessThan(TOL);
    expect(gradCheck((x) => x.to("f32").clone(), [inp([2, 3], 29)])).toBeLessThan(TOL);
  });
  it("softmax (last and middle dim) and logSoftmax", () => {
    expect(gradCheck((x) => ops.softmax(x), [inp([3, 7], 30, -3, 3)])).toBeLessThan(TOL);
    expect(gradCheck((x) => ops.softmax(x, 1), [inp([2, 4, 3], 31, -3, 3)])).toBeLessThan(TOL);
    expect(gradCheck((x) => ops.logSoftmax(x), [inp([3, 7], 32, -3, 3)])).toBeLessThan(TOL);
  });
  it("rmsNorm (x and weight)", () => {
    expect(gradCheck((x, w) => ops.rmsNorm(x, w, 1e-5), [inp([2, 3, 8], 40), inp([8], 41, 0.5, 1.5)])).toBeLessThan(
      TOL,
    );
  });
  it("rope", () => {
    const pos = t64([0, 1, 2, 5, 3, 0, 7, 100], [2, 4]).cast("i32");
    expect(gradCheck((x) => ops.rope(x, pos, 10000), [inp([2, 4, 3, 6], 42)])).toBeLessThan(TOL);
  });
  it("attention with GQA, with and without segment ids", () => {
    const q = inp([2, 4, 5, 3], 50, -1.5, 1.5);
    const k = inp([2, 2, 5, 3], 51, -1.5, 1.5);
    const v = inp([2, 2, 5, 3], 52);
    expect(gradCheck((a, b, c) => ops.attention(a, b, c), [q, k, v])).toBeLessThan(TOL);
    const seg = t64([0, 0, 1, 1, 1, 0, 1, 1, 2, 2], [2, 5]).cast("i32");
    expect(gradCheck((a, b, c) => ops.attention(a, b, c, { segmentIds: seg, scale: 0.7 }), [q, k, v])).toBeLessThan(
      TOL,
    );
  });
  it("attention with a sliding window (1 and 2 keys), also over a KV cache", () => {
    const q = inp([2, 4, 5, 3], 53, -1.5, 1.5);
    const k = inp([2, 2, 5, 3], 54, -1.5, 1.5);
    const v = inp([2, 2, 5, 3], 55);
    for (const window of [1, 2])
      expect(gradCheck((a, b, c) => ops.attention(a, b, c, { window }), [q, k, v])).toBeLessThan(TOL);
    const qLast = inp([2, 4, 2, 3], 56, -1.5, 1.5);
    expect(gradCheck((a, b, c) => ops.attention(a, b, c, { window: 3 }), [qLast, k, v])).toBeLessThan(TOL);
  });
  it("crossEntropy mean (with ignored rows), sum and none", () => {
    const labels = t64([3, -100, 0, 4, -100, 1], [2, 3]).cast("i32");
    const logits = inp([2, 3, 5], 60, -3, 3);
    expect(gradCheck((x) => ops.crossEntropy(x, labels), [logits])).toBeLessThan(TOL);
    expect(gradCheck((x) => ops.crossEntropy(x, labels, { reduction: "sum" }), [logits])).toBeLessThan(TOL);
    expect(gradCheck((x) => ops.crossEntropy(x, labels, { reduction: "none" }), [logits])).toBeLessThan(TOL);
  });
  it("swiglu", () => {
    expect(gradCheck((g, u) => swiglu(g, u), [inp([3, 5], 70, -3, 3), inp([3, 5], 71)])).toBeLessThan(TOL);
  });
  it("embedding (weight gradient with repeated ids)", () => {
    const ids = t64([1, 3, 1, 0, 3, 3], [2, 3]).cast("i32");
    expect(gradCheck((w) => ops.embedding(w, ids), [inp([4, 5], 80)])).toBeLessThan(TOL);
  });
  it("dropout (fixed seed) and checkpoint (recompute with a parameter inside and dropout)", () => {
    expect(
      gradCheck(
        (x) => {
          manualSeed(5);
          return ops.dropout(x, 0.3, true);
        },
        [inp([4, 6], 90)],
      ),
    ).toBeLessThan(TOL);
    const w = t64(randomValues(12, 91), [4, 3], true);
    const block = (x: Tensor) => {
      const h = ops.matmul(x, w);
      const a = ops.unary("tanh", h);
      const d = ops.dropout(a, 0.25, true);
      h.dispose();
      a.dispose();
      return d;
    };
    expect(
      gradCheck(
        (x) => {
          manualSeed(6);
          return checkpoint(block, x);
        },
        [inp([2, 4], 92)],
      ),
    ).toBeLessThan(TOL);
    // the parameter inside the checkpoint got the same gradient as without checkpointing
    w.grad?.dispose();
    w.grad = null;
    const x = t64(randomValues(8, 93), [2, 4]);
    manualSeed(6);
    const l1 = ops.sum(checkpoint(block, x));
    l1.backward();
    const g1 = w.grad!.toArray();
    w.grad!.dispose();
    w.grad = null;
    manualSeed(6);
    const l2 = ops.sum(block(x));
    l2.backward();
    expect(g1).toEqual(w.grad!.toArray());
  });
  it("the checker catches a wrong rule", () => {
    const good = gradRules.sigmoid;
    registerGradRule(
      "sigmoid",
      (g, n) => {
        const [r] = good(g, n);
        const bad = ops.mul(r!, 1.001);
        r!.dispose();
        return [bad];
      },
      { replace: true },
    );
    try {
      expect(gradCheck((x) => ops.unary("sigmoid", x), [inp([3], 1)])).toBeGreaterThan(1e-5);
    } finally {
      registerGradRule("sigmoid", good, { replace: true });
    }
  });
  it("f64 mode is really float64", () => {
    const x = t64([1 + 1e-12], [1]);
    expect(x.toArray()[0]).toBe(1 + 1e-12);
    expect(be64.name).toBe("reference-f64");
  });
});
