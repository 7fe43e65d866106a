import { describe, expect, it } from "vitest";
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from "./half";

describe("bf16/f16 conversions (round to nearest even)", () => {
  it("bf16 known values and ties", () => {
    expect(f32ToBf16Bits(1)).toBe(0x3f80);
    expect(f32ToBf16Bits(-2)).toBe(0xc000);
    // 1 + 2^-8 is exactly halfway between 1 and 1+2^-7: ties to even (1.0)
    expect(f32ToBf16Bits(1 + 2 ** -8)).toBe(0x3f80);
    expect(f32ToBf16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82);
    expect(bf16BitsToF32(f32ToBf16Bits(Math.PI))).toBe(3.140625);
    expect(Number.isNaN(bf16BitsToF32(f32ToBf16Bits(NaN)))).toBe(true);
  });
  it("f16 known values, subnormals, overflow, ties", () => {
    expect(f32ToF16Bits(1)).toBe(0x3c00);
    expect(f32ToF16Bits(65504)).toBe(0x7bff);
    expect(f32ToF16Bits(65520)).toBe(0x7c00);
    expect(f32ToF16Bits(2 ** -24)).toBe(1);
    expect(f32ToF16Bits(2 ** -25)).toBe(0); // tie → even (0)
    expect(f32ToF16Bits(3 * 2 ** -25)).toBe(2);
    expect(f32ToF16Bits(1 + 2 ** -11)).toBe(0x3c00);
    expect(f32ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(f16BitsToF32(0xc000)).toBe(-2);
    expect(f16BitsToF32(0x7c00)).toBe(Infinity);
  });
  it("f16 round trip is exact on every finite half", () => {
    for (let h = 0; h < 0x10000; h++) {
      const v = f16BitsToF32(h);
      if (!Number.isFinite(v)) continue;
      const back = f32ToF16Bits(v);
      if (back !== h && !(v === 0 && (back | 0x8000) === (h | 0x8000)))
        throw new Error(`f16 ${h.toString(16)} → ${v} → ${back.toString(16)}`);
    }
  });
});
