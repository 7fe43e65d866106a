/** Integration helpers: a tiny generated Llama (models), LoRA (lora), AdamW (paged-optim), TokenBatch loss. */
import { join } from "node:path";
import { openSafetensors } from "@qlora/formats";
import { ADAPTER_WEIGHTS_NAME, type LoraModel, adapterStateDict, saveAdapter } from "@qlora/lora";
import { type CausalLM, createModel, parseConfig, randomLayers } from "@qlora/models";
import { tensor } from "@qlora/tensor";
import type { Module, Tensor } from "@qlora/tensor";
import type { CheckpointIO, TokenBatch } from "../../src/index";

export const tinyLlamaConfig = (vocab = 64) =>
  parseConfig({
    architectures: ["LlamaForCausalLM"],
    vocab_size: vocab,
    hidden_size: 64,
    intermediate_size: 128,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: 256,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
  });

/** The same random weights either NF4 + double quant (QLoRA) or dense in `dtype`. */
export function tinyLlama(kind: "nf4" | "f32" | "bf16", seed = 1, vocab = 64): CausalLM {
  return createModel(
    tinyLlamaConfig(vocab),
    randomLayers(
      kind === "nf4"
        ? { seed, std: 0.1, quantize: { quantType: "nf4", doubleQuant: true, blocksize: 64 } }
        : { seed, std: 0.1, dtype: kind },
    ),
  );
}

/** Summed shifted loss through the model's own (chunked) loss path. */
export function llamaLoss(model: Module, b: TokenBatch): Tensor {
  const shape = [b.rows, b.seqLen];
  const inputIds = tensor(b.inputIds, { dtype: "i32", shape });
  const positionIds = tensor(b.positionIds, { dtype: "i32", shape });
  const segmentIds = tensor(b.segmentIds, { dtype: "i32", shape });
  const labels = tensor(b.labels, { dtype: "i32", shape });
  const out = (model as CausalLM).forward({ inputIds, positionIds, segmentIds, labels });
  for (const t of [inputIds, positionIds, segmentIds, labels]) t.dispose();
  out.loss?.dispose();
  return out.lossSum as Tensor;
}

/**
 * CheckpointIO writing the adapter in PEFT format (what the CLI wires): save_pretrained's files; load copies the
 * file's tensors back into the live adapter parameters.
 */
export function peftCheckpointIO(lm: LoraModel): CheckpointIO {
  return {
    async saveModel(dir) {
      await saveAdapter(lm, dir);
    },
    async loadModel(dir, model) {
      const names = new Map([...model.namedParameters()].map(([n, p]) => [p, n]));
      const f = await openSafetensors(join(dir, ADAPTER_WEIGHTS_NAME));
      const sd: Record<string, Tensor> = {};
      try {
        for (const [key, live] of Object.entries(adapterStateDict(lm, "default"))) {
          const data = await f.readTyped(key, "F32");
          sd[names.get(live) as string] = tensor(Float32Array.from(data), { shape: [...live.shape] });
        }
      } finally {
        await f.close();
      }
      model.loadStateDict(sd, { strict: false });
    },
  };
}
