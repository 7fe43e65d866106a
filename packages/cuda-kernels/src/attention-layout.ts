// The CUDA attention kernels read [batch, heads, seq, d] only and have no KV-cache offset. This adapter
// gives the Backend's attention options their meaning on top of them: the "bshd" layout is served by
// transposing copies on the device (correct, not copy-free), and kvSeq ≠ seq (attention over a KV cache)
// and a sliding window (Mistral) are refused with BackendOpError, so a caller can tell a missing kernel
// from a wrong result. The kernels are unverified on a GPU; this adapter's index math is tested on the
// reference backend (src/attention-layout.test.ts).
import { type AttentionOptions, type Backend, BackendOpError, type Buffer } from "@qlora/tensor";

type AttentionOps = Pick<Backend, "attention" | "attentionBackward">;
type Host = Pick<Backend, "name" | "copy" | "free">;

/** Copy a [b, s1, s2, d] buffer to [b, s2, s1, d] (swaps the middle two axes). */
function swapMiddle(be: Host, x: Buffer, b: number, s1: number, s2: number, d: number): Buffer {
  return be.copy(x, { shape: [b, s2, s1, d], strides: [s1 * s2 * d, d, s2 * d, 1], offset: 0 }, x.dtype);
}

/** attention/attentionBackward over `inner` (bhsd, no cache) that accept every AttentionOptions. */
export function withAttentionLayouts(be: Host, inner: AttentionOps): AttentionOps {
  const check = (o: AttentionOptions, op: string): void => {
    if ((o.kvSeq ?? o.seq) !== o.seq) throw new BackendOpError(`${op} with kvSeq ≠ seq (KV cache)`, be.name);
    if ((o.window ?? 0) > 0) throw new BackendOpError(`${op} with a sliding window`, be.name);
  };
  return {
    attention(q, k, v, o) {
      check(o, "attention");
      if (o.layout !== "bshd") return inner.attention(q, k, v, o);
      const { batch: B, heads: H, kvHeads: KVH, seq: S, headDim: D } = o;
      const [qt, kt, vt] = [
        swapMiddle(be, q, B, S, H, D),
        swapMiddle(be, k, B, S, KVH, D),
        swapMiddle(be, v, B, S, KVH, D),
      ];
      try {
        const r = inner.attention(qt, kt, vt, { ...o, layout: "bhsd" });
        const out = swapMiddle(be, r.out, B, H, S, D);
        be.free(r.out);
        return { out, lse: r.lse };
      } finally {
        for (const t of [qt, kt, vt]) be.free(t);
      }
    },
    attentionBackward(dout, q, k, v, out, lse, o) {
      check(o, "attentionBackward");
      if (o.layout !== "bshd") return inner.attentionBackward(dout, q, k, v, out, lse, o);
      const { batch: B, heads: H, kvHeads: KVH, seq: S, headDim: D } = o;
      const qs = [dout, q, out].map((x) => swapMiddle(be, x, B, S, H, D));
      const kvs = [k, v].map((x) => swapMiddle(be, x, B, S, KVH, D));
      try {
        const r = inner.attentionBackward(qs[0], qs[1], kvs[0], kvs[1], qs[2], lse, { ...o, layout: "bhsd" });
        const back = (x: Buffer, heads: number) => {
          const y = swapMiddle(be, x, B, heads, S, D);
          be.free(x);
          return y;
        };
        return { dq: back(r.dq, H), dk: back(r.dk, KVH), dv: back(r.dv, KVH) };
      } finally {
        for (const t of [...qs, ...kvs]) be.free(t);
      }
    },
  };
}
