// attention over a KV cache (kv length ≠ query length, causal with offset) and in rope's [b, s, h, d]
// layout (transposed views read in place, no copies), on the reference backend: equality with the
// plain path, finite-difference gradients (f64), and a count of the backend copies a decoder layer makes.
import { describe, expect, it } from "vitest";
import { createReferenceBackend } from "../src/backend/reference";
import type { AttentionOptions, Backend } from "../src/backend/types";
import { attention, embedding, rope } from "../src/ops";
import { Generator } from "../src/random";
import { randn, type Tensor, tensor } from "../src/tensor";
import { gradCheck, randomValues, t64 } from "./helpers";

const be = createReferenceBackend({ name: "reference-attn" });
const gen = (seed: number) => ({ backend: be, generator: new Generator(seed) });

function close(a: Tensor, b: Tensor, tol = 1e-6): void {
  expect(a.shape).toEqual(b.shape);
  const x = a.toTypedArray();
  const y = b.toTypedArray();
  let worst = 0;
  for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs(x[i] - y[i]));
  expect(worst).toBeLessThan(tol);
}

describe("attention over a KV cache (query length < key length)", () => {
  for (const [B, H, KVH, S, D] of [
    [1, 2, 2, 7, 4],
    [2, 4, 2, 9, 3],
    [1, 6, 1, 5, 8],
  ]) {
    it(`last ${3} queries over ${S} keys equal the last rows of full attention (b${B} h${H} kvh${KVH} d${D})`, () => {
      const q = randn([B, H, S, D], gen(1));
      const k = randn([B, KVH, S, D], gen(2));
      const v = randn([B, KVH, S, D], gen(3));
      const full = attention(q, k, v);
      for (const n of [1, 3]) {
        const qLast = q.narrow(2, S - n, n);
        const out = attention(qLast, k, v);
        const want = full.narrow(2, S - n, n);
        close(out, want);
        for (const t of [qLast, out, want]) t.dispose();
      }
      for (const t of [q, k, v, full]) t.dispose();
    });
  }

  it("rejects kv length < query length and segment ids with a cache, naming the shapes", () => {
    const q = randn([1, 2, 4, 3], gen(1));
    const k = randn([1, 2, 3, 3], gen(2));
    expect(() => attention(q, k, k)).toThrow(/kv length ≥ query length/);
    const k2 = randn([1, 2, 6, 3], gen(2));
    const seg = tensor([[0, 0, 1, 1]], { dtype: "i32", backend: be });
    expect(() => attention(q, k2, k2, { segmentIds: seg })).toThrow(/need kv length = query length/);
    for (const t of [q, k, k2, seg]) t.dispose();
  });
});

/** Windowed causal attention written out: softmax over keys p − window < j ≤ p of each query (f64). */
function bruteWindowed(q: Tensor, k: Tensor, v: Tensor, window: number): Float64Array {
  const [B, H, S, D] = q.shape;
  const [, KVH, KS] = k.shape;
  const [Q, K, V] = [q, k, v].map((t) => t.toTypedArray());
  const out = new Float64Array(B * H * S * D);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let i = 0; i < S; i++) {
        const p = KS - S + i;
        const kh = Math.floor(h / (H / KVH));
        const first = Math.max(0, p - window + 1);
        const row = (b * H + h) * S + i;
        const key = (j: number) => ((b * KVH + kh) * KS + j) * D;
        const scores: number[] = [];
        for (let j = first; j <= p; j++) {
          let s = 0;
          for (let d = 0; d < D; d++) s += Q[row * D + d] * K[key(j) + d];
          scores.push(s / Math.sqrt(D));
        }
        const mx = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - mx));
        const sum = e.reduce((a, c) => a + c, 0);
        for (let j = first; j <= p; j++)
          for (let d = 0; d < D; d++) out[row * D + d] += (e[j - first] / sum) * V[key(j) + d];
      }
  return out;
}

describe("sliding-window attention", () => {
  const [B, H, KVH, S, D] = [2, 4, 2, 9, 3];
  for (const window of [1, 3, 8, 9, 20])
    it(`window ${window}: each query sees its last ${window} positions (full sequence and over a KV cache)`, () => {
      const q = randn([B, H, S, D], gen(11));
      const k = randn([B, KVH, S, D], gen(12));
      const v = randn([B, KVH, S, D], gen(13));
      const out = attention(q, k, v, { window });
      const want = bruteWindowed(q, k, v, window);
      const got = out.toTypedArray();
      let worst = 0;
      for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
      expect(worst).toBeLessThan(1e-6);
      // the last 2 queries over all keys (a KV cache) equal the last rows
      const qLast = q.narrow(2, S - 2, 2);
      const cached = attention(qLast, k, v, { window });
      const rows = out.narrow(2, S - 2, 2);
      close(cached, rows);
      for (const t of [q, k, v, out, qLast, cached, rows]) t.dispose();
    });

  it("a window as long as the keys is plain causal attention; a bad window is refused by name", () => {
    const q = randn([1, 2, 5, 3], gen(14));
    const k = randn([1, 2, 5, 3], gen(15));
    const a = attention(q, k, k, { window: 5 });
    const b = attention(q, k, k);
    expect(a.toTypedArray()).toEqual(b.toTypedArray());
    expect(() => attention(q, k, k, { window: 1.5 })).toThrow(/window must be a positive integer/);
    expect(() => attention(q, k, k, { window: -2 })).toThrow(/window/);
    for (const t of [q, k, a, b]) t.dispose();
  });
});

