/**
 * Parity with PyTorch: logits and loss of a tiny model of each architecture (llama3 rope scaling, linear
 * scaling + biases, tied embeddings, Qwen2 bias, Qwen3 q/k norm, GQA/MQA, sliding windows of 48 and 37 keys on
 * Mistral and on Qwen2's layers ≥ max_window_layers) at sequence length 128 against fixtures from
 * scripts/make_parity_fixtures.py (plain-torch Hugging Face forward), 1e-4 relative, f32.
 */
import { join } from "node:path";
import { registerCpuBackend } from "@qlora/cpu-kernels";
import { getBackend, noGrad, setDefaultBackend } from "@qlora/tensor";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PARITY_MODELS, writeTinyModel } from "../scripts/make-tiny-models";
import { loadModel } from "../src";
import { readFixture, relErr, sha256, tempDir } from "./helpers";

const cpuLoaded = registerCpuBackend();
const backends = ["reference", "cpu"];
const unavailable = (b: string) => b === "cpu" && !cpuLoaded;
const skipNote = (b: string) => (unavailable(b) ? " (skipped: the native @qlora/cpu-kernels binary is not built)" : "");
const dir = tempDir();
beforeAll(async () => {
  for (const spec of PARITY_MODELS) await writeTinyModel(join(dir.path, spec.name), spec);
});
afterAll(() => dir.remove());

describe.each(backends)("PyTorch parity on %s", (backendName) => {
  describe.each(PARITY_MODELS.map((s) => s.name))("%s", (name) => {
    it("generated model is the one the fixture was made from", () => {
      expect(sha256(join(dir.path, name, "model.safetensors"))).toBe(readFixture(name).header.model_sha256);
    });

    it.skipIf(unavailable(backendName))(
      `logits, packed-sequence logits and shifted loss match within 1e-4 relative (seq 128)${skipNote(backendName)}`,
      async () => {
        const prev = getBackend();
        setDefaultBackend(backendName);
        try {
          const fx = readFixture(name);
          const { model } = await loadModel(join(dir.path, name), { quantize: false, backend: backendName });
          const inputIds = fx.tensor("input_ids");
          noGrad(() => {
            const { logits } = model.forward({ inputIds });
            expect(logits!.shape).toEqual(fx.get("logits").shape);
            expect(relErr(logits!.toTypedArray(), fx.get("logits").data)).toBeLessThan(1e-4);
            const packed = model.forward({
              inputIds,
              positionIds: fx.tensor("packed.position_ids"),
              segmentIds: fx.tensor("packed.segment_ids"),
            });
            expect(relErr(packed.logits!.toTypedArray(), fx.get("packed.logits").data)).toBeLessThan(1e-4);
            const out = model.forward({ inputIds, labels: fx.tensor("labels") });
            expect(out.tokenCount).toBe(fx.get("token_count").data[0]);
            expect(relErr([out.lossSum!.item()], fx.get("loss_sum").data)).toBeLessThan(1e-4);
            expect(relErr([out.loss!.item()], fx.get("loss").data)).toBeLessThan(1e-4);
          });
          model.dispose();
        } finally {
          setDefaultBackend(prev);
        }
      },
    );
  });
});
