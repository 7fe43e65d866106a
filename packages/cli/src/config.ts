/**
 * The `qlora train` YAML config: Axolotl's key names where they exist (../shared/specs/fine-tuning-features.md §D.1),
 * parsed with `yaml` and validated with zod. Every error names the file, the line, the key path, the value and what
 * was expected; an unknown key is reported with the closest known key. An empty key (YAML null, as Axolotl's example
 * configs are full of) is unset. Axolotl keys that change nothing on this engine are accepted with one warning each
 * (`TrainConfig.warnings`, printed once by `runTrain`).
 */
import { readFileSync } from "node:fs";
import { closest, distance } from "fastest-levenshtein";
import { LineCounter, parseDocument, parse as parseYamlValue } from "yaml";
import { z } from "zod";
import { CliError } from "./errors";
import { parallelConfigIssues } from "./parallel-config";
import { compileChatTemplate } from "@qlora/models";

const positiveInt = z.number().int().positive();
const nonNegativeInt = z.number().int().nonnegative();
const fraction = z.number().min(0).max(1);

export const DATASET_TYPES = [
  "alpaca",
  "completion",
  "text",
  "prompt_completion",
  "chat_template",
  "sharegpt",
  "pretokenized",
] as const;

/** Axolotl's chat_template defaults: its roles map (template role ← data roles) and the ShareGPT field names. */
export const DEFAULT_CHAT_ROLES: Readonly<Record<string, readonly string[]>> = {
  user: ["human", "user"],
  assistant: ["gpt", "assistant"],
  system: ["system"],
  tool: ["tool"],
};
const CHAT_KEYS = ["field_messages", "message_property_mappings", "roles"] as const;

const datasetSchema = z
  .object({
    path: z.string().min(1),
    // absent: each row's format is told by its keys (text, prompt/completion, instruction/output, messages)
    type: z.enum(DATASET_TYPES).optional(),
    // chat_template (and sharegpt): where the turns are and what their roles are called.
    field_messages: z.string().min(1).optional(),
    message_property_mappings: z
      .object({ role: z.string().min(1).optional(), content: z.string().min(1).optional() })
      .strict()
      .optional(),
    roles: z.record(z.string(), z.union([z.array(z.string().min(1)).min(1), z.string().min(1)])).optional(),
  })
  .strict()
  .superRefine((d, ctx) => {
    if (d.type === "chat_template" || d.type === "sharegpt") return;
    for (const key of CHAT_KEYS)
      if (d[key] !== undefined)
        ctx.addIssue({
          code: "custom",
          path: [key],
          message: `applies to type: chat_template only, not ${d.type ?? "a dataset without type"}`,
        });
  });

/**
 * Axolotl keys that change nothing here: accepted, with one warning when their value asks for something (false,
 * "" and null ask for nothing). The reason says why the key has no effect.
 */
const WANDB = "Weights & Biases is not built in; metrics go to <output_dir>/metrics.jsonl (qlora report draws them)";
const ATTENTION = "attention always runs on qlora's own kernels; there is no FlashAttention / SDPA / xFormers switch";
const INERT_KEYS = {
  strict: "Axolotl's lenient mode; qlora always checks configs strictly (unknown keys are errors)",
  model_type: "the architecture is read from base_model's config.json",
  tokenizer_type: "the tokenizer is read from base_model's tokenizer.json",
  is_llama_derived_model: "the architecture is read from base_model's config.json",
  trust_remote_code: "qlora runs no model code from the hub; it implements the architectures it loads",
  dataset_prepared_path: "datasets are tokenized as they stream in on every run; nothing is cached",
  wandb_project: WANDB,
  wandb_entity: WANDB,
  wandb_watch: WANDB,
  wandb_name: WANDB,
  wandb_log_model: WANDB,
  wandb_run_id: WANDB,
  wandb_mode: WANDB,
  hub_model_id: "nothing is uploaded; the adapter is written to output_dir",
  flash_attention: ATTENTION,
  sdp_attention: ATTENTION,
  xformers_attention: ATTENTION,
  flash_attn_cross_entropy: ATTENTION,
  flash_attn_rms_norm: ATTENTION,
  tf32: "a CUDA matmul mode; the CPU backend computes in f32",
  fp16: "training runs in f32 here (bf16: true also computes in f32 on the CPU backend); there is no fp16 mixed precision",
  gradient_checkpointing_kwargs: "torch checkpoint options; gradient_checkpointing recomputes each decoder layer",
  local_rank: "ranks come from mpirun's environment (qlora train --nproc N)",
  eval_sample_packing: "packed and unpacked eval give the same loss here (attention never crosses examples)",
  eval_table_size: "no prediction table is logged (that is a Weights & Biases feature)",
  eval_max_new_tokens: "evaluation computes loss only; nothing is generated",
  debug: "use qlora preprocess --debug to see tokenized examples and their label mask",
} as const;
const inertShape = Object.fromEntries(Object.keys(INERT_KEYS).map((k) => [k, z.unknown().optional()])) as {
  [K in keyof typeof INERT_KEYS]: z.ZodOptional<z.ZodUnknown>;
};

