/**
 * Small but real tokenizers in exact Hugging Face file layout (tokenizer.json + tokenizer_config.json with a chat
 * template), for tests and the tiny-model script. Two kinds, as the model families ship them:
 * - byte-level BPE (Llama 3, Qwen2/2.5/3): GPT-2 byte→unicode alphabet, a regex Split pre-tokenizer, ByteLevel
 *   decoder; Llama 3 prepends `<|begin_of_text|>` through its post-processor, Qwen adds nothing.
 * - SentencePiece-style BPE (Llama 2, Mistral): "▁" for spaces (Metaspace), `<0xXX>` byte-fallback tokens,
 *   `<unk> <s> </s>` at ids 0-2, `<s>` prepended by the post-processor.
 * Merges are learned from a fixed word list (plain byte-pair training), so every merge result is in the
 * vocabulary and the file is what a trained tokenizer of that kind looks like, only smaller.
 */
import { join } from "node:path";
import { AtomicFile, ensureDirectory } from "@qlora/formats";

export type TinyTokenizerFamily = "llama3" | "qwen2" | "llama2" | "mistral";

export interface TinyTokenizerInfo {
  family: TinyTokenizerFamily;
  /** Ids 0 … vocabSize-1 (model vocab and added tokens). A model config's vocab_size must be ≥ this. */
  vocabSize: number;
  bosTokenId: number | null;
  /** The tokenizer_config eos_token's id. */
  eosTokenId: number;
  /** Every id that ends a turn (generation_config.json's eos_token_id list). */
  eosTokenIds: number[];
  padTokenId: number | null;
}

/** Words the merges spell out; chat-template words included so formatted chats tokenize compactly. */
const WORDS = [
  "the",
  "of",
  "and",
  "to",
  "in",
  "is",
  "it",
  "you",
  "that",
  "was",
  "for",
  "on",
  "are",
  "with",
  "as",
  "be",
  "at",
  "this",
  "have",
  "from",
  "or",
  "one",
  "had",
  "by",
  "word",
  "but",
  "not",
  "what",
  "all",
  "were",
  "we",
  "when",
  "your",
  "can",
  "said",
  "there",
  "use",
  "an",
  "each",
  "which",
  "she",
  "do",
  "how",
  "their",
  "if",
  "will",
  "up",
  "hello",
  "world",
  "Hello",
  "World",
  "model",
  "token",
  "train",
  "learn",
  "quick",
  "brown",
  "fox",
  "jumps",
  "over",
  "lazy",
  "dog",
  "system",
  "user",
  "assistant",
  "helpful",
  "You",
  "are",
  "a",
  "question",
  "answer",
  "What",
  "Why",
  "number",
  "time",
  "day",
  "night",
  "good",
  "great",
  "small",
  "large",
  "language",
];

const LLAMA3_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/** Llama 3 Instruct's template (BOS written by the template, so chat text is encoded without special tokens). */
const LLAMA3_TEMPLATE =
  "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
/** Qwen2.5 Instruct's ChatML template without the tool-calling branches. */
const QWEN2_TEMPLATE =
  "{%- for message in messages %}{%- if loop.first and message['role'] != 'system' %}{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif %}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}";
/** Llama 2 Chat's template. */
const LLAMA2_TEMPLATE =
  "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
/** Mistral 7B Instruct v0.1's template. */
const MISTRAL_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

/** GPT-2's reversible byte → printable-unicode map (bytes_to_unicode). */
export function bytesToUnicode(): string[] {
  const keep: number[] = [];
  for (let b = 33; b <= 126; b++) keep.push(b);
  for (let b = 161; b <= 172; b++) keep.push(b);
  for (let b = 174; b <= 255; b++) keep.push(b);
  const map = new Array<string>(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) map[b] = keep.includes(b) ? String.fromCharCode(b) : String.fromCharCode(256 + extra++);
  return map;
}

/**
 * Byte-pair merges learned from the words (each counted once): repeatedly merge the most frequent adjacent pair
 * (ties: the pair whose joined text sorts first) until every word is one symbol. Learned merges are consistent
 * with BPE encoding by rank, so each word encodes to a single token, as in a trained tokenizer.
 */
