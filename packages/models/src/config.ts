/**
 * config.json of a Hugging Face causal LM, parsed into a typed, validated `ModelConfig`. Keys the shapes depend
 * on are required (missing → ModelError naming config.json and the key); the rest take transformers' defaults
 * for the family.
 */
import { ModelError } from "./errors";

export const SUPPORTED_ARCHITECTURES = [
  "LlamaForCausalLM",
  "MistralForCausalLM",
  "Qwen2ForCausalLM",
  "Qwen3ForCausalLM",
] as const;
export type Architecture = (typeof SUPPORTED_ARCHITECTURES)[number];

/** How rotary frequencies are rescaled (transformers' `rope_scaling`); `llama3` is Llama 3.1/3.2's. */
export type RopeScaling =
  | { type: "linear"; factor: number }
  | {
      type: "llama3";
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositionEmbeddings: number;
    };

export interface ModelConfig {
  architecture: Architecture;
  modelType: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  tieWordEmbeddings: boolean;
  maxPositionEmbeddings: number;
  /** Bias on q/k/v projections (Qwen2: always; Llama/Qwen3: `attention_bias`). */
  qkvBias: boolean;
  /** Bias on o_proj (Llama/Qwen3 `attention_bias`; Qwen2: none). */
  oBias: boolean;
  /** Bias on the MLP projections (Llama `mlp_bias`). */
  mlpBias: boolean;
  /** RMSNorm over head_dim on q and k before rope (Qwen3). */
  qkNorm: boolean;
  /** Attention window (Mistral `sliding_window`; Qwen2/Qwen3 only with `use_sliding_window`); null = full. */
  slidingWindow: number | null;
  /**
   * Per decoder layer, the sliding window its attention applies (the query at position p sees keys
   * p − window < j ≤ p), 0 = full causal attention. Mistral: every layer. Qwen2/Qwen3 with
   * `use_sliding_window`: `layer_types` when given, else layers i ≥ `max_window_layers` (default 28), as
   * current transformers derives them.
   */
  layerWindows: readonly number[];
  bosTokenId: number | number[] | null;
  eosTokenId: number | number[] | null;
  padTokenId: number | null;
  /** The checkpoint's dtype ("bfloat16", "float16", "float32"): `torch_dtype`, or transformers v5's `dtype`. */
  torchDtype: string | null;
  /** The parsed config.json as read (saveQuantized writes it back with quantization_config). */
  raw: Record<string, unknown>;
}

type Raw = Record<string, unknown>;

class Reader {
  constructor(
    readonly raw: Raw,
    readonly file: string,
  ) {}
  fail(key: string, expected: string): never {
    throw new ModelError(
      "config_bad_value",
      `${this.file}: "${key}" is ${JSON.stringify(this.raw[key])}; expected ${expected}`,
      { file: this.file, key },
    );
  }
  has(key: string): boolean {
    return this.raw[key] !== undefined && this.raw[key] !== null;
  }
  int(key: string, fallback?: number): number {
    if (!this.has(key)) {
      if (fallback !== undefined) return fallback;
      throw new ModelError("config_missing_key", `${this.file}: missing required key "${key}" (a positive integer)`, {
        file: this.file,
        key,
      });
    }
    const v = this.raw[key];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) this.fail(key, "a positive integer");
    return v;
  }
  num(key: string, fallback: number): number {
    if (!this.has(key)) return fallback;
    const v = this.raw[key];
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) this.fail(key, "a positive number");
    return v;
  }
  bool(key: string, fallback: boolean): boolean {
    if (!this.has(key)) return fallback;
    const v = this.raw[key];
    if (typeof v !== "boolean") this.fail(key, "true or false");
    return v;
  }
  tokenIds(key: string): number | number[] | null {
    if (!this.has(key)) return null;
    const v = this.raw[key];
    const ok = (x: unknown) => typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
    if (ok(v)) return v as number;
    if (Array.isArray(v) && v.every(ok)) return v as number[];
    this.fail(key, "a token id or a list of token ids");
  }
}

