import type { Command } from "commander";
import type { GlobalOptions, Io } from "../main";
import { writeReport } from "../report";

export function registerReport(program: Command, io: Io): void {
  program
    .command("report")
    .description("write <run_dir>/report.html: loss, eval loss, learning rate, tokens/s and memory over steps")
    .argument("<run_dir>", "a training run's output directory (with metrics.jsonl)")
    .action(function (this: Command, runDir: string) {
      const global = this.optsWithGlobals() as GlobalOptions;
      const path = writeReport(runDir);
      io.out(global.json ? JSON.stringify({ report: path }) : `report written to ${path}`);
    });
}
