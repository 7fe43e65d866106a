import { expect, test } from "vitest";
import { loadNative } from "./load";

test("the native addon loads and reports the ISA it dispatches to", () => {
  const native = loadNative() as unknown as { isaInfo(): { avx2: boolean }; getThreads(): number };
  expect(typeof native.isaInfo().avx2).toBe("boolean");
  expect(native.getThreads()).toBeGreaterThanOrEqual(1);
});
