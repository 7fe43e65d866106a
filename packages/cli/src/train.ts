/**
 * `qlora train`: turns a validated TrainConfig into wiring — model (NF4 on load for QLoRA), LoRA injection,
 * tokenized data, optimizer, trainer plugins, PEFT checkpoints, the final adapter and the run report. No training
 * logic lives here; every piece is owned by its package.
 */
import { existsSync } from "node:fs";
import { rm } from "node:fs/promises";
import { basename, join, resolve } from "node:path";
import { batchLoss, type CausalLM, HfTokenizer, compileChatTemplate, loadModel, loadTokenizer } from "@qlora/models";
import { LoraModel, type LoraConfigInput, loadAdapter, saveAdapter } from "@qlora/lora";
import { AdamW, Lion, type NamedParameters, SGD, loraPlusGroups } from "@qlora/paged-optim";
import { Linear4bit, type Module, type Tensor, keep, noGrad } from "@qlora/tensor";
import {
  type ChatFields,
  type CheckpointIO,
  type DataFile,
  type DataFormat,
  type DataTokenizer,
  type DatasetOptions,
  type TokenBatch,
  Trainer,
  type TrainerOptimizer,
  type TrainerPlugin,
  type Strategy,
  type DatasetStats,
  type SchedulerOptions,
  earlyStopping,
  latestCheckpoint,
  listCheckpoints,
  loadTokenDataset,
  memoryReport,
  metricsFile,
  neftune,
  progress,
  safetensorsCheckpointIO,
  seedEverything,
} from "@qlora/trainer";
import { closest } from "fastest-levenshtein";
import { DEFAULT_CHAT_ROLES, type TrainConfig } from "./config";
import { CliError } from "./errors";
import { baseModelReference, bnb4bitConfig, saveChatTemplate, saveDense } from "./infer";
import { CHATML_TEMPLATE } from "./chat-templates";
import { wantsActivationCheckpointing } from "./parallel-config";
import { launcherTerminal, layerProgress } from "./progress";
import { writeReport } from "./report";
import { lockOutputDir } from "./output-lock";
import { checkNotInput, checkOutputDir } from "./output-path";

export interface TrainOptions {
  /** Where progress and plain log lines go (a TTY gets a progress bar). */
  stream?: NodeJS.WriteStream;
  quiet?: boolean;
  /** Aborting writes a checkpoint at the end of the current step and stops (Ctrl-C). */
  signal?: AbortSignal;
  /** Several ranks: the trainer strategy (DDP, FSDP), this rank and the world size. Rank 0 alone prints progress
   * and writes metrics, checkpoints, the adapter and the report; every rank trains its shard of the data. */
  parallel?: {
    strategy: Strategy;
    rank: number;
    worldSize: number;
    checkpointIO?: (lora: LoraModel, baseModel: string) => CheckpointIO;
  };
}

export interface TrainResult {
  outputDir: string;
  /** The final PEFT adapter (adapter runs) or trainable weights (full fine-tune). */
  modelDir: string;
  reportPath: string;
  globalStep: number;
  evalLossBefore?: number;
  evalLossAfter?: number;
  interrupted: boolean;
  /** Why training ended before max_steps (early stopping), if it did. */
  stoppedEarly?: string;
  /** The checkpoint whose weights were loaded at the end (load_best_model_at_end). */
  bestCheckpoint?: string;
}

export const DATASET_FORMATS: Record<NonNullable<TrainConfig["datasets"][number]["type"]>, DataFormat> = {
  alpaca: "alpaca",
  completion: "text",
  text: "text",
  prompt_completion: "prompt_completion",
  chat_template: "messages",
  sharegpt: "messages",
  pretokenized: "pretokenized",
};

export async function loadBase(
  config: TrainConfig,
  quiet = false,
  stream: NodeJS.WriteStream = process.stderr,
): Promise<{ model: CausalLM; tokenizer: HfTokenizer }> {
  const dir = config.base_model;
  if (!existsSync(join(dir, "config.json")))
    throw new CliError("BAD_PATH", `base_model: ${dir} is not a model directory (no config.json)`);
  const quantize = config.load_in_4bit
    ? { quantType: config.bnb_4bit_quant_type, doubleQuant: config.bnb_4bit_use_double_quant, blocksize: 64 }
    : false;
  const bar = layerProgress(`loading ${dir}`, quiet, stream);
  const { model } = await loadModel(dir, { quantize, onProgress: bar.onProgress }).finally(bar.stop);
  const tokenizer = await loadTokenizer(dir);
  return { model, tokenizer };
}

