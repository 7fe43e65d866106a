import { describe, expect, it } from "vitest";
import { getBackend } from "../src/index";
import { readDecoderBlockFixture, runDecoderBlockFixture } from "../src/testing/decoder-fixture";

// Golden fixture written by scripts/make_fixtures.py (PyTorch 1.13, float64 truth stored as f32).
// Tolerance per tensor: |ours − torch| ≤ 1e-5 · max|torch| (our f32 reference backend vs the rounded truth).
// The same check runs on the native cpu backend in packages/cpu-kernels/test/fixtures.test.ts.

describe("golden fixture: Llama-style decoder block + LM head + cross-entropy vs PyTorch", () => {
  it("header names the generator", () => {
    const fixture = readDecoderBlockFixture();
    expect(fixture.header.generator).toMatch(/make_fixtures\.py/);
    expect(fixture.header.torch).toMatch(/^1\.13/);
  });

  it("forward and backward match within 1e-5 · max|ref| on the reference backend", () => {
    const errors = runDecoderBlockFixture(getBackend("reference"));
    expect(errors.size).toBe(15);
    for (const [name, err] of errors) expect(err, name).toBeLessThanOrEqual(1e-5);
  });
});
