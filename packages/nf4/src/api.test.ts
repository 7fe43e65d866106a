import { describe, expect, it } from "vitest";
import { randn } from "../test/helpers";
import { storageBytes, storageOfState } from "./accounting";
import { dequantizeBlockwise8bit, quantize8bitValue, quantizeBlockwise8bit } from "./blockwise8bit";
import { dequantize4bit, recoverAbsmax } from "./dequantize";
import { Nf4Error } from "./errors";
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from "./half";
import { errorMetrics, meanAbsError, meanRelError, sqnrDb } from "./metrics";
import { quantize4bit, quantize4bitChunks, Quantizer4bit } from "./quantize";
import { DYNAMIC_MAP_SIGNED, DYNAMIC_MAP_UNSIGNED } from "./tables";
import type { QuantState4bit } from "./types";

function err(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(Nf4Error);
    return `${(e as Nf4Error).code}: ${(e as Error).message}`;
  }
  throw new Error("expected an Nf4Error");
}

describe("input validation", () => {
  const x = new Float32Array(10);
  it.each([
    [
      () => quantize4bit(x, { blocksize: 48 }),
      /^INVALID_BLOCKSIZE: options\.blocksize: expected one of 32, 64, 128, 256, 512, 1024, 2048, 4096, got 48/,
    ],
    [() => quantize4bit(x, { blocksize: 16 }), /^INVALID_BLOCKSIZE/],
    [
      () => quantize4bit(x, { quantType: "int4" as never }),
      /^INVALID_QUANT_TYPE: options\.quantType: expected "nf4" or "fp4", got "int4"/,
    ],
    [
      () => quantize4bit(x, { shape: [3, 4] }),
      /^LENGTH_MISMATCH: options\.shape: \[3, 4\] has 12 elements but input has 10/,
    ],
    [
      () => quantize4bit(x, { shape: [2.5, 4] }),
      /^INVALID_SHAPE: options\.shape\[0\]: expected a non-negative integer, got 2\.5/,
    ],
    [() => quantize4bit(x, { shape: [-2, -5] }), /^INVALID_SHAPE: options\.shape\[0\]/],
    [
      () => quantize4bit(new Uint16Array(4)),
      /^INVALID_DTYPE: options\.dtype: a Uint16Array input needs "bfloat16" or "float16"/,
    ],
    [() => quantize4bit([1, 2] as never), /^INVALID_ARGUMENT: input: expected a Float32Array/],
    [() => quantize4bit(x, { dtype: "float64" as never }), /^INVALID_DTYPE: options\.dtype/],
    [
      () => dequantize4bit({ ...quantize4bit(x), packed: new Uint8Array(4) }),
      /^LENGTH_MISMATCH: state\.packed: expected a Uint8Array of ceil\(10\/2\) = 5 bytes, got 4 bytes/,
    ],
    [
      () => dequantize4bit({ ...quantize4bit(x), absmax: new Float32Array(2) }),
      /^LENGTH_MISMATCH: state\.absmax: expected 1 float32 values/,
    ],
    [() => dequantize4bit(quantize4bit(x), "int8" as never), /^INVALID_DTYPE: outDtype/],
    [() => quantizeBlockwise8bit(x, { blocksize: 32 }), /^INVALID_BLOCKSIZE: options\.blocksize: expected one of 64/],
    [
      () => quantizeBlockwise8bit(x, { code: new Float32Array(16) }),
      /^INVALID_ARGUMENT: options\.code: expected a Float32Array of 256/,
    ],
    [
      () => dequantizeBlockwise8bit({ q: new Uint8Array(300), absmax: new Float32Array(1) }, { blocksize: 256 }),
      /^LENGTH_MISMATCH: state\.absmax/,
    ],
    [() => storageBytes([4, -1]), /^INVALID_SHAPE/],
  ])("%#", (fn, re) => expect(err(fn)).toMatch(re));
});

