// GPU tests: the tensor package's parity suite on the cuda backend, NF4 bytes against @qlora/nf4,
// the fused bf16 4-bit GEMM against dequantize→bf16→f64 matmul, and allocator behaviour.
// Skipped, with the reason in the title, when no device is usable (CI, GPU-less machines).
import { DYNAMIC_MAP_SIGNED, dequantize4bit, f32ToBf16, quantize4bit } from "@qlora/nf4";
import { type QuantizedWeightBuffers, referenceBackend } from "@qlora/tensor";
import { backendParitySuite } from "@qlora/tensor/testing";
import { describe, expect, it } from "vitest";
import { type CudaBackend, createCudaBackend, cudaDeviceStatus } from "./index";

const status = cudaDeviceStatus();
const title = (what: string) => (status.available ? what : `${what} (skipped: no CUDA device: ${status.reason})`);

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32) * 2 - 1;
  };
}

describe.skipIf(!status.available)(title("cuda backend parity vs reference"), () => {
  if (status.available) backendParitySuite(createCudaBackend());
});

describe.skipIf(!status.available)(title("NF4/FP4 on the GPU vs @qlora/nf4"), () => {
  const be: CudaBackend | undefined = status.available ? createCudaBackend() : undefined;

  it("Appendix B V1/V2 bytes", () => {
    const v1 = Float32Array.from({ length: 64 }, (_, i) => (i - 32) / 16);
    const x = be!.fromHost(v1, "f32");
    const { codes, absmax } = be!.quantize4bitDevice(x, "nf4", 64);
    const hex = Array.from(be!.toHost(codes) as Uint8Array, (b) => b.toString(16).padStart(2, "0")).join(" ");
    expect(hex).toBe("00 00 01 11 11 11 12 22 22 33 33 44 45 55 66 67 77 88 99 9a aa bb bc cc cd dd de ee ee ee ff ff");
    expect(Array.from(be!.toHost(absmax))).toEqual([2]);
    const v2 = be!.fromHost(Float32Array.from([0.5, -1.0, 0.25, 0.0, -0.125]), "f32");
    const fp4 = be!.quantize4bitDevice(v2, "fp4", 64);
    expect(Array.from(be!.toHost(fp4.codes))).toEqual([0x5b, 0x70, 0xe0]);
    for (const b of [x, codes, absmax, v2, fp4.codes, fp4.absmax]) be!.free(b);
  });

  for (const quantType of ["nf4", "fp4"] as const) {
    for (const blocksize of [32, 64, 256, 4096]) {
      it(`${quantType} bs=${blocksize}: codes and absmax bit-identical, dequant (DQ) identical`, () => {
        const rnd = lcg(blocksize);
        const n = 3 * blocksize * 5 + 7; // odd length, partial last block
        const data = Float32Array.from({ length: n }, () => rnd() * 3);
        data[5] = 0;
        const x = be!.fromHost(data, "f32");
        const got = be!.quantize4bitDevice(x, quantType, blocksize);
        const want = quantize4bit(data, { quantType, blocksize, doubleQuant: false });
        expect(Buffer.from(be!.toHost(got.codes) as Uint8Array).equals(Buffer.from(want.packed))).toBe(true);
        expect(Array.from(be!.toHost(got.absmax))).toEqual(Array.from(want.absmax as Float32Array));
        // bf16 input path
        const bf = f32ToBf16(data);
        const xb = be!.fromHost(bf, "bf16");
        const gotB = be!.quantize4bitDevice(xb, quantType, blocksize);
        const wantB = quantize4bit(bf, { quantType, blocksize, dtype: "bfloat16" });
        expect(Buffer.from(be!.toHost(gotB.codes) as Uint8Array).equals(Buffer.from(wantB.packed))).toBe(true);
        // double-quantized dequantization to f32 and bf16, one launch each
        const dq = quantize4bit(data, { quantType, blocksize, doubleQuant: true });
        const nested = dq.absmax as Exclude<typeof dq.absmax, Float32Array>;
        const w: QuantizedWeightBuffers = {
          quantType,
          blocksize,
          shape: [1, n],
          codes: be!.fromHost(dq.packed, "u8"),
          absmax: {
            kind: "nested",
            qabsmax: be!.fromHost(nested.qabsmax, "u8"),
            code: be!.fromHost(nested.code, "f32"),
            nestedAbsmax: be!.fromHost(nested.nestedAbsmax, "f32"),
            nestedBlocksize: nested.nestedBlocksize,
            offset: nested.offset,
          },
        };
        for (const [dt, ref] of [
          ["f32", "float32"],
          ["bf16", "bfloat16"],
        ] as const) {
          const out = be!.dequantize4bit(w, dt);
          const wantOut = dequantize4bit(dq, ref);
          const g = be!.toHost(out);
          for (let i = 0; i < n; i++) if (!Object.is(g[i], wantOut[i])) expect([i, g[i]]).toEqual([i, wantOut[i]]);
          be!.free(out);
        }
        for (const b of [x, xb, got.codes, got.absmax, gotB.codes, gotB.absmax, w.codes]) be!.free(b);
      });
    }
  }

  it("signed dynamic map is what the DQ path reads", () => {
    expect(DYNAMIC_MAP_SIGNED.length).toBe(256);
  });
});

