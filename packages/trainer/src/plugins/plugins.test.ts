import { appendFileSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { manualSeed } from "@qlora/tensor";
import { afterAll, describe, expect, it } from "vitest";
import { type Batch, StatefulAdamW, TinyLM, memorySource, randomBatches, tinyLoss } from "../../test/helpers/tiny";
import type { TrainerPlugin } from "../plugin";
import { Trainer, type TrainingArgs } from "../trainer";
import { earlyStopping } from "./early-stopping";
import { memoryReport } from "./memory-report";
import { metricsFile } from "./metrics-file";
import { neftune } from "./neftune";
import { progress } from "./progress";

const root = mkdtempSync(join(tmpdir(), "qlora-plugins-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

function readJsonl(file: string): Record<string, number>[] {
  return readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l));
}

function run(plugins: TrainerPlugin[], args: Partial<TrainingArgs> = {}, evalData?: Batch[]) {
  manualSeed(11);
  const model = new TinyLM();
  const trainer = new Trainer<Batch>({
    model,
    optimizer: new StatefulAdamW(
      model.parameters().filter((p) => p.requiresGrad),
      { lr: 0.05 },
    ),
    loss: (m, b) => tinyLoss(m, b),
    train: memorySource(randomBatches(6, 2, 5, 11)),
    eval: evalData ? memorySource(evalData) : undefined,
    args: { loggingSteps: 2, ...args },
    plugins,
  });
  return { model, trainer };
}

describe("built-in plugins", () => {
  it("early stopping stops after `patience` evaluations without improvement", async () => {
    const { trainer } = run(
      [earlyStopping({ patience: 2, threshold: 100 })],
      { evalSteps: 1, maxSteps: 20 },
      randomBatches(1, 2, 5, 11, 3),
    );
    const s = await trainer.fit();
    expect(s.globalStep).toBe(3); // eval 1 sets best; evals 2 and 3 do not beat it by 100
    expect(trainer.control.stopReason).toMatch(/early stopping: eval_loss did not improve for 2 evaluations/);
  });

  it("metrics.jsonl gets every log and eval record; plain progress lines off a TTY", async () => {
    const out = join(root, "metrics");
    const lines: string[] = [];
    const { trainer } = run(
      [metricsFile(), progress({ stream: { isTTY: false, write: (s: string) => lines.push(s) } })],
      { outputDir: out, evalSteps: 3 },
      randomBatches(1, 2, 5, 11, 3),
    );
    await trainer.fit();
    const records = readFileSync(join(out, "metrics.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(records.filter((r) => "loss" in r).map((r) => r.step)).toEqual([1, 2, 4, 6]);
    expect(records.filter((r) => "eval_loss" in r).map((r) => r.step)).toEqual([3, 6]);
    expect(lines.filter((l) => l.startsWith("step ")).length).toBe(6);
    expect(lines[0]).toMatch(
      /^step 1\/6 loss [\d.]+ lr [\d.e-]+ grad_norm [\d.]+ tokens\/s [\d.e+]+ \([\d.e+]+ with loss\) mem \d+MiB \(peak \d+MiB\)\n$/,
    );
  });

  it("metrics.jsonl records the eval before fit() and an eval at the same step once (file and progress lines)", async () => {
    const out = join(root, "metrics-eval");
    const lines: string[] = [];
    const { trainer } = run(
      [metricsFile(), progress({ stream: { isTTY: false, write: (s: string) => lines.push(s) } })],
      { outputDir: out, evalSteps: 3 },
      randomBatches(1, 2, 5, 11, 3),
    );
    const before = await trainer.evaluate(); // the CLI's "eval loss before"
    await trainer.fit(); // evaluates at steps 3 and 6 (the last)
    const after = await trainer.evaluate(); // the CLI's "eval loss after", at step 6 again
    const records = readJsonl(join(out, "metrics.jsonl"));
    const evals = records.filter((r) => "eval_loss" in r);
    expect(evals.map((r) => r.step)).toEqual([0, 3, 6]);
    expect(evals[0].eval_loss).toBe(before.eval_loss);
    expect(evals[2].eval_loss).toBe(after.eval_loss);
    expect(lines.filter((l) => / eval_loss /.test(l)).map((l) => l.split(" ")[1])).toEqual(["0", "3", "6"]);
  });

  it("metrics.jsonl: a resumed run drops the records after its checkpoint; a new run replaces the file", async () => {
    const out = join(root, "metrics-resume");
    const first = run([metricsFile()], { outputDir: out, saveSteps: 4, loggingSteps: 1 });
    await first.trainer.fit(); // steps 1–6 logged, checkpoint-4 saved
    const file = join(out, "metrics.jsonl");
    // as after kill -9 in the middle of a write
    appendFileSync(file, '{"step": 7, "loss": 1.');
    const resumed = run([metricsFile()], { outputDir: out, saveSteps: 4, loggingSteps: 1 });
    await resumed.trainer.fit({ resumeFrom: join(out, "checkpoint-4") });
    const records = readJsonl(file);
    const losses = records.filter((r) => "loss" in r);
    expect(losses.map((r) => r.step)).toEqual([1, 2, 3, 4, 5, 6]);
    // steps 5 and 6 are the resumed run's, and their losses are the first run's (exact resume)
    const firstLosses = first.trainer.state.logHistory.filter((h) => "loss" in h);
    expect(losses.map((r) => r.loss)).toEqual(firstLosses.map((h) => h.loss));
    expect(records.filter((r) => "checkpoint" in r).map((r) => r.step)).toEqual([4, 6]); // saves at the last step too

    // resumed at or past max_steps: nothing to train, the file is there with the history up to the checkpoint
    const past = join(root, "metrics-past");
    const done = run([metricsFile()], { outputDir: past, maxSteps: 3 });
    await done.trainer.fit({ resumeFrom: join(out, "checkpoint-4") });
    expect(done.trainer.state.globalStep).toBe(4);
    expect(readJsonl(join(past, "metrics.jsonl"))).toEqual([]);

    // a new run (from step 0) into the same output_dir starts the file over
    const again = run([metricsFile()], { outputDir: out, maxSteps: 2, loggingSteps: 1 });
    await again.trainer.fit();
    expect(readJsonl(file).map((r) => r.step)).toEqual([1, 2]);
  });

  it("the progress bar draws on a TTY stream", async () => {
    let text = "";
    const stream = {
      isTTY: true,
      columns: 120,
      write: (s: string) => (text += s),
      cursorTo() {},
      clearLine() {},
      moveCursor() {},
      on() {},
      removeListener() {},
    };
    const { trainer } = run([progress({ stream: stream as never, bar: true })]);
    await trainer.fit();
    expect(text).toMatch(/6\/6 \| loss [\d.]+ \| eval - \| lr/);
    // evaluations during training show on the bar (latest eval loss and its step)
    text = "";
    const evals = run([progress({ stream: stream as never, bar: true })], { evalSteps: 3 }, randomBatches(2, 2, 5, 11));
    await evals.trainer.fit();
    expect(text).toMatch(/6\/6 \| loss [\d.]+ \| eval [\d.]+ @6 \| lr/);
  });

  it("memory report: adapters, base weights and optimizer state at start and end", async () => {
    const lines: string[] = [];
    const rep = memoryReport((l) => lines.push(l));
    const { trainer, model } = run([rep]);
    await trainer.fit();
    expect(rep.reports).toHaveLength(2);
    const trainable = model
      .parameters()
      .filter((p) => p.requiresGrad)
      .reduce((s, p) => s + p.size * 4, 0);
    expect(rep.reports[1].adapterBytes).toBe(trainable);
    expect(rep.reports[1].baseWeightBytes).toBe(model.norm.weight.size * 4);
    expect(rep.reports[0].optimizerStateBytes).toBe(0);
    expect(rep.reports[1].optimizerStateBytes).toBe(2 * trainable);
    expect(rep.reports[1].activationPeakBytes).toBeGreaterThan(0);
    expect(lines[1]).toMatch(
      /memory \(end\): base weights .* MiB, adapters .* optimizer state .* activation peak .* RSS/,
    );
  });

  it("NEFTune adds seeded noise in training only, and restores the module at the end", async () => {
    const plain = run([]);
    await plain.trainer.fit();
    const a = run([neftune({ alpha: 5 })]);
    const originalForward = a.model.embed.forward;
    await a.trainer.fit();
    const b = run([neftune({ alpha: 5 })]);
    await b.trainer.fit();
    const w = (m: TinyLM) => [...m.head.weight.toTypedArray()];
    expect(w(a.model)).toEqual(w(b.model)); // same seed, same noise
    expect(w(a.model)).not.toEqual(w(plain.model));
    expect(a.model.embed.forward).toBe(originalForward);
    await expect(run([neftune({ alpha: 5, module: "nope" })]).trainer.fit()).rejects.toThrow(/no module "nope"/);
  });
});