describe("bf16 / f16 input and output", () => {
  const x = randn(64 * 37 + 3, 11);
  it("bf16 input equals quantizing its f32 values; output dtype follows state.dtype", () => {
    const b = f32ToBf16(x);
    const s = quantize4bit(b, { dtype: "bfloat16" });
    const ref = quantize4bit(bf16ToF32(b), { dtype: "bfloat16" });
    expect(s.packed).toEqual(ref.packed);
    const d = dequantize4bit(s);
    expect(d).toBeInstanceOf(Uint16Array);
    expect(d).toEqual(f32ToBf16(dequantize4bit(s, "float32") as Float32Array));
  });
  it("f16 input; f16 output is RNE of the f32 product", () => {
    const h = f32ToF16(x);
    const s = quantize4bit(h, { dtype: "float16", blocksize: 128 });
    expect(s.packed).toEqual(quantize4bit(f16ToF32(h), { blocksize: 128 }).packed);
    expect(dequantize4bit(s, "float16")).toEqual(f32ToF16(dequantize4bit(s, "float32") as Float32Array));
  });
  it("large bf16 input crosses the 65536-element conversion chunks", () => {
    const big = randn(65536 * 2 + 64 * 5 + 1, 12);
    const b = f32ToBf16(big);
    expect(quantize4bit(b, { dtype: "bfloat16", blocksize: 4096 }).packed).toEqual(
      quantize4bit(bf16ToF32(b), { blocksize: 4096 }).packed,
    );
  });
});

describe("streaming", () => {
  const x = randn(64 * 50 + 21, 4);
  const whole = quantize4bit(x, { quantType: "fp4", blocksize: 64 });
  it("Quantizer4bit over ragged chunks equals one-shot quantize4bit", () => {
    const q = new Quantizer4bit({ quantType: "fp4", blocksize: 64 });
    const packed: number[] = [];
    const absmax: number[] = [];
    const sizes = [1, 7, 64, 63, 200, 0, 1000, 129];
    let pos = 0;
    let k = 0;
    while (pos < x.length) {
      const len = Math.min(sizes[k++ % sizes.length], x.length - pos);
      const c = q.push(x.subarray(pos, pos + len));
      expect(c.start).toBe(packed.length * 2);
      packed.push(...c.packed);
      absmax.push(...c.absmax);
      pos += len;
    }
    const last = q.finish();
    packed.push(...last.packed);
    absmax.push(...last.absmax);
    expect(packed).toEqual(Array.from(whole.packed));
    expect(absmax).toEqual(Array.from(whole.absmax as Float32Array));
    expect(err(() => q.push(x))).toMatch(/^STREAM_FINISHED/);
  });
  it("quantize4bitChunks from a generator (bf16 chunks, double quant)", () => {
    const b = f32ToBf16(x);
    function* rows() {
      for (let i = 0; i < b.length; i += 333) yield b.subarray(i, Math.min(b.length, i + 333));
    }
    const s = quantize4bitChunks(rows(), { shape: [b.length], dtype: "bfloat16", doubleQuant: true });
    const ref = quantize4bit(b, { dtype: "bfloat16", doubleQuant: true });
    expect(s.packed).toEqual(ref.packed);
    expect(recoverAbsmax(s)).toEqual(recoverAbsmax(ref));
    expect(err(() => quantize4bitChunks(rows(), { shape: [b.length + 1], dtype: "bfloat16" }))).toMatch(
      /^LENGTH_MISMATCH: chunks: got/,
    );
    expect(err(() => quantize4bitChunks(rows(), { shape: [10], dtype: "bfloat16" }))).toMatch(
      /^LENGTH_MISMATCH: chunks: more than/,
    );
  });
});

describe("accounting", () => {
  it("4.5 bits at blocksize 64, ≈4.127 with double quant", () => {
    expect(storageBytes([4096, 4096]).bitsPerParam).toBe(4.5);
    const dq = storageBytes([4096, 4096], { doubleQuant: true });
    expect(dq).toMatchObject({ packed: 8388608, absmax: 262144, nestedAbsmax: 4096, maps: 0 });
    expect(dq.bitsPerParam).toBeCloseTo(4 + 8 / 64 + 32 / (64 * 256), 12);
    expect(storageBytes(4096 * 4096, { blocksize: 128 }).bitsPerParam).toBe(4.25);
    expect(storageBytes(5, { includeMaps: true, doubleQuant: true })).toMatchObject({
      packed: 3,
      absmax: 1,
      nestedAbsmax: 4,
      maps: 1088,
      total: 1096,
    });
  });
  it("storageOfState counts exactly what packQuantState writes", () => {
    const s: QuantState4bit = quantize4bit(randn(1000, 1), { doubleQuant: true, shape: [10, 100] });
    const st = storageOfState(s);
    expect(st.json).toBe(
      new TextEncoder().encode(
        `{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [10, 100], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": ${String((s.absmax as { offset: number }).offset)}}`,
      ).length,
    );
    expect(st.total).toBe(500 + 16 + 4 + 64 + 1024 + st.json);
  });
});