describe.skipIf(!status.available)(title("fused 4-bit GEMM (bf16 tensor cores) vs dequant→bf16→f64 matmul"), () => {
  it.each([
    [1, 256, 512],
    [37, 300, 272],
    [130, 129, 160],
    [256, 512, 1024],
  ])("m=%i n=%i k=%i", (m, n, k) => {
    const be = createCudaBackend({ fused4bit: true });
    const rnd = lcg(m * 7 + n);
    const wdata = Float32Array.from({ length: n * k }, () => rnd());
    const q = quantize4bit(wdata, { blocksize: 64 });
    const wbf = dequantize4bit(q, "bfloat16") as Uint16Array;
    const x = Float32Array.from({ length: m * k }, () => rnd());
    const xbf = f32ToBf16(x);
    const bfToF = (b: number) => new Float32Array(new Uint32Array([b << 16]).buffer)[0];
    const w: QuantizedWeightBuffers = {
      quantType: "nf4",
      blocksize: 64,
      shape: [n, k],
      codes: be.fromHost(q.packed, "u8"),
      absmax: { kind: "f32", values: be.fromHost(q.absmax as Float32Array, "f32") },
    };
    const xb = be.fromHost(xbf, "bf16");
    const y = be.toHost(be.matmul4bit(xb, w, m)) as Float32Array;
    let maxAbs = 0;
    const want = new Float64Array(m * n);
    for (let i = 0; i < m; i++)
      for (let o = 0; o < n; o++) {
        let acc = 0;
        for (let j = 0; j < k; j++) acc += bfToF(xbf[i * k + j]) * bfToF(wbf[o * k + j]);
        want[i * n + o] = acc;
        maxAbs = Math.max(maxAbs, Math.abs(acc));
      }
    for (let i = 0; i < m * n; i++)
      expect(Math.abs(y[i] - want[i])).toBeLessThanOrEqual(1e-5 * maxAbs + 1e-4 * Math.abs(want[i]) + 1e-6);
    // input gradient: dx = dy · W
    const dyb = be.fromHost(f32ToBf16(Float32Array.from({ length: m * n }, () => rnd())), "bf16");
    const dx = be.toHost(be.matmul4bitInputGrad(dyb, w, m)) as Float32Array;
    const dyh = be.toHost(dyb) as Uint16Array;
    for (let i = 0; i < m; i += Math.max(1, m >> 2))
      for (let j = 0; j < k; j += 7) {
        let acc = 0;
        for (let o = 0; o < n; o++) acc += bfToF(dyh[i * n + o]) * bfToF(wbf[o * k + j]);
        expect(Math.abs(dx[i * k + j] - acc)).toBeLessThanOrEqual(1e-4 * (Math.abs(acc) + 1) + 1e-5 * n);
      }
  });
});

