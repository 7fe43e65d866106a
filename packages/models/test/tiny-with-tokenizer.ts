/** A tiny model directory of each architecture with a tiny tokenizer of the matching family (GGUF/generation tests). */
import { join } from "node:path";
import { type TinyTokenizerFamily, type TinyTokenizerInfo, writeTinyTokenizer } from "../src/tiny-tokenizer";
import { TINY_MODELS, type TinySpec, type WriteTinyOptions, writeTinyModel } from "../scripts/make-tiny-models";

/** The tokenizer family each tiny model ships with (as its real counterpart does). */
export const TOKENIZER_OF: Readonly<Record<string, TinyTokenizerFamily>> = {
  llama: "llama2",
  llama3: "llama3",
  "llama-linear-bias": "llama2",
  mistral: "mistral",
  qwen2: "qwen2",
  qwen3: "qwen2",
};

export { TINY_MODELS };

/** Writes `spec` with a tokenizer into dir/spec.name; vocab_size and the special ids follow the tokenizer. */
export async function writeTinyModelWithTokenizer(
  root: string,
  spec: TinySpec,
  options: WriteTinyOptions & { extraVocab?: number } = {},
): Promise<{ dir: string; info: TinyTokenizerInfo; config: Record<string, unknown> }> {
  const dir = join(root, spec.name);
  const info = await writeTinyTokenizer(dir, TOKENIZER_OF[spec.name]);
  const config = await writeTinyModel(dir, spec, {
    ...options,
    configOverrides: {
      vocab_size: info.vocabSize + (options.extraVocab ?? 0),
      bos_token_id: info.bosTokenId,
      eos_token_id: info.eosTokenIds.length === 1 ? info.eosTokenIds[0] : info.eosTokenIds,
      ...options.configOverrides,
    },
  });
  return { dir, info, config };
}
