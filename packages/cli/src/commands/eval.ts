import type { Command } from "commander";
import { loadTokenDataset } from "@qlora/trainer";
import { existsSync } from "node:fs";
import { CliError } from "../errors";
import { DATASET_TYPES } from "../config";
import { datasetLoss, loadForInference } from "../infer";
import type { GlobalOptions, Io } from "../main";
import { positiveInt } from "../main";
import { checkQuantize } from "./generate";
import { chatFields, DATASET_FORMATS } from "../train";

export function registerEval(program: Command, io: Io): void {
  program
    .command("eval")
    .description("loss and perplexity of a model (and adapter) on a dataset")
    .requiredOption("--model <dir>", "base model directory")
    .option("--adapter <dir>", "PEFT adapter directory")
    .requiredOption("--data <file>", "a .jsonl, .json, .txt or .parquet file")
    .option("--type <format>", `row format: ${DATASET_TYPES.join(", ")} (default: by the keys of each row)`)
    .option("--sequence-len <n>", "tokens per example", (v) => positiveInt(v, "--sequence-len"), 512)
    .option("--quantize <q>", "how the base weights are held: nf4 or none", "nf4")
    .action(async function (this: Command, o) {
      const global = this.optsWithGlobals() as GlobalOptions;
      const quantize = checkQuantize(o.quantize);
      if (!existsSync(o.data)) throw new CliError("BAD_PATH", `--data: ${o.data} does not exist`);
      if (!/\.(jsonl|json|txt|parquet)$/i.test(o.data))
        throw new CliError(
          "BAD_ARGUMENT",
          `--data: ${o.data}: cannot tell the file format from its extension; expected .jsonl, .json, .txt or .parquet`,
        );
      if (o.type !== undefined && !(DATASET_TYPES as readonly string[]).includes(o.type))
        throw new CliError("BAD_ARGUMENT", `--type: expected one of ${DATASET_TYPES.join(", ")}, got "${o.type}"`);
      const loaded = await loadForInference(o.model, {
        adapter: o.adapter,
        quantize,
        quiet: global.quiet || global.json,
      });
      const data = await loadTokenDataset({
        files: o.data,
        format: o.type ? DATASET_FORMATS[o.type as keyof typeof DATASET_FORMATS] : "auto",
        chat: o.type ? chatFields({ path: o.data, type: o.type } as Parameters<typeof chatFields>[0]) : undefined,
        tokenizer: loaded.tokenizer,
        maxLength: o.sequenceLen,
        microBatchSize: 1,
        shuffle: false,
      });
      const { loss, tokens } = datasetLoss(loaded.model, data.train);
      const result = { loss, perplexity: Math.exp(loss), tokens, examples: data.stats.examples };
      io.out(
        global.json
          ? JSON.stringify(result)
          : `loss ${loss.toFixed(4)}  perplexity ${result.perplexity.toFixed(3)}  (${tokens} tokens, ${result.examples} examples)`,
      );
    });
}
