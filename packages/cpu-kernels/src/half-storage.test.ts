// bf16/f16 storage on the cpu backend without whole-tensor copies: the native embedding gathers rows of
// a bf16/f16 table (csrc/embedding.cc embeddingHalf; only gathered rows widened) and the native GEMM
// takes f32 activations × a bf16 or f16 weight as stored (widened panel by panel while packing, csrc/gemm.cc).
// Parity with the reference backend and byte counters of the shared host allocator.
import {
  attention,
  embedding,
  Generator,
  linearCrossEntropy,
  matmul,
  randn,
  referenceBackend,
  type Tensor,
  tensor,
  tidy,
} from "@qlora/tensor";
import { describe, expect, it } from "vitest";
import { cpuBackend, cpuBackendInfo } from "./backend";

function peakDuring(fn: () => Tensor): { out: Tensor; peak: number } {
  const before = cpuBackend.memoryStats().currentBytes;
  cpuBackend.resetPeak();
  const out = fn();
  return { out, peak: cpuBackend.memoryStats().peakBytes - before };
}

describe("bf16/f16 tables and weights on the cpu backend", () => {
  it("the cpu backend is the native one (not the reference fallback)", () => {
    expect(cpuBackendInfo(cpuBackend)?.native).toBe(true);
  });

  for (const dtype of ["bf16", "f16"] as const) {
    it(`embedding from a ${dtype} table [4099, 67]: equals the reference, allocates only the gathered rows`, () => {
      const [V, D] = [4099, 67];
      const tableF = randn([V, D], { backend: cpuBackend, generator: new Generator(1) });
      const table = tableF.cast(dtype);
      const idsArr = [4098, 0, 17, 17, 2048, 3, 999];
      const ids = tensor(idsArr, { dtype: "i32", backend: cpuBackend });
      const { out, peak } = peakDuring(() => embedding(table, ids));
      expect(out.dtype).toBe(dtype);
      // f32 rows then the cast to the table's dtype: 7·67·(4 + 2) bytes; the widened table would be 1.1 MB
      expect(peak).toBeLessThanOrEqual(idsArr.length * D * 6 + 64);
      const refTable = tensor(table.toHost(), { shape: [V, D], dtype, backend: referenceBackend });
      const refIds = tensor(idsArr, { dtype: "i32", backend: referenceBackend });
      const want = embedding(refTable, refIds);
      expect(Array.from(out.toHost())).toEqual(Array.from(want.toHost()));
      for (const t of [tableF, table, ids, out, refTable, refIds, want]) t.dispose();
    });
  }

  for (const [dtype, transB] of [
    ["bf16", true],
    ["f16", true],
    ["f16", false],
  ] as const)
    it(`f32 [37, 301] × ${dtype} weight [257, 301]${transB ? "ᵀ" : " (stored [301, 257])"}: not widened whole; equals the reference`, () => {
      const x = randn([37, 301], { backend: cpuBackend, generator: new Generator(2) });
      const wF = randn(transB ? [257, 301] : [301, 257], { backend: cpuBackend, generator: new Generator(3) });
      const w = wF.cast(dtype);
      const { out, peak } = peakDuring(() => matmul(x, transB ? w.T : w));
      expect(out.dtype).toBe("f32");
      expect(peak).toBe(37 * 257 * 4); // the output only (a widened weight would add 309 KB)
      const xr = tensor(x.toHost(), { shape: x.shape, backend: referenceBackend });
      const wr = tensor(w.toHost(), { shape: w.shape, dtype, backend: referenceBackend });
      const want = matmul(xr, transB ? wr.T : wr).toTypedArray();
      const got = out.toTypedArray();
      // TOL_ACC of the parity suite: atol 1e-6 + rtol 1e-4·|want| + stol 1e-5·max|want| (long f32 sums)
      const maxAbs = Array.from(want).reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      for (let i = 0; i < want.length; i++)
        expect(Math.abs(got[i] - want[i])).toBeLessThanOrEqual(1e-6 + 1e-4 * Math.abs(want[i]) + 1e-5 * maxAbs);
      for (const t of [x, wF, w, out, xr, wr]) t.dispose();
    });

  it("f16 × f16 is refused by the native GEMM with a typed error (the frontend widens one side first)", () => {
    const a = randn([3, 5], { backend: cpuBackend, generator: new Generator(4) }).cast("f16");
    const b = randn([5, 2], { backend: cpuBackend, generator: new Generator(5) }).cast("f16");
    expect(() => cpuBackend.matmul(a.buffer, b.buffer, { batch: 1, m: 3, k: 5, n: 2 })).toThrow(
      /an f16 operand needs an f32 other operand/,
    );
    const viaFrontend = matmul(a, b); // both f16: read as f32, still correct
    expect(viaFrontend.shape).toEqual([3, 2]);
    for (const t of [a, b, viaFrontend]) t.dispose();
  });
});

describe("no leaked buffers over 100 steps on the cpu backend (memory stats flat)", () => {
  it("bshd attention over a KV cache, a bf16 embedding, an f32 × f16 matmul and linearCrossEntropy, fwd + bwd", () => {
    const g = (seed: number) => ({ backend: cpuBackend, generator: new Generator(seed) });
    const q = randn([1, 3, 4, 8], { ...g(1), requiresGrad: true });
    const k = randn([1, 9, 2, 8], { ...g(2), requiresGrad: true });
    const table = randn([64, 8], g(3)).cast("bf16");
    const w16 = randn([8, 8], g(4)).cast("f16");
    const head = randn([33, 8], { ...g(5), requiresGrad: true });
    const ids = tensor([1, 63, 7], { dtype: "i32", backend: cpuBackend });
    const labels = tensor([3, -100, 32], { dtype: "i32", backend: cpuBackend });
    let at10 = 0;
    for (let step = 1; step <= 100; step++) {
      // intermediates (views included: each handle holds its storage) are disposed by tidy
      const { loss, tokens } = tidy(() => {
        const a = attention(q.transpose(1, 2), k.transpose(1, 2), k.transpose(1, 2)); // [1, 4, 3, 8]
        const x = a.transpose(1, 2).reshape([3, 32]).narrow(1, 0, 8);
        const h = matmul(x.add(embedding(table, ids).cast("f32")), w16);
        return linearCrossEntropy(h, head, labels, { chunkSize: 2 });
      });
      loss.backward();
      for (const t of [loss, tokens, q.grad!, k.grad!, head.grad!]) t.dispose();
      q.grad = null;
      k.grad = null;
      head.grad = null;
      if (step === 10) at10 = cpuBackend.memoryStats().currentBytes;
    }
    expect(cpuBackend.memoryStats().currentBytes).toBe(at10);
    for (const t of [q, k, table, w16, head, ids, labels]) t.dispose();
  });
});
