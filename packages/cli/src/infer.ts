/**
 * Loading a model (optionally with a PEFT adapter) for the inference-side commands, and the small pieces they share:
 * the llama.cpp name mapping for adapter export, loss over a dataset, a dense Hugging Face checkpoint writer, the
 * merge of an adapter into a (dense or bitsandbytes 4-bit) base, and the chat template saved beside an adapter.
 */
import { copyFile, readdir, rename, rm, writeFile } from "node:fs/promises";
import { existsSync, readFileSync, statSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { ensureDirectory, removeStaleShards } from "@qlora/formats";
import {
  type CausalLM,
  HfTokenizer,
  type ModelConfig,
  batchLoss,
  dequantizeModel,
  upcastLinears,
  saveDense as saveDenseModel,
  compileChatTemplate,
  ggufArchitecture,
  ggufTensorName,
  loadModel,
  loadTokenizer,
  permuteQkRows,
  qkPermuteHeads,
  saveQuantized,
} from "@qlora/models";
import { type GgufLoraMapping, type LoraModel, loadAdapter } from "@qlora/lora";
import { noGrad } from "@qlora/tensor";
import type { TokenBatchSource } from "@qlora/trainer";
import { CliError } from "./errors";
import { layerProgress } from "./progress";
import { CHATML_TEMPLATE } from "./chat-templates";

export interface LoadedForInference {
  model: CausalLM;
  config: ModelConfig;
  tokenizer: HfTokenizer;
  lora?: LoraModel;
  generationConfig: Record<string, unknown> | null;
}

export const TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];

export function requireModelDir(dir: string, flag = "--model"): void {
  if (!existsSync(join(dir, "config.json")))
    throw new CliError("BAD_PATH", `${flag}: ${dir} is not a model directory (no config.json)`);
}

export function requireAdapterDir(dir: string): void {
  if (!existsSync(join(dir, "adapter_config.json")))
    throw new CliError("BAD_PATH", `--adapter: ${dir} is not a PEFT adapter directory (no adapter_config.json)`);
}

/**
 * quantize "nf4" (default for inference: what QLoRA trained against) or "none" (dense, checkpoint dtype).
 * chatTemplate: see resolveChatTemplate (by default the adapter's saved template, else the base tokenizer's).
 */
export async function loadForInference(
  modelDir: string,
  options: { adapter?: string; quantize?: "nf4" | "none"; quiet?: boolean; chatTemplate?: string } = {},
): Promise<LoadedForInference> {
  requireModelDir(modelDir);
  if (options.adapter) requireAdapterDir(options.adapter);
  // a bad --chat-template fails before minutes of loading
  const template = resolveChatTemplate(options.chatTemplate, options.adapter);
  const quantize = options.quantize === "none" ? false : undefined;
  const bar = layerProgress(`loading ${modelDir}`, options.quiet);
  const { model, config, generationConfig } = await loadModel(modelDir, {
    quantize,
    onProgress: bar.onProgress,
  }).finally(bar.stop);
  const tokenizer = withChatTemplate(await loadTokenizer(modelDir), template);
  const lora = options.adapter ? await loadAdapter(model, options.adapter) : undefined;
  model.eval();
  return { model, config, tokenizer, lora, generationConfig };
}

/** The file a training run writes beside its adapter: the chat template it trained with (transformers' name). */
export const CHAT_TEMPLATE_FILE = "chat_template.jinja";

/** A chat template to use instead of the base tokenizer's: its Jinja source and where it came from. */
export interface ChatTemplateChoice {
  source: string;
  from: string;
}

/**
 * Which chat template `generate --chat` / `chat` use: `--chat-template` (chatml, tokenizer_default, or a Jinja
 * file) first; else the adapter's own (chat_template.jinja, or tokenizer_config.json's chat_template, in the
 * adapter directory); else null: the base tokenizer's. Each candidate is compiled here, so a broken template is
 * an error naming its file.
 */
