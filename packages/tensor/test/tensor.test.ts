import { afterEach, describe, expect, it } from "vitest";
import { noGrad } from "../src/autograd";
import { checkpoint } from "../src/checkpoint";
import { swiglu } from "../src/fused/swiglu";
import { createReferenceBackend } from "../src/backend/reference";
import {
  availableBackends,
  backendChoice,
  getBackend,
  registerBackend,
  setDefaultBackend,
  unregisterBackend,
} from "../src/backend/registry";
import { BackendOpError } from "../src/backend/types";
import type { Backend } from "../src/backend/types";
import { TensorError } from "../src/errors";
import { memoryStats } from "../src/memory";
import * as ops from "../src/ops";
import { Generator, manualSeed } from "../src/random";
import { arange, dropoutMask, full, keep, ones, rand, randn, tensor, tidy, zeros } from "../src/tensor";
import type { Tensor } from "../src/tensor";

afterEach(() => setDefaultBackend(undefined));

describe("creation and dtypes", () => {
  it("zeros/ones/full/arange/tensor with shapes and dtypes", () => {
    expect(zeros([2, 3]).toArray()).toEqual([0, 0, 0, 0, 0, 0]);
    expect(ones([2], { dtype: "bf16" }).toArray()).toEqual([1, 1]);
    expect(full([3], -2.5, { dtype: "f16" }).toArray()).toEqual([-2.5, -2.5, -2.5]);
    const a = arange(5);
    expect(a.dtype).toBe("i32");
    expect(a.toArray()).toEqual([0, 1, 2, 3, 4]);
    expect(arange(0, 1, 0.25).toArray()).toEqual([0, 0.25, 0.5, 0.75]);
    const t = tensor([
      [1, 2, 3],
      [4, 5, 6],
    ]);
    expect(t.shape).toEqual([2, 3]);
    expect(t.strides).toEqual([3, 1]);
    expect(tensor(new Int32Array([7, -1])).dtype).toBe("i32");
    expect(tensor([1, 0, 2], { dtype: "bool" }).toArray()).toEqual([1, 0, 1]);
    expect(tensor([300, 1], { dtype: "u8" }).toArray()).toEqual([44, 1]);
    expect(() => tensor([1, 2, 3], { shape: [2, 2] })).toThrow(TensorError);
  });
  it("bf16/f16 storage rounds (RNE) and computes in f32", () => {
    const a = tensor([1, 1 + 2 ** -8, Math.PI], { dtype: "bf16" });
    expect(a.toArray()).toEqual([1, 1, 3.140625]);
    const b = a.add(a);
    expect(b.dtype).toBe("bf16");
    expect(b.toArray()).toEqual([2, 2, 6.28125]);
    const c = a.add(tensor([0.5, 0.5, 0.5]));
    expect(c.dtype).toBe("f32");
    expect(c.to("f16").dtype).toBe("f16");
    const i = tensor([1.7, -1.7, 3]).to("i32");
    expect(i.toArray()).toEqual([1, -1, 3]);
    expect(ops.add(i, 2).dtype).toBe("i32");
    expect(ops.add(i, 0.5).dtype).toBe("f32");
    expect(i.eq(3).dtype).toBe("bool");
  });
  it("random tensors are reproducible from the seed and dropout masks scale", () => {
    manualSeed(123);
    const a = rand([10]).toArray();
    const z = randn([4]).toArray();
    manualSeed(123);
    expect(rand([10]).toArray()).toEqual(a);
    expect(randn([4]).toArray()).toEqual(z);
    const m = dropoutMask([1000], 0.25).toArray();
    const kept = m.filter((v) => v !== 0);
    expect(new Set(kept)).toEqual(new Set([Math.fround(1 / 0.75)]));
    expect(Math.abs(kept.length / 1000 - 0.75)).toBeLessThan(0.05);
  });
  it("a dropout mask is the generator's uniforms thresholded, and advances it as a draw of that size", () => {
    const g = new Generator(99, 3); // not block aligned: the draw starts at the next block, as uniform() does
    const m = dropoutMask([5, 7], 0.3, { generator: g }).toArray() as number[];
    expect(g.offset).toBe(4 + 4 * Math.ceil(35 / 4));
    const u = new Generator(99, 3).uniform(35);
    expect(m).toEqual(Array.from(u, (v) => (v >= 0.3 ? Math.fround(1 / 0.7) : 0)));
    // a backend without the kernel gets the same mask drawn on the host
    const { dropoutMask: _kernel, ...withoutKernel } = createReferenceBackend({ name: "no-dropout-kernel" });
    const host = dropoutMask([35], 0.3, { generator: new Generator(99, 3), backend: withoutKernel as Backend });
    expect(host.toArray()).toEqual(m);
  });
});

