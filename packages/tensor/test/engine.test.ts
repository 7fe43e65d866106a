import { describe, expect, it } from "vitest";
import { noGrad } from "../src/autograd";
import { createReferenceBackend, referenceBackend } from "../src/backend/reference";
import { checkpoint } from "../src/checkpoint";
import { memoryStats } from "../src/memory";
import * as ops from "../src/ops";
import { randomValues } from "../src/testing/gradcheck";
import { empty, fromBuffer, randn, tensor, tidy } from "../src/tensor";

const vals = (n: number, seed: number) => Array.from(randomValues(n, seed));

/** alpha·op(A)·op(B) + beta·C in float64, for checking. */
function naive(a: number[], b: number[], c: number[], m: number, k: number, n: number, alpha: number, beta: number) {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += a[i * k + p] * b[p * n + j];
      out[i * n + j] = alpha * s + beta * c[i * n + j];
    }
  return out;
}

function expectClose(got: ArrayLike<number>, want: ArrayLike<number>, tol = 1e-4) {
  expect(got.length).toBe(want.length);
  let worst = 0;
  for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]) / (1 + Math.abs(want[i])));
  expect(worst).toBeLessThan(tol);
}

describe("addInPlace / add_", () => {
  it("dense, broadcast, alpha, bf16 destination; the buffer is the same", () => {
    const x = tensor(vals(12, 1), { shape: [3, 4] });
    const buf = x.buffer;
    const before = x.toArray();
    const y = tensor(vals(12, 2), { shape: [3, 4] });
    x.add_(y, 0.5);
    expect(x.buffer).toBe(buf);
    expectClose(
      x.toArray(),
      before.map((v, i) => v + 0.5 * y.toArray()[i]),
      1e-6,
    );
    const row = tensor([1, 2, 3, 4]);
    ops.addInPlace(x, row);
    ops.addInPlace(x, 1);
    expectClose(
      x.toArray(),
      before.map((v, i) => v + 0.5 * y.toArray()[i] + (i % 4) + 2),
      1e-6,
    );
    const h = tensor([1, 2, 3], { dtype: "bf16" });
    h.add_(tensor([0.5, 0.5, 0.5]));
    expect(h.toArray()).toEqual([1.5, 2.5, 3.5]);
  });
  it("into a strided view (a column of a matrix)", () => {
    const m = tensor([0, 0, 0, 0, 0, 0], { shape: [2, 3] });
    const col = m.narrow(1, 1, 1);
    col.add_(tensor([[5], [7]]));
    expect(m.toArray()).toEqual([0, 5, 0, 0, 7, 0]);
  });
  it("typed errors: recording, shapes, dtype", () => {
    const w = tensor([1, 2], { requiresGrad: true });
    expect(() => w.add_(1)).toThrow(/run it under noGrad/);
    noGrad(() => w.add_(1));
    expect(w.toArray()).toEqual([2, 3]);
    expect(() => tensor([1, 2]).add_(tensor([1, 2, 3]))).toThrow(/do not broadcast/);
    expect(() =>
      tensor([1, 2]).add_(
        tensor([
          [1, 2],
          [3, 4],
        ]),
      ),
    ).toThrow(/does not broadcast to dst/);
    expect(() => tensor([1, 2], { dtype: "i32" }).add_(1)).toThrow(/must be a float tensor/);
  });
});

