import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Command } from "commander";
import { CliError } from "../errors";
import {
  type BaseQuant,
  DEFAULT_ESTIMATE,
  type EstimateOptions,
  estimateMemory,
  formatPerRank,
  formatPlan,
  modelShapeFromConfig,
  optimizerSpec,
  singleProcessParts,
} from "../estimate";
import { OPTIMIZERS, loadTrainConfig } from "../config";
import { bnb4bitConfig, isBnb4bit } from "../infer";
import { readJson } from "../inspect";
import { type GlobalOptions, type Io, positiveInt } from "../main";
import { loadDistributed } from "../ranks";
import { parseConfig } from "@qlora/models";

export function registerEstimate(program: Command, io: Io): void {
  program
    .command("estimate")
    .description("memory plan of a fine-tuning run (weights, adapters, optimizer, activations, logits)")
    .option("--model <path>", "model directory or its config.json")
    .option(
      "--config <file>",
      "a train config: its base_model, sequence_len, micro_batch_size, lora_r, lora_dropout, optimizer, gradient_checkpointing, 4-bit settings and LoRA targets (flags given here win)",
    )
    .option("--seq-len <n>", "tokens per sequence", (v) => positiveInt(v, "--seq-len"), DEFAULT_ESTIMATE.seqLen)
    .option("--micro-batch-size <n>", "sequences per micro-batch", (v) => positiveInt(v, "--micro-batch-size"), 1)
    .option("--lora-r <n>", "LoRA rank", (v) => positiveInt(v, "--lora-r"), DEFAULT_ESTIMATE.loraR)
    .option("--lora-dropout <p>", "lora_dropout (above 0, each LoRA linear keeps its dropout mask)", (v) =>
      probability(v, "--lora-dropout"),
    )
    .option("--optimizer <name>", `as the config's optimizer key: ${OPTIMIZERS.join(" | ")}`, "adamw_torch")
    .option(
      "--quant <q>",
      "base weights: nf4-dq | nf4 | none (default: a bitsandbytes 4-bit checkpoint's own, else nf4-dq)",
    )
    .option(
      "--gradient-checkpointing",
      "recompute each layer's activations in backward (as gradient_checkpointing: true; off by default, as in train)",
    )
    .option("--no-gradient-checkpointing", "keep every layer's activations (the default)")
    .option(
      "--world-size <n>",
      "also the per-rank memory of n ranks under DDP and FSDP (--micro-batch-size is per rank)",
      (v) => positiveInt(v, "--world-size"),
    )
    .option("--logits-chunk <n>", "rows of logits per chunk (default: the model's, ≈ 8 Mi logits)", (v) =>
      positiveInt(v, "--logits-chunk"),
    )
    .action(async function (this: Command, o) {
      const global = this.optsWithGlobals() as GlobalOptions;
      const allLinear = o.config ? fromTrainConfig(this, o) : DEFAULT_ESTIMATE.allLinear;
      if (o.model === undefined) throw new CliError("BAD_ARGUMENT", "estimate: give --model <dir> or --config <file>");
      if (!(OPTIMIZERS as readonly string[]).includes(o.optimizer))
        throw new CliError(
          "BAD_ARGUMENT",
          `--optimizer: expected one of ${OPTIMIZERS.join(", ")}, got "${o.optimizer}"`,
        );
      if (o.quant !== undefined && !["nf4-dq", "nf4", "none"].includes(o.quant))
        throw new CliError("BAD_ARGUMENT", `--quant: expected nf4-dq, nf4 or none, got "${o.quant}"`);
      const file = existsSync(o.model) && statSync(o.model).isDirectory() ? join(o.model, "config.json") : o.model;
      if (!existsSync(file)) throw new CliError("BAD_PATH", `--model: ${file} does not exist`);
      const config = readJson(file);
      parseConfig(config, file); // the architecture and shapes a load would check (ModelError naming file and key)
      o.quant = baseQuantOf(config, file, o.quant);
      const shape = modelShapeFromConfig(config, file);
      const options: EstimateOptions = {
        ...DEFAULT_ESTIMATE,
        seqLen: o.seqLen,
        microBatchSize: o.microBatchSize,
        loraR: o.loraR,
        loraDropout: o.loraDropout,
        ...optimizerSpec(o.optimizer),
        // commander sets no default when both --x and --no-x are declared: off, as train's gradient_checkpointing
        gradientCheckpointing: o.gradientCheckpointing ?? DEFAULT_ESTIMATE.gradientCheckpointing,
        baseQuant: o.quant as BaseQuant,
        logitsChunk: o.logitsChunk,
        allLinear,
      };
      const plan = estimateMemory(shape, options);
      if (o.worldSize === undefined) return io.out(global.json ? JSON.stringify(plan) : formatPlan(plan));
      const { perRankMemory } = await loadDistributed(`--world-size ${o.worldSize}`);
      const parts = singleProcessParts(plan, shape.numLayers);
      // FSDP's units recompute their layer in backward whatever gradient_checkpointing says (as train runs them)
      const checkpointed = options.gradientCheckpointing
        ? parts
        : singleProcessParts(estimateMemory(shape, { ...options, gradientCheckpointing: true }), shape.numLayers);
      // FSDP shards 4-bit base weights only: a 16-bit base stays whole on every rank
      const fsdpParts =
        options.baseQuant === "none"
          ? {
              ...checkpointed,
              replicatedBytes: checkpointed.replicatedBytes + checkpointed.baseWeightBytes,
              baseWeightBytes: 0,
            }
          : checkpointed;
      const perRank = {
        ddp: perRankMemory(parts, o.worldSize, "ddp"),
        fsdp: perRankMemory(fsdpParts, o.worldSize, "fsdp"),
      };
      if (global.json) return io.out(JSON.stringify({ ...plan, worldSize: o.worldSize, perRank }));
      io.out(`${formatPlan(plan)}\n\n${formatPerRank([perRank.ddp, perRank.fsdp])}`);
    });
}