function learnMerges(words: readonly string[][]): { merges: [string, string][]; pieces: string[] } {
  const merges: [string, string][] = [];
  const pieces: string[] = [];
  const seqs = words.map((w) => [...w]);
  for (;;) {
    const counts = new Map<string, { pair: [string, string]; n: number }>();
    for (const s of seqs)
      for (let i = 0; i + 1 < s.length; i++) {
        const key = `${s[i]}\u0000${s[i + 1]}`;
        const e = counts.get(key);
        if (e) e.n++;
        else counts.set(key, { pair: [s[i], s[i + 1]], n: 1 });
      }
    let best: { pair: [string, string]; n: number } | undefined;
    for (const e of counts.values()) {
      if (!best || e.n > best.n) best = e;
      else if (e.n === best.n && e.pair.join("\u0000") < best.pair.join("\u0000")) best = e;
    }
    if (!best) return { merges, pieces };
    const [a, b] = best.pair;
    merges.push([a, b]);
    pieces.push(a + b);
    for (const s of seqs)
      for (let i = 0; i + 1 < s.length; i++) if (s[i] === a && s[i + 1] === b) s.splice(i, 2, a + b);
  }
}

function byteLevelFiles(family: "llama3" | "qwen2", wordList: readonly string[] = WORDS) {
  const b2u = bytesToUnicode();
  const enc = (s: string) => Array.from(new TextEncoder().encode(s), (b) => b2u[b]);
  const words = [...wordList.map(enc), ...wordList.map((w) => enc(` ${w}`)), enc("\n\n"), enc("  ")];
  const { merges, pieces } = learnMerges(words);
  const vocab: Record<string, number> = {};
  for (const s of [...b2u, ...pieces]) if (!(s in vocab)) vocab[s] = Object.keys(vocab).length;
  const specials =
    family === "llama3"
      ? ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
      : ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
  const base = Object.keys(vocab).length;
  const added = specials.map((content, i) => addedToken(base + i, content));
  const id = (s: string) => base + specials.indexOf(s);
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false };
  const pattern = family === "llama3" ? LLAMA3_PATTERN : QWEN2_PATTERN;
  const tokenizer = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: family === "qwen2" ? { type: "NFC" } : null,
    pre_tokenizer: {
      type: "Sequence",
      pretokenizers: [{ type: "Split", pattern: { Regex: pattern }, behavior: "Isolated", invert: false }, byteLevel],
    },
    post_processor:
      family === "llama3"
        ? {
            type: "Sequence",
            processors: [
              byteLevel,
              {
                type: "TemplateProcessing",
                single: [
                  { SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } },
                  { Sequence: { id: "A", type_id: 0 } },
                ],
                pair: [
                  { SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } },
                  { Sequence: { id: "A", type_id: 0 } },
                  { SpecialToken: { id: "<|begin_of_text|>", type_id: 1 } },
                  { Sequence: { id: "B", type_id: 1 } },
                ],
                special_tokens: {
                  "<|begin_of_text|>": {
                    id: "<|begin_of_text|>",
                    ids: [id("<|begin_of_text|>")],
                    tokens: ["<|begin_of_text|>"],
                  },
                },
              },
            ],
          }
        : byteLevel,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: family === "llama3",
      vocab,
      merges,
    },
  };
  const llama3 = family === "llama3";
  const config = {
    tokenizer_class: llama3 ? "PreTrainedTokenizerFast" : "Qwen2Tokenizer",
    bos_token: llama3 ? "<|begin_of_text|>" : null,
    eos_token: llama3 ? "<|eot_id|>" : "<|im_end|>",
    pad_token: llama3 ? null : "<|endoftext|>",
    unk_token: null,
    clean_up_tokenization_spaces: false,
    model_max_length: 131072,
    added_tokens_decoder: addedTokensDecoder(added),
    chat_template: llama3 ? LLAMA3_TEMPLATE : QWEN2_TEMPLATE,
  };
  const info: TinyTokenizerInfo = {
    family,
    vocabSize: base + specials.length,
    bosTokenId: llama3 ? id("<|begin_of_text|>") : null,
    eosTokenId: llama3 ? id("<|eot_id|>") : id("<|im_end|>"),
    eosTokenIds: llama3 ? [id("<|end_of_text|>"), id("<|eot_id|>")] : [id("<|im_end|>"), id("<|endoftext|>")],
    padTokenId: llama3 ? null : id("<|endoftext|>"),
  };
  return { tokenizer, config, info };
}