describe("views share storage without copies", () => {
  it("reshape, transpose, permute, narrow, expand, squeeze/unsqueeze", () => {
    const x = arange(24).to("f32").reshape([2, 3, 4]);
    const before = memoryStats("cpu").currentBytes;
    const t = x.transpose(0, 2);
    const p = x.permute([1, 2, 0]);
    const n = x.narrow(2, 1, 2);
    const e = x.narrow(0, 0, 1).expand([5, 3, 4]);
    const u = x.unsqueeze(1).squeeze(1);
    for (const v of [t, p, n, e, u]) expect(v.storage).toBe(x.storage);
    expect(memoryStats("cpu").currentBytes).toBe(before);
    expect(t.shape).toEqual([4, 3, 2]);
    expect(t.strides).toEqual([1, 4, 12]);
    expect(t.isContiguous()).toBe(false);
    expect(n.toArray()).toEqual([1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22]);
    expect(e.shape).toEqual([5, 3, 4]);
    expect(e.strides[0]).toBe(0);
    expect(p.contiguous().toArray().slice(0, 4)).toEqual([0, 12, 1, 13]);
    expect(x.slice(1, -2).shape).toEqual([2, 2, 4]);
    expect(() => t.view([24])).toThrow(/not contiguous/);
    expect(t.reshape([24]).toArray().slice(0, 3)).toEqual([0, 12, 4]);
  });
  it("refcounting: disposing the base keeps views alive; the last handle frees", () => {
    const before = memoryStats("cpu").currentBytes;
    const x = zeros([100]);
    const v = x.reshape([10, 10]);
    expect(memoryStats("cpu").currentBytes).toBe(before + 400);
    x.dispose();
    expect(memoryStats("cpu").currentBytes).toBe(before + 400);
    const s = v.sum();
    expect(s.item()).toBe(0);
    s.dispose();
    v.dispose();
    v.dispose();
    expect(memoryStats("cpu").currentBytes).toBe(before);
    expect(() => x.toArray()).toThrow(/disposed/);
  });
});

