import { describe, expect, it } from "vitest";
import {
  DYNAMIC_MAP_SIGNED,
  DYNAMIC_MAP_UNSIGNED,
  dequantize4bit,
  dequantizeBlockwise8bit,
  FP4_CODE,
  type FloatDType,
  NF4_CODE,
  packQuantState,
  pythonFloatRepr,
  quantize4bit,
  quantizeBlockwise8bit,
  type QuantType,
  quantStateJson,
  recoverAbsmax,
  unpackQuantState,
} from "../src/index";
import { type FixtureCase, loadFixtures } from "./helpers";

const fx = loadFixtures();
const byKind = (k: string) => fx.cases.filter((c) => c.kind === k);

function sameBits(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    // NaN payloads are not canonical across engines; every other value must match bit for bit
    if (Number.isNaN(a[i]) && Number.isNaN(b[i])) continue;
    if (!Object.is(a[i], b[i])) return false;
  }
  return true;
}

function firstDiff(a: ArrayLike<number>, b: ArrayLike<number>): string {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (!Object.is(a[i], b[i]) && !(Number.isNaN(a[i]) && Number.isNaN(b[i]))) return `index ${i}: ${a[i]} vs ${b[i]}`;
  }
  return "none";
}

describe("golden fixtures (independent numpy port)", () => {
  it("header names the generator and version", () => {
    expect(fx.generator).toBe("packages/nf4/scripts/make_fixtures.py");
    expect(fx.version).toBe(1);
    expect(byKind("4bit").length).toBeGreaterThanOrEqual(68);
  });

  it("hard-coded tables equal the regenerated ones (create_dynamic_map via torch)", () => {
    const c = fx.cases.find((k) => k.name === "dynamic_maps") as FixtureCase;
    expect(sameBits(DYNAMIC_MAP_SIGNED, fx.get(c, "signed") as Float32Array)).toBe(true);
    expect(sameBits(DYNAMIC_MAP_UNSIGNED, fx.get(c, "unsigned") as Float32Array)).toBe(true);
    expect(sameBits(NF4_CODE, fx.get(c, "nf4") as Float32Array)).toBe(true);
    expect(sameBits(FP4_CODE, fx.get(c, "fp4") as Float32Array)).toBe(true);
  });

  for (const c of byKind("4bit")) {
    it(`4-bit ${c.name}`, () => {
      const dtype = c.dtype as FloatDType;
      const input = fx.get(c, "input") as Float32Array | Uint16Array;
      const state = quantize4bit(input, {
        quantType: c.quantType as QuantType,
        blocksize: c.blocksize as number,
        doubleQuant: c.doubleQuant as boolean,
        shape: c.shape as number[],
        dtype,
      });
      const packed = fx.get(c, "packed") as Uint8Array;
      expect(firstDiff(state.packed, packed)).toBe("none");
      if (c.doubleQuant) {
        const nested = state.absmax as Exclude<typeof state.absmax, Float32Array>;
        expect(nested.offset).toBe(c.offset);
        expect(firstDiff(nested.qabsmax, fx.get(c, "qabsmax"))).toBe("none");
        expect(sameBits(nested.nestedAbsmax, fx.get(c, "nestedAbsmax") as Float32Array)).toBe(true);
        expect(sameBits(recoverAbsmax(state), fx.get(c, "recoveredAbsmax") as Float32Array)).toBe(true);
      } else {
        expect(sameBits(state.absmax as Float32Array, fx.get(c, "absmax") as Float32Array)).toBe(true);
      }
      expect(quantStateJson(state)).toBe(c.json);
      for (const od of ["float32", "bfloat16", "float16"] as const) {
        const key = `dequant_${od}`;
        if (c.arrays[key] === undefined) continue;
        const got = dequantize4bit(state, od);
        const want = fx.get(c, key);
        if (od === "float32")
          expect(sameBits(got as Float32Array, want as Float32Array), `${key} ${firstDiff(got, want)}`).toBe(true);
        else expect(firstDiff(got, want), key).toBe("none");
      }
      // and back through the bitsandbytes key set
      const back = unpackQuantState(packQuantState(state, { prefix: "m." }), { prefix: "m." });
      expect(firstDiff(back.packed, packed)).toBe("none");
      expect(sameBits(recoverAbsmax(back), recoverAbsmax(state))).toBe(true);
    });
  }

  for (const c of byKind("8bit")) {
    it(`8-bit ${c.name}`, () => {
      const code = c.code === "signed" ? DYNAMIC_MAP_SIGNED : DYNAMIC_MAP_UNSIGNED;
      const bs = c.blocksize as number;
      const r = quantizeBlockwise8bit(fx.get(c, "input") as Float32Array, { code, blocksize: bs });
      expect(firstDiff(r.q, fx.get(c, "q"))).toBe("none");
      expect(sameBits(r.absmax, fx.get(c, "absmax") as Float32Array)).toBe(true);
      expect(sameBits(dequantizeBlockwise8bit(r, { code, blocksize: bs }), fx.get(c, "dequant") as Float32Array)).toBe(
        true,
      );
    });
  }

  it("pythonFloatRepr equals Python's repr on fixture values", () => {
    const c = fx.cases.find((k) => k.kind === "repr") as FixtureCase;
    const values = fx.get(c, "values") as Float64Array;
    const reprs = c.reprs as string[];
    expect(values.length).toBe(reprs.length);
    const got = Array.from(values, (v) => pythonFloatRepr(v));
    expect(got).toEqual(reprs);
  });
});