export function resolveChatTemplate(option: string | undefined, adapterDir?: string): ChatTemplateChoice | null {
  if (option !== undefined) {
    if (option === "tokenizer_default") return null;
    if (option === "chatml") return { source: CHATML_TEMPLATE, from: "--chat-template chatml" };
    if (!existsSync(option) || !statSync(option).isFile())
      throw new CliError(
        "BAD_ARGUMENT",
        `--chat-template: expected chatml, tokenizer_default or a Jinja template file, got "${option}" (no such file)`,
      );
    return checked({ source: readFileSync(option, "utf8"), from: option }, `--chat-template ${option}`);
  }
  if (!adapterDir) return null;
  const file = join(adapterDir, CHAT_TEMPLATE_FILE);
  if (existsSync(file)) return checked({ source: readFileSync(file, "utf8"), from: file }, file);
  const tc = join(adapterDir, "tokenizer_config.json");
  if (existsSync(tc)) {
    let json: unknown;
    try {
      json = JSON.parse(readFileSync(tc, "utf8"));
    } catch (e) {
      throw new CliError("BAD_PATH", `${tc}: not valid JSON (${(e as Error).message})`);
    }
    const t = (json as Record<string, unknown> | null)?.chat_template;
    if (typeof t === "string") return checked({ source: t, from: tc }, `${tc}: chat_template`);
  }
  return null;
}

function checked(choice: ChatTemplateChoice, label: string): ChatTemplateChoice {
  try {
    compileChatTemplate(choice.source, label);
  } catch (e) {
    throw new CliError("BAD_ARGUMENT", `${label}: not a chat template this CLI can render (${(e as Error).message})`);
  }
  return choice;
}

/** The tokenizer with its chat template replaced (the same vocabulary and special tokens). */
export function withChatTemplate(tokenizer: HfTokenizer, choice: ChatTemplateChoice | null): HfTokenizer {
  if (!choice) return tokenizer;
  return new HfTokenizer(
    tokenizer.tokenizerJson,
    { ...tokenizer.config, chat_template: choice.source },
    { tokenizerFile: tokenizer.tokenizerFile, configFile: choice.from },
  );
}

/** Write the chat template a run trained with beside its adapter (temp name, then rename). */
export async function saveChatTemplate(dir: string, source: string): Promise<void> {
  await ensureDirectory(dir);
  const path = join(dir, CHAT_TEMPLATE_FILE);
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, source);
  await rename(tmp, path);
}

/**
 * adapter_config.json's base_model_name_or_path for what the user gave: the absolute path of a local directory
 * (a relative one would only resolve from where training ran), the name as given otherwise (a hub id).
 */
export function baseModelReference(base: string): string {
  return existsSync(base) ? resolve(base) : base;
}

/** Whether a config.json's quantization_config is bitsandbytes 4-bit (the only quantized checkpoint qlora loads). */
export function isBnb4bit(q: Record<string, unknown> | null | undefined): boolean {
  return !!q && q.quant_method === "bitsandbytes" && !!(q.load_in_4bit ?? q._load_in_4bit);
}

/** Read config.json's bitsandbytes 4-bit quantization_config, or null (a dense checkpoint). */
export function bnb4bitConfig(modelDir: string): Record<string, unknown> | null {
  try {
    const q = JSON.parse(readFileSync(join(modelDir, "config.json"), "utf8")).quantization_config;
    return isBnb4bit(q) ? q : null;
  } catch {
    return null;
  }
}

export interface MergeResult {
  /** How many 4-bit layers of a bitsandbytes base were dequantized before merging (0 for a dense base). */
  dequantized: number;
}

/**
 * `qlora merge`: the adapter is merged in floating point (f32) into the base. A bitsandbytes 4-bit base is
 * dequantized first (PEFT's advice: dequantize, merge, save dense), so no weight is re-quantized on the way.
 * dtype f32/bf16/f16 writes a dense checkpoint without quantization_config; nf4 quantizes the merged weights
 * once into a bitsandbytes checkpoint. Everything is written to a temporary sibling directory, then renamed.
 */
