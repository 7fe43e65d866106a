/**
 * The `qlora train` YAML config: Axolotl's key names where they exist (../shared/specs/fine-tuning-features.md §D.1),
 * parsed with `yaml` and validated with zod. Every error names the file, the line, the key path, the value and what
 * was expected; an unknown key is reported with the closest known key.
 */
import { readFileSync } from "node:fs";
import { closest, distance } from "fastest-levenshtein";
import { LineCounter, parseDocument, parse as parseYamlValue } from "yaml";
import { z } from "zod";
import { CliError } from "./errors";
import { parallelConfigIssues } from "./parallel-config";

const positiveInt = z.number().int().positive();
const nonNegativeInt = z.number().int().nonnegative();
const fraction = z.number().min(0).max(1);

export const DATASET_TYPES = [
  "alpaca",
  "completion",
  "text",
  "prompt_completion",
  "chat_template",
  "pretokenized",
] as const;

const datasetSchema = z
  .object({
    path: z.string().min(1),
    type: z.enum(DATASET_TYPES).default("completion"),
  })
  .strict();

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
  peft_init_lora_weights: z.union([z.boolean(), z.string()]).default(true),
  loraplus_lr_ratio: z.number().positive().optional(),
  datasets: z.array(datasetSchema).min(1),
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
  val_set_size: z.number().min(0).lt(1).default(0),
  eval_steps: positiveInt.optional(),
  save_steps: positiveInt.optional(),
  save_total_limit: positiveInt.optional(),
  logging_steps: positiveInt.default(1),
  output_dir: z.string().min(1).default("./outputs"),
  gradient_checkpointing: z.boolean().default(false),
  seed: nonNegativeInt.default(42),
  resume_from_checkpoint: z.union([z.string().min(1), z.boolean()]).optional(),
  early_stopping_patience: positiveInt.optional(),
  neftune_noise_alpha: z.number().positive().optional(),
  bf16: z.union([z.boolean(), z.literal("auto")]).default(false),
  // Several ranks (`qlora train --nproc N` or `mpirun -n N qlora train`): DDP unless the FSDP keys ask otherwise.
  ddp: z.boolean().optional(),
  ddp_timeout: positiveInt.optional(),
  ddp_bucket_cap_mb: z.number().positive().optional(),
  fsdp: z.union([z.string(), z.array(z.string())]).optional(),
  fsdp_config: z.record(z.string(), z.unknown()).optional(),
  fsdp_version: z.union([z.literal(1), z.literal(2)]).optional(),
};

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
    if (c.lora_model_dir && c.adapter === undefined)
      ctx.addIssue({
        code: "custom",
        path: ["lora_model_dir"],
        message: "lora_model_dir needs adapter: lora or qlora",
      });
    if (c.peft_use_dora && c.adapter === undefined)
      ctx.addIssue({ code: "custom", path: ["peft_use_dora"], message: "DoRA needs adapter: lora or qlora" });
    for (const issue of parallelConfigIssues(c)) ctx.addIssue({ code: "custom", ...issue });
  });

export type TrainConfig = z.infer<typeof trainConfigSchema>;
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
  const merged = { ...(raw as Record<string, unknown>), ...parseOverrides(overrides) };
  const result = trainConfigSchema.safeParse(merged);
  if (result.success) return result.data;
  const lineOf = (path: PropertyKey[]): string => {
    // A key that is absent from the file has no line: only the node's own range is used.
    const node = doc.getIn(path as (string | number)[], true) as { range?: [number, number] } | undefined;
    return node?.range ? `:${lines.linePos(node.range[0]).line}` : "";
  };
  const messages = result.error.issues.map((issue) => describeIssue(issue, merged, file, lineOf));
  throw new CliError("CONFIG_INVALID", messages.join("\n"));
}

/** `--lora-r 16` → { lora_r: 16 }: kebab or snake keys, values parsed as YAML scalars. */
export function parseOverrides(overrides: Record<string, string>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(overrides)) out[key.replaceAll("-", "_")] = parseYamlValue(value);
  return out;
}

type Issue = z.core.$ZodIssue;

function describeIssue(
  issue: Issue,
  config: Record<string, unknown>,
  file: string,
  lineOf: (path: PropertyKey[]) => string,
): string {
  if (issue.code === "unrecognized_keys") {
    const known = knownKeysAt(issue.path);
    return issue.keys
      .map((key) => {
        const path = [...issue.path, key];
        const hint = suggest(key, known);
        return `${file}${lineOf(path)}: unknown key "${formatPath(path)}"${hint ? ` (did you mean "${hint}"?)` : ""}`;
      })
      .join("\n");
  }
  const value = valueAt(config, issue.path);
  // Cross-field rules (custom) may point at a key the file leaves to its default: say nothing of its value then.
  const got = value !== undefined ? `, got ${JSON.stringify(value)}` : issue.code === "custom" ? "" : ", got nothing";
  return `${file}${lineOf(issue.path)}: ${formatPath(issue.path) || "(top level)"}: ${expectation(issue)}${got}`;
}

function expectation(issue: Issue): string {
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
