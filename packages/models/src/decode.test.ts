// The batch-1 decode path on the native cpu backend with the bitsandbytes layout of a loaded checkpoint: NF4
// projections and a bf16 lm_head. A decode step's lm_head product has one row, so it runs on the skinny
// half-weight kernel (cpu-kernels gemv_bf16.cc), while the full forward's has one row per position and runs on
// the packed GEMM: the two must agree, and KV-cache greedy decoding must equal full recomputation.
import { registerCpuBackend } from "@qlora/cpu-kernels";
import { Linear, noGrad, type Tensor, tensor } from "@qlora/tensor";
import { describe, expect, it } from "vitest";
import { createModel } from "./causal-lm";
import { parseConfig } from "./config";
import { generate } from "./generate";
import { randomLayers } from "./layers";

const native = registerCpuBackend();
const reason = "the native cpu-kernels addon did not load (build it: pnpm --filter @qlora/cpu-kernels build:native)";

describe("batch-1 decode on the cpu backend (NF4 projections, bf16 lm_head)", () => {
  const config = parseConfig({
    architectures: ["LlamaForCausalLM"],
    vocab_size: 301,
    hidden_size: 128,
    intermediate_size: 192,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: 256,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
  });
  const build = () =>
    createModel(config, randomLayers({ seed: 11, std: 0.5, dtype: "bf16", quantize: { blocksize: 64 } }));
  const lastLogits = (model: ReturnType<typeof build>, seq: number[]) =>
    noGrad(() => {
      const ids = tensor(Int32Array.from(seq), { dtype: "i32", shape: [1, seq.length] });
      const out = model.forward({ inputIds: ids }).logits!;
      const last = (out.toTypedArray() as Float32Array).slice((seq.length - 1) * config.vocabSize);
      out.dispose();
      ids.dispose();
      return last;
    });

  it.skipIf(!native)(
    `${native ? "" : `skipped, ${reason}: `}the lm_head stays bf16 and its decode-step logits match the full forward's`,
    () => {
      const model = build();
      const head = model.getSubmodule("lm_head") as Linear;
      expect(head).toBeInstanceOf(Linear);
      expect(head.weight.dtype).toBe("bf16");
      expect(head.weight.backend.name).toBe("cpu");
      const prompt = [3, 14, 15, 92, 65, 35, 89, 79];
      const cache = model.createCache();
      let step: Tensor | undefined;
      noGrad(() => {
        model
          .forward({ inputIds: tensor(prompt.slice(0, 7), { shape: [1, 7], dtype: "i32" }), cache })
          .logits!.dispose();
        step = model.forward({ inputIds: tensor([prompt[7]], { shape: [1, 1], dtype: "i32" }), cache }).logits!;
      });
      const cached = step!.toTypedArray() as Float32Array;
      step!.dispose();
      cache.dispose();
      const full = lastLogits(model, prompt);
      const scale = Math.max(...full.map(Math.abs));
      let worst = 0;
      for (let j = 0; j < full.length; j++) worst = Math.max(worst, Math.abs(cached[j] - full[j]));
      expect(worst).toBeLessThanOrEqual(1e-5 * (1 + scale) * Math.sqrt(config.hiddenSize));
      model.dispose();
    },
  );

  it.skipIf(!native)(
    `${native ? "" : `skipped, ${reason}: `}KV-cache greedy decoding equals full recomputation for 32 new tokens`,
    async () => {
      const model = build();
      const prompt = [5, 17, 42, 8, 9, 33, 2];
      const [result] = await generate(model, [prompt], { maxNewTokens: 32 });
      const seq = [...prompt];
      for (let i = 0; i < 32; i++) {
        const logits = lastLogits(model, seq);
        seq.push(logits.indexOf(Math.max(...logits)));
      }
      expect(result.tokens).toEqual(seq.slice(prompt.length));
      expect(new Set(result.tokens).size).toBeGreaterThan(3); // not a degenerate constant continuation
      model.dispose();
    },
    60_000,
  );
});
