import { describe, expect, it } from "vitest";
import { noGrad } from "../src/autograd";
import { createReferenceBackend } from "../src/backend/reference";
import { checkpoint } from "../src/checkpoint";
import { defineOp } from "../src/define-op";
import { swiglu, swigluOp } from "../src/fused/swiglu";
import { memoryStats } from "../src/memory";
import * as ops from "../src/ops";
import { checkOpParity, assertOpParity } from "../src/testing/op-parity";
import { randomValues } from "../src/testing/gradcheck";
import { randn, tensor, tidy, type Tensor } from "../src/tensor";
import { gradCheck, t64 } from "./helpers";

const TOL = 1e-7;

/** y = scale · tanh(a) · b: the reference composed from Tensor ops, backward written by hand. */
let forwardCalls = 0;
let kernelForwardCalls = 0;
let kernelBackwardCalls = 0;
const fakeCpu = createReferenceBackend({ name: "fakecpu" });
const scaledTanhMul = defineOp<{ scale: number }>({
  name: "test.scaledTanhMul",
  forward([a, b], { scale }, ctx) {
    forwardCalls++;
    const t = a.tanh();
    ctx.save(t, b);
    return t.mul(b).mul(scale);
  },
  backward(g, ctx) {
    const [t, b] = ctx.saved;
    const s = ctx.attrs.scale;
    const da = ctx.needsGrad(0) ? g.mul(b).mul(t.square().neg().add(1)).mul(s) : null;
    const db = ctx.needsGrad(1) ? g.mul(t).mul(s) : null;
    return [da, db];
  },
  kernels: {
    // a "native" kernel for the fake backend: same math written directly over host arrays
    fakecpu: {
      forward([a, b], { scale }, ctx) {
        kernelForwardCalls++;
        const t = a.tanh();
        ctx.save(t, b);
        const av = t.toTypedArray();
        const bv = b.toTypedArray();
        return tensor(
          Float32Array.from(av, (v, i) => scale * v * bv[i]),
          { shape: a.shape, backend: ctx.backend },
        );
      },
      backward(g, ctx) {
        kernelBackwardCalls++;
        const [t, b] = ctx.saved;
        const s = ctx.attrs.scale;
        return [
          ctx.needsGrad(0) ? g.mul(b).mul(t.square().neg().add(1)).mul(s) : null,
          ctx.needsGrad(1) ? g.mul(t).mul(s) : null,
        ];
      },
    },
  },
});

const vals = (n: number, seed: number) => Array.from(randomValues(n, seed));

