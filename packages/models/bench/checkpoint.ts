/**
 * A generated Llama checkpoint of benchmark size in bf16, streamed to disk shard by shard (never whole in
 * memory): random small values (|x| < 0.05) from xorshift32, config.json + generation_config.json.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ShardedSafetensorsWriter } from "@qlora/formats";
import { tensorList } from "../scripts/make-tiny-models";

export interface BenchModelSize {
  hidden: number;
  ffn: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
}

/** ~1.0B parameters (TinyLlama-like widths, 20 layers). */
export const ONE_B: BenchModelSize = { hidden: 2048, ffn: 5632, layers: 20, heads: 32, kvHeads: 4, vocab: 32000 };
/** ~300M parameters. */
export const THREE_HUNDRED_M: BenchModelSize = {
  hidden: 1024,
  ffn: 2816,
  layers: 20,
  heads: 16,
  kvHeads: 4,
  vocab: 32000,
};

export function benchConfig(s: BenchModelSize): Record<string, unknown> {
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: s.hidden,
    intermediate_size: s.ffn,
    num_hidden_layers: s.layers,
    num_attention_heads: s.heads,
    num_key_value_heads: s.kvHeads,
    vocab_size: s.vocab,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    max_position_embeddings: 2048,
    hidden_act: "silu",
    tie_word_embeddings: false,
    torch_dtype: "bfloat16",
    bos_token_id: 1,
    eos_token_id: 2,
  };
}

/** Writes the checkpoint in `shards` shards; returns { params, bytes, largestTensorBytes }. */
export async function writeBenchCheckpoint(dir: string, size: BenchModelSize, shards = 2) {
  await mkdir(dir, { recursive: true });
  const config = benchConfig(size);
  const decls = tensorList(config).map(([name, shape]) => ({ name, dtype: "BF16" as const, shape }));
  let params = 0;
  let largest = 0;
  for (const d of decls) {
    const n = d.shape.reduce((a, b) => a * b, 1);
    params += n;
    largest = Math.max(largest, 2 * n);
  }
  const bytes = 2 * params;
  const w = await ShardedSafetensorsWriter.create(dir, decls, {
    maxShardSize: Math.ceil(bytes / shards) + largest,
    metadata: { format: "pt" },
  });
  let s = 0x9e3779b9;
  const chunk = new Uint16Array(1 << 22);
  for (const d of decls) {
    const isNorm = d.shape.length === 1;
    let left = d.shape.reduce((a, b) => a * b, 1);
    while (left > 0) {
      const n = Math.min(left, chunk.length);
      for (let i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >>> 17;
        s ^= s << 5;
        // bf16 of ±[0, 0.05): sign bit, exponent 2^-5 .. 2^-20, 7 random mantissa bits; norms are 1.0
        chunk[i] = isNorm ? 0x3f80 : ((s >>> 16) & 0x807f) | ((0x7a - ((s >>> 8) & 0xf)) << 7);
      }
      await w.writeChunk(d.name, chunk.subarray(0, n));
      left -= n;
    }
  }
  await w.finish();
  await writeFile(join(dir, "config.json"), `${JSON.stringify(config, null, 2)}\n`);
  await writeFile(join(dir, "generation_config.json"), '{"bos_token_id": 1, "eos_token_id": 2}\n');
  return { params, bytes, largestTensorBytes: largest, files: w.files };
}