describe("metrics", () => {
  it("definitions", () => {
    const a = new Float32Array([1, -2, 0, 4]);
    const b = new Float32Array([1.5, -2, 0.5, 3]);
    expect(meanAbsError(a, b)).toBeCloseTo(2 / 4, 12);
    expect(meanRelError(a, b)).toBeCloseTo((0.5 / (1 + 1e-8) + 0 + 0.5 / 1e-8 + 1 / (4 + 1e-8)) / 4, 6);
    expect(sqnrDb(a, b)).toBeCloseTo(10 * Math.log10(21 / 1.5), 12);
    expect(errorMetrics(a, b)).toMatchObject({ maxAbsError: 1 });
    expect(sqnrDb(a, a)).toBe(Infinity);
    expect(err(() => meanAbsError(a, new Float32Array(3)))).toMatch(/^LENGTH_MISMATCH/);
  });
  it("NF4 on randn: SQNR ≈ 20 dB at blocksize 64", () => {
    const x = randn(1 << 16, 2);
    const db = sqnrDb(x, dequantize4bit(quantize4bit(x), "float32"));
    expect(db).toBeGreaterThan(19);
    expect(db).toBeLessThan(22);
  });
});

describe("dequantize4bitInto (chunked, allocation-free)", () => {
  it("chunks equal the full dequantization for f32/bf16/f16, nested or not", async () => {
    const { dequantize4bitInto } = await import("./dequantize");
    const x = randn(64 * 300 + 13, 21);
    for (const dq of [false, true]) {
      const s = quantize4bit(x, { doubleQuant: dq, quantType: dq ? "nf4" : "fp4" });
      for (const dt of ["float32", "bfloat16", "float16"] as const) {
        const full = dequantize4bit(s, dt);
        const got = dt === "float32" ? new Float32Array(x.length) : new Uint16Array(x.length);
        for (let st = 0; st < x.length; st += 1000) {
          const len = Math.min(1000, x.length - st);
          const buf = dt === "float32" ? new Float32Array(len) : new Uint16Array(len);
          dequantize4bitInto(s, buf, { outDtype: dt, start: st });
          got.set(buf, st);
        }
        expect(got).toEqual(full);
      }
      expect(err(() => dequantize4bitInto(s, new Float32Array(10), { start: 3 }))).toMatch(
        /^INVALID_ARGUMENT: options\.start/,
      );
      expect(err(() => dequantize4bitInto(s, new Float32Array(x.length), { start: 2 }))).toMatch(
        /^LENGTH_MISMATCH: out/,
      );
      expect(err(() => dequantize4bitInto(s, new Float32Array(4), { outDtype: "bfloat16" }))).toMatch(/^INVALID_DTYPE/);
    }
  });
});

describe("dequantize alignment paths", () => {
  it("any even start/length and unaligned packed buffers give the same values", async () => {
    const { dequantize4bitInto } = await import("./dequantize");
    const x = randn(32 * 40 + 7, 31);
    const s = quantize4bit(x, { blocksize: 32 });
    const full = dequantize4bit(s, "float32") as Float32Array;
    const fullH = dequantize4bit(s, "bfloat16") as Uint16Array;
    // a copy of `packed` at byte offset 1 of a larger buffer (not 4-byte aligned)
    const raw = new Uint8Array(s.packed.length + 3);
    raw.set(s.packed, 1);
    const unaligned = { ...s, packed: raw.subarray(1, 1 + s.packed.length) };
    for (const st of [s, unaligned]) {
      for (let start = 0; start < 100; start += 2) {
        for (const len of [0, 1, 2, 7, 8, 9, 31, 64, 333]) {
          const o = new Float32Array(len);
          dequantize4bitInto(st, o, { start });
          expect(Array.from(o)).toEqual(Array.from(full.subarray(start, start + len)));
          const h = new Uint16Array(len);
          dequantize4bitInto(st, h, { start, outDtype: "bfloat16" });
          expect(Array.from(h)).toEqual(Array.from(fullH.subarray(start, start + len)));
        }
      }
      expect(dequantize4bit(st, "float32")).toEqual(full);
    }
  });
});

