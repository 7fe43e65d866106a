// The whole fused-op surface (src/fused.ts over csrc/) on the tensor package's backend parity
// harness: every op, random odd shapes, strided and broadcast views, compared with the reference
// backend within its dtype tolerances, once per ISA variant this machine can run (AVX-512, AVX2,
// SSE4.2 baseline). GEMM ops come from the reference here; the composed cpu backend is checked by
// backend.test.ts.
import { type Backend, referenceBackend } from "@qlora/tensor";
import { backendParitySuite } from "@qlora/tensor/testing";
import { afterAll, beforeAll, describe } from "vitest";
import { createFusedOps, type FusedNative } from "./fused";
import { isaAccountingTest, isaSuite } from "../test/isa-paths";
import { loadNative } from "./load";

const native = loadNative() as unknown as FusedNative;
const backend = { ...referenceBackend, ...createFusedOps(() => native), name: "reference+fused" } as Backend;
// Every ISA level this host cannot run is reported as a skipped test (test/isa-paths.ts).
const levels = isaSuite("fused", "fused-op parity suite").map((c) => c.level);
isaAccountingTest("fused");
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
