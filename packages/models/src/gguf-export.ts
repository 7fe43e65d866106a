/**
 * GGUF export of a Hugging Face model directory (config.json, safetensors, tokenizer files) for llama.cpp and
 * node-llama-cpp, as convert_hf_to_gguf.py writes it: llama.cpp tensor names and q/k row permutation
 * (gguf-names.ts), hyperparameters, rope scaling (`linear` as keys, `llama3` as the `rope_freqs` tensor), and the
 * tokenizer (byte-level BPE as `gpt2` with merges, SentencePiece-style BPE as `llama` with scores), special ids,
 * add_bos/add_eos and the chat template. Tensors are streamed one at a time from the shards into @qlora/formats'
 * GgufWriter, which writes under a temporary name and renames (atomic).
 *
 * Weight types: F32, F16, BF16 or Q8_0 for 2-D weights; 1-D tensors (norms, biases, rope_freqs) stay F32, and
 * Q8_0 falls back to F16 for a weight whose rows are not a multiple of 32 (as convert_hf_to_gguf.py does).
 *
 * Error codes (ModelError): `gguf_unsupported`, `gguf_unmapped_tensor`, plus those of config/tokenizer loading.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import {
  GgmlType,
  GgufValueType,
  GgufWriter,
  type GgufWriteValue,
  float32ArrayToBf16,
  float32ArrayToF16,
  openShardedSafetensors,
  quantizeQ8_0,
  toFloat32Array,
} from "@qlora/formats";
import { type ModelConfig, parseConfig } from "./config";
import { ModelError } from "./errors";
import { ggufArchitecture, ggufTensorName, isSkippedForGguf, permuteQkRows, qkPermuteHeads } from "./gguf-names";
import { HfTokenizer, type JsonObject } from "./tokenizer";

export type GgufOutType = "F32" | "F16" | "BF16" | "Q8_0";

export interface GgufExportOptions {
  /** Type of 2-D weights (default F16, as convert_hf_to_gguf.py). */
  outType?: GgufOutType;
  /** general.name (default: the directory's name). */
  name?: string;
  /**
   * llama.cpp pre-tokenizer name for byte-level BPE (`tokenizer.ggml.pre`). Default: recognised from the
   * tokenizer.json Split regex (Llama 3 → "llama-bpe", Qwen2 → "qwen2"); an unknown regex needs this option.
   */
  preTokenizer?: string;
  /** Called after each tensor is written: tensors done, tensors in all. */
  onProgress?: (done: number, total: number) => void;
}

export interface GgufExportResult {
  path: string;
  architecture: string;
  tensors: { name: string; type: string; ne: number[] }[];
}

/** llama.cpp's LLAMA_FTYPE for general.file_type. */
const FILE_TYPE: Record<GgufOutType, number> = { F32: 0, F16: 1, Q8_0: 7, BF16: 32 };

/** Exports `modelDir` to `outPath` (written atomically). */
export async function exportGguf(
  modelDir: string,
  outPath: string,
  options: GgufExportOptions = {},
): Promise<GgufExportResult> {
  const outType = options.outType ?? "F16";
  if (!(outType in FILE_TYPE))
    throw new ModelError("bad_argument", `exportGguf: outType must be F32, F16, BF16 or Q8_0, got ${outType}`, {
      key: "outType",
    });
  const configFile = join(modelDir, "config.json");
  const config = parseConfig(await readJson(configFile), configFile);
  if (config.raw.quantization_config)
    throw new ModelError(
      "gguf_unsupported",
      `${configFile}: "quantization_config" is set; GGUF export reads dense (f32/f16/bf16) checkpoints only`,
      { file: configFile, key: "quantization_config" },
    );
  const tokenizer = await HfTokenizer.fromDirectory(modelDir);
  const arch = ggufArchitecture(config.architecture);
  const metadata: Record<string, GgufWriteValue> = {
    "general.architecture": gv.str(arch),
    "general.name": gv.str(options.name ?? (modelDir.split(/[\\/]/).filter(Boolean).at(-1) || "model")),
    "general.file_type": gv.u32(FILE_TYPE[outType]),
    ...hyperparameters(arch, config),
    ...tokenizerMetadata(tokenizer, config.vocabSize, options.preTokenizer),
  };

  const st = await openShardedSafetensors(modelDir);
  try {
    const plan = planTensors(config, st.names, (n) => st.info(n).shape, outType);
    const writer = await GgufWriter.create(outPath, {
      metadata,
      tensors: plan.map((p) => ({ name: p.gguf, type: p.type, shape: p.shape })),
    });
    try {
      for (const [i, p] of plan.entries()) {
        const values = p.hf === null ? p.values! : await readValues(st, p.hf);
        const rows = p.shape[0];
        const cols = p.shape.length === 2 ? p.shape[1] : 1;
        const heads = p.hf === null ? null : qkPermuteHeads(config.architecture, p.hf, config);
        await writer.writeTensor(
          p.gguf,
          encode(heads === null ? values : permuteQkRows(values, rows, cols, heads), p.type),
        );
        options.onProgress?.(i + 1, plan.length);
      }
      await writer.finish();
    } catch (e) {
      await writer.abort();
      throw e;
    }
    return {
      path: outPath,
      architecture: arch,
      tensors: plan.map((p) => ({ name: p.gguf, type: TYPE_NAME[p.type], ne: [...p.shape].reverse() })),
    };
  } finally {
    await st.close();
  }
}