describe("matmul with accumulation (C = alpha·op(A)·op(B) + beta·C)", () => {
  it("reference backend, odd shapes up to a few hundred, transposed operands, batches", () => {
    for (const [m, k, n] of [
      [1, 1, 1],
      [7, 13, 5],
      [33, 16, 257],
      [130, 64, 301],
    ]) {
      const a = vals(m * k, m);
      const b = vals(k * n, n);
      const c = vals(m * n, k);
      for (const [alpha, beta] of [
        [1, 1],
        [0.25, -2],
        [3, 0],
      ]) {
        const C = tensor(c, { shape: [m, n] });
        const A = tensor(a, { shape: [m, k] });
        const Bt = tensor(vals(k * n, n).length ? b : [], { shape: [k, n] })
          .transpose(0, 1)
          .contiguous()
          .transpose(0, 1); // a transposed view: read without a copy
        ops.matmulAccumulate(C, A, Bt, alpha, beta);
        expectClose(C.toArray(), naive(a, b, c, m, k, n, alpha, beta));
        for (const t of [C, A, Bt]) t.dispose();
      }
    }
  });
  it("batched a with a shared 2-D b (folded into rows), and a batched b", () => {
    const a = randn([3, 5, 7]);
    const b = randn([7, 4]);
    const c = randn([3, 5, 4]);
    const want = ops.add(ops.mul(ops.matmul(a, b), 2), ops.mul(c, 0.5)).toArray();
    ops.matmulAccumulate(c, a, b, 2, 0.5);
    expectClose(c.toArray(), want);
    const b3 = randn([3, 7, 4]);
    const c2 = randn([3, 5, 4]);
    const want2 = ops.add(ops.matmul(a, b3), c2).toArray();
    ops.matmulAccumulate(c2, a, b3);
    expectClose(c2.toArray(), want2);
  });
  it("into empty(): a recycled output written in full (beta 0)", () => {
    const junk = tensor(new Float32Array(2000).fill(Number.NaN), { shape: [40, 50] });
    junk.dispose(); // back to the free list, NaN inside
    const c = empty([40, 50]);
    const a = randn([40, 7]);
    const b = randn([7, 50]);
    ops.matmulAccumulate(c, a, b, 1, 0);
    expectClose(c.toArray(), ops.matmul(a, b).toArray(), 1e-6);
  });
  it("beta = 0 never reads C (NaN garbage does not leak in)", () => {
    const c = tensor([Number.NaN, Number.NaN, Number.NaN, Number.NaN], { shape: [2, 2] });
    ops.matmulAccumulate(
      c,
      tensor([
        [1, 2],
        [3, 4],
      ]),
      tensor([
        [1, 0],
        [0, 1],
      ]),
      1,
      0,
    );
    expect(c.toArray()).toEqual([1, 2, 3, 4]);
  });
  it("typed errors", () => {
    const c = tensor([0, 0, 0, 0], { shape: [2, 2] });
    expect(() => ops.matmulAccumulate(c, randn([2, 3]), randn([2, 2]))).toThrow(/matching inner sizes/);
    expect(() => ops.matmulAccumulate(c.transpose(0, 1), randn([2, 2]), randn([2, 2]))).toThrow(/dense f32/);
    const w = randn([2, 2], { requiresGrad: true });
    expect(() => ops.matmulAccumulate(c, w, randn([2, 2]))).toThrow(/not recorded by autograd/);
    const be = createReferenceBackend();
    const wrong = fromBuffer(be.alloc("f32", 3), be, [3]);
    expect(() =>
      referenceBackend.matmul(wrong.buffer, wrong.buffer, { batch: 1, m: 2, k: 2, n: 2 }, wrong.buffer),
    ).toThrow(/output buffer must be f32 of length 4/);
  });
});

describe("gradient accumulation without new buffers", () => {
  it("a second backward adds into the existing .grad buffer", () => {
    const w = randn([4, 3], { requiresGrad: true });
    const x = randn([5, 4]);
    const run = () => tidy(() => ops.matmul(x, w).square().sum()).backward();
    run();
    const buf = w.grad!.buffer;
    const g1 = w.grad!.toArray();
    run();
    expect(w.grad!.buffer).toBe(buf);
    expectClose(
      w.grad!.toArray(),
      g1.map((v) => 2 * v),
      1e-6,
    );
  });
  it("never writes into a gradient someone else holds (the tensor passed to backward)", () => {
    const x = randn([3], { requiresGrad: true });
    const g = tensor([1, 2, 3]);
    x.backward(g);
    x.backward(g);
    expect(g.toArray()).toEqual([1, 2, 3]);
    expect(x.grad!.toArray()).toEqual([2, 4, 6]);
  });
  it("fan-in: a tensor used several times gets the sum of its gradients", () => {
    const x = tensor([1, 2, 3], { requiresGrad: true });
    const y = tidy(() => {
      const h = x.mul(2); // non-leaf used three times
      return h.mul(h).add(h).add(h.exp()).sum();
    });
    y.backward();
    const want = [1, 2, 3].map((v) => 2 * (2 * (2 * v)) + 2 + 2 * Math.exp(2 * v));
    expectClose(x.grad!.toArray(), want, 1e-5);
  });
});