export function loraSettings(config: TrainConfig): LoraConfigInput {
  const target = config.lora_target_linear ? "all-linear" : (config.lora_target_modules ?? null);
  return {
    r: config.lora_r,
    lora_alpha: config.lora_alpha,
    lora_dropout: config.lora_dropout,
    target_modules: target,
    modules_to_save: config.lora_modules_to_save ?? null,
    rank_pattern: config.lora_rank_pattern ?? {},
    alpha_pattern: config.lora_alpha_pattern ?? {},
    use_rslora: config.peft_use_rslora,
    use_dora: config.peft_use_dora,
    ensure_weight_tying: config.peft_ensure_weight_tying,
    layers_to_transform: config.peft_layers_to_transform ?? null,
    layers_pattern: config.peft_layers_pattern ?? null,
    init_lora_weights: config.peft_init_lora_weights as LoraConfigInput["init_lora_weights"],
    // PEFT's AutoPeftModelForCausalLM reads task_type; a local base is written as its absolute path
    task_type: "CAUSAL_LM",
    base_model_name_or_path: baseModelReference(config.base_model),
  };
}

export function buildOptimizer(config: TrainConfig, params: [string, Tensor][]): TrainerOptimizer {
  const name = config.optimizer;
  const state = { paged: name.startsWith("paged_"), bits: (name.includes("8bit") ? 8 : 32) as 8 | 32 };
  const lr = config.learning_rate;
  const weightDecay = config.weight_decay;
  const groups: NamedParameters | ReturnType<typeof loraPlusGroups> = config.loraplus_lr_ratio
    ? loraPlusGroups(params, { ratio: config.loraplus_lr_ratio, lr, weightDecay })
    : params;
  if (name.includes("lion")) return new Lion(groups, { lr, weightDecay, ...state });
  if (name === "sgd") return new SGD(groups, { lr, weightDecay });
  return new AdamW(groups, { lr, weightDecay, ...state });
}

/** The data pipeline's options for a config (train and preprocess tokenize the same way). */
export function datasetOptions(config: TrainConfig, tokenizer: DataTokenizer): DatasetOptions {
  return {
    // Each dataset keeps its own type: a mixed list must not fall back to guessing formats by keys.
    files: config.datasets.map(
      (d): DataFile => ({ path: d.path, format: d.type ? DATASET_FORMATS[d.type] : "auto", chat: chatFields(d) }),
    ),
    tokenizer,
    trainOnInputs: config.train_on_inputs,
    maxLength: config.sequence_len,
    overflow: config.excess_length_strategy,
    packing: config.sample_packing,
    padToMaxLength: config.pad_to_sequence_len,
    microBatchSize: config.micro_batch_size,
    groupByLength: config.group_by_length,
    seed: config.seed,
    validationSplit: config.val_set_size > 0 ? config.val_set_size : undefined,
  };
}

type DatasetConfig = TrainConfig["datasets"][number];

/**
 * Axolotl's chat_template fields: `field_messages`, `message_property_mappings` and `roles` (template role → the
 * data's names for it; Axolotl's defaults map human → user and gpt → assistant). `type: sharegpt` is the legacy
 * name for `conversations: [{from, value}]`.
 */
export function chatFields(d: DatasetConfig): ChatFields | undefined {
  if (d.type !== "chat_template" && d.type !== "sharegpt") return undefined;
  const share = d.type === "sharegpt";
  const roles: Record<string, string> = {};
  for (const [role, names] of Object.entries(d.roles ?? DEFAULT_CHAT_ROLES))
    for (const name of typeof names === "string" ? [names] : names) roles[name] = role;
  return {
    field: d.field_messages ?? (share ? "conversations" : "messages"),
    role: d.message_property_mappings?.role ?? (share ? "from" : "role"),
    content: d.message_property_mappings?.content ?? (share ? "value" : "content"),
    roles,
    // roles the config spells out are the whole list: any other name in the data is a mistake, not a role
    strictRoles: d.roles !== undefined,
  };
}

