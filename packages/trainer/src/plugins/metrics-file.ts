/** Appends every `log` and `eval:end` record to `<outputDir>/metrics.jsonl` (one JSON object per line). */
import { appendFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import type { TrainerPlugin } from "../plugin";

export function metricsFile(path?: string): TrainerPlugin {
  let file: string | undefined;
  const write = (record: Record<string, unknown>) => {
    if (file) appendFileSync(file, `${JSON.stringify({ time: new Date().toISOString(), ...record })}\n`);
  };
  return {
    name: "metrics-file",
    order: "post",
    hooks: {
      "fit:start"(ctx) {
        const out = (ctx.trainer as { args: { outputDir?: string } }).args.outputDir;
        file = path ?? (out ? join(out, "metrics.jsonl") : undefined);
        if (file) mkdirSync(join(file, ".."), { recursive: true });
      },
      log: (ctx) => write({ step: ctx.state.globalStep, ...ctx.metrics }),
      "eval:end": (ctx) => write({ step: ctx.state.globalStep, ...ctx.metrics }),
      "checkpoint:save": (ctx) => write({ step: ctx.state.globalStep, checkpoint: ctx.dir }),
    },
  };
}