describe.skipIf(!status.available)(title("deterministic embedding backward"), () => {
  it("is bit-identical to the reference backend (f64 sums in position order) and run to run", () => {
    const be = createCudaBackend();
    const count = 3000,
      dim = 70,
      vocab = 40;
    const next = lcg(5);
    const ids = Int32Array.from({ length: count }, (_, i) => (i % 3 === 0 ? 7 : Math.floor((next() + 1) * 20)));
    const dy = Float32Array.from({ length: count * dim }, next);
    const want = referenceBackend.toHost(
      referenceBackend.embeddingBackward(
        referenceBackend.fromHost(dy, "f32"),
        referenceBackend.fromHost(ids, "i32"),
        count,
        dim,
        vocab,
      ),
    );
    const dyb = be.fromHost(dy, "f32");
    const idb = be.fromHost(ids, "i32");
    const runs = [0, 1].map(() => {
      const dw = be.embeddingBackward(dyb, idb, count, dim, vocab);
      const host = be.toHost(dw);
      be.free(dw);
      return Buffer.from(host.buffer);
    });
    expect(Buffer.compare(runs[0], Buffer.from(want.buffer))).toBe(0);
    expect(Buffer.compare(runs[1], runs[0])).toBe(0);
    be.free(dyb);
    be.free(idb);
  });
});

describe.skipIf(!status.available)(title("caching allocator"), () => {
  it("reuses blocks: cudaMalloc calls stay flat, stats track current/peak/reserved", () => {
    const be = createCudaBackend();
    const warm = be.alloc("f32", 1 << 20);
    be.free(warm);
    const before = be.deviceMemoryStats();
    for (let i = 0; i < 100; i++) be.free(be.alloc("f32", (1 << 20) - i));
    const after = be.deviceMemoryStats();
    expect(after.allocCalls).toBe(before.allocCalls);
    expect(after.currentBytes).toBe(before.currentBytes);
    expect(after.reservedBytes).toBeGreaterThanOrEqual(4 << 20);
    expect(after.deviceTotalBytes).toBeGreaterThan(0);
    const paged = be.allocPaged("f32", 200_000);
    expect(be.deviceMemoryStats().managedBytes).toBe(800_000);
    be.free(paged);
  });

  it("allocState pages states of ≥ 1e5 elements; AdamW on paged states equals AdamW on device states", () => {
    const be = createCudaBackend();
    const managed0 = be.deviceMemoryStats().managedBytes;
    const small = be.allocState("f32", 99_999);
    expect(be.deviceMemoryStats().managedBytes).toBe(managed0);
    be.free(small);
    const n = 150_001;
    const next = lcg(11);
    const p0 = Float32Array.from({ length: n }, next);
    const g = be.fromHost(Float32Array.from({ length: n }, next), "f32");
    const opts = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };
    const run = (alloc: (d: "f32", l: number) => ReturnType<CudaBackend["alloc"]>) => {
      const p = be.fromHost(p0, "f32");
      const m = alloc("f32", n);
      const v = alloc("f32", n);
      for (let step = 1; step <= 3; step++) {
        be.adamwStepInPlace(p, g, m, v, n, { ...opts, step });
        be.toHost(m); // host reads between steps: managed pages migrate back and forth
      }
      const out = [be.toHost(p), be.toHost(m), be.toHost(v)];
      for (const b of [p, m, v]) be.free(b);
      return out;
    };
    let pagedBytes = 0;
    const paged = run((d, l) => {
      const b = be.allocState(d, l);
      pagedBytes = be.deviceMemoryStats().managedBytes - managed0;
      return b;
    });
    expect(pagedBytes).toBe(2 * n * 4);
    expect(be.deviceMemoryStats().managedBytes).toBe(managed0); // free released both managed buffers
    const plain = run((d, l) => be.alloc(d, l));
    for (let i = 0; i < 3; i++)
      expect(Buffer.compare(Buffer.from(paged[i].buffer), Buffer.from(plain[i].buffer))).toBe(0);
    be.free(g);
  });
});
