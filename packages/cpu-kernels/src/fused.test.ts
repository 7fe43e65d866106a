// The whole fused-op surface (src/fused.ts over csrc/) on the tensor package's backend parity
// harness: every op, random odd shapes, strided and broadcast views, compared with the reference
// backend within its dtype tolerances, once per ISA variant this machine can run (AVX-512, AVX2,
// SSE4.2 baseline). GEMM ops come from the reference here; the composed cpu backend is checked by
// backend.test.ts.
import { type Backend, referenceBackend } from "@qlora/tensor";
import { backendParitySuite } from "@qlora/tensor/testing";
import { afterAll, beforeAll, describe } from "vitest";
import { createFusedOps, type FusedNative } from "./fused";
import { loadNative } from "./load";

const native = loadNative() as unknown as FusedNative;
const backend = { ...referenceBackend, ...createFusedOps(() => native), name: "reference+fused" } as Backend;
const levels = [2, 1, 0].filter((l) => native.setFusedIsaLevel(l) === l);
native.setFusedIsaLevel(2);

for (const level of levels) {
  describe(`ISA level ${level}`, () => {
    beforeAll(() => {
      native.setFusedIsaLevel(level);
    });
    afterAll(() => {
      native.setFusedIsaLevel(2);
    });
    backendParitySuite(backend, { seeds: [1, 2, 3] });
  });
}