/** lr_scheduler and its keys; Axolotl's cosine_min_lr_ratio makes cosine decay to learning_rate · ratio. */
export function schedulerOptions(config: TrainConfig): Omit<SchedulerOptions, "totalSteps" | "baseLr"> {
  return {
    name: config.lr_scheduler,
    warmupSteps: config.warmup_steps,
    warmupRatio: config.warmup_ratio,
    minLrRate: config.cosine_min_lr_ratio,
  };
}

/**
 * eval_steps / save_steps, or their per-epoch forms as Axolotl computes them:
 * max(1, floor(steps per epoch / N)), where an epoch is ceil(micro-batches / gradient_accumulation_steps) steps.
 */
export function stepIntervals(
  config: TrainConfig,
  trainBatches: number,
): { evalSteps: number | undefined; saveSteps: number | undefined } {
  const stepsPerEpoch = Math.ceil(trainBatches / config.gradient_accumulation_steps);
  const every = (n: number | undefined) => (n === undefined ? undefined : Math.max(1, Math.floor(stepsPerEpoch / n)));
  return {
    evalSteps: config.eval_steps ?? every(config.evals_per_epoch),
    saveSteps: config.save_steps ?? every(config.saves_per_epoch),
  };
}

/**
 * Axolotl's special_tokens: the tokenizer with these pad/bos/eos/unk tokens (its chat template, EOS appended to
 * completions and batch padding all follow). A token must already be in the vocabulary: adding one would resize
 * the embeddings, which qlora does not do.
 */
export function withSpecialTokens(tokenizer: HfTokenizer, config: TrainConfig): HfTokenizer {
  const tokens = Object.entries(config.special_tokens ?? {}).filter((e): e is [string, string] => e[1] !== undefined);
  if (tokens.length === 0) return tokenizer;
  const known = tokenizer.addedTokens().map((t) => t.content);
  for (const [key, token] of tokens)
    if (tokenizer.tokenToId(token) === undefined)
      throw new CliError(
        "CONFIG_INVALID",
        `special_tokens.${key}: ${JSON.stringify(token)} is not a token of ${tokenizer.tokenizerFile}; qlora does not add tokens (that would resize the embeddings): name one the vocabulary has${known.length ? ` (closest: ${JSON.stringify(closest(token, known))})` : ""}`,
      );
  return new HfTokenizer(
    tokenizer.tokenizerJson,
    { ...tokenizer.config, ...Object.fromEntries(tokens) },
    { tokenizerFile: tokenizer.tokenizerFile, configFile: tokenizer.configFile },
  );
}

/** What the data pipeline left out, for the one line runTrain prints (nothing when nothing was dropped). */
export function dataSummary(stats: DatasetStats, config: TrainConfig): string | undefined {
  if (stats.dropped === 0) return undefined;
  const tooLong = stats.dropped - stats.noLossTokens;
  const parts = [];
  if (tooLong > 0)
    parts.push(`${tooLong} longer than sequence_len ${config.sequence_len} (excess_length_strategy: drop)`);
  if (stats.noLossTokens > 0)
    parts.push(
      `${stats.noLossTokens} with no trainable token${stats.truncated > 0 ? ` left after truncation to sequence_len ${config.sequence_len}` : ""}${stats.noAssistantTurn > 0 ? ` (${stats.noAssistantTurn} chat${stats.noAssistantTurn === 1 ? "" : "s"} with no assistant turn)` : ""}`,
    );
  return `datasets: ${stats.rows} rows → ${stats.examples} examples; dropped ${parts.join(", ")}`;
}

/**
 * Checkpoints keep the trainable tensors for exact resume and, beside them, the adapter in PEFT format (with the
 * chat template the run trains with, when it has one).
 */
function peftCheckpointIO(lora: LoraModel, baseModel: string): CheckpointIO {
  return {
    async saveModel(dir, state, model) {
      await safetensorsCheckpointIO.saveModel(dir, state, model);
      await saveAdapter(lora, dir, { baseModelNameOrPath: baseModel, taskType: "CAUSAL_LM" });
    },
    loadModel: safetensorsCheckpointIO.loadModel,
  };
}

