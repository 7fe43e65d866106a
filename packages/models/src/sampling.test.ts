import { readFileSync } from "node:fs";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ModelError } from "./errors";
import {
  applyRepetitionPenalty,
  applyTemperature,
  argmax,
  checkSamplingOptions,
  isSampling,
  minPFilter,
  processLogits,
  sampleCategorical,
  selectToken,
  softmax,
  topKFilter,
  topPFilter,
  type SamplingOptions,
} from "./sampling";

const NEG = Number.NEGATIVE_INFINITY;
const f32 = (xs: number[]) => Float32Array.from(xs);
const kept = (x: Float32Array) => Array.from(x, (v, i) => (v === NEG ? -1 : i)).filter((i) => i >= 0);
const logitsArb = fc
  .array(fc.float({ min: -20, max: 20, noNaN: true, noDefaultInfinity: true }), { minLength: 1, maxLength: 40 })
  .map(f32);

describe("sampling processors (transformers semantics)", () => {
  it("argmax takes the first maximum", () => {
    expect(argmax(f32([1, 3, 3, 2]))).toBe(1);
  });

  it("repetition penalty divides positive and multiplies negative logits of seen tokens, once each", () => {
    const out = applyRepetitionPenalty(f32([2, -2, 1, 4]), [0, 1, 1, 0], 2);
    expect(Array.from(out)).toEqual([1, -4, 1, 4]);
    expect(Array.from(applyRepetitionPenalty(f32([2, -2]), [0, 1], 1))).toEqual([2, -2]);
  });

  it("temperature divides", () => {
    expect(Array.from(applyTemperature(f32([1, -2, 4]), 0.5))).toEqual([2, -4, 8]);
  });

  it("top-k keeps the k largest and ties with the k-th", () => {
    expect(kept(topKFilter(f32([1, 5, 3, 4, 2]), 2))).toEqual([1, 3]);
    expect(kept(topKFilter(f32([1, 5, 3, 3, 2]), 2))).toEqual([1, 2, 3]);
    expect(kept(topKFilter(f32([1, 2]), 5))).toEqual([0, 1]);
  });

  it("top-p keeps the smallest head reaching p (probabilities 0.5, 0.3, 0.15, 0.05)", () => {
    const logits = f32([0.5, 0.3, 0.15, 0.05].map(Math.log));
    expect(kept(topPFilter(logits, 0.5))).toEqual([0]);
    expect(kept(topPFilter(logits, 0.75))).toEqual([0, 1]);
    expect(kept(topPFilter(logits, 0.9))).toEqual([0, 1, 2]);
    expect(kept(topPFilter(logits, 0.99))).toEqual([0, 1, 2, 3]);
    expect(kept(topPFilter(logits, 0.01))).toEqual([0]);
  });

  it("min-p drops tokens below minP × the top probability", () => {
    const logits = f32([0.5, 0.3, 0.15, 0.05].map(Math.log));
    expect(kept(minPFilter(logits, 0.2))).toEqual([0, 1, 2]); // threshold 0.1
    expect(kept(minPFilter(logits, 0.7))).toEqual([0]); // threshold 0.35
  });

  it("categorical draw follows the CDF and skips zero-probability tokens", () => {
    const p = [0, 0.25, 0, 0.75];
    expect(sampleCategorical(p, 0)).toBe(1);
    expect(sampleCategorical(p, 0.2499)).toBe(1);
    expect(sampleCategorical(p, 0.25)).toBe(3);
    expect(sampleCategorical(p, 0.999999)).toBe(3);
  });

  it("draws over 20000 evenly spaced uniforms reproduce the probabilities within 1e-3", () => {
    const probs = softmax(f32([0, 1, 2, 0.5, -1]));
    const counts = new Array(probs.length).fill(0);
    const n = 20000;
    for (let i = 0; i < n; i++) counts[sampleCategorical(probs, (i + 0.5) / n)]++;
    for (const [i, c] of counts.entries()) expect(Math.abs(c / n - probs[i])).toBeLessThan(1e-3);
  });

  it("greedy unless asked to sample; temperature 0 is greedy", () => {
    expect(isSampling({})).toBe(false);
    expect(isSampling({ repetitionPenalty: 1.2 })).toBe(false);
    expect(isSampling({ topK: 5 })).toBe(true);
    expect(isSampling({ temperature: 0.7 })).toBe(true);
    expect(isSampling({ temperature: 0, doSample: true })).toBe(false);
    expect(isSampling({ doSample: false, topP: 0.9 })).toBe(false);
  });

  it("option ranges are checked with the option named", () => {
    for (const [o, key] of [
      [{ temperature: Number.NaN }, "temperature"],
      [{ topK: 1.5 }, "topK"],
      [{ topP: 1.5 }, "topP"],
      [{ minP: -0.1 }, "minP"],
      [{ repetitionPenalty: 0 }, "repetitionPenalty"],
    ] as const) {
      try {
        checkSamplingOptions(o);
        expect.unreachable(key);
      } catch (e) {
        expect(e).toBeInstanceOf(ModelError);
        expect((e as ModelError).key).toBe(key);
      }
    }
  });
});

