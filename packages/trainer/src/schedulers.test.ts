import { describe, expect, it } from "vitest";
import { createSchedule } from "./schedulers";

// Expected values worked out by hand from transformers' optimization.py lambdas (get_*_schedule_with_warmup).
describe("schedulers against transformers' curves", () => {
  const at = (f: (s: number) => number, steps: number[]) => steps.map(f);

  it("linear with warmup", () => {
    const f = createSchedule({ name: "linear", totalSteps: 10, warmupSteps: 2 });
    expect(at(f, [0, 1, 2, 6, 9, 10])).toEqual([0, 0.5, 1, 0.5, 0.125, 0]);
  });

  it("constant and constant_with_warmup (warmup as a ratio: ceil(0.25 · 10) = 3)", () => {
    expect(at(createSchedule({ name: "constant", totalSteps: 5 }), [0, 4])).toEqual([1, 1]);
    const f = createSchedule({ name: "constant_with_warmup", totalSteps: 10, warmupRatio: 0.25 });
    expect(at(f, [0, 1, 3, 9])).toEqual([0, 1 / 3, 1, 1]);
  });

  it("cosine (half wave) and cosine_with_min_lr", () => {
    const c = createSchedule({ name: "cosine", totalSteps: 10, warmupSteps: 2 });
    expect(c(1)).toBe(0.5);
    expect(c(2)).toBeCloseTo(1, 15);
    expect(c(4)).toBeCloseTo(0.5 * (1 + Math.cos(Math.PI / 4)), 15);
    expect(c(6)).toBeCloseTo(0.5, 15);
    expect(c(10)).toBeCloseTo(0, 15);
    const m = createSchedule({ name: "cosine_with_min_lr", totalSteps: 10, warmupSteps: 2, minLrRate: 0.1 });
    expect(m(6)).toBeCloseTo(0.55, 15);
    expect(m(10)).toBeCloseTo(0.1, 15);
    const abs = createSchedule({ name: "cosine_with_min_lr", totalSteps: 10, minLr: 1e-5, baseLr: 1e-4 });
    expect(abs(10)).toBeCloseTo(0.1, 15);
  });

  it("cosine with a min lr rate (Axolotl's cosine_min_lr_ratio) decays to the floor, as cosine_with_min_lr", () => {
    const c = createSchedule({ name: "cosine", totalSteps: 10, warmupSteps: 2, minLrRate: 0.1 });
    const m = createSchedule({ name: "cosine_with_min_lr", totalSteps: 10, warmupSteps: 2, minLrRate: 0.1 });
    expect(c(1)).toBe(0.5);
    expect(c(6)).toBeCloseTo(0.55, 15);
    expect(c(10)).toBeCloseTo(0.1, 15);
    for (let s = 0; s <= 10; s++) expect(c(s)).toBe(m(s));
    expect(() => createSchedule({ name: "linear", totalSteps: 10, minLrRate: 0.1 })).toThrow(
      /minLrRate \/ minLr apply to cosine and cosine_with_min_lr, not to linear/,
    );
    expect(() => createSchedule({ name: "cosine", totalSteps: 10, minLrRate: 1.5 })).toThrow(
      /must be in \[0, 1\], got 1.5/,
    );
  });

  it("warmup_stable_decay: linear warmup, flat, cosine decay to the min ratio", () => {
    const f = createSchedule({ name: "warmup_stable_decay", totalSteps: 10, warmupSteps: 2, decayRatio: 0.2 });
    expect(at(f, [0, 1, 2, 5, 7, 8])).toEqual([0, 0.5, 1, 1, 1, 1]);
    expect(f(9)).toBeCloseTo(0.5, 15);
    expect(f(10)).toBe(0);
    const lin = createSchedule({
      name: "warmup_stable_decay",
      totalSteps: 10,
      warmupSteps: 2,
      decaySteps: 4,
      decayType: "linear",
      minLrRatio: 0.2,
    });
    expect(lin(0)).toBeCloseTo(0.2, 15);
    expect(lin(7)).toBeCloseTo(0.8 * 0.75 + 0.2, 15);
    expect(lin(12)).toBeCloseTo(0.2, 15);
  });

  it("bad arguments are typed errors naming them", () => {
    expect(() => createSchedule({ name: "linear", totalSteps: 0 })).toThrow(/totalSteps must be a positive integer/);
    expect(() => createSchedule({ name: "nope" as "linear", totalSteps: 3 })).toThrow(/unknown name "nope"/);
    expect(() => createSchedule({ name: "cosine_with_min_lr", totalSteps: 3 })).toThrow(/minLrRate/);
  });
});