/** Every checkpoint (one process or a multi-process strategy's) also holds the chat template the run trains with. */
function withChatTemplateFile(io: CheckpointIO, chatTemplate: string | null): CheckpointIO {
  if (chatTemplate === null) return io;
  return {
    ...io,
    async saveModel(dir, state, model) {
      await io.saveModel(dir, state, model);
      await saveChatTemplate(dir, chatTemplate);
    },
  };
}

/** On abort (Ctrl-C): save at the end of the current step, then stop. */
function interruptPlugin(signal: AbortSignal | undefined, flag: { interrupted: boolean }): TrainerPlugin {
  return {
    name: "interrupt",
    order: "pre",
    hooks: {
      async "step:end"(ctx) {
        // A training step never waits on I/O, so without this turn of the event loop the SIGINT handler (a
        // macrotask) would not run until fit() returned.
        if (signal) await new Promise((resolve) => setImmediate(resolve));
        if (!signal?.aborted) return;
        flag.interrupted = true;
        ctx.control.save();
        ctx.control.stop("interrupted (Ctrl-C): checkpoint written");
      },
    },
  };
}

/**
 * The tokenizer the data pipeline sees: the model's own, with its chat template replaced when the config names
 * another one (`chat_template: chatml`, or `jinja` with `chat_template_jinja`).
 */
export function dataTokenizer(tokenizer: HfTokenizer, config: TrainConfig): DataTokenizer {
  if (config.chat_template === "tokenizer_default") return tokenizer;
  const source = config.chat_template === "chatml" ? CHATML_TEMPLATE : config.chat_template_jinja!;
  const template = compileChatTemplate(source, "chat_template_jinja");
  return {
    encode: (text, o) => tokenizer.encode(text, o),
    eosTokenId: tokenizer.eosTokenId,
    bosTokenId: tokenizer.bosTokenId,
    padTokenId: tokenizer.padTokenId,
    applyChatTemplate: (messages, o) =>
      template.render(
        messages.map((m) => ({ ...m })),
        {
          bos_token: tokenizer.bosToken ?? "",
          eos_token: tokenizer.eosToken ?? "",
          addGenerationPrompt: o?.addGenerationPrompt ?? false,
        },
      ),
  };
}

/**
 * The chat template the run trains with, saved beside the adapter as chat_template.jinja: the one the config names
 * (chatml, or jinja's chat_template_jinja), else the base tokenizer's when a dataset is rendered with it; null
 * when the run uses no chat template.
 */
export function trainedChatTemplate(config: TrainConfig, tokenizer: HfTokenizer): string | null {
  if (config.chat_template === "chatml") return CHATML_TEMPLATE;
  if (config.chat_template === "jinja") return config.chat_template_jinja ?? null;
  const chat = config.datasets.some((d) => d.type === "chat_template" || d.type === "sharegpt");
  return chat ? tokenizer.chatTemplate : null;
}

/**
 * Full fine-tune setup: every bf16/f16 parameter becomes an f32 master weight (the optimizers update f32 only; as
 * transformers trains a bf16 checkpoint in f32 without mixed precision) and trains. Returns how many were upcast.
 */
export function upcastForFullFineTune(model: Module): number {
  const done = new Map<Tensor, Tensor>();
  for (const [, m] of [...model.namedModules()]) {
    for (const [name, p] of [...m.namedParameters()]) {
      if (name.includes(".")) continue; // a child's: handled at that module
      let f = done.get(p) ?? p;
      if (f === p && (p.dtype === "bf16" || p.dtype === "f16")) {
        f = keep(noGrad(() => p.detach().cast("f32")));
        done.set(p, f);
      }
      if (f !== p) {
        // fields that hold the parameter (Linear.weight, Embedding.weight, …) follow it
        const fields = m as unknown as Record<string, unknown>;
        for (const k of Object.keys(fields)) if (fields[k] === p) fields[k] = f;
        m.registerParameter(name, f);
      }
      f.requiresGrad = true;
    }
  }
  return done.size;
}