describe("post-accumulate-grad hooks", () => {
  it("run once per backward, after the parameter's last contribution, with the complete gradient", () => {
    const w = randn([3, 3], { requiresGrad: true });
    const b = randn([3], { requiresGrad: true });
    const seen: { name: string; grad: number[] }[] = [];
    w.registerPostAccumulateGradHook((p) => seen.push({ name: "w", grad: p.grad!.toArray() }));
    const hb = b.registerPostAccumulateGradHook((p) => seen.push({ name: "b", grad: p.grad!.toArray() }));
    const x = randn([2, 3]);
    // w used twice (two contributions), b once
    const loss = () => tidy(() => ops.matmul(ops.matmul(x, w).add(b), w).sum());
    loss().backward();
    expect(seen.map((s) => s.name).sort()).toEqual(["b", "w"]);
    expect(seen.find((s) => s.name === "w")!.grad).toEqual(w.grad!.toArray());
    expect(seen.find((s) => s.name === "b")!.grad).toEqual(b.grad!.toArray());
    hb.remove();
    seen.length = 0;
    loss().backward();
    expect(seen.map((s) => s.name)).toEqual(["w"]);
    expect(seen[0].grad).toEqual(w.grad!.toArray()); // accumulated over both backwards
  });
  it("fire before backward returns, in reverse order of use (overlap with the rest of backward)", () => {
    const w1 = randn([4, 4], { requiresGrad: true });
    const w2 = randn([4, 4], { requiresGrad: true });
    const order: string[] = [];
    w1.registerPostAccumulateGradHook(() => order.push("w1"));
    w2.registerPostAccumulateGradHook(() => order.push("w2"));
    const x = randn([2, 4]);
    tidy(() => ops.matmul(ops.matmul(x, w1).tanh(), w2).sum()).backward();
    expect(order).toEqual(["w2", "w1"]);
  });
  it("a parameter used only inside checkpoint() fires once, with its gradient", () => {
    const w = randn([3, 3], { requiresGrad: true });
    const x = randn([2, 3], { requiresGrad: true });
    let calls = 0;
    let inHook: number[] = [];
    w.registerPostAccumulateGradHook((p) => {
      calls++;
      inHook = p.grad!.toArray();
    });
    const y = checkpoint((t) => tidy(() => ops.matmul(t, w).tanh()), x);
    tidy(() => y.mul(y).sum()).backward();
    expect(calls).toBe(1);
    expect(inHook).toEqual(w.grad!.toArray());
  });
  it("no hook for a parameter that received no gradient in this backward", () => {
    const w = tensor([1, -2, 3], { requiresGrad: true });
    const v = tensor([1, 1, 1], { requiresGrad: true });
    const calls: string[] = [];
    w.registerPostAccumulateGradHook(() => calls.push("w"));
    v.registerPostAccumulateGradHook(() => calls.push("v"));
    tidy(() => w.sign().add(v).sum()).backward(); // sign() passes no gradient to w
    expect(calls).toEqual(["v"]);
    expect(w.grad).toBeNull();
  });
  it("typed errors", () => {
    const x = tensor([1], { requiresGrad: true });
    const y = x.mul(2);
    expect(() => y.registerPostAccumulateGradHook(() => {})).toThrow(/only leaf tensors/);
    expect(() => x.registerPostAccumulateGradHook(3 as unknown as () => void)).toThrow(/must be a function/);
  });
});

describe("no leaked buffers over 100 steps", () => {
  it("matmulAccumulate + addInPlace + hooks + accumulation: memory stats flat", () => {
    const w = randn([31, 17], { requiresGrad: true });
    const acc = randn([31, 17]);
    let fired = 0;
    w.registerPostAccumulateGradHook(() => fired++);
    const c = randn([9, 17]);
    const step = () => {
      const l = tidy(() =>
        ops
          .matmul(randn([9, 31]), w)
          .square()
          .mean(),
      );
      l.backward();
      l.dispose();
      tidy(() =>
        noGrad(() => {
          acc.add_(w.grad!, 0.1);
          ops.matmulAccumulate(c, randn([9, 31]), w.detach(), 0.01, 0.5);
        }),
      );
    };
    for (let i = 0; i < 10; i++) step();
    const at10 = memoryStats("cpu").currentBytes;
    for (let i = 10; i < 100; i++) step();
    expect(memoryStats("cpu").currentBytes).toBe(at10);
    expect(fired).toBe(100);
  });
});
