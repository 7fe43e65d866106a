/**
 * LoraConfig with PEFT's field names, defaults and validation rules (peft/tuners/lora/config.py), and
 * the adapter_config.json form. Field names stay snake_case so the JSON and the TypeScript object are
 * the same thing; `loraConfig()` fills defaults and rejects what PEFT rejects, naming the field.
 */
import { LoraError } from "./errors";

export type InitLoraWeights = boolean | "gaussian" | "pissa" | `pissa_niter_${number}` | "olora" | "loftq";
export type LoraBias = "none" | "all" | "lora_only";

export interface LoftQConfig {
  readonly loftq_bits: number;
  readonly loftq_iter: number;
}

export interface LoraConfig {
  readonly peft_type: "LORA";
  readonly task_type: string | null;
  readonly base_model_name_or_path: string | null;
  readonly revision: string | null;
  readonly inference_mode: boolean;
  readonly r: number;
  readonly lora_alpha: number;
  readonly lora_dropout: number;
  /** string: full regex match on the module's dotted name; list: exact name or dotted suffix; "all-linear". */
  readonly target_modules: string | readonly string[] | null;
  readonly exclude_modules: string | readonly string[] | null;
  readonly fan_in_fan_out: boolean;
  readonly bias: LoraBias;
  readonly use_rslora: boolean;
  readonly modules_to_save: readonly string[] | null;
  readonly init_lora_weights: InitLoraWeights;
  readonly layers_to_transform: number | readonly number[] | null;
  readonly layers_pattern: string | readonly string[] | null;
  readonly rank_pattern: Readonly<Record<string, number>>;
  readonly alpha_pattern: Readonly<Record<string, number>>;
  readonly loftq_config: Partial<LoftQConfig>;
  readonly use_dora: boolean;
  readonly lora_bias: boolean;
  /**
   * PEFT ≥ 0.18, for a model whose output head is tied to its input embedding: false (default) trains a
   * `modules_to_save` copy of whichever of the two is listed and leaves the other on the base matrix; true trains one
   * copy of the embedding that the head reads too (listing lm_head then means embed_tokens).
   */
  readonly ensure_weight_tying: boolean;
}

/** PEFT's TaskType values (a causal LM adapter is "CAUSAL_LM": what AutoPeftModelForCausalLM needs). */
export const PEFT_TASK_TYPES = [
  "SEQ_CLS",
  "SEQ_2_SEQ_LM",
  "CAUSAL_LM",
  "TOKEN_CLS",
  "QUESTION_ANS",
  "FEATURE_EXTRACTION",
] as const;

export type LoraConfigInput = Partial<Omit<LoraConfig, "peft_type">> & { peft_type?: "LORA" };

export const LORA_DEFAULTS: LoraConfig = {
  peft_type: "LORA",
  task_type: null,
  base_model_name_or_path: null,
  revision: null,
  inference_mode: false,
  r: 8,
  lora_alpha: 8,
  lora_dropout: 0,
  target_modules: null,
  exclude_modules: null,
  fan_in_fan_out: false,
  bias: "none",
  use_rslora: false,
  modules_to_save: null,
  init_lora_weights: true,
  layers_to_transform: null,
  layers_pattern: null,
  rank_pattern: {},
  alpha_pattern: {},
  loftq_config: {},
  use_dora: false,
  lora_bias: false,
  ensure_weight_tying: false,
};

/** PEFT fields this package reads but whose non-default values it cannot honour (rejected, not ignored). */
const UNSUPPORTED_NON_DEFAULT: Record<string, unknown> = {
  megatron_config: null,
  layer_replication: null,
  trainable_token_indices: null,
  target_parameters: null,
  alora_invocation_tokens: null,
  use_qalora: false,
  eva_config: null,
  corda_config: null,
  lora_ga_config: null,
};

function bad(field: string, msg: string): never {
  throw new LoraError("BAD_CONFIG", `LoraConfig.${field}: ${msg}`);
}

