/**
 * Shared pieces of the greedy-decode benchmark (bench/decode.ts): the generated ~300M-parameter Llama (bf16
 * safetensors + a tiny SentencePiece-style tokenizer, vocab padded to 32000 in the GGUF export), its F32 and Q8_0
 * GGUF exports, and the prompt. Files are cached under $QLORA_BENCH_DIR (default: the OS temp dir).
 */
import { access } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { TINY_MODELS, writeTinyModel } from "../scripts/make-tiny-models";
import { exportGguf, type GgufOutType } from "../src/gguf-export";
import { writeTinyTokenizer } from "../src/tiny-tokenizer";

/** ~290M parameters: 20 layers of hidden 1024, ffn 2816, 16 heads / 4 kv heads, vocab 32000, untied lm_head. */
export const DECODE_MODEL = {
  hidden_size: 1024,
  intermediate_size: 2816,
  num_hidden_layers: 20,
  num_attention_heads: 16,
  num_key_value_heads: 4,
  vocab_size: 32000,
  max_position_embeddings: 2048,
  head_dim: 64,
};

export const PROMPT_TOKENS = 16;
export const NEW_TOKENS = 64;
/** Prompt ids (ordinary pieces of the tiny tokenizer; the generated model does not care what they mean). */
export const PROMPT = Array.from({ length: PROMPT_TOKENS }, (_, i) => 300 + ((i * 37) % 200));

export function benchDir(): string {
  return join(process.env.QLORA_BENCH_DIR ?? tmpdir(), "qlora-bench-decode-300m");
}

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

/** Writes the checkpoint and its GGUF exports once; returns their paths. */
export async function ensureDecodeModel(): Promise<{ dir: string; gguf: Record<"F32" | "Q8_0", string> }> {
  const dir = benchDir();
  if (!(await exists(join(dir, "config.json")))) {
    const spec = TINY_MODELS.find((s) => s.name === "llama")!;
    await writeTinyTokenizer(dir, "llama2");
    await writeTinyModel(dir, spec, { dtype: "bfloat16", configOverrides: DECODE_MODEL });
  }
  const gguf = { F32: join(dir, "model-f32.gguf"), Q8_0: join(dir, "model-q8_0.gguf") };
  for (const [type, path] of Object.entries(gguf) as [GgufOutType, string][])
    if (!(await exists(path))) await exportGguf(dir, path, { outType: type });
  return { dir, gguf };
}

/** Decode throughput from per-token timestamps: tokens after the first over the time since the first. */
export function decodeRate(stamps: readonly number[]): number {
  return ((stamps.length - 1) / (stamps.at(-1)! - stamps[0])) * 1000;
}
