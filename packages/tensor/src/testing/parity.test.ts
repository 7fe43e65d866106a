import { describe, expect, it } from "vitest";
import { createReferenceBackend, referenceBackend } from "../backend/reference";
import type { Backend } from "../backend/types";
import { runParity } from "./parity";
import { backendParitySuite } from "./suite";

// The harness run on a second reference instance: every case must pass.
backendParitySuite(createReferenceBackend({ name: "reference-copy" }), { seeds: [1] });

describe("parity harness catches a wrong backend", () => {
  it("flags a backend whose softmax is off by 1e-3 and whose copy ignores strides", () => {
    const base = createReferenceBackend({ name: "broken" });
    const broken: Backend = {
      ...base,
      name: "broken",
      softmax(x, rows, n) {
        const y = base.softmax(x, rows, n) as unknown as { data: Float32Array };
        y.data[0] += 1e-3;
        return y as never;
      },
      copy(src, view, dtype) {
        return base.copy(
          src,
          {
            ...view,
            strides: view.strides.map((_, i, a) => a.slice(i + 1).reduce((p, _q, j) => p * view.shape[i + 1 + j], 1)),
          },
          dtype,
        );
      },
    };
    const results = runParity(broken, { seeds: [1] });
    const failed = results.filter((r) => !r.ok);
    expect(failed.some((r) => r.op === "softmax")).toBe(true);
    expect(failed.some((r) => r.op === "copy")).toBe(true);
    expect(results.filter((r) => r.op === "matmul").every((r) => r.ok)).toBe(true);
    expect(failed[0].error).toMatch(/broken|reference/);
  });

  it("the shared reference backend passes everything for 3 seeds", () => {
    const results = runParity(referenceBackend);
    expect(results.length).toBeGreaterThan(50);
    expect(results.filter((r) => !r.ok)).toEqual([]);
  });
});