describe("ops", () => {
  it("broadcasting binary ops, reductions with keepdim", () => {
    const a = tensor([
      [1, 2, 3],
      [4, 5, 6],
    ]);
    const b = tensor([10, 20, 30]);
    expect(a.add(b).toArray()).toEqual([11, 22, 33, 14, 25, 36]);
    expect(a.sum(0).toArray()).toEqual([5, 7, 9]);
    expect(a.sum(1, true).shape).toEqual([2, 1]);
    expect(a.mean().item()).toBe(3.5);
    expect(a.max(1).toArray()).toEqual([3, 6]);
    expect(a.min([0, 1]).item()).toBe(1);
    expect(a.maximum(3.5).toArray()).toEqual([3.5, 3.5, 3.5, 4, 5, 6]);
    expect(() => a.add(tensor([1, 2]))).toThrow(/broadcast/);
  });
  it("matmul: batched with broadcast batch dims equals per-batch products", () => {
    const a = arange(12).to("f32").reshape([2, 1, 2, 3]);
    const b = arange(18).to("f32").reshape([3, 3, 2]);
    const c = a.matmul(b);
    expect(c.shape).toEqual([2, 3, 2, 2]);
    const c10 = c.narrow(0, 1, 1).narrow(1, 2, 1).reshape([2, 2]).toArray();
    // a[1,0] = [[6,7,8],[9,10,11]], b[2] = [[12,13],[14,15],[16,17]]
    expect(c10).toEqual([
      6 * 12 + 7 * 14 + 8 * 16,
      6 * 13 + 7 * 15 + 8 * 17,
      9 * 12 + 10 * 14 + 11 * 16,
      9 * 13 + 10 * 15 + 11 * 17,
    ]);
    const bf = a.to("bf16").matmul(b.to("bf16"));
    expect(bf.dtype).toBe("bf16");
  });
  it("softmax rows sum to 1; logSoftmax = log(softmax)", () => {
    const x = tensor([
      [1, 2, 3],
      [0, 0, 10],
    ]);
    const s = x.softmax();
    const rs = s.sum(-1).toArray();
    for (const v of rs) expect(v).toBeCloseTo(1, 6);
    const ls = x.logSoftmax().toArray();
    s.toArray().forEach((v, i) => {
      expect(Math.log(v)).toBeCloseTo(ls[i], 5);
    });
  });
  it("crossEntropy mean over non-ignored tokens; sum option", () => {
    const logits = tensor([
      [1, 2, 3],
      [1, 1, 1],
      [0, 5, 0],
    ]);
    const labels = tensor([2, -100, 1], { dtype: "i32" });
    const l1 = 3 - Math.log(Math.exp(1) + Math.exp(2) + Math.exp(3));
    const l3 = 5 - Math.log(2 + Math.exp(5));
    expect(ops.crossEntropy(logits, labels).item()).toBeCloseTo(-(l1 + l3) / 2, 5);
    expect(ops.crossEntropy(logits, labels, { reduction: "sum" }).item()).toBeCloseTo(-(l1 + l3), 5);
    expect(() => ops.crossEntropy(logits, tensor([5, 0, 0], { dtype: "i32" }))).toThrow(/outside/);
  });
});

describe("autograd bookkeeping", () => {
  it("noGrad, detach, requiresGrad propagation, backward twice throws", () => {
    const x = tensor([1, 2, 3], { requiresGrad: true });
    const y = noGrad(() => x.mul(2));
    expect(y.requiresGrad).toBe(false);
    expect(x.detach().requiresGrad).toBe(false);
    const z = x.mul(x).sum();
    expect(z.requiresGrad).toBe(true);
    z.backward();
    expect(x.grad!.toArray()).toEqual([2, 4, 6]);
    expect(() => z.backward()).toThrow(/already freed/);
    const w = x.mul(3).sum();
    w.backward();
    expect(x.grad!.toArray()).toEqual([5, 7, 9]); // accumulates
    expect(() => (tensor([1], { dtype: "i32" }).requiresGrad = true)).toThrow(TensorError);
  });
  it("saved tensors are released by backward: memory returns to the baseline", () => {
    const w = randn([8, 8], { requiresGrad: true });
    const x = randn([4, 8]);
    const base = memoryStats("cpu").currentBytes;
    const loss = tidy(() => {
      const h = ops.matmul(x, w).tanh();
      const s = ops.softmax(h);
      return ops
        .rmsNorm(s, ones([8]), 1e-5)
        .square()
        .mean();
    });
    expect(memoryStats("cpu").currentBytes).toBeGreaterThan(base); // graph holds saved tensors
    loss.backward();
    loss.dispose();
    const g = w.grad!;
    expect(memoryStats("cpu").currentBytes).toBe(base + g.storage.bytes);
  });
  it("tidy disposes everything but the result; keep exempts", () => {
    const base = memoryStats("cpu").currentBytes;
    let kept: Tensor | undefined;
    const r = tidy(() => {
      const a = ones([10]);
      const b = a.mul(3);
      kept = keep(b.add(1));
      return { out: b.sum(), list: [a.narrow(0, 0, 2)] };
    });
    expect(r.out.item()).toBe(30);
    expect(r.list[0].toArray()).toEqual([1, 1]);
    r.out.dispose();
    r.list[0].dispose();
    kept!.dispose();
    expect(memoryStats("cpu").currentBytes).toBe(base);
  });
});