/**
 * How the base weights will be held: a bitsandbytes 4-bit checkpoint loads as it was saved (nf4-dq or nf4; FP4 takes
 * the same bytes), so --quant none is refused for it; a dense checkpoint is quantized as --quant says (default nf4-dq).
 */
function baseQuantOf(config: Record<string, unknown>, file: string, flag: BaseQuant | undefined): BaseQuant {
  const q = config.quantization_config as Record<string, unknown> | undefined | null;
  if (q === undefined || q === null) return flag ?? "nf4-dq";
  if (!isBnb4bit(q))
    throw new CliError(
      "UNSUPPORTED",
      `--model: ${file} is quantized with ${JSON.stringify(q.quant_method ?? null)}${q.load_in_8bit ? " (8-bit)" : ""}, which qlora does not load; estimate its unquantized release`,
    );
  const own: BaseQuant = q.bnb_4bit_use_double_quant === true ? "nf4-dq" : "nf4";
  if (flag === "none")
    throw new CliError(
      "BAD_ARGUMENT",
      `--quant none: ${file} is a bitsandbytes 4-bit checkpoint; its base weights load as 4-bit (${own})`,
    );
  return flag ?? own;
}

function probability(v: string, flag: string): number {
  const p = Number(v);
  if (v.trim() === "" || !(p >= 0 && p < 1))
    throw new CliError("BAD_ARGUMENT", `${flag}: expected a number in [0, 1), got "${v}"`);
  return p;
}

/**
 * --config: the train config's settings fill every option not given on the command line (the flag wins). Returns
 * whether LoRA goes on every linear (lora_target_linear, or "all-linear"); other target lists are planned as
 * q_proj + v_proj, PEFT's default.
 */
function fromTrainConfig(cmd: Command, o: Record<string, unknown>): boolean {
  const c = loadTrainConfig(o.config as string);
  const fill = (key: string, value: unknown) => {
    if (cmd.getOptionValueSource(key) !== "cli" && value !== undefined) o[key] = value;
  };
  fill("model", c.base_model);
  fill("seqLen", c.sequence_len);
  fill("microBatchSize", c.micro_batch_size);
  fill("loraR", c.lora_r);
  fill("loraDropout", c.lora_dropout);
  fill("optimizer", c.optimizer);
  fill("gradientCheckpointing", c.gradient_checkpointing);
  // a bitsandbytes checkpoint loads as it was saved (baseQuantOf reads it); a dense base is held as the config says
  if (cmd.getOptionValueSource("quant") !== "cli" && !bnb4bitConfig(String(o.model)))
    o.quant = c.load_in_4bit || c.adapter === "qlora" ? (c.bnb_4bit_use_double_quant ? "nf4-dq" : "nf4") : "none";
  return c.lora_target_linear || c.lora_target_modules === "all-linear";
}
