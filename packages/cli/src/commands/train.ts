import type { Command } from "commander";
import { loadTrainConfig } from "../config";
import { CliError } from "../errors";
import type { GlobalOptions, Io } from "../main";
import { runTrain } from "../train";

/** `--lora-r 16 --sample-packing true` → { "lora-r": "16", "sample-packing": "true" }. */
export function overridePairs(args: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (!a.startsWith("--"))
      throw new CliError("BAD_ARGUMENT", `train: unexpected argument "${a}" (overrides are --key value)`);
    const eq = a.indexOf("=");
    if (eq > 0) out[a.slice(2, eq)] = a.slice(eq + 1);
    else if (i + 1 < args.length && !args[i + 1].startsWith("--")) out[a.slice(2)] = args[++i];
    else out[a.slice(2)] = "true";
  }
  return out;
}

export function registerTrain(program: Command, io: Io): void {
  program
    .command("train")
    .description("fine-tune from a YAML config (Axolotl key names); any key can be overridden as --key value")
    .argument("<config>", "config.yaml")
    .allowUnknownOption()
    .allowExcessArguments()
    .action(async function (this: Command, file: string) {
      const global = this.optsWithGlobals() as GlobalOptions;
      const config = loadTrainConfig(file, overridePairs(this.args.slice(1)));
      const abort = new AbortController();
      const onSigint = () => {
        io.err("qlora: interrupted — writing a checkpoint at the end of this step (Ctrl-C again to quit at once)");
        process.once("SIGINT", () => process.exit(130));
        abort.abort();
      };
      process.once("SIGINT", onSigint);
      try {
        const result = await runTrain(config, { quiet: global.quiet, signal: abort.signal });
        if (global.json) io.out(JSON.stringify(result));
        else {
          const loss =
            result.evalLossBefore !== undefined && result.evalLossAfter !== undefined
              ? `; eval loss ${result.evalLossBefore.toFixed(4)} → ${result.evalLossAfter.toFixed(4)}`
              : "";
          io.out(`trained ${result.globalStep} steps${loss}`);
          io.out(`${result.interrupted ? "interrupted; " : ""}weights: ${result.modelDir}`);
          io.out(`report: ${result.reportPath}`);
        }
      } finally {
        process.removeListener("SIGINT", onSigint);
      }
    });
}