export async function mergeAdapterInto(
  modelDir: string,
  adapterDir: string,
  out: string,
  dtype: "f32" | "bf16" | "f16" | "nf4",
  options: { quiet?: boolean } = {},
): Promise<MergeResult> {
  requireModelDir(modelDir);
  requireAdapterDir(adapterDir);
  const bar = layerProgress(`loading ${modelDir}`, options.quiet);
  const { model, generationConfig, preQuantized, quantization } = await loadModel(modelDir, {
    quantize: false,
    onProgress: bar.onProgress,
  }).finally(bar.stop);
  const dequantized = preQuantized ? dequantizeModel(model) : 0;
  upcastLinears(model); // merged in f32: a bf16 weight plus the adapter's delta would round back to bf16
  const lora = await loadAdapter(model, adapterDir);
  const merged = lora.mergeAndUnload().model as CausalLM;
  const tmp = join(dirname(resolve(out)), `.${basename(resolve(out))}.tmp-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  try {
    if (dtype === "nf4") {
      // the base's own 4-bit settings where it had them (NF4 asked), bitsandbytes' defaults otherwise
      const q = {
        quantType: "nf4" as const,
        doubleQuant: quantization?.doubleQuant ?? true,
        blocksize: quantization?.blocksize ?? 64,
        skipModules: quantization?.skipModules ?? ["lm_head"],
      };
      const dense = `${tmp}-f32`;
      try {
        await saveDense(merged, modelDir, dense, "f32");
        const { model: qm } = await loadModel(dense, { quantize: q });
        // embeddings and norms in the base's own dtype, not the f32 of the merge
        await saveQuantized(qm, tmp, {
          quantization: q,
          generationConfig,
          dtype: storageDtype(model.config.torchDtype),
        });
        qm.dispose();
      } finally {
        await rm(dense, { recursive: true, force: true });
      }
      await copyTokenizerFiles(modelDir, tmp);
    } else await saveDense(merged, modelDir, tmp, dtype);
    // the chat template the adapter was trained with goes with the merged model (transformers' file name)
    const template = resolveChatTemplate(undefined, adapterDir);
    if (template) await saveChatTemplate(tmp, template.source);
    await moveInto(tmp, out);
  } finally {
    await rm(tmp, { recursive: true, force: true });
    merged.dispose();
  }
  return { dequantized };
}

/** The float dtype a checkpoint's config names (ModelConfig.torchDtype), f32 where it names none, as transformers. */
function storageDtype(torchDtype: string | null): "f32" | "bf16" | "f16" {
  const named = { float32: "f32", bfloat16: "bf16", float16: "f16" } as const;
  return named[torchDtype as keyof typeof named] ?? "f32";
}

/** Move every file of `from` into `to` (created if needed), each by rename; `to`'s other files stay. */
async function moveInto(from: string, to: string): Promise<void> {
  if (!existsSync(to)) {
    await ensureDirectory(dirname(resolve(to)));
    await rename(from, to);
    return;
  }
  const moved = await readdir(from);
  for (const f of moved) await rename(join(from, f), join(to, f));
  // an earlier model's index would shadow the new model.safetensors, and its chat template the tokenizer's own
  await removeStaleShards(to, moved);
  if (!moved.includes(CHAT_TEMPLATE_FILE)) await rm(join(to, CHAT_TEMPLATE_FILE), { force: true });
}

/** llama.cpp names and q/k permutation of this model, for the adapter GGUF. */
export function ggufMapping(config: ModelConfig): GgufLoraMapping {
  const heads = { numHeads: config.numHeads, numKvHeads: config.numKvHeads };
  return {
    architecture: ggufArchitecture(config.architecture),
    tensorName: (p) => ggufTensorName(p),
    permuteHeads: (p) => qkPermuteHeads(config.architecture, p, heads),
    permuteRows: (v, rows, cols, h) => permuteQkRows(v, rows, cols, h),
  };
}

/** Mean loss per token and the token count over every batch of `data` (no gradients). */
export function datasetLoss(model: CausalLM, data: TokenBatchSource): { loss: number; tokens: number } {
  let sum = 0;
  let tokens = 0;
  noGrad(() => {
    for (const batch of data.batches(0, 0)) {
      const l = batchLoss(model, batch);
      sum += l.item();
      l.dispose();
      tokens += batch.numLossTokens;
    }
  });
  if (tokens === 0) throw new CliError("BAD_ARGUMENT", "the data has no tokens that carry loss");
  return { loss: sum / tokens, tokens };
}

/** Write a dense model as a Hugging Face checkpoint in `dtype` (@qlora/models' saveDense), with the tokenizer files of `from`. */
export async function saveDense(
  model: CausalLM,
  from: string,
  out: string,
  dtype: "f32" | "bf16" | "f16",
): Promise<void> {
  await saveDenseModel(model, out, { dtype });
  await copyTokenizerFiles(from, out);
}

/** Copy the tokenizer (and generation config) files, each under a temporary name first, then renamed. */
export async function copyTokenizerFiles(from: string, out: string): Promise<void> {
  for (const f of [...TOKENIZER_FILES, "generation_config.json"]) {
    if (!existsSync(join(from, f))) continue;
    const tmp = join(out, `.${f}.tmp-${process.pid}`);
    await copyFile(join(from, f), tmp);
    await rename(tmp, join(out, f));
  }
}

export async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, `${JSON.stringify(value, null, 2)}\n`);
  await rename(tmp, path);
}