export const OPTIMIZERS = [
  "adamw_torch",
  "adamw_torch_fused",
  "paged_adamw_32bit",
  "paged_adamw_8bit",
  "adamw_bnb_8bit",
  "adamw_8bit",
  "lion_32bit",
  "lion_8bit",
  "paged_lion_8bit",
  "sgd",
] as const;

export const LR_SCHEDULERS = [
  "constant",
  "constant_with_warmup",
  "linear",
  "cosine",
  "cosine_with_min_lr",
  "warmup_stable_decay",
] as const;

const trainShape = {
  base_model: z.string().min(1),
  load_in_4bit: z.boolean().default(false),
  load_in_8bit: z.literal(false).optional(),
  bnb_4bit_quant_type: z.enum(["nf4", "fp4"]).default("nf4"),
  bnb_4bit_use_double_quant: z.boolean().default(true),
  adapter: z.enum(["qlora", "lora"]).optional(),
  lora_model_dir: z.string().optional(),
  lora_fan_in_fan_out: z.literal(false).optional(),
  lora_r: positiveInt.default(8),
  lora_alpha: z.number().positive().default(16),
  lora_dropout: z.number().min(0).lt(1).default(0),
  lora_target_modules: z.union([z.array(z.string().min(1)).min(1), z.string().min(1)]).optional(),
  lora_target_linear: z.boolean().default(false),
  lora_modules_to_save: z.array(z.string().min(1)).optional(),
  lora_rank_pattern: z.record(z.string(), positiveInt).optional(),
  lora_alpha_pattern: z.record(z.string(), z.number().positive()).optional(),
  peft_use_rslora: z.boolean().default(false),
  peft_use_dora: z.boolean().default(false),
  peft_ensure_weight_tying: z.boolean().default(false),
  // PEFT's layers_to_transform / layers_pattern: LoRA only on these layer indices (of the list named by the pattern)
  peft_layers_to_transform: z.union([nonNegativeInt, z.array(nonNegativeInt).min(1)]).optional(),
  peft_layers_pattern: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).optional(),
  peft_init_lora_weights: z.union([z.boolean(), z.string()]).default(true),
  loraplus_lr_ratio: z.number().positive().optional(),
  datasets: z.array(datasetSchema).min(1),
  special_tokens: z
    .object({
      pad_token: z.string().min(1).optional(),
      bos_token: z.string().min(1).optional(),
      eos_token: z.string().min(1).optional(),
      unk_token: z.string().min(1).optional(),
    })
    .strict()
    .optional(),
  pad_to_sequence_len: z.boolean().default(false),
  chat_template: z.enum(["tokenizer_default", "chatml", "jinja"]).default("tokenizer_default"),
  chat_template_jinja: z.string().optional(),
  sequence_len: positiveInt.default(512),
  excess_length_strategy: z.enum(["drop", "truncate", "raise"]).default("truncate"),
  sample_packing: z.boolean().default(false),
  group_by_length: z.boolean().default(false),
  micro_batch_size: positiveInt.default(1),
  gradient_accumulation_steps: positiveInt.default(1),
  num_epochs: z.number().positive().default(1),
  max_steps: positiveInt.optional(),
  optimizer: z.enum(OPTIMIZERS).default("adamw_torch"),
  lr_scheduler: z.enum(LR_SCHEDULERS).default("cosine"),
  cosine_min_lr_ratio: fraction.optional(),
  learning_rate: z.number().positive().default(2e-4),
  warmup_steps: nonNegativeInt.optional(),
  warmup_ratio: fraction.optional(),
  weight_decay: z.number().nonnegative().default(0),
  max_grad_norm: z.number().nonnegative().default(1),
  train_on_inputs: z.boolean().default(false),
  // A fraction of the examples, or (an integer ≥ 1) a count of them, as datasets' train_test_split test_size.
  val_set_size: z
    .number()
    .min(0)
    .refine((v) => v < 1 || Number.isInteger(v), {
      message: "expected a fraction in [0, 1) or a whole number of examples",
    })
    .default(0),
  eval_steps: positiveInt.optional(),
  evals_per_epoch: positiveInt.optional(),
  save_steps: positiveInt.optional(),
  saves_per_epoch: positiveInt.optional(),
  save_total_limit: positiveInt.optional(),
  logging_steps: positiveInt.default(1),
  output_dir: z.string().min(1).default("./outputs"),
  gradient_checkpointing: z.boolean().default(false),
  seed: nonNegativeInt.default(42),
  resume_from_checkpoint: z.union([z.string().min(1), z.boolean()]).optional(),
  overwrite_output_dir: z.boolean().default(false),
  early_stopping_patience: positiveInt.optional(),
  load_best_model_at_end: z.boolean().default(false),
  neftune_noise_alpha: z.number().positive().optional(),
  bf16: z.union([z.boolean(), z.literal("auto")]).default(false),
  // Several ranks (`qlora train --nproc N` or `mpirun -n N qlora train`): DDP unless the FSDP keys ask otherwise.
  ddp: z.boolean().optional(),
  ddp_timeout: positiveInt.optional(),
  ddp_bucket_cap_mb: z.number().positive().optional(),
  fsdp: z.union([z.string(), z.array(z.string())]).optional(),
  fsdp_config: z.record(z.string(), z.unknown()).optional(),
  fsdp_version: z.union([z.literal(1), z.literal(2)]).optional(),
  deepspeed: z.unknown().optional(),
  ...inertShape,
};