describe("attention in rope's layout ([b, s, h, d] storage, transposed views)", () => {
  it("gives the same output and gradients as dense [b, h, s, d] inputs, with and without a cache", () => {
    const [B, S, H, KVH, D] = [2, 6, 4, 2, 5];
    for (const sq of [S, 2]) {
      const qs = randn([B, sq, H, D], { ...gen(4), requiresGrad: true });
      const ks = randn([B, S, KVH, D], { ...gen(5), requiresGrad: true });
      const vs = randn([B, S, KVH, D], { ...gen(6), requiresGrad: true });
      const viaViews = attention(qs.transpose(1, 2), ks.transpose(1, 2), vs.transpose(1, 2));
      const [qd, kd, vd] = [qs, ks, vs].map((t) => {
        const c = t.detach().transpose(1, 2).contiguous();
        c.requiresGrad = true;
        return c;
      });
      const viaDense = attention(qd, kd, vd);
      close(viaViews, viaDense);
      // the view path hands back a [b, h, s, d] view of [b, s, h, d] storage: transposing it back is dense
      const merged = viaViews.transpose(1, 2);
      expect(merged.isDense()).toBe(true);
      const w = randn([B, H, sq, D], gen(7));
      viaViews.mul(w).sum().backward();
      viaDense.mul(w).sum().backward();
      close(qs.grad!.transpose(1, 2), qd.grad!);
      close(ks.grad!.transpose(1, 2), kd.grad!);
      close(vs.grad!.transpose(1, 2), vd.grad!);
    }
  });

  it("a decoder layer's rope → attention → merge heads makes no copies for the layout", () => {
    let copies = 0;
    let layout: AttentionOptions["layout"];
    const counting: Backend = {
      ...be,
      copy(src, view, dtype) {
        copies++;
        return be.copy(src, view, dtype);
      },
      attention(q, k, v, o) {
        layout = o.layout;
        return be.attention(q, k, v, o);
      },
    };
    const [B, S, H, KVH, D] = [1, 5, 4, 2, 6];
    const pos = tensor([[0, 1, 2, 3, 4]], { dtype: "i32", backend: counting });
    const q = randn([B, S, H, D], { backend: counting, generator: new Generator(1) });
    const k = randn([B, S, KVH, D], { backend: counting, generator: new Generator(2) });
    const v = randn([B, S, KVH, D], { backend: counting, generator: new Generator(3) });
    const qr = rope(q, pos);
    const kr = rope(k, pos);
    copies = 0;
    const out = attention(qr.transpose(1, 2), kr.transpose(1, 2), v.transpose(1, 2));
    const merged = out.transpose(1, 2).reshape([B, S, H * D]);
    expect(copies).toBe(0);
    expect(layout).toBe("bshd");
    expect(merged.shape).toEqual([B, S, H * D]);
  });
});

describe("attention gradients against finite differences (f64), cache offset and layout", () => {
  it("GQA, 2 queries over 5 keys, dense layout", () => {
    const err = gradCheck(
      (q, k, v) => attention(q, k, v, { scale: 0.8 }),
      [
        { values: randomValues(1 * 4 * 2 * 3, 1), shape: [1, 4, 2, 3] },
        { values: randomValues(1 * 2 * 5 * 3, 2), shape: [1, 2, 5, 3] },
        { values: randomValues(1 * 2 * 5 * 3, 3), shape: [1, 2, 5, 3] },
      ],
    );
    expect(err).toBeLessThan(1e-7);
  });

  it("GQA, 3 queries over 4 keys, [b, s, h, d] storage read through transposed views", () => {
    const err = gradCheck(
      (q, k, v) => attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)),
      [
        { values: randomValues(2 * 3 * 4 * 2, 4), shape: [2, 3, 4, 2] },
        { values: randomValues(2 * 4 * 2 * 2, 5), shape: [2, 4, 2, 2] },
        { values: randomValues(2 * 4 * 2 * 2, 6), shape: [2, 4, 2, 2] },
      ],
    );
    expect(err).toBeLessThan(1e-7);
  });

  it("the f64 backend takes the view path too (layout reaches the backend)", () => {
    const q = t64(randomValues(12, 1), [1, 2, 3, 2]);
    const out = attention(q.transpose(1, 2), q.transpose(1, 2), q.transpose(1, 2));
    expect(out.transpose(1, 2).isDense()).toBe(true);
    q.dispose();
    out.dispose();
  });
});

describe("no leaked buffers over 100 steps (memory stats flat)", () => {
  it("attention in rope's layout over a KV cache, forward + backward, and a bf16 embedding lookup", () => {
    const q = randn([1, 3, 4, 2], { ...gen(1), requiresGrad: true });
    const k = randn([1, 7, 2, 2], { ...gen(2), requiresGrad: true });
    const table = randn([50, 6], gen(3)).cast("bf16");
    const ids = tensor([1, 49, 7], { dtype: "i32", backend: be });
    let at10 = 0;
    for (let step = 1; step <= 100; step++) {
      const out = attention(q.transpose(1, 2), k.transpose(1, 2), k.transpose(1, 2));
      const e = embedding(table, ids);
      const loss = out.sum();
      loss.backward();
      for (const t of [out, e, loss, q.grad!, k.grad!]) t.dispose();
      q.grad = null;
      k.grad = null;
      if (step === 10) at10 = be.memoryStats().currentBytes;
    }
    expect(be.memoryStats().currentBytes).toBe(at10);
    for (const t of [q, k, table, ids]) t.dispose();
  });
});
