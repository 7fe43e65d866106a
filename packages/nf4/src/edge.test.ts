// Edge cases of spec §2.3 and the elementwise code choice.
import { describe, expect, it } from "vitest";
import { dequantize4bit } from "./dequantize";
import { fp4Code, nf4Code } from "./internal/kernel4";
import { quantize4bit } from "./quantize";
import { FP4_THRESHOLDS, NF4_THRESHOLDS } from "./tables";

describe("special values (CUDA backend, spec §2.3)", () => {
  it("NaN element: ignored by absmax, own code 0 (NF4 -> -absmax, FP4 -> 0)", () => {
    const x = new Float32Array(64).fill(0.25);
    x[0] = 1;
    x[3] = NaN;
    const nf = quantize4bit(x, { quantType: "nf4" });
    expect((nf.absmax as Float32Array)[0]).toBe(1);
    expect(nf.packed[1] >> 4).toBe(10); // element 2 = 0.25 -> NF4 code 10
    expect(nf.packed[1] & 0xf).toBe(0);
    expect((dequantize4bit(nf) as Float32Array)[3]).toBe(-1);
    const fp = quantize4bit(x, { quantType: "fp4" });
    expect(fp.packed[1] & 0xf).toBe(0);
    expect((dequantize4bit(fp) as Float32Array)[3]).toBe(0);
  });
  it("absmax of NaN-holding blocks: fmaxf from -FLT_MAX (all-NaN full block -> -FLT_MAX, partial -> 0)", () => {
    const x = new Float32Array(64 + 64 + 10).fill(NaN);
    const bits = new Int32Array(x.buffer);
    bits[5] = 0xffc00000 | 0; // a negative quiet NaN is still NaN
    x[64] = NaN; // block 1: NaNs at both ends around finite values
    x[70] = -0.75;
    x[100] = 0.5;
    x[127] = NaN;
    bits[126] = 0x7f800001; // signalling-NaN bit pattern
    for (const quantType of ["nf4", "fp4"] as const) {
      const st = quantize4bit(x, { quantType });
      expect(Array.from(st.absmax as Float32Array)).toEqual([-3.4028234663852886e38, 0.75, 0]);
    }
  });
  it("Inf element destroys the block: NF4 -> NaN and -Inf, FP4 -> NaN", () => {
    const x = new Float32Array(64).fill(0.5);
    x[2] = Infinity;
    const nf = quantize4bit(x, { quantType: "nf4" });
    expect((nf.absmax as Float32Array)[0]).toBe(Infinity);
    const d = dequantize4bit(nf) as Float32Array;
    expect(d[2]).toBe(-Infinity);
    expect(Number.isNaN(d[0])).toBe(true);
    expect(nf.packed[0]).toBe(0x77);
    const fd = dequantize4bit(quantize4bit(x, { quantType: "fp4" })) as Float32Array;
    expect(fd.every((v) => Number.isNaN(v))).toBe(true);
  });
  it("odd n: the padding nibble is 7 (NF4) or 0 (absmax 0 / FP4)", () => {
    expect(quantize4bit(new Float32Array([0.3, 1, 0.5]), { quantType: "nf4" }).packed[1] & 0xf).toBe(7);
    expect(quantize4bit(new Float32Array([0, 0, 0]), { quantType: "nf4" }).packed[1] & 0xf).toBe(0);
    expect(quantize4bit(new Float32Array([0.3, 1, 0.5]), { quantType: "fp4" }).packed[1] & 0xf).toBe(0);
  });
  it("last partial block has its own absmax", () => {
    const x = new Float32Array(64 + 10).fill(1);
    x.fill(0.125, 64);
    const s = quantize4bit(x);
    expect(Array.from(s.absmax as Float32Array)).toEqual([1, 0.125]);
  });
  it("FP4: small negatives -> code 8 (-0.0), -0.0 -> code 0", () => {
    expect(fp4Code(-0.002)).toBe(8);
    expect(fp4Code(-0)).toBe(0);
    expect(fp4Code(NaN)).toBe(0);
    expect(nf4Code(NaN)).toBe(0);
  });
  it("ties at a threshold go to the lower code; one ulp above goes up", () => {
    const up = (v: number) => {
      const b = new Float32Array([v]);
      const u = new Int32Array(b.buffer);
      u[0] += v >= 0 ? 1 : -1;
      return b[0];
    };
    for (let k = 0; k < 15; k++) {
      const t = NF4_THRESHOLDS[k];
      expect(nf4Code(t)).toBe(k);
      expect(nf4Code(nextUp(t))).toBe(k + 1);
    }
    const rank = [0, 1, 6, 7, 4, 5, 2, 3];
    for (let k = 0; k < 7; k++) {
      const t = FP4_THRESHOLDS[k];
      expect(fp4Code(t)).toBe(rank[k]);
      expect(fp4Code(up(t))).toBe(rank[k + 1]);
      expect(fp4Code(-up(t))).toBe(rank[k + 1] + 8);
    }
  });
  it("bulk quantize = per-element code of fl32(x·r) for values within a few ulps of every threshold", () => {
    // Exercises the blocked fast paths (8 codes per store, fine bucket table) where a value lands in
    // a threshold bucket, for absmax values whose reciprocal is inexact.
    const ulps = (v: number, d: number) => {
      const b = new Float32Array([v]);
      new Int32Array(b.buffer)[0] += d;
      return b[0];
    };
    const absmaxes = [1, 0.7, 3.1e-3, 123.456, 1.9e-30, 5.5e20];
    for (const quantType of ["nf4", "fp4"] as const) {
      const thresholds = quantType === "nf4" ? NF4_THRESHOLDS : FP4_THRESHOLDS;
      const codeOf = quantType === "nf4" ? nf4Code : fp4Code;
      const x = new Float32Array(64 * absmaxes.length);
      absmaxes.forEach((m, b) => {
        const block = x.subarray(64 * b, 64 * b + 64);
        block[0] = m;
        let i = 1;
        for (const t of thresholds) {
          for (const d of [-2, -1, 0, 1, 2]) {
            if (i >= 64) break;
            const v = ulps(Math.fround(t * m), d);
            block[i++] = quantType === "fp4" && i % 2 === 0 ? -v : v;
          }
        }
      });
      const st = quantize4bit(x, { quantType });
      absmaxes.forEach((m, b) => {
        const r = Math.fround(1 / Math.fround(m));
        for (let i = 0; i < 64; i++) {
          const e = 64 * b + i;
          const got = e % 2 === 0 ? st.packed[e >> 1] >> 4 : st.packed[e >> 1] & 15;
          if (got !== codeOf(Math.fround(x[e] * r)))
            expect([quantType, b, i, got]).toEqual([quantType, b, i, codeOf(Math.fround(x[e] * r))]);
        }
      });
    }
  });
  it("bulk FP4: negative products that round to -0 keep code 0, slightly larger ones get the sign", () => {
    const x = new Float32Array(128);
    x[0] = 3e38; // r = fl32(1/3e38) is subnormal: products of ~1e-7 straddle -2^-150
    for (let i = 1; i < 64; i++) x[i] = -i * 1e-8;
    x[64] = 1; // a second block with r = 1 and tiny values
    for (let i = 65; i < 128; i++) x[i] = -(2 ** -150) * (i - 96) * 1e-3;
    const st = quantize4bit(x, { quantType: "fp4" });
    let signed = 0;
    for (let b = 0; b < 2; b++) {
      const r = Math.fround(1 / (st.absmax as Float32Array)[b]);
      for (let i = 64 * b; i < 64 * b + 64; i++) {
        const got = i % 2 === 0 ? st.packed[i >> 1] >> 4 : st.packed[i >> 1] & 15;
        const want = fp4Code(Math.fround(x[i] * r));
        if (want === 8) signed++;
        if (got !== want) expect([i, got]).toEqual([i, want]);
      }
    }
    expect(signed).toBeGreaterThan(10); // the boundary really is crossed
  });
  it("FP4 literal 0.583333 is not the midpoint: a value between them rounds 'wrongly' as CUDA does", () => {
    // midpoint 0.5833333 (3f155556) > literal (3f155550): 0.58333331 -> code 2 (0.6667), not 5 (0.5)
    const between = new Float32Array(new Uint32Array([0x3f155553]).buffer)[0];
    expect(fp4Code(between)).toBe(2);
  });
});

function nextUp(v: number): number {
  const b = new Float32Array([v]);
  const u = new Int32Array(b.buffer);
  if (v > 0) u[0] += 1;
  else if (v < 0) u[0] -= 1;
  else return 1.401298464324817e-45;
  return b[0];
}