function parseArchitecture(r: Reader): Architecture {
  const archs = r.raw.architectures;
  if (archs === undefined || archs === null)
    throw new ModelError(
      "config_missing_key",
      `${r.file}: missing required key "architectures" (one of ${SUPPORTED_ARCHITECTURES.join(", ")})`,
      { file: r.file, key: "architectures" },
    );
  if (!Array.isArray(archs) || archs.length !== 1 || typeof archs[0] !== "string")
    r.fail("architectures", "a list holding one architecture name");
  const a = archs[0] as string;
  if (!(SUPPORTED_ARCHITECTURES as readonly string[]).includes(a))
    throw new ModelError(
      "unsupported_architecture",
      `${r.file}: architecture "${a}" is not supported; supported: ${SUPPORTED_ARCHITECTURES.join(", ")}`,
      { file: r.file, key: "architectures" },
    );
  return a as Architecture;
}

/**
 * rope_theta and the frequency scaling: transformers v4 keeps them as `rope_theta` and `rope_scaling`, v5 in one
 * `rope_parameters` object ({rope_type, rope_theta, factor, …}), which wins when present.
 */
function parseRope(r: Reader): { ropeTheta: number; ropeScaling: RopeScaling | null } {
  const params = r.raw.rope_parameters;
  if (params === undefined || params === null)
    return {
      ropeTheta: r.num("rope_theta", 10000),
      ropeScaling: parseRopeScaling(r, r.raw.rope_scaling, "rope_scaling"),
    };
  if (typeof params !== "object" || Array.isArray(params)) r.fail("rope_parameters", "an object or null");
  const p = new Reader(params as Raw, `${r.file} rope_parameters`);
  return {
    ropeTheta: p.num("rope_theta", r.num("rope_theta", 10000)),
    ropeScaling: parseRopeScaling(r, params, "rope_parameters"),
  };
}

function parseRopeScaling(r: Reader, v: unknown, key: "rope_scaling" | "rope_parameters"): RopeScaling | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== "object" || Array.isArray(v)) r.fail(key, "an object or null");
  const s = new Reader(v as Raw, `${r.file} ${key}`);
  const onlyTheta = Object.keys(v as Raw).every((k) => k === "rope_theta");
  const type =
    (v as Raw).rope_type ?? (v as Raw).type ?? (key === "rope_parameters" && onlyTheta ? "default" : undefined);
  const need = (k: string) => {
    if (!s.has(k))
      throw new ModelError("config_missing_key", `${r.file}: ${key} (${type}) lacks "${k}"`, {
        file: r.file,
        key: `${key}.${k}`,
      });
    return s.num(k, Number.NaN);
  };
  // transformers maps "default" to plain rope.
  if (type === "default") return null;
  if (type === "linear") return { type, factor: need("factor") };
  if (type === "llama3")
    return {
      type,
      factor: need("factor"),
      lowFreqFactor: need("low_freq_factor"),
      highFreqFactor: need("high_freq_factor"),
      originalMaxPositionEmbeddings: need("original_max_position_embeddings"),
    };
  throw new ModelError(
    "unsupported_rope_scaling",
    `${r.file}: ${key} type ${JSON.stringify(type)} is not supported; supported: "default", "linear", "llama3" (or null)`,
    { file: r.file, key },
  );
}

const MAX_LAYERS = 65536;

