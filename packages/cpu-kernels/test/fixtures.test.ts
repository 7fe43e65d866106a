// The PyTorch golden fixture of a Llama-style decoder block (packages/tensor/scripts/make_fixtures.py),
// forward and backward through the Tensor frontend on the native cpu backend: the same 1e-5 bound as
// on the reference backend.
import { runDecoderBlockFixture } from "@qlora/tensor/testing";
import { describe, expect, it } from "vitest";
import { cpuBackend, cpuBackendInfo } from "../src/backend";

describe("golden fixture: decoder block + cross-entropy vs PyTorch on the cpu backend", () => {
  it("forward and backward match within 1e-5 · max|torch|", () => {
    expect(cpuBackendInfo(cpuBackend)!.native).toBe(true);
    const errors = runDecoderBlockFixture(cpuBackend);
    expect(errors.size).toBe(15);
    for (const [name, err] of errors) expect(err, name).toBeLessThanOrEqual(1e-5);
  });
});
