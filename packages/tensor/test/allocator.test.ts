import { describe, expect, it } from "vitest";
import { HostAllocator, sharedHostAllocator, sizeClass } from "../src/backend/host-allocator";
import { createReferenceBackend, referenceBackend } from "../src/backend/reference";
import type { HostBuffer } from "../src/backend/types";
import { emptyCache, memoryStats } from "../src/memory";
import * as ops from "../src/ops";
import { swiglu } from "../src/fused/swiglu";
import { randn, tensor, tidy, zeros } from "../src/tensor";
import { noGrad } from "../src/autograd";

describe("HostAllocator", () => {
  it("size classes: 4 per power of two from 4 KiB, exact below", () => {
    expect(sizeClass(100)).toBe(100);
    expect(sizeClass(4096)).toBe(4096);
    expect(sizeClass(4097)).toBe(5120);
    expect(sizeClass(6000)).toBe(6144);
    expect(sizeClass(1 << 20)).toBe(1 << 20);
    expect(sizeClass((1 << 20) + 1)).toBe((1 << 20) + (1 << 18));
    for (let b = 4096; b < 1e7; b = Math.floor(b * 1.37) + 1) {
      const c = sizeClass(b);
      expect(c).toBeGreaterThanOrEqual(b);
      expect(c / b).toBeLessThanOrEqual(1.25);
    }
  });
  it("a freed buffer is handed out again (not zeroed), counts and cap hold", () => {
    const a = new HostAllocator(3 * 8192);
    const x = a.take(8000);
    expect(x.recycled).toBe(false);
    new Uint8Array(x.buffer).fill(7);
    a.give(x.buffer);
    expect(a.stats().cachedBytes).toBe(8192);
    const y = a.take(8100);
    expect(y.buffer).toBe(x.buffer);
    expect(y.recycled).toBe(true);
    expect(new Uint8Array(y.buffer)[0]).toBe(7);
    expect(a.stats()).toMatchObject({ inUseBytes: 8192, cachedBytes: 0, reused: 1, fresh: 1 });
    const bufs = [y, a.take(8192), a.take(8192), a.take(8192)].map((t) => t.buffer);
    for (const b of bufs) a.give(b);
    expect(a.stats().cachedBytes).toBe(3 * 8192); // the fourth went over the cap: left to the GC
    a.give(bufs[3]); // not owned any more: ignored
    a.give(new ArrayBuffer(8192)); // never owned: ignored
    expect(a.stats()).toMatchObject({ inUseBytes: 0, cachedBytes: 3 * 8192 });
    a.emptyCache();
    expect(a.stats().cachedBytes).toBe(0);
    expect(a.take(8192).recycled).toBe(false);
    expect(a.take(10).recycled).toBe(false); // small requests are not pooled
  });
});

describe("host backends on the caching allocator", () => {
  it("alloc gives zeros even from a dirty recycled buffer; allocUninit reuses without zeroing", () => {
    const be = createReferenceBackend({ allocator: new HostAllocator() });
    const n = 5000;
    const dirty = be.allocUninit!("f32", n) as HostBuffer;
    (dirty.data as Float32Array).fill(Number.NaN);
    be.free(dirty);
    const z = be.alloc("f32", n) as HostBuffer;
    expect(z.data.buffer).toBe(dirty.data.buffer);
    expect((z.data as Float32Array).every((v) => v === 0)).toBe(true);
    (z.data as Float32Array).fill(3);
    be.free(z);
    const u = be.allocUninit!("f32", n) as HostBuffer;
    expect(u.data.buffer).toBe(dirty.data.buffer);
    expect(u.data[0]).toBe(3);
    expect(u.data.length).toBe(n);
    // a recycled buffer serves another dtype of the same byte size class
    be.free(u);
    const h = be.alloc("bf16", 2 * n) as HostBuffer;
    expect(h.data.buffer).toBe(dirty.data.buffer);
    expect(h.data.length).toBe(2 * n);
  });
  it("ops that leave parts of their output unwritten still see zeros (cross-entropy ignored rows)", () => {
    const rows = 40;
    const vocab = 37;
    // dirty the free list of this size class with NaN
    const junk = referenceBackend.allocUninit!("f32", rows * vocab) as HostBuffer;
    (junk.data as Float32Array).fill(Number.NaN);
    referenceBackend.free(junk);
    const logits = randn([rows, vocab], { backend: referenceBackend, requiresGrad: true });
    const labels = tensor(
      Array.from({ length: rows }, (_, i) => (i % 3 === 0 ? -100 : i % vocab)),
      { dtype: "i32", backend: referenceBackend },
    );
    ops.crossEntropy(logits, labels).backward();
    const g = logits.grad!.toTypedArray();
    for (let r = 0; r < rows; r += 3) for (let j = 0; j < vocab; j++) expect(g[r * vocab + j]).toBe(0);
    expect(g.every((v) => Number.isFinite(v))).toBe(true);
    expect(
      zeros([rows, vocab])
        .toTypedArray()
        .every((v) => v === 0),
    ).toBe(true);
  });
  it("memoryStats reports cached bytes; emptyCache gives them back", () => {
    const t = zeros([300, 300]);
    t.dispose();
    expect(memoryStats("cpu").cachedBytes).toBeGreaterThanOrEqual(300 * 300 * 4);
    emptyCache("cpu");
    expect(memoryStats("cpu").cachedBytes).toBe(0);
  });
});

describe("a training-like step stops allocating after warm-up", () => {
  it("100 forward+backward steps: live, cached and fresh-allocation counts flat after step 2", () => {
    const w1 = randn([64, 96], { requiresGrad: true });
    const w2 = randn([64, 96], { requiresGrad: true });
    const w3 = randn([96, 64], { requiresGrad: true });
    const g = randn([64]);
    const step = () => {
      const l = tidy(() => {
        const x = randn([37, 64]);
        const h = ops.rmsNorm(x, g);
        const y = ops.matmul(swiglu(ops.matmul(h, w1), ops.matmul(h, w2)), w3);
        return y.add(x).square().mean();
      });
      l.backward();
      l.dispose();
      noGrad(() => {
        for (const w of [w1, w2, w3]) w.add_(w.grad!, -1e-3);
      });
    };
    step();
    step();
    const s2 = { mem: memoryStats("cpu"), alloc: sharedHostAllocator.stats() };
    for (let i = 2; i < 100; i++) step();
    const s100 = { mem: memoryStats("cpu"), alloc: sharedHostAllocator.stats() };
    expect(s100.mem.currentBytes).toBe(s2.mem.currentBytes);
    expect(s100.mem.cachedBytes).toBe(s2.mem.cachedBytes);
    expect(s100.alloc.fresh).toBe(s2.alloc.fresh); // every buffer after step 2 came from the free lists
    expect(s100.alloc.reused).toBeGreaterThan(s2.alloc.reused + 98 * 10);
    for (const w of [w1, w2, w3, g]) {
      w.grad?.dispose();
      w.dispose();
    }
  });
});