function checkNumber(field: string, v: unknown, pred: (n: number) => boolean, expected: string): number {
  if (typeof v !== "number" || !Number.isFinite(v) || !pred(v))
    bad(field, `expected ${expected}, got ${JSON.stringify(v)}`);
  return v;
}

function checkModuleSpec(field: string, v: unknown): string | readonly string[] | null {
  if (v === null || v === undefined) return null;
  if (typeof v === "string") {
    try {
      new RegExp(v);
    } catch (e) {
      bad(field, `the string is used as a regular expression and does not compile: ${(e as Error).message}`);
    }
    return v;
  }
  if (Array.isArray(v) && v.every((s) => typeof s === "string" && s.length > 0)) return [...new Set(v as string[])];
  return bad(field, `expected a string (regex), a list of non-empty module names, or null; got ${JSON.stringify(v)}`);
}

function checkPattern(field: string, v: unknown, positive: boolean): Record<string, number> {
  if (v === undefined || v === null) return {};
  if (typeof v !== "object" || Array.isArray(v))
    bad(field, `expected an object of name → number, got ${JSON.stringify(v)}`);
  const out: Record<string, number> = {};
  for (const [k, n] of Object.entries(v as Record<string, unknown>)) {
    checkNumber(
      `${field}["${k}"]`,
      n,
      (x) => (positive ? Number.isInteger(x) && x > 0 : true),
      positive ? "a positive integer" : "a finite number",
    );
    out[k] = n as number;
  }
  return out;
}

function checkInit(v: unknown): InitLoraWeights {
  if (v === true || v === false || v === "gaussian" || v === "pissa" || v === "olora" || v === "loftq") return v;
  if (typeof v === "string" && /^pissa_niter_\d+$/.test(v)) return v as InitLoraWeights;
  return bad(
    "init_lora_weights",
    `expected true, false, "gaussian", "pissa", "pissa_niter_<k>", "olora" or "loftq", got ${JSON.stringify(v)}` +
      (typeof v === "string" ? " (eva, corda, orthogonal, mica and lora_ga are not implemented by @qlora/lora)" : ""),
  );
}

/** The edit distance of two short strings (for "did you mean" on a misspelt field). */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++)
      row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = row;
  }
  return prev[b.length];
}

/** A field PEFT's LoraConfig does not have is refused (PEFT raises TypeError), with the nearest real name. */
function checkKnownFields(raw: Record<string, unknown>): void {
  const known = [...Object.keys(LORA_DEFAULTS), ...Object.keys(UNSUPPORTED_NON_DEFAULT)];
  for (const key of Object.keys(raw)) {
    if (known.includes(key)) continue;
    const snake = key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
    const nearest = known.includes(snake)
      ? snake
      : known.reduce((best, k) => (editDistance(key, k) < editDistance(key, best) ? k : best), known[0]);
    const hint = nearest === snake || editDistance(key, nearest) <= 3 ? ` (did you mean "${nearest}"?)` : "";
    bad(key, `not a field of PEFT's LoraConfig${hint}`);
  }
}