/** The sliding window and which layers apply it (see ModelConfig.layerWindows). */
function parseWindows(r: Reader, architecture: Architecture, numLayers: number) {
  const isQwen = architecture === "Qwen2ForCausalLM" || architecture === "Qwen3ForCausalLM";
  const applies = architecture === "MistralForCausalLM" || (isQwen && r.bool("use_sliding_window", false));
  const slidingWindow = applies && r.has("sliding_window") ? r.int("sliding_window") : null;
  if (slidingWindow === null) return { slidingWindow, layerWindows: new Array<number>(numLayers).fill(0) };
  if (!isQwen) return { slidingWindow, layerWindows: new Array<number>(numLayers).fill(slidingWindow) };
  const types = r.raw.layer_types;
  if (types !== undefined && types !== null) {
    const kinds = ["full_attention", "sliding_attention"];
    if (!Array.isArray(types) || types.length !== numLayers || !types.every((t) => kinds.includes(t as string)))
      r.fail("layer_types", `a list of ${numLayers} "full_attention" / "sliding_attention" entries`);
    return { slidingWindow, layerWindows: types.map((t) => (t === "sliding_attention" ? slidingWindow : 0)) };
  }
  const from = r.has("max_window_layers") ? r.raw.max_window_layers : 28;
  if (typeof from !== "number" || !Number.isSafeInteger(from) || from < 0)
    r.fail("max_window_layers", "a non-negative integer");
  return { slidingWindow, layerWindows: Array.from({ length: numLayers }, (_, i) => (i >= from ? slidingWindow : 0)) };
}

/** Parse and validate a config.json object. `file` names the file in error messages. */
export function parseConfig(raw: unknown, file = "config.json"): ModelConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw new ModelError("config_unreadable", `${file}: expected a JSON object`, { file });
  const r = new Reader(raw as Raw, file);
  const architecture = parseArchitecture(r);
  const hiddenSize = r.int("hidden_size");
  const numHeads = r.int("num_attention_heads");
  const numKvHeads = r.int("num_key_value_heads", numHeads);
  if (numHeads % numKvHeads !== 0) r.fail("num_key_value_heads", `a divisor of num_attention_heads (${numHeads})`);
  if (!r.has("head_dim") && hiddenSize % numHeads !== 0)
    r.fail("hidden_size", `a multiple of num_attention_heads (${numHeads}) when head_dim is absent`);
  const headDim = r.int("head_dim", hiddenSize / numHeads);
  if (headDim % 2 !== 0) r.fail("head_dim", "an even number (rotary pairs)");
  const act = r.raw.hidden_act ?? "silu";
  if (act !== "silu") r.fail("hidden_act", '"silu"');
  const attentionBias = r.bool("attention_bias", false);
  const isQwen2 = architecture === "Qwen2ForCausalLM";
  const numLayers = r.int("num_hidden_layers");
  // Per-layer fields (layerWindows) are arrays of this length; real models have ≤ a few hundred layers.
  if (numLayers > MAX_LAYERS) r.fail("num_hidden_layers", `a positive integer ≤ ${MAX_LAYERS}`);
  const { slidingWindow, layerWindows } = parseWindows(r, architecture, numLayers);
  return {
    architecture,
    modelType: typeof r.raw.model_type === "string" ? r.raw.model_type : architecture,
    vocabSize: r.int("vocab_size"),
    hiddenSize,
    intermediateSize: r.int("intermediate_size"),
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: r.num("rms_norm_eps", 1e-6),
    ...parseRope(r),
    tieWordEmbeddings: r.bool("tie_word_embeddings", false),
    maxPositionEmbeddings: r.int("max_position_embeddings", 2048),
    qkvBias: isQwen2 || attentionBias,
    oBias: !isQwen2 && attentionBias,
    mlpBias: architecture === "LlamaForCausalLM" && r.bool("mlp_bias", false),
    qkNorm: architecture === "Qwen3ForCausalLM",
    slidingWindow,
    layerWindows,
    bosTokenId: r.tokenIds("bos_token_id"),
    eosTokenId: r.tokenIds("eos_token_id"),
    padTokenId: r.has("pad_token_id") ? (r.tokenIds("pad_token_id") as number) : null,
    torchDtype:
      typeof r.raw.torch_dtype === "string" ? r.raw.torch_dtype : typeof r.raw.dtype === "string" ? r.raw.dtype : null,
    raw: raw as Raw,
  };
}
