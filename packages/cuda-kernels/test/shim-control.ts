// Control file for test/vitest-shim.test.ts (not collected by vitest: no .test.ts suffix). Bundled with
// scripts/bundle-tests.mjs and run by plain Node, it must report exactly the outcomes named in the titles.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";

const order: string[] = [];

describe("outer", () => {
  beforeAll(() => void order.push("beforeAll"));
  beforeEach(() => void order.push("beforeEach"));
  afterEach(() => void order.push("afterEach"));
  afterAll(() => {
    order.push("afterAll");
    console.log(`hooks: ${order.join(",")}`);
  });

  it("pass: deep equality", () =>
    expect({ a: [1, 2], b: new Float32Array([0.5]) }).toEqual({ a: [1, 2], b: new Float32Array([0.5]) }));
  it("fail: toBe", () => expect(1).toBe(2));
  it("fail: toEqual", () => expect([1, 2]).toEqual([1, 3]));
  it("fail: toBeLessThanOrEqual with a message", () => expect(0.5, "grad.x").toBeLessThanOrEqual(1e-5));
  it("fail: spy call count", () => {
    const f = vi.fn();
    f();
    f();
    expect(f).toHaveBeenCalledTimes(1);
  });
  it("fail: toThrow", () => expect(() => 1).toThrow(RangeError));
  it("fail: async rejection", async () => {
    await new Promise((r) => setTimeout(r, 1));
    throw new Error("late");
  });
  it.each([
    [1, 2],
    [3, 4],
  ])("pass: each %i + 1 = %i", (a, b) => expect(a + 1).toBe(b));
  it.skipIf(true)("skip: skipIf(true)", () => expect(1).toBe(2));

  describe.skipIf(true)("skipped suite", () => {
    it("skip: inside a skipped suite", () => expect(1).toBe(2));
  });
});