const gv = {
  u32: (value: number) => ({ type: GgufValueType.UINT32, value }) as const,
  i32: (value: number) => ({ type: GgufValueType.INT32, value }) as const,
  f32: (value: number) => ({ type: GgufValueType.FLOAT32, value }) as const,
  bool: (value: boolean) => ({ type: GgufValueType.BOOL, value }) as const,
  str: (value: string) => ({ type: GgufValueType.STRING, value }) as const,
  arr: (elementType: GgufValueType, value: ArrayLike<unknown>) =>
    ({ type: GgufValueType.ARRAY, elementType, value }) as const,
};

const TYPE_NAME: Record<number, string> = {
  [GgmlType.F32]: "F32",
  [GgmlType.F16]: "F16",
  [GgmlType.BF16]: "BF16",
  [GgmlType.Q8_0]: "Q8_0",
};

/** The `{arch}.*` keys convert_hf_to_gguf.py writes for Llama/Mistral/Qwen2/Qwen3. */
export function hyperparameters(arch: string, c: ModelConfig): Record<string, GgufWriteValue> {
  const k = (key: string) => `${arch}.${key}`;
  const m: Record<string, GgufWriteValue> = {
    [k("vocab_size")]: gv.u32(c.vocabSize),
    [k("context_length")]: gv.u32(c.maxPositionEmbeddings),
    [k("embedding_length")]: gv.u32(c.hiddenSize),
    [k("block_count")]: gv.u32(c.numLayers),
    [k("feed_forward_length")]: gv.u32(c.intermediateSize),
    [k("attention.head_count")]: gv.u32(c.numHeads),
    [k("attention.head_count_kv")]: gv.u32(c.numKvHeads),
    [k("attention.layer_norm_rms_epsilon")]: gv.f32(c.rmsNormEps),
    [k("attention.key_length")]: gv.u32(c.headDim),
    [k("attention.value_length")]: gv.u32(c.headDim),
    [k("rope.dimension_count")]: gv.u32(c.headDim),
    [k("rope.freq_base")]: gv.f32(c.ropeTheta),
  };
  if (c.ropeScaling?.type === "linear") {
    m[k("rope.scaling.type")] = gv.str("linear");
    m[k("rope.scaling.factor")] = gv.f32(c.ropeScaling.factor);
  }
  return m;
}

/**
 * Llama 3 rope scaling as llama.cpp reads it: per-frequency divisors in a `rope_freqs.weight` tensor
 * (convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors), frequencies in float32 as transformers has them.
 */
