// Property tests (fast-check) against independent brute-force choosers written here.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  DYNAMIC_MAP_SIGNED,
  DYNAMIC_MAP_UNSIGNED,
  dequantize4bit,
  type FloatDType,
  FP4_CODE,
  NF4_CODE,
  type NestedAbsmax,
  packNibbles,
  packQuantState,
  pythonFloatRepr,
  quantize4bit,
  quantize8bitValue,
  type QuantType,
  quantStateJson,
  recoverAbsmax,
  unpackNibbles,
  unpackQuantState,
} from "../src/index";
import { fromBits } from "./helpers";

const f = Math.fround;
const BLOCKSIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096];

// --- independent choosers -------------------------------------------------------------------
/** NF4: number of float32 midpoints (= the kernel's literals) strictly below y. */
function nf4Brute(y: number): number {
  let c = 0;
  for (let k = 0; k < 15; k++) if (y > f((NF4_CODE[k] + NF4_CODE[k + 1]) * 0.5)) c++;
  return c;
}
/** FP4: the CUDA dQuantizeFP4 if/else tree with its decimal literals. */
function fp4Brute(y: number): number {
  const sign = y < 0 ? 8 : 0;
  const a = Math.abs(y);
  let m: number;
  if (a > f(0.29166667)) {
    if (a > f(0.583333)) m = a > f(0.8333333) ? 3 : 2;
    else m = a > f(0.4166667) ? 5 : 4;
  } else if (a > f(0.0859375)) m = a > f(0.20833333) ? 7 : 6;
  else m = a > f(0.00260417) ? 1 : 0;
  return m + sign;
}
/** 8-bit: nearest by float32 midpoints, exact ties to the even index, NaN -> 0. */
function q8Brute(c: Float32Array, y: number): number {
  if (Number.isNaN(y)) return 0;
  let best = 0;
  for (let j = 0; j < 255; j++) {
    const mid = f(f(c[j] + c[j + 1]) * 0.5);
    if (y === mid) return j % 2 === 0 ? j : j + 1;
    if (y > mid) best = j + 1;
  }
  return best;
}

// --- arbitraries ---------------------------------------------------------------------------
const value = fc
  .float({ min: -1e6, max: 1e6, noNaN: true, noDefaultInfinity: true })
  .map((v) => (Math.abs(v) < 1e-30 ? 0 : v));
const tensor = (maxLen: number) => fc.array(value, { minLength: 1, maxLength: maxLen }).map((a) => new Float32Array(a));
const qtArb = fc.constantFrom<QuantType>("nf4", "fp4");
const bsArb = fc.constantFrom(...BLOCKSIZES);
/** Scaled values near every decision point of both tables, plus uniform ones. */
const yArb = fc.oneof(
  fc.float({ min: f(-1.2), max: f(1.2), noNaN: true }),
  fc
    .tuple(
      fc.constantFrom(
        ...NF4_CODE,
        ...FP4_CODE,
        0.29166667,
        0.583333,
        0.8333333,
        0.4166667,
        0.0859375,
        0.20833333,
        0.00260417,
      ),
      fc.integer({ min: -3, max: 3 }),
      fc.boolean(),
    )
    .map(([v, d, neg]) => {
      const b = new Float32Array([f(v)]);
      new Int32Array(b.buffer)[0] += d;
      return neg ? -b[0] : b[0];
    }),
);

describe("property: every code is the one the thresholds select", () => {
  it("scalar choice vs brute force (NF4 thresholds count, FP4 literal tree)", () => {
    fc.assert(
      fc.property(yArb, (y) => {
        const x = new Float32Array(64);
        x[0] = 1; // absmax 1, r = 1: y passes through unscaled
        x[1] = y;
        expect(quantize4bit(x, { quantType: "nf4" }).packed[0] & 15).toBe(nf4Brute(y));
        expect(quantize4bit(x, { quantType: "fp4" }).packed[0] & 15).toBe(fp4Brute(y));
      }),
      { numRuns: 3000 },
    );
  });
  it("whole tensors: codes = brute(fl32(x · fl32(1/absmax))) per block", () => {
    fc.assert(
      fc.property(tensor(700), qtArb, fc.constantFrom(32, 64, 128), (x, qt, bs) => {
        const s = quantize4bit(x, { quantType: qt, blocksize: bs });
        const codes = unpackNibbles(s.packed, x.length);
        const am = s.absmax as Float32Array;
        for (let i = 0; i < x.length; i++) {
          const b = Math.floor(i / bs);
          let m = 0;
          for (let k = b * bs; k < Math.min(x.length, (b + 1) * bs); k++) m = Math.max(m, Math.abs(x[k]));
          expect(am[b]).toBe(m);
          const y = f(x[i] * f(1 / m));
          expect(codes[i]).toBe(qt === "nf4" ? nf4Brute(y) : fp4Brute(y));
        }
      }),
      { numRuns: 150 },
    );
  });
});