/** What can be checked before any work (and before `--nproc` starts its ranks, so it is said once). */
export function checkTrainInputs(config: TrainConfig): void {
  if (config.load_in_4bit && !config.adapter)
    throw new CliError(
      "CONFIG_INVALID",
      "load_in_4bit: a 4-bit base cannot be fully fine-tuned; set adapter: qlora (or drop load_in_4bit)",
    );
  if (!config.adapter && bnb4bitConfig(config.base_model))
    throw new CliError(
      "CONFIG_INVALID",
      `base_model: ${config.base_model} is a bitsandbytes 4-bit checkpoint (quantization_config in config.json); cannot full-fine-tune a 4-bit checkpoint; use adapter: qlora (or a dense base_model)`,
    );
  for (const [i, d] of config.datasets.entries()) {
    if (!existsSync(d.path)) throw new CliError("BAD_PATH", `datasets[${i}].path: ${d.path} does not exist`);
    if (!/\.(jsonl|json|txt|parquet)$/i.test(d.path))
      throw new CliError(
        "BAD_PATH",
        `datasets[${i}].path: ${d.path}: cannot tell the file format from its extension; expected .jsonl, .json, .txt or .parquet`,
      );
  }
  if (!existsSync(join(config.base_model, "config.json")))
    throw new CliError("BAD_PATH", `base_model: ${config.base_model} is not a model directory (no config.json)`);
  checkNotInput(config.output_dir, config.base_model, "output_dir", "base_model");
  checkOutputDir(config.output_dir, "output_dir");
}

/**
 * ChatML's markers are special tokens in the models made for it; in another vocabulary they split into several
 * pieces, which a small fine-tune learns poorly (Axolotl adds them as tokens, resizing the embeddings; qlora does not).
 */
export function chatmlMarkersWarning(config: TrainConfig, tokenizer: HfTokenizer): string | null {
  if (config.chat_template !== "chatml") return null;
  const split = ["<|im_start|>", "<|im_end|>"].filter(
    (m) => tokenizer.encode(m, { addSpecialTokens: false }).length > 1,
  );
  if (split.length === 0) return null;
  return `chat_template: chatml: ${split.join(" and ")} ${split.length > 1 ? "are not tokens" : "is not a token"} of this tokenizer (each splits into several pieces); replies may not learn where to stop. The model's own template (chat_template: tokenizer_default) uses its special tokens`;
}

/** The data pipeline's option names, as the config spells them. */
const CONFIG_KEY_OF: Record<string, keyof TrainConfig> = { validationSplit: "val_set_size" };

/** A data error about an option is reported under the config key the user wrote, not the library's option name. */
async function inConfigTerms<T>(load: () => Promise<T>): Promise<T> {
  try {
    return await load();
  } catch (e) {
    const key = (e as { detail?: { key?: string } }).detail?.key;
    const configKey = key ? CONFIG_KEY_OF[key] : undefined;
    if (!configKey) throw e;
    throw new CliError("CONFIG_INVALID", (e as Error).message.replace(`${key} `, `${configKey}: `));
  }
}

/** Examples longer than the model's positions train on positions it never saw (transformers warns the same). */
export function positionsWarning(stats: DatasetStats, maxPositions: number): string | null {
  if (stats.longest <= maxPositions) return null;
  return `the longest example has ${stats.longest} tokens, more than the model's max_position_embeddings ${maxPositions}: positions past it were never trained; sequence_len: ${maxPositions} truncates there`;
}

/**
 * An output_dir that already holds checkpoints: a fresh run there would interleave two runs (its metrics restart, the
 * old checkpoints stay and a later `resume_from_checkpoint: true` resumes the old run), so it is refused unless
 * `overwrite_output_dir: true` (transformers' key) clears them. A resume from an older checkpoint says which later
 * ones are left behind.
 */
export async function checkOutputDirRuns(
  config: TrainConfig,
  isMain: boolean,
  say: (line: string) => void,
): Promise<void> {
  const found = await listCheckpoints(config.output_dir);
  if (found.length === 0) return;
  const resume = config.resume_from_checkpoint;
  if (typeof resume === "string") {
    const from = found.find((c) => resolve(c.dir) === resolve(resume));
    const later = from ? found.filter((c) => c.step > from.step) : [];
    if (later.length > 0)
      say(
        `resume_from_checkpoint: ${resume} rewinds the run; ${later.map((c) => basename(c.dir)).join(", ")} in output_dir are from after it and stay until save_total_limit rotates them (resume_from_checkpoint: true would pick the newest)`,
      );
    return;
  }
  if (resume === true) return;
  if (config.overwrite_output_dir) {
    if (isMain) for (const c of found) await rm(c.dir, { recursive: true, force: true });
    return;
  }
  const newest = found.reduce((a, b) => (b.step > a.step ? b : a));
  throw new CliError(
    "CONFIG_INVALID",
    `output_dir: ${config.output_dir} already holds ${basename(newest.dir)} from an earlier run: resume it (resume_from_checkpoint: true), write to another output_dir, or set overwrite_output_dir: true to start over (its checkpoints are deleted)`,
  );
}

