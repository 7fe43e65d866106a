// Round-trip error on randn(1024, 1024) against bitsandbytes' own thresholds (spec §9.2).
import { describe, expect, it } from "vitest";
import {
  dequantize4bit,
  dequantizeBlockwise8bit,
  DYNAMIC_MAP_UNSIGNED,
  errorMetrics,
  f32ToF16,
  quantize4bit,
  quantizeBlockwise8bit,
} from "../src/index";
import { mulberry32, randn } from "./helpers";

// (mean, std) of bnb's test_4bit_quant per blocksize; threshold = mean + 7·std
const BNB: Record<"nf4" | "fp4", { abs: Record<number, [number, number]>; rel: Record<number, [number, number]> }> = {
  nf4: {
    abs: {
      32: [0.067746, 0.000069],
      64: [0.072798, 0.000074],
      128: [0.076831, 0.000091],
      256: [0.080337, 0.000102],
      512: [0.083547, 0.000143],
      1024: [0.08661, 0.000187],
      2048: [0.089592, 0.000251],
      4096: [0.092547, 0.00036],
    },
    rel: {
      32: [0.189726, 0.000304],
      64: [0.203339, 0.00034],
      128: [0.215237, 0.000391],
      256: [0.226105, 0.000398],
      512: [0.236079, 0.000544],
      1024: [0.24537, 0.0006],
      2048: [0.254163, 0.000747],
      4096: [0.262473, 0.000999],
    },
  },
  fp4: {
    abs: {
      32: [0.088925, 0.000091],
      64: [0.096543, 0.000111],
      128: [0.102969, 0.000134],
      256: [0.108684, 0.000182],
      512: [0.114115, 0.000234],
      1024: [0.119333, 0.00032],
      2048: [0.124556, 0.000455],
      4096: [0.129536, 0.000612],
    },
    rel: {
      32: [0.242443, 0.00033],
      64: [0.260125, 0.000379],
      128: [0.275817, 0.000433],
      256: [0.289831, 0.000497],
      512: [0.302881, 0.000583],
      1024: [0.315, 0.000757],
      2048: [0.326607, 0.000955],
      4096: [0.337169, 0.001239],
    },
  },
};
const N = 1024 * 1024;
const A = randn(N, 1);

describe("4-bit round trip on randn(1024x1024) within bnb test_4bit_quant thresholds", () => {
  for (const qt of ["nf4", "fp4"] as const) {
    for (const bs of [32, 64, 128, 256, 512, 1024, 2048, 4096]) {
      it(`${qt} blocksize ${bs}`, () => {
        const s = quantize4bit(A, { quantType: qt, blocksize: bs, shape: [1024, 1024] });
        const m = errorMetrics(A, dequantize4bit(s, "float32"));
        const [am, as] = BNB[qt].abs[bs];
        const [rm, rs] = BNB[qt].rel[bs];
        expect(m.meanAbsError).toBeLessThan(am + 7 * as);
        expect(m.meanRelError).toBeLessThan(rm + 7 * rs);
        // and not suspiciously better than bnb's mean (a broken metric would pass the upper bound)
        expect(m.meanAbsError).toBeGreaterThan(am - 7 * as);
        expect(m.meanRelError).toBeGreaterThan(rm - 0.01);
      });
    }
  }
});

describe("double quant (bnb test_4bit_compressed_stats): mean abs < 0.11, mean rel < 0.28", () => {
  const A16 = f32ToF16(A);
  for (const qt of ["nf4", "fp4"] as const) {
    for (const bs of [32, 64, 128]) {
      for (const input of ["float32", "float16"] as const) {
        it(`${qt} blocksize ${bs} ${input}`, () => {
          const s =
            input === "float32"
              ? quantize4bit(A, { quantType: qt, blocksize: bs, doubleQuant: true })
              : quantize4bit(A16, { quantType: qt, blocksize: bs, doubleQuant: true, dtype: "float16" });
          const ref = input === "float32" ? A : (dequantRef(A16) as Float32Array);
          const m = errorMetrics(ref, dequantize4bit(s, "float32"));
          expect(m.meanAbsError).toBeLessThan(0.11);
          expect(m.meanRelError).toBeLessThan(0.28);
        });
      }
    }
  }
});

function dequantRef(x: Uint16Array): Float32Array {
  return new Float32Array(Array.from(x, (b) => halfToNumber(b)));
}
function halfToNumber(h: number): number {
  const e = (h >> 10) & 31;
  const m = h & 1023;
  const s = h & 0x8000 ? -1 : 1;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

describe("8-bit blockwise dynamic quant (bnb test_dynamic_blockwise_quantization)", () => {
  it("signed map on randn: abs < 0.011, rel < 0.018 for blocksizes 64..4096", () => {
    for (const bs of [64, 256, 1024, 4096]) {
      const r = quantizeBlockwise8bit(A, { blocksize: bs });
      const m = errorMetrics(A, dequantizeBlockwise8bit(r, { blocksize: bs }));
      expect(m.meanAbsError).toBeLessThan(0.011);
      expect(m.meanRelError).toBeLessThan(0.018);
    }
  });
  it("uniform [0,1): signed abs < 0.0036 rel < 0.015; unsigned abs < 0.0023 rel < 0.012", () => {
    const u = mulberry32(7);
    const U = new Float32Array(N).map(() => u());
    for (const bs of [64, 256, 4096]) {
      const s = quantizeBlockwise8bit(U, { blocksize: bs });
      const ms = errorMetrics(U, dequantizeBlockwise8bit(s, { blocksize: bs }));
      expect(ms.meanAbsError).toBeLessThan(0.0036);
      expect(ms.meanRelError).toBeLessThan(0.015);
      const opts = { blocksize: bs, code: DYNAMIC_MAP_UNSIGNED };
      const mu = errorMetrics(U, dequantizeBlockwise8bit(quantizeBlockwise8bit(U, opts), opts));
      expect(mu.meanAbsError).toBeLessThan(0.0023);
      expect(mu.meanRelError).toBeLessThan(0.012);
    }
  });
});
