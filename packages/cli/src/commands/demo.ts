import type { Command } from "commander";
import { runDemo } from "../demo/run";
import type { GlobalOptions, Io } from "../main";
import { CommandExit, positiveInt } from "../main";

export function registerDemo(program: Command, io: Io): void {
  program
    .command("demo")
    .description("QLoRA-fine-tune the embedded model on its question/answer task; accuracy and loss before and after")
    .option("--steps <n>", "optimizer steps", (v) => positiveInt(v, "--steps"), 120)
    .option("--out <dir>", "output directory", "qlora-demo-output")
    .action(async function (this: Command, o) {
      const global = this.optsWithGlobals() as GlobalOptions;
      const abort = new AbortController();
      const onSigint = () => abort.abort();
      process.once("SIGINT", onSigint);
      try {
        const result = await runDemo({
          steps: o.steps,
          outputDir: o.out,
          quiet: global.quiet,
          signal: abort.signal,
          print: global.json ? () => {} : io.out,
        });
        if (global.json) io.out(JSON.stringify(result));
      } finally {
        process.removeListener("SIGINT", onSigint);
      }
      // interrupted: what it got to is printed; the exit code says it did not finish, as train's does
      if (abort.signal.aborted) throw new CommandExit(130);
    });
}