export function llama3RopeFreqs(c: ModelConfig): Float32Array | null {
  const s = c.ropeScaling;
  if (s?.type !== "llama3") return null;
  const half = c.headDim / 2;
  const out = new Float32Array(half);
  const lowWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
  const highWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
  for (let i = 0; i < half; i++) {
    const freq = Math.fround(1 / Math.fround(c.ropeTheta ** Math.fround((2 * i) / c.headDim)));
    const wavelen = (2 * Math.PI) / freq;
    if (wavelen < highWavelen) out[i] = 1;
    else if (wavelen > lowWavelen) out[i] = s.factor;
    else {
      const smooth =
        (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
      out[i] = 1 / ((1 - smooth) / s.factor + smooth);
    }
  }
  return out;
}

interface PlannedTensor {
  /** Checkpoint name, or null for a generated tensor (`values` then holds it). */
  hf: string | null;
  gguf: string;
  shape: number[];
  type: number;
  values?: Float32Array;
}

function planTensors(
  c: ModelConfig,
  names: readonly string[],
  shapeOf: (name: string) => readonly number[],
  outType: GgufOutType,
): PlannedTensor[] {
  const plan: PlannedTensor[] = [];
  const freqs = llama3RopeFreqs(c);
  if (freqs)
    plan.push({ hf: null, gguf: "rope_freqs.weight", shape: [freqs.length], type: GgmlType.F32, values: freqs });
  for (const hf of names) {
    if (isSkippedForGguf(hf)) continue;
    // A tied model reads the embedding as output; llama.cpp does the same when output.weight is absent.
    if (hf === "lm_head.weight" && c.tieWordEmbeddings) continue;
    const shape = [...shapeOf(hf)];
    if (shape.length < 1 || shape.length > 2)
      throw new ModelError(
        "gguf_unsupported",
        `GGUF export: tensor "${hf}" has shape [${shape}]; expected 1-D or 2-D`,
        {
          key: hf,
        },
      );
    plan.push({ hf, gguf: ggufTensorName(hf), shape, type: tensorType(shape, outType) });
  }
  return plan;
}

function tensorType(shape: readonly number[], outType: GgufOutType): number {
  if (shape.length === 1 || outType === "F32") return GgmlType.F32;
  if (outType === "Q8_0") return shape[1] % 32 === 0 ? GgmlType.Q8_0 : GgmlType.F16;
  return GgmlType[outType];
}

async function readValues(st: Awaited<ReturnType<typeof openShardedSafetensors>>, name: string): Promise<Float32Array> {
  const info = st.info(name);
  if (info.dtype !== "F32" && info.dtype !== "F16" && info.dtype !== "BF16")
    throw new ModelError(
      "gguf_unsupported",
      `GGUF export: tensor "${name}" is ${info.dtype}; expected F32, F16 or BF16 (a dense checkpoint)`,
      { key: name },
    );
  return toFloat32Array(await st.read(name), info.dtype);
}

function encode(values: Float32Array, type: number): ArrayBufferView {
  if (type === GgmlType.F32) return values;
  if (type === GgmlType.F16) return float32ArrayToF16(values);
  if (type === GgmlType.BF16) return float32ArrayToBf16(values);
  return quantizeQ8_0(values);
}

async function readJson(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    throw new ModelError("config_unreadable", `${file}: cannot read (${(e as Error).message})`, { file });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ModelError("config_unreadable", `${file}: not valid JSON (${(e as Error).message})`, { file });
  }
}

// ---------------------------------------------------------------------------------------------------------
// Tokenizer metadata

/** llama.cpp token types. */
const TokenType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

/** Split regexes of known byte-level pre-tokenizers → llama.cpp `tokenizer.ggml.pre`. */
const KNOWN_PRE_TOKENIZERS: Readonly<Record<string, string>> = {
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+":
    "llama-bpe",
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+":
    "qwen2",
};

/**
 * tokenizer.ggml.* for a BPE tokenizer.json: byte-level (`gpt2`: tokens, token types, merges, pre-tokenizer)
 * or SentencePiece-style with byte fallback (`llama`: tokens, scores from merge ranks, token types with
 * `<0xXX>` bytes). The token list is padded with `[PAD{i}]` (unused) up to the model's vocab_size.
 */