/** Why a chat template does not parse, checked with the config (so the error has the file and line), or null. */
function jinjaProblem(source: string): string | null {
  try {
    compileChatTemplate(source, "chat_template_jinja");
    return null;
  } catch (e) {
    return `not a Jinja template this CLI can render (${(e as Error).message.replace(/^chat_template_jinja: /, "")})`;
  }
}

export const trainConfigSchema = z
  .object(trainShape)
  .strict()
  .superRefine((c, ctx) => {
    if (c.adapter === "qlora" && !c.load_in_4bit)
      ctx.addIssue({ code: "custom", path: ["load_in_4bit"], message: "adapter: qlora needs load_in_4bit: true" });
    if (c.warmup_steps !== undefined && c.warmup_ratio !== undefined)
      ctx.addIssue({ code: "custom", path: ["warmup_ratio"], message: "set warmup_steps or warmup_ratio, not both" });
    if (c.chat_template === "jinja" && !c.chat_template_jinja)
      ctx.addIssue({
        code: "custom",
        path: ["chat_template_jinja"],
        message: "chat_template: jinja needs chat_template_jinja",
      });
    if (c.chat_template_jinja !== undefined) {
      const problem = jinjaProblem(c.chat_template_jinja);
      if (problem) ctx.addIssue({ code: "custom", path: ["chat_template_jinja"], message: problem });
    }
    if (c.lora_model_dir && c.adapter === undefined)
      ctx.addIssue({
        code: "custom",
        path: ["lora_model_dir"],
        message: "lora_model_dir needs adapter: lora or qlora",
      });
    if (c.peft_use_dora && c.adapter === undefined)
      ctx.addIssue({ code: "custom", path: ["peft_use_dora"], message: "DoRA needs adapter: lora or qlora" });
    if (c.deepspeed !== undefined && c.deepspeed !== false)
      ctx.addIssue({
        code: "custom",
        path: ["deepspeed"],
        message: "DeepSpeed is not supported; for several processes use qlora train --nproc N with the ddp / fsdp keys",
      });
    for (const issue of [...scheduleIssues(c), ...evalIssues(c), ...parallelConfigIssues(c)])
      ctx.addIssue({ code: "custom", ...issue });
  });

type Keys = z.infer<z.ZodObject<typeof trainShape>>;
type Issue = { path: (string | number)[]; message: string };

/** Per-epoch and per-step forms of one schedule exclude each other (as in Axolotl); the min-lr floor needs cosine. */
function scheduleIssues(c: Keys): Issue[] {
  const issues: Issue[] = [];
  if (c.eval_steps !== undefined && c.evals_per_epoch !== undefined)
    issues.push({ path: ["evals_per_epoch"], message: "set eval_steps or evals_per_epoch, not both" });
  if (c.save_steps !== undefined && c.saves_per_epoch !== undefined)
    issues.push({ path: ["saves_per_epoch"], message: "set save_steps or saves_per_epoch, not both" });
  const cosine = c.lr_scheduler === "cosine" || c.lr_scheduler === "cosine_with_min_lr";
  if (c.cosine_min_lr_ratio !== undefined && !cosine)
    issues.push({
      path: ["cosine_min_lr_ratio"],
      message: `applies to lr_scheduler: cosine or cosine_with_min_lr, not ${c.lr_scheduler}`,
    });
  if (c.lr_scheduler === "cosine_with_min_lr" && c.cosine_min_lr_ratio === undefined)
    issues.push({
      path: ["cosine_min_lr_ratio"],
      message: "lr_scheduler: cosine_with_min_lr needs cosine_min_lr_ratio (the floor as a fraction of learning_rate)",
    });
  return issues;
}

