// The PyTorch golden fixture of a Llama-style decoder block (packages/tensor/scripts/make_fixtures.py),
// forward and backward through the Tensor frontend on the cuda backend: the same body and 1e-5 bound as
// the reference and cpu backends. $QLORA_DECODER_FIXTURE overrides the fixture path (the GPU bundle
// carries its own copy). Skipped, with the reason in the title, without a usable device.
import { DECODER_BLOCK_FIXTURE, readDecoderBlockFixture, runDecoderBlockFixture } from "@qlora/tensor/testing";
import { describe, expect, it } from "vitest";
import { createCudaBackend, cudaDeviceStatus } from "../src/index";

const status = cudaDeviceStatus();
const skipped = status.available ? "" : ` (skipped: no CUDA device: ${status.reason})`;

describe.skipIf(!status.available)(
  `golden fixture: decoder block + cross-entropy vs PyTorch on the cuda backend${skipped}`,
  () => {
    it("forward and backward match within 1e-5 · max|torch|", () => {
      const fixture = readDecoderBlockFixture(process.env.QLORA_DECODER_FIXTURE || DECODER_BLOCK_FIXTURE);
      const errors = runDecoderBlockFixture(createCudaBackend(), fixture);
      expect(errors.size).toBe(15);
      for (const [name, err] of errors) expect(err, name).toBeLessThanOrEqual(1e-5);
    });
  },
);
