// Spec Appendix B test vectors V1–V4, byte for byte and value for value.
import { describe, expect, it } from "vitest";
import { hexBytes } from "../test/helpers";
import { dequantize4bit, recoverAbsmax } from "./dequantize";
import { quantize4bit } from "./quantize";
import { packQuantState, quantStateJson } from "./serialize";
import { DYNAMIC_MAP_SIGNED, NF4_CODE } from "./tables";
import type { NestedAbsmax } from "./types";

const f = Math.fround;

describe("Appendix B V1: x[i] = (i-32)/16, n = 64", () => {
  const x = new Float32Array(64).map((_, i) => (i - 32) / 16);
  it("NF4 bytes and dequant values", () => {
    const s = quantize4bit(x, { quantType: "nf4" });
    expect(Array.from(s.absmax as Float32Array)).toEqual([2]);
    expect(hexBytes(s.packed)).toBe(
      "00 00 01 11 11 11 12 22 22 33 33 44 45 55 66 67 77 88 99 9a aa bb bc cc cd dd de ee ee ee ff ff",
    );
    const d = dequantize4bit(s) as Float32Array;
    expect(d[0]).toBe(-2);
    expect(d[5]).toBe(f(-1.3923856));
    expect(Array.from(d.slice(60))).toEqual([2, 2, 2, 2]);
    expect(Array.from(d.slice(56, 60))).toEqual([1, 1, 1, 1].map(() => f(1.4459137)));
  });
  it("FP4 bytes", () => {
    const s = quantize4bit(x, { quantType: "fp4" });
    expect(hexBytes(s.packed)).toBe(
      "bb bb bb aa aa aa aa dd dd dc cc cf ff ee ee 99 01 16 66 67 77 44 44 55 55 52 22 22 22 23 33 33",
    );
  });
});

describe("Appendix B V2: odd n = 5", () => {
  const x = new Float32Array([0.5, -1.0, 0.25, 0.0, -0.125]);
  it("NF4", () => {
    const s = quantize4bit(x, { quantType: "nf4" });
    expect(hexBytes(s.packed)).toBe("c0 a7 67");
    expect(Array.from(s.absmax as Float32Array)).toEqual([1]);
    const d = dequantize4bit(s) as Float32Array;
    // absmax 1: the values are the NF4 table entries 12, 0, 10, 7, 6 (spec prints them to 8 digits)
    expect(Array.from(d)).toEqual([12, 0, 10, 7, 6].map((c) => NF4_CODE[c]));
    [0.44070983, -1.0, 0.2461123, 0.0, -0.09105004].forEach((v, i) => {
      expect(d[i]).toBeCloseTo(v, 7);
    });
    expect(packQuantState(s).weight.shape).toEqual([3, 1]);
  });
  it("FP4", () => {
    const s = quantize4bit(x, { quantType: "fp4" });
    expect(hexBytes(s.packed)).toBe("5b 70 e0");
    expect(Array.from(dequantize4bit(s) as Float32Array)).toEqual([0.5, -1.0, 0.25, 0.0, -0.16666667].map(f));
  });
});

describe("Appendix B V3: all-zero block (CUDA semantics)", () => {
  const x = new Float32Array(64);
  it("NF4: bytes 00, dequant -0.0", () => {
    const s = quantize4bit(x, { quantType: "nf4" });
    expect(Array.from(s.absmax as Float32Array)).toEqual([0]);
    expect(s.packed.every((b) => b === 0)).toBe(true);
    const d = dequantize4bit(s) as Float32Array;
    expect(d.every((v) => Object.is(v, -0))).toBe(true);
  });
  it("FP4: bytes 00, dequant +0.0", () => {
    const s = quantize4bit(x, { quantType: "fp4" });
    expect(s.packed.every((b) => b === 0)).toBe(true);
    const d = dequantize4bit(s) as Float32Array;
    expect(d.every((v) => Object.is(v, 0))).toBe(true);
  });
});

describe("Appendix B V4: double quantization", () => {
  const x = new Float32Array(256);
  for (let b = 0; b < 4; b++) for (let j = -32; j < 32; j++) x[b * 64 + j + 32] = f((j / 32) * (b + 1));
  const s = quantize4bit(x, { quantType: "nf4", blocksize: 64, doubleQuant: true });
  const nested = s.absmax as NestedAbsmax;
  it("packed bytes of each block", () => {
    for (let b = 0; b < 4; b++) expect(hexBytes(s.packed.subarray(b * 32, b * 32 + 8))).toBe("00 00 01 11 11 11 12 22");
  });
  it("offset, nested absmax, qabsmax, recovered absmax", () => {
    expect(nested.offset).toBe(2.5);
    expect(Array.from(nested.nestedAbsmax)).toEqual([1.5]);
    expect(Array.from(nested.qabsmax)).toEqual([0, 47, 207, 255]);
    [-0.99296875, -0.33203125, 0.33203125, 1.0].forEach((v, i) => {
      expect(DYNAMIC_MAP_SIGNED[nested.qabsmax[i]]).toBeCloseTo(v, 7);
    });
    expect(Array.from(recoverAbsmax(s))).toEqual([1.0105469226837158, 2.001953125, 2.998046875, 4.0]);
  });
  it("JSON byte for byte", () => {
    expect(quantStateJson(s)).toBe(
      '{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [256], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 2.5}',
    );
  });
  it("dequant of block 3, elements 192..199", () => {
    const d = dequantize4bit(s) as Float32Array;
    expect(Array.from(d.slice(192, 200))).toEqual([-4, -4, -4, -4, -4, -2.7847712, -2.7847712, -2.7847712].map(f));
  });
});