describe("defineOp", () => {
  it("finite-difference gradients of an op declared outside the engine", () => {
    const err = gradCheck(
      (a, b) => scaledTanhMul([a, b], { scale: 1.5 }),
      [
        { values: vals(15, 1), shape: [3, 5] },
        { values: vals(15, 2), shape: [3, 5] },
      ],
    );
    expect(err).toBeLessThan(TOL);
  });
  it("a frozen input gets no gradient computed (ctx.needsGrad)", () => {
    const a = t64(vals(6, 3), [6], true);
    const b = t64(vals(6, 4), [6]);
    const y = scaledTanhMul([a, b], { scale: 2 });
    const l = y.sum();
    l.backward();
    expect(a.grad).not.toBeNull();
    expect(b.grad).toBeNull();
    for (const t of [a, b, y, l, a.grad!]) t.dispose();
  });
  it("kernels are looked up by backend name; the reference runs elsewhere", () => {
    const before = { forwardCalls, kernelForwardCalls, kernelBackwardCalls };
    const a = tensor(vals(8, 5), { backend: fakeCpu, requiresGrad: true });
    const b = tensor(vals(8, 6), { backend: fakeCpu, requiresGrad: true });
    const l = scaledTanhMul([a, b], { scale: 0.5 }).sum();
    l.backward();
    expect(kernelForwardCalls - before.kernelForwardCalls).toBe(1);
    expect(kernelBackwardCalls - before.kernelBackwardCalls).toBe(1);
    expect(forwardCalls - before.forwardCalls).toBe(0);
    const r = scaledTanhMul.run([a, b], { scale: 0.5 }, "reference");
    expect(forwardCalls - before.forwardCalls).toBe(1);
    for (const t of [a, b, l, r, a.grad!, b.grad!]) t.dispose();
    expect(scaledTanhMul.kernelBackends).toEqual(["fakecpu"]);
  });
  it("checkOpParity compares a backend's kernels with the reference, forward and backward, on odd shapes", () => {
    for (const shape of [[1], [7, 13], [3, 257], [301]]) {
      const n = shape.reduce((p, q) => p * q, 1);
      const inputs = [
        { values: vals(n, 7), shape, requiresGrad: true },
        { values: vals(n, 8), shape, requiresGrad: true },
      ];
      const r = assertOpParity(scaledTanhMul, fakeCpu, inputs, { scale: 3 });
      expect(r.forward).toBeLessThanOrEqual(1);
      expect(r.grads.every((g) => g !== null && g <= 1)).toBe(true);
    }
  });
  it("checkOpParity catches a wrong kernel", () => {
    const wrongBe = createReferenceBackend({ name: "wrongcpu" });
    const wrong = defineOp<undefined>({
      name: "test.wrongKernel",
      forward: ([x]) => x.mul(2),
      backward: (g) => [g.mul(2)],
      kernels: { wrongcpu: { forward: ([x]) => x.mul(2.001), backward: (g) => [g.mul(1.999)] } },
    });
    const inputs = [{ values: vals(33, 9), shape: [3, 11], requiresGrad: true }];
    const r = checkOpParity(wrong, wrongBe, inputs, undefined);
    expect(r.ok).toBe(false);
    expect(r.forward).toBeGreaterThan(1);
    expect(r.grads[0]).toBeGreaterThan(1);
    expect(() => assertOpParity(wrong, wrongBe, inputs, undefined)).toThrow(/test.wrongKernel on wrongcpu/);
  });
  it("works under checkpoint(): recomputed in backward, same gradients", () => {
    const a = t64(vals(12, 10), [3, 4], true);
    const b = t64(vals(12, 11), [3, 4], true);
    const fn = (x: Tensor, y: Tensor) => tidy(() => scaledTanhMul([x.mul(1.1), y], { scale: 0.7 }).exp());
    const l1 = ops.sum(fn(a, b));
    l1.backward();
    const g1 = [a.grad!.toArray(), b.grad!.toArray()];
    for (const t of [a, b]) {
      t.grad!.dispose();
      t.grad = null;
    }
    const calls = forwardCalls;
    const l2 = ops.sum(checkpoint(fn, a, b));
    expect(forwardCalls - calls).toBe(1);
    l2.backward();
    expect(forwardCalls - calls).toBe(2); // run again during backward
    expect([a.grad!.toArray(), b.grad!.toArray()]).toEqual(g1);
    for (const t of [a, b, l1, l2, a.grad!, b.grad!]) t.dispose();
  });
  it("typed errors: duplicate name, bad backward result, non-tensor forward, no inputs", () => {
    expect(() => defineOp({ name: "test.scaledTanhMul", forward: ([x]) => x })).toThrow(/already exists/);
    const bad = defineOp<undefined>({ name: "test.badBackward", forward: ([x]) => x.mul(1), backward: () => [] });
    const x = tensor([1, 2], { requiresGrad: true });
    const y = bad([x], undefined);
    expect(() => y.backward(tensor([1, 1]))).toThrow(/test.badBackward: backward must return one gradient/);
    const notTensor = defineOp<undefined>({ name: "test.notTensor", forward: () => 3 as unknown as Tensor });
    expect(() => notTensor([x], undefined)).toThrow(/must return a Tensor/);
    expect(() => bad([], undefined)).toThrow(/non-empty array of Tensors/);
    expect(() => defineOp({ name: "", forward: ([t]) => t })).toThrow(/non-empty string/);
  });
  it("an op returning its input unchanged does not take over the input's graph", () => {
    const id = defineOp<undefined>({ name: "test.identity", forward: ([x]) => x, backward: (g) => [g] });
    const x = tensor([1, 2, 3], { requiresGrad: true });
    const y = id([x], undefined);
    expect(x.isLeaf).toBe(true);
    y.sum().backward();
    expect(x.grad!.toArray()).toEqual([1, 1, 1]);
  });
  it("no leaked buffers over 100 forward+backward steps (memory stats flat)", () => {
    const a = randn([17, 31], { requiresGrad: true });
    const b = randn([17, 31], { requiresGrad: true });
    const step = () => {
      const l = tidy(() => swiglu(scaledTanhMul([a, b], { scale: 1.3 }), b).sum());
      l.backward();
      l.dispose();
      noGrad(() => {
        a.grad!.dispose();
        b.grad!.dispose();
      });
      a.grad = null;
      b.grad = null;
    };
    for (let i = 0; i < 10; i++) step();
    const at10 = memoryStats("cpu").currentBytes;
    for (let i = 10; i < 100; i++) step();
    expect(memoryStats("cpu").currentBytes).toBe(at10);
    a.dispose();
    b.dispose();
  });
});

describe("swiglu (migrated to defineOp)", () => {
  it("is declared as tensor.swiglu and keeps its gradients", () => {
    expect(swigluOp.opName).toBe("tensor.swiglu");
    const err = gradCheck(
      (g, u) => swiglu(g, u),
      [
        { values: vals(35, 12).map((v) => 3 * v), shape: [5, 7] },
        { values: vals(35, 13), shape: [5, 7] },
      ],
    );
    expect(err).toBeLessThan(TOL);
  });
  it("a frozen up projection gets no gradient", () => {
    const g = t64(vals(4, 14), [4], true);
    const u = t64(vals(4, 15), [4]);
    swiglu(g, u).sum().backward();
    expect(g.grad).not.toBeNull();
    expect(u.grad).toBeNull();
  });
});