describe("against transformers' processors (torch formulas, scripts/make_sampling_fixtures.py)", () => {
  const fixture = JSON.parse(readFileSync(new URL("../test/fixtures/sampling.json", import.meta.url), "utf8")) as {
    cases: { logits: number[]; seen: number[]; options: SamplingOptions; expected: (number | null)[] }[];
  };

  it("the same tokens are filtered and kept logits agree to f32 rounding, in all 24 cases", () => {
    expect(fixture.cases).toHaveLength(24);
    for (const [i, c] of fixture.cases.entries()) {
      const got = processLogits(f32(c.logits), c.seen, c.options);
      const want = c.expected;
      expect(kept(got), `case ${i}`).toEqual(want.flatMap((v, j) => (v === null ? [] : [j])));
      for (let j = 0; j < want.length; j++)
        if (want[j] !== null)
          expect(Math.abs(got[j] - want[j]!), `case ${i} token ${j}`).toBeLessThanOrEqual(Math.abs(want[j]!) * 2e-7);
    }
    // the fixture exercises filtering: some cases keep few tokens, some many
    const keptCounts = fixture.cases.map((c) => c.expected.filter((v) => v !== null).length);
    expect(Math.min(...keptCounts)).toBeLessThan(3);
    expect(Math.max(...keptCounts)).toBeGreaterThan(20);
  });
});

describe("properties", () => {
  it("every filter keeps the argmax, only removes tokens, and leaves kept logits unchanged", () => {
    fc.assert(
      fc.property(
        logitsArb,
        fc.integer({ min: 1, max: 50 }),
        fc.double({ min: 0.001, max: 1, noNaN: true }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        (x, k, p, m) => {
          const top = argmax(x);
          for (const y of [topKFilter(x, k), topPFilter(x, p), minPFilter(x, m)]) {
            expect(y[top]).toBe(x[top]);
            for (const [i, v] of y.entries()) expect(v === NEG || v === x[i]).toBe(true);
          }
          expect(kept(topKFilter(x, k)).length).toBeGreaterThanOrEqual(Math.min(k, x.length));
        },
      ),
    );
  });

  it("top-p keeps mass ≥ p and removing its least likely kept token would drop below p", () => {
    fc.assert(
      fc.property(logitsArb, fc.double({ min: 0.01, max: 0.999, noNaN: true }), (x, p) => {
        const probs = softmax(x);
        const keep = kept(topPFilter(x, p));
        const mass = keep.reduce((s, i) => s + probs[i], 0);
        // transformers removes while cumulative tail ≤ 1 − p, so the kept head exceeds p up to rounding
        expect(mass).toBeGreaterThanOrEqual(p - 1e-6);
        if (keep.length > 1) {
          const least = Math.min(...keep.map((i) => probs[i]));
          expect(mass - least).toBeLessThan(p + 1e-6);
        }
      }),
    );
  });

  it("selectToken with greedy options is the argmax of the penalised logits; sampled tokens are never filtered ones", () => {
    fc.assert(
      fc.property(logitsArb, fc.array(fc.nat(39)), fc.double({ min: 0, max: 0.999999, noNaN: true }), (x, seen, u) => {
        const greedy = selectToken(x, seen, { repetitionPenalty: 1.3 }, u);
        expect(greedy).toBe(argmax(applyRepetitionPenalty(x, seen, 1.3)));
        const o = { temperature: 0.8, topK: 5, topP: 0.9, minP: 0.05, repetitionPenalty: 1.1 };
        const t = selectToken(x, seen, o, u);
        expect(processLogits(x, seen, o)[t]).not.toBe(NEG);
      }),
    );
  });
});
