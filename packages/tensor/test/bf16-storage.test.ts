// bf16/f16 storage without whole-tensor copies: an embedding lookup gathers rows from a bf16/f16 table
// without widening the table, and f32 activations × a bf16/f16 weight go to the backend's matmul as stored
// (converted tile by tile). Measured with the backend's byte counters (every buffer, raw ones included).
import { describe, expect, it } from "vitest";
import { createReferenceBackend } from "../src/backend/reference";
import type { Backend } from "../src/backend/types";
import { embedding, matmul } from "../src/ops";
import { Generator } from "../src/random";
import { randn, tensor, type Tensor } from "../src/tensor";

function peakOf(be: Backend, fn: () => Tensor[]): number {
  const before = be.memoryStats().currentBytes;
  be.resetPeak();
  const outs = fn();
  const peak = be.memoryStats().peakBytes - before;
  for (const t of outs) t.dispose();
  return peak;
}

describe("embedding from a bf16/f16 table", () => {
  for (const dtype of ["bf16", "f16"] as const) {
    it(`${dtype}: equals the gather from the widened table; no whole-table f32 copy`, () => {
      const be = createReferenceBackend({ name: `emb-${dtype}` });
      const [V, D] = [1000, 48];
      const table = randn([V, D], { backend: be, generator: new Generator(1) }).cast(dtype);
      const ids = tensor(
        [
          [3, 999, 0],
          [3, 17, 512],
        ],
        { dtype: "i32", backend: be },
      );
      const want = embedding(table.cast("f32"), ids);
      let got: Tensor | undefined;
      const peak = peakOf(be, () => {
        got = embedding(table, ids);
        return [];
      });
      expect(got!.dtype).toBe(dtype); // PyTorch: the output has the table's dtype
      expect(got!.shape).toEqual([2, 3, D]);
      expect(Array.from(got!.cast("f32").toTypedArray())).toEqual(Array.from(want.toTypedArray()));
      // rows out (f32 then cast): a few KB; the widened table would be V·D·4 = 192 KB
      expect(peak).toBeLessThan(6 * D * 4 * 2);
      for (const t of [table, ids, want, got!]) t.dispose();
    });
  }
});

describe("matmul with f32 activations × a bf16/f16 weight", () => {
  for (const dtype of ["bf16", "f16"] as const)
    it(`${dtype}: hands the weight over as stored (no whole f32 copy) and equals the widened product`, () => {
      const be = createReferenceBackend({ name: "mm-bf16" });
      let seen: string[] = [];
      const spy: Backend = {
        ...be,
        matmul(a, b, o, out) {
          seen = [a.dtype, b.dtype];
          return be.matmul(a, b, o, out);
        },
      };
      const [M, K, N] = [5, 64, 300];
      const x = randn([M, K], { backend: spy, generator: new Generator(2) });
      const w = randn([N, K], { backend: spy, generator: new Generator(3) }).cast(dtype);
      const wf = w.cast("f32");
      const want = matmul(x, wf.T);
      let got: Tensor | undefined;
      const peak = peakOf(spy, () => {
        got = matmul(x, w.T);
        return [];
      });
      expect(seen).toEqual(["f32", dtype]);
      expect(got!.dtype).toBe("f32");
      const g = got!.toTypedArray();
      const r = want.toTypedArray();
      for (let i = 0; i < r.length; i++) expect(Math.abs(g[i] - r[i])).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(r[i])));
      // only the [M, N] f32 output; a widened weight would add N·K·4 = 76.8 KB
      expect(peak).toBe(M * N * 4);
      for (const t of [x, w, wf, want, got!]) t.dispose();
    });
});
