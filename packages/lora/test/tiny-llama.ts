// A tiny Llama checkpoint directory in Hugging Face layout with a tiny tokenizer (for the GGUF adapter tests):
// config.json + model.safetensors (f32, std 1/√fan_in linears so the distributions are far from uniform).
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { writeSafetensors } from "@qlora/formats";
import { type TinyTokenizerInfo, writeTinyTokenizer } from "@qlora/models";
import { Generator } from "@qlora/tensor";

export const TINY = { hidden: 64, inter: 128, layers: 2, heads: 4, kvHeads: 2 };

export async function writeTinyLlama(
  dir: string,
  seed = 7,
): Promise<{ info: TinyTokenizerInfo; config: Record<string, unknown> }> {
  const info = await writeTinyTokenizer(dir, "llama3");
  const { hidden: H, inter: I, layers: L, heads, kvHeads } = TINY;
  const hd = H / heads;
  const V = info.vocabSize;
  const config = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    vocab_size: V,
    hidden_size: H,
    intermediate_size: I,
    num_hidden_layers: L,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    max_position_embeddings: 256,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    hidden_act: "silu",
    tie_word_embeddings: false,
    bos_token_id: info.bosTokenId,
    eos_token_id: info.eosTokenIds[0],
    torch_dtype: "float32",
  };
  const gen = new Generator(seed);
  const t = (name: string, shape: number[], scale: number, offset = 0) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const z = gen.normal(n);
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = offset + scale * z[i];
    return { name, dtype: "F32" as const, shape, data };
  };
  const tensors = [t("model.embed_tokens.weight", [V, H], 1)];
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`;
    tensors.push(
      t(`${p}.input_layernorm.weight`, [H], 0.1, 1),
      t(`${p}.self_attn.q_proj.weight`, [heads * hd, H], 1 / Math.sqrt(H)),
      t(`${p}.self_attn.k_proj.weight`, [kvHeads * hd, H], 1 / Math.sqrt(H)),
      t(`${p}.self_attn.v_proj.weight`, [kvHeads * hd, H], 1 / Math.sqrt(H)),
      t(`${p}.self_attn.o_proj.weight`, [H, heads * hd], 1 / Math.sqrt(H)),
      t(`${p}.post_attention_layernorm.weight`, [H], 0.1, 1),
      t(`${p}.mlp.gate_proj.weight`, [I, H], 1 / Math.sqrt(H)),
      t(`${p}.mlp.up_proj.weight`, [I, H], 1 / Math.sqrt(H)),
      t(`${p}.mlp.down_proj.weight`, [H, I], 1 / Math.sqrt(I)),
    );
  }
  tensors.push(t("model.norm.weight", [H], 0.1, 1), t("lm_head.weight", [V, H], 1 / Math.sqrt(H)));
  await writeSafetensors(join(dir, "model.safetensors"), tensors, { format: "pt" });
  await writeFile(join(dir, "config.json"), `${JSON.stringify(config, null, 2)}\n`);
  return { info, config };
}