export async function runTrain(config: TrainConfig, options: TrainOptions = {}): Promise<TrainResult> {
  checkTrainInputs(config);
  // rank 0 holds it for the whole job: an error on any rank ends every rank
  const unlock = (options.parallel?.rank ?? 0) === 0 ? lockOutputDir(config.output_dir) : undefined;
  try {
    return await trainInOutputDir(config, options);
  } finally {
    unlock?.();
  }
}

async function trainInOutputDir(config: TrainConfig, options: TrainOptions): Promise<TrainResult> {
  const seed = seedEverything(config.seed);
  const { rank, worldSize } = options.parallel ?? { rank: 0, worldSize: 1 };
  const stream = options.stream ?? (worldSize > 1 ? launcherTerminal() : undefined) ?? process.stderr;
  const isMain = rank === 0;
  const say = (line: string) => isMain && stream.write(`qlora: ${line}\n`);
  for (const warning of config.warnings ?? []) say(warning);
  await checkOutputDirRuns(config, isMain, say);
  if (config.bf16 === true)
    say("bf16: true — the CPU backend computes in f32; training in f32 (bf16: auto says this silently)");
  const base = await loadBase(config, options.quiet || !isMain, stream);
  const model = base.model;
  const sharded = options.parallel?.strategy.name === "fsdp";
  if (sharded && ![...model.namedModules()].some(([, m]) => m instanceof Linear4bit))
    say(
      "fsdp: the base is not 4-bit: FSDP shards the 4-bit base weights only, so each rank keeps the whole base, as under DDP (load_in_4bit: true trains QLoRA and shares it)",
    );
  const tokenizer = withSpecialTokens(base.tokenizer, config);
  const markersNote = chatmlMarkersWarning(config, tokenizer);
  if (markersNote) say(markersNote);
  const lora = !config.adapter
    ? undefined
    : config.lora_model_dir
      ? await loadAdapter(model, config.lora_model_dir, { isTrainable: true })
      : LoraModel.inject(model, loraSettings(config), { modelType: model.config.modelType });
  // Full fine-tune: the loader hands out frozen weights in the checkpoint's dtype; every parameter trains, as an
  // f32 master weight.
  if (!lora) upcastForFullFineTune(model);
  const baseReference = baseModelReference(config.base_model);
  const chatTemplate = trainedChatTemplate(config, tokenizer);
  const trainable = [...model.namedParameters()].filter(([, p]) => p.requiresGrad);
  if (trainable.length === 0) throw new CliError("CONFIG_INVALID", "no parameter is trainable with this config");
  const data = await inConfigTerms(() =>
    loadTokenDataset({
      ...datasetOptions(config, dataTokenizer(tokenizer, config)),
      rank,
      worldSize,
    }),
  );
  const summary = dataSummary(data.stats, config);
  if (summary) say(summary);
  const positionsNote = positionsWarning(data.stats, model.config.maxPositionEmbeddings);
  if (positionsNote) say(positionsNote);
  const outputDir = resolve(config.output_dir);
  const flag = { interrupted: false };
  const plugins: TrainerPlugin[] = [interruptPlugin(options.signal, flag)];
  if (isMain) plugins.push(metricsFile());
  if (!options.quiet && isMain)
    plugins.push(
      progress({ stream }),
      memoryReport((l) => stream.write(`${l}\n`)),
    );
  if (config.early_stopping_patience) plugins.push(earlyStopping({ patience: config.early_stopping_patience }));
  if (config.neftune_noise_alpha)
    plugins.push(neftune({ alpha: config.neftune_noise_alpha, module: "model.embed_tokens" }));
  const trainer = new Trainer<TokenBatch>({
    onWarning: say,
    model,
    optimizer: buildOptimizer(config, trainable),
    loss: batchLoss,
    train: data.train,
    eval: data.eval,
    plugins,
    strategy: options.parallel?.strategy,
    checkpointIO: lora
      ? withChatTemplateFile(
          options.parallel?.checkpointIO?.(lora, baseReference) ?? peftCheckpointIO(lora, baseReference),
          chatTemplate,
        )
      : safetensorsCheckpointIO,
    args: {
      outputDir,
      seed,
      learningRate: config.learning_rate,
      numEpochs: config.num_epochs,
      maxSteps: config.max_steps,
      gradientAccumulationSteps: config.gradient_accumulation_steps,
      maxGradNorm: config.max_grad_norm > 0 ? config.max_grad_norm : undefined,
      scheduler: schedulerOptions(config),
      loggingSteps: config.logging_steps,
      ...stepIntervals(config, data.train.length),
      saveTotalLimit: config.save_total_limit,
      gradientCheckpointing: config.gradient_checkpointing || wantsActivationCheckpointing(config),
    },
  });
  const resumeFrom = config.resume_from_checkpoint;
  // As Axolotl's auto-resume, true with no checkpoint starts fresh; say so, or it looks like a resume.
  const freshAuto = resumeFrom === true && (await latestCheckpoint(outputDir)) === undefined;
  if (freshAuto) say(`resume_from_checkpoint: no checkpoint in ${outputDir}; starting fresh`);
  const resuming = resumeFrom !== undefined && resumeFrom !== false && !freshAuto;
  // A resumed run's loss before training is in the checkpoint's log (step 0); evaluating the fresh adapter again
  // would log a second step-0 record after the restored ones.
  const evalBefore = data.eval && !resuming ? (await trainer.evaluate()).eval_loss : undefined;
  const state = await trainer.fit({ resumeFrom: resumeFrom === undefined ? undefined : resumeFrom });
  const evalLossBefore = resuming
    ? state.logHistory.find((r) => r.step === 0 && typeof r.eval_loss === "number")?.eval_loss
    : evalBefore;
  const reason = trainer.control.stopReason;
  const stoppedEarly = reason?.startsWith("early stopping") ? reason : undefined;
  const best = config.load_best_model_at_end && !flag.interrupted ? await loadBest(trainer, say) : undefined;
  // The trainer may have just evaluated at the last step (eval_steps): that is the final eval loss, not a reason for a second pass.
  const lastEval = [...state.logHistory].reverse().find((r) => typeof r.eval_loss === "number");
  const evalLossAfter =
    !data.eval || flag.interrupted
      ? undefined
      : best
        ? (state.bestMetric ?? undefined)
        : lastEval?.step === state.globalStep
          ? lastEval.eval_loss
          : (await trainer.evaluate()).eval_loss;
  const modelDir = join(outputDir, lora ? "adapter" : "model");
  const reportPath = join(outputDir, "report.html");
  if (isMain) {
    if (lora) {
      await saveAdapter(lora, modelDir, { baseModelNameOrPath: baseReference, taskType: "CAUSAL_LM" });
      if (chatTemplate !== null) await saveChatTemplate(modelDir, chatTemplate);
    }
    // A full fine-tune ends as a Hugging Face checkpoint (f32, the precision it trained in) that every tool loads.
    else await saveDense(model, config.base_model, modelDir, "f32");
    writeReport(outputDir);
  }
  return {
    outputDir,
    modelDir,
    reportPath,
    globalStep: state.globalStep,
    evalLossBefore,
    evalLossAfter,
    interrupted: flag.interrupted,
    ...(stoppedEarly ? { stoppedEarly } : {}),
    ...(best ? { bestCheckpoint: best } : {}),
  };
}

/** load_best_model_at_end: the best eval's checkpoint weights, or a note that none was saved at that step. */
async function loadBest(trainer: Trainer<TokenBatch>, say: (line: string) => void): Promise<string | undefined> {
  const dir = await trainer.loadBestModel();
  if (dir) return dir;
  const step = trainer.bestEvalStep;
  say(
    step < 0
      ? "load_best_model_at_end: no evaluation ran; keeping the last weights"
      : `load_best_model_at_end: the best eval (step ${step}) has no checkpoint (set save_steps to a multiple of eval_steps, as transformers requires); keeping the last weights`,
  );
  return undefined;
}