/** Evaluation during training needs held-out data, said before any model is loaded. */
function evalIssues(c: Keys): Issue[] {
  if (c.val_set_size > 0) return [];
  const noEval =
    "needs eval data: set val_set_size (a fraction, or a number of examples; test_datasets is not supported)";
  const issues: Issue[] = [];
  for (const key of ["eval_steps", "evals_per_epoch"] as const)
    if (c[key] !== undefined) issues.push({ path: [key], message: `${key} ${noEval}` });
  if (c.early_stopping_patience !== undefined)
    issues.push({
      path: ["early_stopping_patience"],
      message: `early stopping watches the eval loss, so it ${noEval}`,
    });
  if (c.load_best_model_at_end)
    issues.push({ path: ["load_best_model_at_end"], message: `the best model is the best eval loss, so it ${noEval}` });
  return issues;
}

export type TrainConfig = z.infer<typeof trainConfigSchema> & {
  /** One line per accepted key that changes nothing here (file:line: key: why); runTrain prints them once. */
  readonly warnings?: readonly string[];
};
export const TRAIN_CONFIG_KEYS: readonly string[] = Object.keys(trainShape);

/** Read and validate a YAML train config; `overrides` are `--key value` pairs from the command line. */
export function loadTrainConfig(file: string, overrides: Record<string, string> = {}): TrainConfig {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new CliError("CONFIG_NOT_FOUND", `${file}: cannot read the config file (${(e as Error).message})`);
  }
  return parseTrainConfig(text, file, overrides);
}