/** Fill PEFT's defaults and validate: the result is a complete, frozen LoraConfig. */
export function loraConfig(input: LoraConfigInput = {}): LoraConfig {
  const raw = input as Record<string, unknown>;
  checkKnownFields(raw);
  for (const [k, def] of Object.entries(UNSUPPORTED_NON_DEFAULT)) {
    const v = raw[k];
    if (
      v !== undefined &&
      JSON.stringify(v) !== JSON.stringify(def) &&
      !(Array.isArray(v) && v.length === 0 && def === null)
    )
      bad(k, `${JSON.stringify(v)} is not supported by @qlora/lora (only ${JSON.stringify(def)})`);
  }
  if (raw.peft_type !== undefined && raw.peft_type !== "LORA")
    bad("peft_type", `expected "LORA", got ${JSON.stringify(raw.peft_type)}`);
  const c = { ...LORA_DEFAULTS, ...stripUndefined(input) } as LoraConfig & Record<string, unknown>;
  const r = checkNumber("r", c.r, (x) => Number.isInteger(x) && x > 0, "a positive integer");
  const lora_alpha = checkNumber("lora_alpha", c.lora_alpha, () => true, "a finite number");
  const lora_dropout = checkNumber("lora_dropout", c.lora_dropout, (x) => x >= 0 && x <= 1, "a probability in [0, 1]");
  if (!["none", "all", "lora_only"].includes(c.bias as string))
    bad("bias", `expected "none", "all" or "lora_only", got ${JSON.stringify(c.bias)}`);
  const target_modules = checkModuleSpec("target_modules", c.target_modules);
  const exclude_modules = checkModuleSpec("exclude_modules", c.exclude_modules);
  let layers_to_transform = c.layers_to_transform;
  if (layers_to_transform !== null) {
    const list = typeof layers_to_transform === "number" ? [layers_to_transform] : layers_to_transform;
    if (!Array.isArray(list) || !list.every((i) => Number.isInteger(i) && i >= 0))
      bad(
        "layers_to_transform",
        `expected a non-negative integer or a list of them, got ${JSON.stringify(layers_to_transform)}`,
      );
    if (typeof layers_to_transform !== "number") layers_to_transform = [...list];
  }
  const layers_pattern = c.layers_pattern;
  if (
    layers_pattern !== null &&
    typeof layers_pattern !== "string" &&
    !(Array.isArray(layers_pattern) && layers_pattern.every((p) => typeof p === "string"))
  )
    bad("layers_pattern", `expected a string, a list of strings or null, got ${JSON.stringify(layers_pattern)}`);
  // PEFT's __post_init__ rules
  if (typeof target_modules === "string" && layers_to_transform !== null)
    bad("layers_to_transform", "cannot be used when `target_modules` is a str (regex)");
  if (typeof target_modules === "string" && layers_pattern !== null)
    bad("layers_pattern", "cannot be used when `target_modules` is a str (regex)");
  if (layers_pattern !== null && (layers_pattern as string | string[]).length > 0 && layers_to_transform === null)
    bad("layers_pattern", "when `layers_pattern` is specified, `layers_to_transform` must also be specified");
  const init_lora_weights = checkInit(c.init_lora_weights);
  const loftq = (c.loftq_config ?? {}) as Partial<LoftQConfig>;
  if (typeof loftq !== "object" || Array.isArray(loftq))
    bad("loftq_config", `expected an object, got ${JSON.stringify(loftq)}`);
  if (init_lora_weights === "loftq") {
    if (Object.keys(loftq).length === 0) bad("loftq_config", "must be specified when `init_lora_weights` is 'loftq'");
    if ((loftq.loftq_bits ?? 4) !== 4)
      bad("loftq_config.loftq_bits", `only 4 (NF4) is supported, got ${loftq.loftq_bits}`);
    checkNumber(
      "loftq_config.loftq_iter",
      loftq.loftq_iter ?? 1,
      (x) => Number.isInteger(x) && x > 0,
      "a positive integer",
    );
  }
  if (c.lora_bias) {
    if (init_lora_weights !== true && init_lora_weights !== false)
      bad(
        "lora_bias",
        `lora_bias=true is only supported with init_lora_weights=true or false, got ${JSON.stringify(init_lora_weights)}`,
      );
    if (c.use_dora) bad("lora_bias", "lora_bias=true is not supported for DoRA, pass use_dora=false");
    bad("lora_bias", "lora_bias=true (a bias on lora_B) is not implemented by @qlora/lora");
  }
  if (
    c.modules_to_save !== null &&
    !(Array.isArray(c.modules_to_save) && c.modules_to_save.every((s) => typeof s === "string" && s))
  )
    bad("modules_to_save", `expected a list of module names or null, got ${JSON.stringify(c.modules_to_save)}`);
  for (const f of ["use_rslora", "use_dora", "fan_in_fan_out", "inference_mode", "ensure_weight_tying"] as const)
    if (typeof c[f] !== "boolean") bad(f, `expected a boolean, got ${JSON.stringify(c[f])}`);
  if (c.task_type != null && !PEFT_TASK_TYPES.includes(c.task_type as (typeof PEFT_TASK_TYPES)[number]))
    bad("task_type", `expected one of ${PEFT_TASK_TYPES.join(", ")} or null, got ${JSON.stringify(c.task_type)}`);
  const out: LoraConfig = {
    peft_type: "LORA",
    task_type: c.task_type ?? null,
    base_model_name_or_path: c.base_model_name_or_path ?? null,
    revision: c.revision ?? null,
    inference_mode: c.inference_mode,
    r,
    lora_alpha,
    lora_dropout,
    target_modules,
    exclude_modules,
    fan_in_fan_out: c.fan_in_fan_out,
    bias: c.bias,
    use_rslora: c.use_rslora,
    modules_to_save: c.modules_to_save ? [...c.modules_to_save] : null,
    init_lora_weights,
    layers_to_transform,
    layers_pattern,
    rank_pattern: checkPattern("rank_pattern", c.rank_pattern, true),
    alpha_pattern: checkPattern("alpha_pattern", c.alpha_pattern, false),
    loftq_config: { ...loftq },
    use_dora: c.use_dora,
    lora_bias: false,
    ensure_weight_tying: c.ensure_weight_tying,
  };
  return Object.freeze(out);
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** The adapter_config.json object PEFT writes (LoraConfig.to_dict(), inference_mode forced true). */
export function configToJson(config: LoraConfig, peftVersion = "0.18.0"): Record<string, unknown> {
  const tm = config.target_modules;
  return {
    ...config,
    peft_version: peftVersion,
    inference_mode: true,
    auto_mapping: null,
    target_modules: Array.isArray(tm) ? [...tm].sort() : tm,
    exclude_modules: Array.isArray(config.exclude_modules)
      ? [...config.exclude_modules].sort()
      : config.exclude_modules,
    eva_config: null,
    corda_config: null,
    megatron_config: null,
    megatron_core: "megatron.core",
    layer_replication: null,
    trainable_token_indices: null,
    target_parameters: null,
    use_qalora: false,
    qalora_group_size: 16,
    alora_invocation_tokens: null,
  };
}

/** Parse adapter_config.json (as written by Python PEFT or by us); `file` names the source in errors. */
export function configFromJson(json: unknown, file = "adapter_config.json"): LoraConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json))
    throw new LoraError("BAD_FILE", `${file}: expected a JSON object`);
  const o = json as Record<string, unknown>;
  if (o.peft_type !== "LORA")
    throw new LoraError("BAD_FILE", `${file}: "peft_type" must be "LORA", got ${JSON.stringify(o.peft_type)}`);
  // keys this package does not know are ignored (newer PEFT fields); null means "default" only where the
  // default is null or an empty dict, so `"r": null` is still an error naming r
  const known = new Set([...Object.keys(LORA_DEFAULTS), ...Object.keys(UNSUPPORTED_NON_DEFAULT)]);
  const nullable = new Set([
    ...Object.entries(LORA_DEFAULTS)
      .filter(([, v]) => v === null)
      .map(([k]) => k),
    "rank_pattern",
    "alpha_pattern",
    "loftq_config",
  ]);
  const input: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) if (known.has(k)) input[k] = v === null && nullable.has(k) ? undefined : v;
  try {
    return loraConfig(input as LoraConfigInput);
  } catch (e) {
    if (e instanceof LoraError) throw new LoraError("BAD_FILE", `${file}: ${e.message}`);
    throw e;
  }
}