describe("quantize4bitInto", () => {
  it("equals quantize4bit and reuses the buffers", async () => {
    const { quantize4bitInto } = await import("./quantize");
    const buf = { packed: new Uint8Array(5000), absmax: new Float32Array(200) };
    for (const n of [1, 777, 64 * 100]) {
      const x = randn(n, n);
      const a = quantize4bitInto(x, buf, { quantType: "fp4" });
      const b = quantize4bit(x, { quantType: "fp4" });
      expect(a.packed).toEqual(b.packed);
      expect(a.absmax).toEqual(b.absmax);
      expect(a.packed.buffer).toBe(buf.packed.buffer);
    }
    expect(err(() => quantize4bitInto(new Float32Array(20000), buf))).toMatch(
      /^LENGTH_MISMATCH: out\.packed: expected a Uint8Array of at least 10000 bytes/,
    );
  });
});

describe("Quantizer4bit with large bf16 chunks", () => {
  it("a chunk larger than the 64 Ki conversion buffer, odd-sized pieces around it", () => {
    const x = randn(65536 * 2 + 999, 41);
    const b = f32ToBf16(x);
    const q = new Quantizer4bit({ blocksize: 128, dtype: "bfloat16" });
    const parts = [q.push(b.subarray(0, 77)), q.push(b.subarray(77, 77 + 140000)), q.push(b.subarray(140077))];
    parts.push(q.finish());
    const packed = new Uint8Array(parts.reduce((s, p) => s + p.packed.length, 0));
    let o = 0;
    for (const p of parts) {
      expect(p.start).toBe(o * 2);
      packed.set(p.packed, o);
      o += p.packed.length;
    }
    expect(packed).toEqual(quantize4bit(b, { dtype: "bfloat16", blocksize: 128 }).packed);
  });
});

describe("8-bit blockwise bucket lookup", () => {
  it("large inputs (lookup path) give the literal CUDA search's index for every value", () => {
    // map entries, their float32 neighbours and float32 midpoints: every decision boundary ± 1 ulp
    const f = new Float32Array(1);
    const u = new Int32Array(f.buffer);
    const near = (v: number, d: number) => {
      f[0] = v;
      if (v !== 0) u[0] += d;
      return f[0];
    };
    const probes: number[] = [];
    for (const code of [DYNAMIC_MAP_SIGNED, DYNAMIC_MAP_UNSIGNED]) {
      for (let i = 0; i < 256; i++) {
        const mid = i < 255 ? Math.fround(Math.fround(code[i] + code[i + 1]) * 0.5) : code[i];
        for (const d of [-1, 0, 1]) probes.push(near(code[i], d), near(mid, d));
      }
    }
    for (let s = 1; probes.length < 1 << 16; s++) probes.push(Math.sin(s * 12.9898) * (s % 7 === 0 ? 1e-3 : 1));
    // blocks of 256 whose first value is 1 keep r = 1, so y is exactly the probe
    const values = new Float32Array(Math.ceil(probes.length / 255) * 256);
    for (let i = 0, v = 0; i < values.length; i++) values[i] = i % 256 === 0 ? 1 : (probes[v++] ?? 0);
    for (const code of [DYNAMIC_MAP_SIGNED, DYNAMIC_MAP_UNSIGNED]) {
      const { q, absmax } = quantizeBlockwise8bit(values, { code, blocksize: 256 });
      for (let i = 0; i < values.length; i++) {
        const want = quantize8bitValue(code, Math.fround(values[i] * Math.fround(1 / absmax[i >> 8])));
        if (q[i] !== want) expect([i, values[i], q[i]]).toEqual([i, values[i], want]);
      }
    }
  });
});