export function tokenizerMetadata(
  tok: HfTokenizer,
  vocabSize: number,
  preTokenizer?: string,
): Record<string, GgufWriteValue> {
  const json = tok.tokenizerJson;
  const model = json.model as JsonObject;
  const fail = (what: string) =>
    new ModelError("gguf_unsupported", `GGUF export: ${tok.tokenizerFile}: ${what}`, { file: tok.tokenizerFile });
  if (model.type !== "BPE") throw fail(`tokenizer model "${String(model.type)}" is not supported (BPE only)`);
  if (tok.vocabSize > vocabSize)
    throw fail(`the tokenizer has ${tok.vocabSize} tokens but config.json's vocab_size is ${vocabSize}`);
  const spm = model.byte_fallback === true;
  const tokens: string[] = [];
  const types = new Int32Array(vocabSize);
  const added = new Map(tok.addedTokens().map((t) => [t.id, t]));
  for (let id = 0; id < vocabSize; id++) {
    const text = id < tok.vocabSize ? tok.idToToken(id) : undefined;
    if (text === undefined) {
      if (id < tok.vocabSize) throw fail(`token id ${id} has no token (ids must be contiguous)`);
      tokens.push(`[PAD${id}]`);
      types[id] = TokenType.UNUSED;
      continue;
    }
    tokens.push(text);
    const a = added.get(id);
    types[id] = a
      ? a.special
        ? id === tok.tokenToId(String(model.unk_token)) && spm
          ? TokenType.UNKNOWN
          : TokenType.CONTROL
        : TokenType.USER_DEFINED
      : spm && /^<0x[0-9A-F]{2}>$/.test(text)
        ? TokenType.BYTE
        : TokenType.NORMAL;
  }
  const merges = (model.merges as (string | [string, string])[]).map((m) => (typeof m === "string" ? m : m.join(" ")));
  const m: Record<string, GgufWriteValue> = {
    "tokenizer.ggml.model": gv.str(spm ? "llama" : "gpt2"),
  };
  if (!spm) m["tokenizer.ggml.pre"] = gv.str(preTokenizer ?? recognisePreTokenizer(tok, fail));
  m["tokenizer.ggml.tokens"] = gv.arr(GgufValueType.STRING, tokens);
  if (spm) m["tokenizer.ggml.scores"] = gv.arr(GgufValueType.FLOAT32, mergeScores(tokens, merges));
  m["tokenizer.ggml.token_type"] = gv.arr(GgufValueType.INT32, types);
  if (!spm) m["tokenizer.ggml.merges"] = gv.arr(GgufValueType.STRING, merges);
  const ids: [string, number | null][] = [
    ["bos_token_id", tok.bosTokenId],
    ["eos_token_id", tok.eosTokenId],
    ["padding_token_id", tok.padTokenId],
    ["unknown_token_id", spm ? (tok.tokenToId(String(model.unk_token)) ?? null) : null],
  ];
  for (const [key, id] of ids) if (id !== null) m[`tokenizer.ggml.${key}`] = gv.u32(id);
  const probe = tok.encode("a");
  const plain = tok.encode("a", { addSpecialTokens: false });
  m["tokenizer.ggml.add_bos_token"] = gv.bool(
    tok.bosTokenId !== null && probe[0] === tok.bosTokenId && plain[0] !== probe[0],
  );
  m["tokenizer.ggml.add_eos_token"] = gv.bool(tok.eosTokenId !== null && probe.at(-1) === tok.eosTokenId);
  if (spm) m["tokenizer.ggml.add_space_prefix"] = gv.bool(addsSpacePrefix(json));
  if (tok.chatTemplate !== null) m["tokenizer.chat_template"] = gv.str(tok.chatTemplate);
  return m;
}

function recognisePreTokenizer(tok: HfTokenizer, fail: (what: string) => ModelError): string {
  const pre = tok.tokenizerJson.pre_tokenizer as JsonObject | null;
  const parts = pre?.type === "Sequence" ? (pre.pretokenizers as JsonObject[]) : pre ? [pre] : [];
  const split = parts.find((p) => p.type === "Split");
  const regex = (split?.pattern as JsonObject | undefined)?.Regex;
  if (typeof regex === "string" && KNOWN_PRE_TOKENIZERS[regex]) return KNOWN_PRE_TOKENIZERS[regex];
  if (parts.length === 1 && parts[0].type === "ByteLevel" && parts[0].use_regex !== false) return "gpt2";
  throw fail(
    `unrecognised byte-level pre-tokenizer; pass options.preTokenizer with llama.cpp's name for it (e.g. "llama-bpe", "qwen2")`,
  );
}

/**
 * SentencePiece-style scores from BPE merge ranks: the piece made by merge r scores −(r+1), so llama.cpp's
 * highest-score-first merging follows the merge order; other pieces (characters, bytes, specials) score 0.
 */
function mergeScores(tokens: readonly string[], merges: readonly string[]): Float32Array {
  const rank = new Map<string, number>();
  merges.forEach((mg, r) => {
    const piece = mg.replace(" ", "");
    if (!rank.has(piece)) rank.set(piece, r);
  });
  return Float32Array.from(tokens, (t) => (rank.has(t) ? -(rank.get(t)! + 1) : 0));
}

/** Metaspace with prepend_scheme "first"/"always" (or a Prepend("▁") normalizer) adds the leading "▁". */
function addsSpacePrefix(json: JsonObject): boolean {
  const flat = (x: unknown): JsonObject[] => {
    const o = x as JsonObject | null;
    if (!o) return [];
    const list = (o.pretokenizers ?? o.normalizers) as JsonObject[] | undefined;
    return o.type === "Sequence" && list ? list.flatMap(flat) : [o];
  };
  const meta = flat(json.pre_tokenizer).find((p) => p.type === "Metaspace");
  if (meta) return meta.prepend_scheme !== "never" && meta.add_prefix_space !== false;
  return flat(json.normalizer).some((n) => n.type === "Prepend");
}