describe("checkpoint keeps only its inputs", () => {
  it("holds less memory between forward and backward than the plain graph, same gradients", () => {
    const w = randn([32, 32], { requiresGrad: true });
    const x = randn([16, 32], { requiresGrad: true });
    const layer = (h: Tensor) =>
      tidy(() => {
        let a = h;
        for (let i = 0; i < 4; i++) a = ops.matmul(a, w).tanh();
        return a;
      });
    const run = (ckpt: boolean) => {
      const base = memoryStats("cpu").currentBytes;
      const y = ckpt ? checkpoint(layer, x) : layer(x);
      const loss = tidy(() => y.square().sum());
      const held = memoryStats("cpu").currentBytes - base;
      loss.backward();
      loss.dispose();
      y.dispose();
      const gw = w.grad!.toArray();
      const gx = x.grad!.toArray();
      for (const t of [w, x]) {
        t.grad!.dispose();
        t.grad = null;
      }
      expect(memoryStats("cpu").currentBytes).toBe(base);
      return { held, gw, gx };
    };
    const plain = run(false);
    const ck = run(true);
    // checkpoint: the saved input alias (no bytes), y, y² saved by square, and the loss
    expect(ck.held).toBeLessThan(plain.held / 2);
    expect(ck.gw).toEqual(plain.gw);
    expect(ck.gx).toEqual(plain.gx);
  });
});

describe("raw host data", () => {
  it("Uint16Array input is bf16/f16 bits; toHost returns the storage bits", () => {
    const bits = new Uint16Array([0x3f80, 0xc000, 0x4049]);
    const t = tensor(bits, { dtype: "bf16" });
    expect(t.toArray()).toEqual([1, -2, 3.140625]);
    expect([...t.toHost()]).toEqual([...bits]);
    expect([...t.narrow(0, 1, 2).toHost()]).toEqual([0xc000, 0x4049]);
    expect(() => tensor(bits)).toThrow(/bit patterns/);
    const d = ops.dropout(t, 0.5, true);
    expect(d.dtype).toBe("bf16");
  });
});

describe("backend registry", () => {
  it("reference is always there; priority picks; by-name request; choice is reported", () => {
    expect(getBackend().name).toBe("reference");
    const fake: Backend = { ...createReferenceBackend({ name: "fakecpu" }), name: "fakecpu" };
    registerBackend(fake, 10);
    try {
      expect(getBackend().name).toBe("fakecpu");
      expect(backendChoice().reason).toMatch(/fakecpu > reference/);
      expect(getBackend("reference").name).toBe("reference");
      expect(backendChoice().reason).toBe("requested by name");
      expect(availableBackends().map((b) => b.name)).toEqual(["fakecpu", "reference"]);
      expect(zeros([2]).backend.name).toBe("fakecpu");
      expect(() => getBackend("cuda")).toThrow(/no backend named "cuda"/);
    } finally {
      unregisterBackend("fakecpu");
    }
    expect(getBackend().name).toBe("reference");
  });
  it("a backend lacking an op → BackendOpError naming op and backend; host backends fall back for copyInPlace", () => {
    const base = createReferenceBackend({ name: "partial" });
    const partial: Backend = {
      ...base,
      name: "partial",
      copyInPlace: undefined,
      swiglu: () => {
        throw new BackendOpError("swiglu", "partial");
      },
    };
    const g = ones([3], { backend: partial });
    expect(() => swiglu(g, g)).toThrow(/backend "partial" does not implement op "swiglu"/);
    expect(ops.cat([g, g]).toArray()).toEqual([1, 1, 1, 1, 1, 1]);
    const dev: Backend = { ...partial, name: "fakedev", device: "fake:0" };
    const h = ones([2], { backend: dev });
    expect(() => ops.cat([h, h])).toThrow(BackendOpError);
  });
  it("to(device) moves between backends; mismatched devices are refused", () => {
    const other = createReferenceBackend({ name: "dev1" });
    const dev: Backend = { ...other, device: "fake:1" };
    registerBackend(dev, -1);
    try {
      const a = tensor([1, 2, 3]);
      const b = a.to("fake:1");
      expect(b.device).toBe("fake:1");
      expect(b.toArray()).toEqual([1, 2, 3]);
      expect(() => a.add(b)).toThrow(/different devices/);
      expect(b.to("cpu").backend.name).toBe("reference");
    } finally {
      unregisterBackend("dev1");
    }
  });
});
