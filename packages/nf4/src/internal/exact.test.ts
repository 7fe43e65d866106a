import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { FP4_THRESHOLDS, NF4_THRESHOLDS } from "../tables";
import { exactThreshold, NEG_ROUNDS_TO_NONZERO } from "./exact";

const f64 = new Float64Array(1);
const u64 = new BigUint64Array(f64.buffer);
function step64(x: number, d: number): number {
  f64[0] = x;
  u64[0] += BigInt(x >= 0 ? d : -d);
  return f64[0];
}
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
function step32(x: number, d: number): number {
  f32[0] = x;
  u32[0] += x >= 0 ? d : -d;
  return f32[0];
}

describe("exactThreshold: (p > T') === (fl32(p) > T) for every double p", () => {
  const ts = [...NF4_THRESHOLDS, ...FP4_THRESHOLDS, ...FP4_THRESHOLDS.map((t) => -t), 0.5, 0.75, 1.401298464324817e-45];
  it("at the rounding midpoints and their float64 neighbours", () => {
    for (const t of ts) {
      const tp = step32(t, 1);
      const m = (t + tp) / 2;
      const tt = exactThreshold(t);
      for (let d = -3; d <= 3; d++) {
        for (const p of [step64(m, d), step64(t, d), step64(tp, d)]) {
          expect(p > tt, `T=${t} p=${p}`).toBe(Math.fround(p) > t);
        }
      }
    }
  });
  it("random doubles near each threshold", () => {
    fc.assert(
      fc.property(fc.constantFrom(...ts), fc.integer({ min: -(2 ** 31), max: 2 ** 31 }), (t, d) => {
        const p = step64(t, d);
        expect(p > exactThreshold(t)).toBe(Math.fround(p) > t);
      }),
      { numRuns: 20000 },
    );
  });
  it("sign: fl32(p) < 0 <=> p < -2^-150", () => {
    const h = NEG_ROUNDS_TO_NONZERO;
    for (const p of [h, step64(h, 1), step64(h, -1), -0, -1e-46, -1e-45, -1e-300]) {
      expect(p < h).toBe(Math.fround(p) < 0);
    }
  });
});
