// GPU test of the tensor-core attention as the Backend reaches it (dtype routing, N-API argument order,
// scratch): bf16 q/k/v go to attention_tc.cu and must match the reference backend run on the same
// bf16-rounded values. The kernels themselves are checked in depth by dev/check_attention_tc.cu.
// Skipped, with the reason in the title, when no device is usable.
import { bf16ToF32, f32ToBf16 } from "@qlora/nf4";
import { type Backend, type Buffer, referenceBackend } from "@qlora/tensor";
import { describe, expect, it } from "vitest";
import { createCudaBackend, cudaDeviceStatus } from "./index";

const status = cudaDeviceStatus();
const title = (what: string) => (status.available ? what : `${what} (skipped: no CUDA device: ${status.reason})`);

function uniform(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32) * 2 - 1;
  });
}

/** Relative L2 error and max |err| / max |ref|. bf16 rounding of P and dS gives ~2^-9; a wrong argument is O(1). */
function errors(got: Float32Array, want: Float32Array): { l2: number; max: number } {
  let e2 = 0,
    r2 = 0,
    emax = 0,
    rmax = 0;
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i] - want[i]);
    e2 += e * e;
    r2 += want[i] * want[i];
    emax = Math.max(emax, e);
    rmax = Math.max(rmax, Math.abs(want[i]));
  }
  return { l2: Math.sqrt(e2 / r2), max: emax / rmax };
}

describe.skipIf(!status.available)(title("tensor-core attention through the cuda backend"), () => {
  for (const segments of [false, true]) {
    it(`bf16 q/k/v, GQA 4/2 heads, d=64, seq 70${segments ? ", packed segments" : ""}: out, lse, dq, dk, dv vs reference`, () => {
      const be = createCudaBackend();
      const o0 = { batch: 2, heads: 4, kvHeads: 2, seq: 70, headDim: 64, scale: 1 / 8 };
      const qn = o0.batch * o0.heads * o0.seq * o0.headDim;
      const kn = o0.batch * o0.kvHeads * o0.seq * o0.headDim;
      const bits = {
        q: f32ToBf16(uniform(qn, 1)),
        k: f32ToBf16(uniform(kn, 2)),
        v: f32ToBf16(uniform(kn, 3)),
        dout: f32ToBf16(uniform(qn, 4)),
      };
      const seg = Int32Array.from({ length: o0.batch * o0.seq }, (_, i) =>
        segments ? Math.floor((i % o0.seq) / 25) : 0,
      );
      const run = (b: Backend, dtype: "bf16" | "f32") => {
        const up = (x: Uint16Array): Buffer =>
          dtype === "bf16" ? b.fromHost(x, "bf16") : b.fromHost(bf16ToF32(x), "f32");
        const [q, k, v, dout] = [bits.q, bits.k, bits.v, bits.dout].map(up);
        const segmentIds = segments ? b.fromHost(seg, "i32") : undefined;
        const o = { ...o0, segmentIds };
        const { out, lse } = b.attention(q, k, v, o);
        const { dq, dk, dv } = b.attentionBackward(dout, q, k, v, out, lse, o);
        const res = { out, lse, dq, dk, dv };
        const dtypes = Object.values(res).map((x) => x.dtype);
        const host = Object.fromEntries(Object.entries(res).map(([name, x]) => [name, b.toHost(x) as Float32Array]));
        for (const x of [q, k, v, dout, out, lse, dq, dk, dv, ...(segmentIds ? [segmentIds] : [])]) b.free(x);
        return { host, dtypes };
      };
      const got = run(be, "bf16");
      const want = run(referenceBackend, "f32");
      expect(got.dtypes).toEqual(["f32", "f32", "f32", "f32", "f32"]); // the Backend contract: f32 out and gradients
      for (const name of ["out", "lse", "dq", "dk", "dv"]) {
        const e = errors(got.host[name], want.host[name]);
        expect(e.l2, `${name} relative L2`).toBeLessThanOrEqual(2 ** -6);
        expect(e.max, `${name} max |err| / max |ref|`).toBeLessThanOrEqual(2 ** -5);
      }
    });
  }
});