function sentencePieceFiles(family: "llama2" | "mistral") {
  const words = [...WORDS.map((w) => ["▁", ...w]), ...["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"].map((w) => [...w])];
  const { merges, pieces } = learnMerges(words);
  // Every printable ASCII character is a piece (SentencePiece keeps all characters it saw); others use <0xXX>.
  const ascii = Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i)).filter((c) => c !== " ");
  const chars = [...new Set(["▁", ...ascii, ...words.flat()])];
  const vocab: Record<string, number> = { "<unk>": 0, "<s>": 1, "</s>": 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`] = 3 + b;
  for (const s of [...chars, ...pieces]) if (!(s in vocab)) vocab[s] = Object.keys(vocab).length;
  const added = [addedToken(0, "<unk>"), addedToken(1, "<s>"), addedToken(2, "</s>")];
  const tokenizer = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: "Metaspace", replacement: "▁", prepend_scheme: "first", split: false },
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [
        { SpecialToken: { id: "<s>", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: "<s>", type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "▁" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: "<unk>",
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
  const config = {
    tokenizer_class: "LlamaTokenizer",
    add_bos_token: true,
    add_eos_token: false,
    bos_token: "<s>",
    eos_token: "</s>",
    unk_token: "<unk>",
    pad_token: null,
    legacy: false,
    clean_up_tokenization_spaces: false,
    model_max_length: 4096,
    added_tokens_decoder: addedTokensDecoder(added),
    chat_template: family === "llama2" ? LLAMA2_TEMPLATE : MISTRAL_TEMPLATE,
  };
  const info: TinyTokenizerInfo = {
    family,
    vocabSize: Object.keys(vocab).length,
    bosTokenId: 1,
    eosTokenId: 2,
    eosTokenIds: [2],
    padTokenId: null,
  };
  return { tokenizer, config, info };
}

function addedToken(id: number, content: string) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
}

function addedTokensDecoder(added: ReturnType<typeof addedToken>[]): Record<string, unknown> {
  return Object.fromEntries(added.map(({ id, ...rest }) => [String(id), rest]));
}

/**
 * The two files' contents and the special ids, without writing anything. `words` replaces the built-in word list
 * the byte-level merges are learned from (byte-level families only).
 */
export function tinyTokenizerFiles(
  family: TinyTokenizerFamily,
  words?: readonly string[],
): {
  tokenizer: Record<string, unknown>;
  config: Record<string, unknown>;
  info: TinyTokenizerInfo;
} {
  if (family === "llama3" || family === "qwen2") return byteLevelFiles(family, words);
  if (family === "llama2" || family === "mistral") return sentencePieceFiles(family);
  throw new TypeError(`writeTinyTokenizer: unknown family ${JSON.stringify(family)} (llama3, qwen2, llama2, mistral)`);
}

async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  const f = await AtomicFile.create(path);
  try {
    await f.write(new TextEncoder().encode(`${JSON.stringify(value, null, 2)}\n`));
    await f.commit();
  } catch (e) {
    await f.abort();
    throw e;
  }
}

/** Writes dir/tokenizer.json and dir/tokenizer_config.json (atomically) and returns the vocab size and ids. */
export async function writeTinyTokenizer(
  dir: string,
  family: TinyTokenizerFamily,
  words?: readonly string[],
): Promise<TinyTokenizerInfo> {
  const { tokenizer, config, info } = tinyTokenizerFiles(family, words);
  await ensureDirectory(dir);
  await writeJsonAtomic(join(dir, "tokenizer.json"), tokenizer);
  await writeJsonAtomic(join(dir, "tokenizer_config.json"), config);
  return info;
}
