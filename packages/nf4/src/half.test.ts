import { describe, expect, it } from "vitest";
import { fromBits } from "../test/helpers";
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from "./half";

const bf = (v: number) => f32ToBf16(new Float32Array([v]))[0];
const h = (v: number) => f32ToF16(new Float32Array([v]))[0];
const hex = (v: number) => `0x${v.toString(16).padStart(4, "0")}`;

describe("float32 -> bfloat16 (RNE)", () => {
  it("exact values and ties to even", () => {
    expect(hex(bf(1))).toBe("0x3f80");
    expect(hex(bf(-2))).toBe("0xc000");
    // 1 + 2^-8 is halfway between 0x3f80 and 0x3f81: ties to even -> 0x3f80
    expect(hex(bf(fromBits(0x3f808000)))).toBe("0x3f80");
    // halfway above an odd mantissa rounds up to even
    expect(hex(bf(fromBits(0x3f818000)))).toBe("0x3f82");
    expect(hex(bf(fromBits(0x3f808001)))).toBe("0x3f81");
    expect(hex(bf(fromBits(0x3f807fff)))).toBe("0x3f80");
  });
  it("Inf, NaN, overflow, signed zero, subnormals", () => {
    expect(hex(bf(Infinity))).toBe("0x7f80");
    expect(hex(bf(-Infinity))).toBe("0xff80");
    expect(hex(bf(NaN))).toBe("0x7fff");
    expect(hex(bf(fromBits(0xffc00001)))).toBe("0x7fff");
    expect(hex(bf(fromBits(0x7f7fffff)))).toBe("0x7f80"); // FLT_MAX rounds up to Inf
    expect(hex(bf(-0))).toBe("0x8000");
    expect(hex(bf(fromBits(0x00018000)))).toBe("0x0002"); // subnormal tie -> even
    expect(hex(bf(fromBits(0x00008000)))).toBe("0x0000");
  });
  it("bf16 -> f32 is exact and inverts f32 -> bf16 on bf16-representable values", () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const f = bf16ToF32(all);
    const back = f32ToBf16(f);
    for (let i = 0; i < 65536; i++) {
      const isNaNPattern = (i & 0x7fff) > 0x7f80;
      expect(back[i]).toBe(isNaNPattern ? 0x7fff : i);
    }
    expect(f[0x3f80]).toBe(1);
  });
});

describe("float32 -> float16 (RNE)", () => {
  it("normal values and ties", () => {
    expect(hex(h(1))).toBe("0x3c00");
    expect(hex(h(-2))).toBe("0xc000");
    expect(hex(h(65504))).toBe("0x7bff");
    // 1 + 2^-11 is halfway between 1 and 1+2^-10: ties to even -> 1
    expect(hex(h(1 + 2 ** -11))).toBe("0x3c00");
    expect(hex(h(1 + 3 * 2 ** -11))).toBe("0x3c02");
    expect(hex(h(Math.fround(1 + 2 ** -11 + 2 ** -20)))).toBe("0x3c01");
  });
  it("overflow to Inf at 65520 (halfway to 2^16), not below", () => {
    expect(hex(h(65519.99609375))).toBe("0x7bff");
    expect(hex(h(65520))).toBe("0x7c00");
    expect(hex(h(-1e10))).toBe("0xfc00");
    expect(hex(h(Infinity))).toBe("0x7c00");
    expect(hex(h(NaN))).toBe("0x7fff");
  });
  it("subnormals, underflow and signed zero", () => {
    expect(hex(h(2 ** -24))).toBe("0x0001");
    expect(hex(h(2 ** -25))).toBe("0x0000"); // tie -> even (0)
    expect(hex(h(3 * 2 ** -25))).toBe("0x0002"); // 1.5 ulp tie -> even (2)
    expect(hex(h(Math.fround(2 ** -25 * 1.0000001)))).toBe("0x0001");
    expect(hex(h(2 ** -14 - 2 ** -24))).toBe("0x03ff");
    expect(hex(h(2 ** -14))).toBe("0x0400");
    expect(hex(h(Math.fround(2 ** -14 - 2 ** -26)))).toBe("0x0400"); // rounds up into the normals
    expect(hex(h(-0))).toBe("0x8000");
    expect(hex(h(-(2 ** -30)))).toBe("0x8000");
  });
  it("f16 -> f32 exact for all 65536 patterns and round-trips", () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const f = f16ToF32(all);
    const back = f32ToF16(f);
    for (let i = 0; i < 65536; i++) {
      const isNaNPattern = (i & 0x7c00) === 0x7c00 && (i & 0x3ff) !== 0;
      expect(back[i]).toBe(isNaNPattern ? 0x7fff : i);
    }
    expect(f[0x0001]).toBe(2 ** -24);
    expect(f[0x3c00]).toBe(1);
    expect(f[0xfc00]).toBe(-Infinity);
  });
  it("agrees with a brute-force nearest-even reference on random floats", () => {
    const f = f16ToF32(new Uint16Array(65536).map((_, i) => i));
    // sorted finite non-negative halves
    const pos: number[] = [];
    for (let i = 0; i < 0x7c00; i++) pos.push(f[i]);
    let seed = 12345;
    for (let t = 0; t < 5000; t++) {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      const v = Math.fround(((seed / 2 ** 32) * 2 - 1) * 2 ** ((t % 40) - 26));
      const a = Math.abs(v);
      let lo = 0;
      let hi = pos.length - 1;
      while (hi - lo > 1) {
        const mid = (lo + hi) >> 1;
        if (pos[mid] <= a) lo = mid;
        else hi = mid;
      }
      let code: number;
      if (a >= 65520) code = 0x7c00;
      else if (a - pos[lo] < pos[hi] - a || (a - pos[lo] === pos[hi] - a && lo % 2 === 0)) code = lo;
      else code = hi;
      if (pos[hi] === a) code = hi;
      expect(h(v)).toBe(code | (v < 0 || Object.is(v, -0) ? 0x8000 : 0));
    }
  });
});
