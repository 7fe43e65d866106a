/**
 * `qlora train`: turns a validated TrainConfig into wiring — model (NF4 on load for QLoRA), LoRA injection,
 * tokenized data, optimizer, trainer plugins, PEFT checkpoints, the final adapter and the run report. No training
 * logic lives here; every piece is owned by its package.
 */
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import {
  batchLoss,
  type CausalLM,
  type HfTokenizer,
  compileChatTemplate,
  loadModel,
  loadTokenizer,
} from "@qlora/models";
import { LoraModel, type LoraConfigInput, loadAdapter, saveAdapter } from "@qlora/lora";
import { AdamW, Lion, type NamedParameters, SGD, loraPlusGroups } from "@qlora/paged-optim";
import type { Tensor } from "@qlora/tensor";
import {
  type CheckpointIO,
  type DataFormat,
  type DataTokenizer,
  type DatasetOptions,
  type TokenBatch,
  Trainer,
  type TrainerOptimizer,
  type TrainerPlugin,
  type Strategy,
  earlyStopping,
  loadTokenDataset,
  memoryReport,
  metricsFile,
  neftune,
  progress,
  safetensorsCheckpointIO,
  seedEverything,
} from "@qlora/trainer";
import type { TrainConfig } from "./config";
import { CliError } from "./errors";
import { saveDense } from "./infer";
import { wantsActivationCheckpointing } from "./parallel-config";
import { launcherTerminal, layerProgress } from "./progress";
import { writeReport } from "./report";

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
}

export const DATASET_FORMATS: Record<TrainConfig["datasets"][number]["type"], DataFormat> = {
  alpaca: "alpaca",
  completion: "text",
  text: "text",
  prompt_completion: "prompt_completion",
  chat_template: "messages",
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
    init_lora_weights: config.peft_init_lora_weights as LoraConfigInput["init_lora_weights"],
    base_model_name_or_path: config.base_model,
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
  const types = new Set(config.datasets.map((d) => d.type));
  const format: DataFormat = types.size === 1 ? DATASET_FORMATS[config.datasets[0].type] : "auto";
  return {
    files: config.datasets.map((d) => d.path),
    format,
    tokenizer,
    trainOnInputs: config.train_on_inputs,
    maxLength: config.sequence_len,
    overflow: config.excess_length_strategy === "drop" ? "drop" : "truncate",
    packing: config.sample_packing,
    microBatchSize: config.micro_batch_size,
    groupByLength: config.group_by_length,
    seed: config.seed,
    validationSplit: config.val_set_size > 0 ? config.val_set_size : undefined,
  };
}

/** Checkpoints keep the trainable tensors for exact resume and, beside them, the adapter in PEFT format. */
function peftCheckpointIO(lora: LoraModel, baseModel: string): CheckpointIO {
  return {
    async saveModel(dir, state, model) {
      await safetensorsCheckpointIO.saveModel(dir, state, model);
      await saveAdapter(lora, dir, { baseModelNameOrPath: baseModel });
    },
    loadModel: safetensorsCheckpointIO.loadModel,
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

/** ChatML, as Axolotl's `chat_template: chatml` renders it. */
export const CHATML_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

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
          add_generation_prompt: o?.addGenerationPrompt ?? false,
        },
      ),
  };
}

/** What can be checked before any work (and before `--nproc` starts its ranks, so it is said once). */
export function checkTrainInputs(config: TrainConfig): void {
  if (config.load_in_4bit && !config.adapter)
    throw new CliError(
      "CONFIG_INVALID",
      "load_in_4bit: a 4-bit base cannot be fully fine-tuned; set adapter: qlora (or drop load_in_4bit)",
    );
  for (const d of config.datasets)
    if (!existsSync(d.path)) throw new CliError("BAD_PATH", `datasets: ${d.path} does not exist`);
  if (!existsSync(join(config.base_model, "config.json")))
    throw new CliError("BAD_PATH", `base_model: ${config.base_model} is not a model directory (no config.json)`);
}

export async function runTrain(config: TrainConfig, options: TrainOptions = {}): Promise<TrainResult> {
  checkTrainInputs(config);
  const seed = seedEverything(config.seed);
  const { rank, worldSize } = options.parallel ?? { rank: 0, worldSize: 1 };
  const stream = options.stream ?? (worldSize > 1 ? launcherTerminal() : undefined) ?? process.stderr;
  const isMain = rank === 0;
  if (config.bf16 === true && isMain)
    stream.write(
      "qlora: bf16: true — the CPU backend computes in f32; training in f32 (bf16: auto says this silently)\n",
    );
  const { model, tokenizer } = await loadBase(config, options.quiet || !isMain, stream);
  const lora = !config.adapter
    ? undefined
    : config.lora_model_dir
      ? await loadAdapter(model, config.lora_model_dir, { isTrainable: true })
      : LoraModel.inject(model, loraSettings(config));
  // Full fine-tune: the loader hands out frozen weights; every parameter trains.
  if (!lora) for (const p of model.parameters()) p.requiresGrad = true;
  const trainable = [...model.namedParameters()].filter(([, p]) => p.requiresGrad);
  if (trainable.length === 0) throw new CliError("CONFIG_INVALID", "no parameter is trainable with this config");
  const data = await loadTokenDataset({
    ...datasetOptions(config, dataTokenizer(tokenizer, config)),
    rank,
    worldSize,
  });
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
    model,
    optimizer: buildOptimizer(config, trainable),
    loss: batchLoss,
    train: data.train,
    eval: data.eval,
    plugins,
    strategy: options.parallel?.strategy,
    checkpointIO: lora
      ? (options.parallel?.checkpointIO?.(lora, config.base_model) ?? peftCheckpointIO(lora, config.base_model))
      : safetensorsCheckpointIO,
    args: {
      outputDir,
      seed,
      learningRate: config.learning_rate,
      numEpochs: config.num_epochs,
      maxSteps: config.max_steps,
      gradientAccumulationSteps: config.gradient_accumulation_steps,
      maxGradNorm: config.max_grad_norm > 0 ? config.max_grad_norm : undefined,
      scheduler: {
        name: config.lr_scheduler,
        warmupSteps: config.warmup_steps,
        warmupRatio: config.warmup_ratio,
        minLrRate: config.cosine_min_lr_ratio,
      },
      loggingSteps: config.logging_steps,
      evalSteps: config.eval_steps,
      saveSteps: config.save_steps,
      saveTotalLimit: config.save_total_limit,
      gradientCheckpointing: config.gradient_checkpointing || wantsActivationCheckpointing(config),
    },
  });
  const evalLossBefore = data.eval ? (await trainer.evaluate()).eval_loss : undefined;
  const resumeFrom = config.resume_from_checkpoint;
  const state = await trainer.fit({ resumeFrom: resumeFrom === undefined ? undefined : resumeFrom });
  const evalLossAfter = data.eval && !flag.interrupted ? (await trainer.evaluate()).eval_loss : undefined;
  const modelDir = join(outputDir, lora ? "adapter" : "model");
  const reportPath = join(outputDir, "report.html");
  if (isMain) {
    if (lora) await saveAdapter(lora, modelDir, { baseModelNameOrPath: config.base_model });
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
  };
}