export function parseTrainConfig(
  text: string,
  file = "config.yaml",
  overrides: Record<string, string> = {},
): TrainConfig {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false });
  if (doc.errors.length > 0) {
    const err = doc.errors[0];
    const { line } = lines.linePos(err.pos[0]);
    throw new CliError("CONFIG_PARSE", `${file}:${line}: invalid YAML: ${err.message.split("\n")[0]}`);
  }
  let raw: unknown;
  try {
    // toJS resolves aliases: an undefined anchor or an alias bomb (maxAliasCount) throws here.
    raw = doc.toJS({ maxAliasCount: 100 }) ?? {};
  } catch (e) {
    throw new CliError("CONFIG_PARSE", `${file}: invalid YAML: ${(e as Error).message}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw new CliError("CONFIG_INVALID", `${file}: expected a mapping of config keys at the top level`);
  const fromCommandLine = parseOverrides(overrides);
  const merged = withoutNulls({ ...(raw as Record<string, unknown>), ...fromCommandLine });
  const where = (path: PropertyKey[]): string => {
    // A value given on the command line is blamed on its flag, not on the file's line it replaced.
    const top = String(path[0] ?? "");
    if (Object.hasOwn(fromCommandLine, top)) return `--${top.replaceAll("_", "-")} (command line)`;
    // A key that is absent from the file has no line: only the node's own range is used.
    const node = doc.getIn(path as (string | number)[], true) as { range?: [number, number] } | undefined;
    return node?.range ? `${file}:${lines.linePos(node.range[0]).line}` : file;
  };
  const result = trainConfigSchema.safeParse(merged);
  if (result.success) return { ...result.data, warnings: inertWarnings(merged, where) };
  const messages = result.error.issues.map((issue) => describeIssue(issue, merged, where));
  throw new CliError("CONFIG_INVALID", messages.join("\n"));
}

/**
 * Axolotl configs leave keys empty (`lora_model_dir:`) to mean "not set": null known keys are removed, at the top
 * level, in each dataset and inside mapping values (fsdp_config, special_tokens). An unknown key stays, so it is
 * still reported even when empty.
 */
function withoutNulls(config: Record<string, unknown>): Record<string, unknown> {
  const known = (key: string, keys: readonly string[]) => keys.includes(key);
  const strip = (o: Record<string, unknown>, keys?: readonly string[]) =>
    Object.fromEntries(Object.entries(o).filter(([k, v]) => v !== null || (keys !== undefined && !known(k, keys))));
  const out = strip(config, TRAIN_CONFIG_KEYS);
  for (const [key, value] of Object.entries(out)) {
    if (key === "datasets" && Array.isArray(value))
      out[key] = value.map((d) => (isMapping(d) ? strip(d, Object.keys(datasetSchema.shape)) : d));
    else if (isMapping(value)) out[key] = strip(value);
  }
  return out;
}

function isMapping(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** One line per inert key whose value asks for something (false, "" and unset ask for nothing). */
function inertWarnings(config: Record<string, unknown>, where: (path: PropertyKey[]) => string): string[] {
  return Object.entries(INERT_KEYS)
    .filter(([key]) => config[key] !== undefined && config[key] !== false && config[key] !== "")
    .map(([key, why]) => `${where([key])}: ${key}: ${JSON.stringify(config[key])} has no effect here: ${why}`);
}

/** Keys whose value is a string: a command-line value is taken as written (a Jinja template, a path with braces). */
function takesText(key: string): boolean {
  let schema = (trainShape as Record<string, z.ZodType | undefined>)[key];
  for (let depth = 0; schema && depth < 4; depth++) {
    const def = schema._zod.def as { type: string; innerType?: z.ZodType };
    if (def.type === "string") return true;
    if (def.innerType === undefined) return false;
    schema = def.innerType; // optional / default / nullable wrap the real type
  }
  return false;
}

/** A YAML scalar or flow collection (`16`, `true`, `[q_proj, v_proj]`); text that is not valid YAML stays text. */
function yamlOrText(value: string): unknown {
  try {
    return parseYamlValue(value);
  } catch {
    return value;
  }
}

/** `--lora-r 16` → { lora_r: 16 }: kebab or snake keys, values parsed as YAML scalars. */
export function parseOverrides(overrides: Record<string, string>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [raw, value] of Object.entries(overrides)) {
    const key = raw.replaceAll("-", "_");
    out[key] = takesText(key) ? value : yamlOrText(value);
  }
  return out;
}

type ZodIssue = z.core.$ZodIssue;

function describeIssue(
  issue: ZodIssue,
  config: Record<string, unknown>,
  where: (path: PropertyKey[]) => string,
): string {
  if (issue.code === "unrecognized_keys") {
    const known = knownKeysAt(issue.path);
    return issue.keys
      .map((key) => {
        const path = [...issue.path, key];
        const hint = suggest(key, known);
        return `${where(path)}: unknown key "${formatPath(path)}"${hint ? ` (did you mean "${hint}"?)` : ""}`;
      })
      .join("\n");
  }
  const value = valueAt(config, issue.path);
  // Cross-field rules (custom) may point at a key the file leaves to its default: say nothing of its value then.
  const got = value !== undefined ? `, got ${JSON.stringify(value)}` : issue.code === "custom" ? "" : ", got nothing";
  return `${where(issue.path)}: ${formatPath(issue.path) || "(top level)"}: ${expectation(issue)}${got}`;
}

function expectation(issue: ZodIssue): string {
  switch (issue.code) {
    case "invalid_type":
      return `expected ${issue.expected}`;
    case "invalid_value":
      return `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}`;
    case "too_small":
      return issue.origin === "array"
        ? `expected at least ${issue.minimum} item(s)`
        : issue.origin === "string"
          ? "expected a non-empty string"
          : `expected a number ${issue.inclusive ? "≥" : ">"} ${issue.minimum}`;
    case "too_big":
      return `expected a number ${issue.inclusive ? "≤" : "<"} ${issue.maximum}`;
    case "invalid_union":
      return "expected a value of another type (see the docs for this key)";
    case "custom":
      return issue.message;
    default:
      return issue.message;
  }
}

function knownKeysAt(path: PropertyKey[]): string[] {
  if (path.length === 0) return [...TRAIN_CONFIG_KEYS];
  if (path[0] === "datasets") return Object.keys(datasetSchema.shape);
  if (path[0] === "special_tokens") return ["pad_token", "bos_token", "eos_token", "unk_token"];
  return [];
}

function suggest(key: string, known: string[]): string | undefined {
  if (known.length === 0) return undefined;
  const best = closest(key, known);
  return distance(key, best) <= Math.max(2, Math.floor(key.length / 3)) ? best : undefined;
}

function formatPath(path: PropertyKey[]): string {
  return path.map((p, i) => (typeof p === "number" ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`)).join("");
}

function valueAt(obj: unknown, path: PropertyKey[]): unknown {
  let cur = obj;
  for (const p of path) {
    if (cur === null || typeof cur !== "object") return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[p];
  }
  return cur;
}
