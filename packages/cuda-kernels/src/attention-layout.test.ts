// The CUDA backend's attention adapter (src/attention-layout.ts), checked without a GPU: wrapped around
// the reference backend's bhsd-only path, the bshd layout must give exactly the reference's own bshd
// results, and a KV cache (kvSeq ≠ seq) must be refused with BackendOpError.
import {
  type AttentionOptions,
  type Backend,
  BackendOpError,
  type Buffer,
  createReferenceBackend,
  type HostBuffer,
} from "@qlora/tensor";
import { describe, expect, it } from "vitest";
import { withAttentionLayouts } from "./attention-layout";

const ref = createReferenceBackend({ name: "reference-cuda-adapter" });
const f32 = (n: number, seed: number) =>
  ref.fromHost(
    Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + seed)),
    "f32",
  );
const data = (b: Buffer) => Array.from((b as HostBuffer).data);

/** The reference with bshd forbidden: what the CUDA kernels can do. */
const bhsdOnly: Pick<Backend, "attention" | "attentionBackward"> = {
  attention(q, k, v, o) {
    expect(o.layout ?? "bhsd").toBe("bhsd");
    return ref.attention(q, k, v, o);
  },
  attentionBackward(dout, q, k, v, out, lse, o) {
    expect(o.layout ?? "bhsd").toBe("bhsd");
    return ref.attentionBackward(dout, q, k, v, out, lse, o);
  },
};

describe("withAttentionLayouts (the CUDA backend's attention options)", () => {
  const wrapped = withAttentionLayouts(ref, bhsdOnly);
  it("bshd through transposing copies equals the reference's bshd, forward and backward", () => {
    const o: AttentionOptions = { batch: 2, heads: 4, kvHeads: 2, seq: 5, headDim: 3, scale: 0.6, layout: "bshd" };
    const [q, k, v, dout] = [f32(120, 1), f32(60, 2), f32(60, 3), f32(120, 4)];
    const want = ref.attention(q, k, v, o);
    const got = wrapped.attention(q, k, v, o);
    const close = (a: number[], b: number[]) => {
      expect(a.length).toBe(b.length);
      for (let i = 0; i < a.length; i++) expect(Math.abs(a[i] - b[i])).toBeLessThan(1e-6);
    };
    close(data(got.out), data(want.out));
    close(data(got.lse), data(want.lse));
    const gw = ref.attentionBackward(dout, q, k, v, want.out, want.lse, o);
    const gg = wrapped.attentionBackward(dout, q, k, v, got.out, got.lse, o);
    close(data(gg.dq), data(gw.dq));
    close(data(gg.dk), data(gw.dk));
    close(data(gg.dv), data(gw.dv));
  });

  it("a KV cache (kvSeq ≠ seq) is refused with BackendOpError naming the op", () => {
    const o: AttentionOptions = { batch: 1, heads: 1, kvHeads: 1, seq: 2, kvSeq: 4, headDim: 2, scale: 1 };
    expect(() => wrapped.attention(f32(4, 1), f32(8, 2), f32(8, 3), o)).toThrow(BackendOpError);
    expect(() => wrapped.attention(f32(4, 1), f32(8, 2), f32(8, 3), o)).toThrow(/kvSeq ≠ seq/);
  });

  it("a sliding window is refused with BackendOpError naming the op (no CUDA kernel applies it)", () => {
    const o: AttentionOptions = { batch: 1, heads: 1, kvHeads: 1, seq: 2, headDim: 2, scale: 1, window: 1 };
    const [q, k, v] = [f32(4, 1), f32(4, 2), f32(4, 3)];
    expect(() => wrapped.attention(q, k, v, o)).toThrow(BackendOpError);
    expect(() => wrapped.attentionBackward(q, q, k, v, q, f32(2, 4), o)).toThrow(
      /attentionBackward with a sliding window/,
    );
  });
});