describe("property: block absmax is CUDA's fmaxf scan", () => {
  // Any float32 bit pattern: NaN (any payload), ±Inf, subnormals, ±0, FLT_MAX. The kernel takes the
  // max on integer bit patterns in 8 branch-free lanes; this reference is the plain float scan.
  const bits = fc.oneof(
    fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
    fc.constantFrom(0x7f800000, 0xff800000 | 0, 0x7fc00000, 0x7f800001, 0x7f7fffff, 0x80000000 | 0, 1, 0x807fffff | 0),
  );
  const arr = fc.array(bits, { minLength: 1, maxLength: 300 }).map((b) => new Float32Array(new Int32Array(b).buffer));
  it("absmax = max |x| over non-NaN values from -FLT_MAX (full block) or 0 (partial block)", () => {
    fc.assert(
      fc.property(arr, qtArb, fc.constantFrom(32, 64, 128), (x, qt, bs) => {
        const am = quantize4bit(x, { quantType: qt, blocksize: bs }).absmax as Float32Array;
        for (let b = 0; b * bs < x.length; b++) {
          const e = Math.min(x.length, (b + 1) * bs);
          let m = e - b * bs === bs ? -3.4028234663852886e38 : 0;
          for (let i = b * bs; i < e; i++) if (Math.abs(x[i]) > m) m = Math.abs(x[i]);
          expect(am[b]).toBe(m);
        }
      }),
      { numRuns: 400 },
    );
  });
});

describe("property: quantize ∘ dequantize ∘ quantize is a fixed point", () => {
  it("codes and absmax are reproduced (FP4 code 8 = -0.0 re-quantizes to code 0, both zero)", () => {
    fc.assert(
      fc.property(tensor(600), qtArb, bsArb, fc.boolean(), (x, qt, bs, dq) => {
        const q1 = quantize4bit(x, { quantType: qt, blocksize: bs, doubleQuant: dq });
        const q2 = quantize4bit(dequantize4bit(q1, "float32") as Float32Array, { quantType: qt, blocksize: bs });
        const c1 = unpackNibbles(q1.packed, x.length);
        const c2 = unpackNibbles(q2.packed, x.length);
        for (let i = 0; i < x.length; i++) expect(c2[i]).toBe(qt === "fp4" && c1[i] === 8 ? 0 : c1[i]);
        expect(Array.from(q2.absmax as Float32Array)).toEqual(Array.from(recoverAbsmax(q1)));
        const q3 = quantize4bit(dequantize4bit(q2, "float32") as Float32Array, { quantType: qt, blocksize: bs });
        expect(Array.from(q3.packed)).toEqual(Array.from(q2.packed));
      }),
      { numRuns: 200 },
    );
  });
});

describe("property: packing", () => {
  it("unpack(pack(codes)) = codes, element 2j in the high nibble", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 15 }), { maxLength: 301 }), (arr) => {
        const codes = new Uint8Array(arr);
        const p = packNibbles(codes);
        expect(p.length).toBe(Math.ceil(arr.length / 2));
        for (let j = 0; j < p.length; j++) expect(p[j] >> 4).toBe(arr[2 * j]);
        expect(Array.from(unpackNibbles(p, arr.length))).toEqual(arr);
      }),
    );
  });
});

