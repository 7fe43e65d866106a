import type { Command } from "commander";
import { loadTokenizer } from "@qlora/models";
import { loadTokenDataset } from "@qlora/trainer";
import { loadTrainConfig } from "../config";
import type { GlobalOptions, Io } from "../main";
import { positiveInt } from "../main";
import { dataTokenizer, datasetOptions, withSpecialTokens } from "../train";
import { overridePairs } from "./train";
import { requireModelDir } from "../infer";

/**
 * Render one tokenized example with its label mask: tokens that carry loss as they are, masked ones (prompt,
 * padding) between ⟦ ⟧, so a user sees at once what the model is trained to produce.
 */
export function showLabels(ids: Int32Array, labels: Int32Array, decode: (ids: number[]) => string): string {
  let out = "";
  let i = 0;
  while (i < ids.length) {
    const trained = labels[i] !== -100;
    let j = i;
    while (j < ids.length && (labels[j] !== -100) === trained) j++;
    const text = decode([...ids.subarray(i, j)]);
    out += trained ? text : `⟦${text}⟧`;
    i = j;
  }
  return out;
}

export function registerPreprocess(program: Command, io: Io): void {
  program
    .command("preprocess")
    .description("tokenize a config's datasets and report counts; --debug shows examples with the label mask")
    .argument("<config>", "config.yaml")
    .option("--debug", "print examples, masked (no-loss) tokens between ⟦ ⟧")
    .option(
      "--debug-num-examples <n>",
      "how many examples --debug prints",
      (v) => positiveInt(v, "--debug-num-examples"),
      3,
    )
    .allowUnknownOption()
    .allowExcessArguments()
    .action(async function (this: Command, file: string, o) {
      const global = this.optsWithGlobals() as GlobalOptions;
      // commander consumed --debug and --debug-num-examples; what is left are config overrides.
      const config = loadTrainConfig(file, overridePairs(this.args.slice(1)));
      requireModelDir(config.base_model, "base_model");
      if (!global.quiet) for (const warning of config.warnings ?? []) io.err(`qlora: ${warning}`);
      const tokenizer = withSpecialTokens(await loadTokenizer(config.base_model), config);
      const data = await loadTokenDataset(datasetOptions(config, dataTokenizer(tokenizer, config)));
      const shown: string[] = [];
      if (o.debug)
        for (let i = 0; i < Math.min(o.debugNumExamples, data.stats.examples); i++) {
          const ex = data.example(i);
          shown.push(showLabels(ex.inputIds, ex.labels, (ids) => tokenizer.decode(ids)));
        }
      if (global.json) return io.out(JSON.stringify({ stats: data.stats, examples: shown }));
      const s = data.stats;
      io.out(
        `${s.rows} rows → ${s.examples} examples (${s.evalExamples} held out), ${s.tokens} tokens; ${s.truncated} truncated, ${s.dropped} dropped (${s.noLossTokens} with no label left)`,
      );
      for (const [i, text] of shown.entries()) io.out(`--- example ${i} ---\n${text}`);
    });
}
