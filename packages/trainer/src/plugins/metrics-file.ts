/**
 * Appends every `log` and `eval:end` record to `<outputDir>/metrics.jsonl` (one JSON object per line), so the file
 * holds one history per run:
 * - a run that starts from step 0 replaces what an earlier run left in the file;
 * - a resumed run keeps the records at or before its checkpoint's step and drops the later ones (they belong to
 *   the steps it is about to train again, after a crash or a kill), as HF's Trainer restores log_history from
 *   the checkpoint's trainer_state.json;
 * - an evaluation before fit() (the step-0 eval loss) is recorded too, once fit() has decided the above; outside
 *   fit() (evaluate() alone) it is appended at once;
 * - a second evaluation at the step of the previous one (the model has not changed) is not recorded twice.
 * The file exists once fit() starts, even when the run has no step left to train.
 */
import { appendFileSync, existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { ensureDirectorySync } from "@qlora/formats";
import { join } from "node:path";
import { TrainerError } from "../errors";
import type { TrainerPlugin } from "../plugin";

/** A file operation on the metrics file; its failure (a directory in the way, a full disk) names the file. */
function onFile<T>(file: string, what: string, op: () => T): T {
  try {
    return op();
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new TrainerError("METRICS_FILE", `${file}: cannot ${what} the metrics file (${err.code ?? err.message})`, {
      file,
    });
  }
}

type Record_ = Record<string, unknown>;

/** Records of a metrics file; a line that does not parse (a write a kill cut short) is dropped. */
function readRecords(file: string): Record_[] {
  if (!existsSync(file)) return [];
  const out: Record_[] = [];
  for (const line of onFile(file, "read", () => readFileSync(file, "utf8")).split("\n")) {
    if (line.trim() === "") continue;
    try {
      const r = JSON.parse(line) as unknown;
      if (r !== null && typeof r === "object" && !Array.isArray(r)) out.push(r as Record_);
    } catch {
      // a torn last line
    }
  }
  return out;
}

const isEval = (r: Record_) => Object.keys(r).some((k) => k.startsWith("eval_"));

export function metricsFile(path?: string): TrainerPlugin {
  let file: string | undefined;
  let fitStarted = false;
  /** Records made before fit() started (and already appended, in case fit() never comes). */
  const early: Record_[] = [];
  let lastEvalStep: number | undefined;

  const resolve = (trainer: unknown): string | undefined => {
    if (file === undefined) {
      const out = (trainer as { args?: { outputDir?: string } }).args?.outputDir;
      file = path ?? (out ? join(out, "metrics.jsonl") : undefined);
      if (file) ensureDirectorySync(join(file, ".."));
    }
    return file;
  };
  const line = (r: Record_) => `${JSON.stringify(r)}\n`;
  const write = (trainer: unknown, record: Record_) => {
    const f = resolve(trainer);
    if (!f) return;
    const r = { time: new Date().toISOString(), ...record };
    if (!fitStarted) early.push(r);
    onFile(f, "append to", () => appendFileSync(f, line(r)));
  };
  return {
    name: "metrics-file",
    order: "post",
    hooks: {
      "fit:start"(ctx) {
        const f = resolve(ctx.trainer);
        fitStarted = true;
        if (!f) return;
        // What the file held before this process wrote to it (this process's early records are its last lines).
        const before = readRecords(f);
        before.splice(before.length - early.length, early.length);
        // fit() starts at step 0 (a new run) or at the step of the checkpoint it resumed from.
        const at = ctx.state.globalStep;
        const kept = at > 0 ? before.filter((r) => typeof r.step === "number" && r.step <= at) : [];
        // A resumed run's step-0 eval measures the model the first run measured: keep the first run's record.
        const evalSteps = new Set(kept.filter(isEval).map((r) => r.step));
        for (const r of early) if (!(isEval(r) && evalSteps.has(r.step))) kept.push(r);
        const tmp = `${f}.tmp-${process.pid}`;
        onFile(f, "rewrite", () => {
          writeFileSync(tmp, kept.map(line).join(""));
          renameSync(tmp, f);
        });
        early.length = 0;
      },
      log: (ctx) => write(ctx.trainer, { step: ctx.state.globalStep, ...ctx.metrics }),
      "eval:end"(ctx) {
        const step = ctx.state.globalStep;
        if (step === lastEvalStep) return;
        lastEvalStep = step;
        write(ctx.trainer, { step, ...ctx.metrics });
      },
      "checkpoint:save": (ctx) => write(ctx.trainer, { step: ctx.state.globalStep, checkpoint: ctx.dir }),
    },
  };
}