describe("property: QuantState serialization round trip", () => {
  it("packQuantState -> unpackQuantState gives back the same state", () => {
    fc.assert(
      fc.property(
        tensor(1500),
        qtArb,
        bsArb,
        fc.boolean(),
        fc.constantFrom<FloatDType>("float32", "bfloat16", "float16"),
        fc.string({ maxLength: 12 }),
        (x, qt, bs, dq, dtype, prefix) => {
          const n = x.length;
          const shape = n % 3 === 0 ? [3, n / 3] : [n];
          const s = quantize4bit(x, { quantType: qt, blocksize: bs, doubleQuant: dq, shape, dtype });
          const rec = packQuantState(s, { prefix });
          const back = unpackQuantState(rec, { prefix });
          expect(back.quantType).toBe(qt);
          expect(back.blocksize).toBe(bs);
          expect(back.dtype).toBe(dtype);
          expect(back.shape).toEqual(shape);
          expect(Array.from(back.packed)).toEqual(Array.from(s.packed));
          if (dq) {
            const a = s.absmax as NestedAbsmax;
            const b = back.absmax as NestedAbsmax;
            expect(b.offset).toBe(a.offset);
            expect(Array.from(b.qabsmax)).toEqual(Array.from(a.qabsmax));
            expect(Array.from(b.nestedAbsmax)).toEqual(Array.from(a.nestedAbsmax));
            expect(Array.from(b.code)).toEqual(Array.from(DYNAMIC_MAP_SIGNED));
          } else {
            expect(Array.from(back.absmax as Float32Array)).toEqual(Array.from(s.absmax as Float32Array));
          }
          expect(quantStateJson(back)).toBe(quantStateJson(s));
          const json = new TextDecoder().decode(rec[`${prefix}weight.quant_state.bitsandbytes__${qt}`].bytes);
          expect(JSON.parse(json).shape).toEqual(shape);
        },
      ),
      { numRuns: 150 },
    );
  });
  it("pythonFloatRepr round-trips and follows Python's notation rule", () => {
    fc.assert(
      fc.property(fc.double({ noNaN: true, noDefaultInfinity: true }), (v) => {
        const s = pythonFloatRepr(v);
        expect(Number(s)).toBe(v); // Object.is: "-0.0" -> -0
        const exp = Number(Math.abs(v).toExponential().split("e")[1]);
        if (v !== 0 && (exp < -4 || exp >= 16)) expect(s).toMatch(/^-?\d(\.\d+)?e[+-]\d{2,3}$/);
        else expect(s).toMatch(/^-?\d+\.\d+$/);
      }),
      { numRuns: 2000 },
    );
  });
});

describe("property: 8-bit codec = nearest with ties to the even index", () => {
  const maps = [DYNAMIC_MAP_SIGNED, DYNAMIC_MAP_UNSIGNED];
  const near = fc
    .tuple(fc.constantFrom(0, 1), fc.integer({ min: 0, max: 254 }), fc.integer({ min: -2, max: 2 }), fc.boolean())
    .map(([m, j, d, useMid]) => {
      const c = maps[m];
      const base = useMid ? f(f(c[j] + c[j + 1]) * 0.5) : c[j];
      const b = new Float32Array([base]);
      if (base !== 0) new Int32Array(b.buffer)[0] += d;
      return [m, b[0]] as const;
    });
  const uniform = fc.tuple(fc.constantFrom(0, 1), fc.float({ min: f(-1.1), max: f(1.1), noNaN: true }));
  it("literal CUDA binary search equals brute force, including every exact midpoint", () => {
    fc.assert(
      fc.property(fc.oneof(near, uniform), ([m, y]) => {
        expect(quantize8bitValue(maps[m], y)).toBe(q8Brute(maps[m], y));
      }),
      { numRuns: 5000 },
    );
    for (const c of maps) {
      for (let j = 0; j < 255; j++) {
        const mid = f(f(c[j] + c[j + 1]) * 0.5);
        expect(quantize8bitValue(c, mid)).toBe(q8Brute(c, mid));
        expect(quantize8bitValue(c, mid)).toBe(j % 2 === 0 ? j : j + 1);
      }
    }
    expect(quantize8bitValue(DYNAMIC_MAP_SIGNED, NaN)).toBe(0);
    expect(quantize8bitValue(DYNAMIC_MAP_SIGNED, -1)).toBe(0);
    expect(quantize8bitValue(DYNAMIC_MAP_SIGNED, 1)).toBe(255);
    expect(quantize8bitValue(DYNAMIC_MAP_SIGNED, 0)).toBe(127);
    expect(quantize8bitValue(DYNAMIC_MAP_UNSIGNED, fromBits(0x3f800000))).toBe(255);
  });
});
