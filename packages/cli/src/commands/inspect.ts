import type { Command } from "commander";
import { formatInspection, inspectPath } from "../inspect";
import type { GlobalOptions, Io } from "../main";

export function registerInspect(program: Command, io: Io): void {
  program
    .command("inspect")
    .description("summary of a safetensors file, checkpoint, GGUF file, adapter or run directory")
    .argument("<path>", "file or directory")
    .action(async function (this: Command, path: string) {
      const global = this.optsWithGlobals() as GlobalOptions;
      const inspection = await inspectPath(path);
      io.out(global.json ? JSON.stringify(inspection) : formatInspection(inspection));
    });
}
