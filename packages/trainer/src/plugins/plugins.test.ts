import { mkdtempSync, readFileSync, rmSync } from "node:fs";
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
    expect(text).toMatch(/6\/6 \| loss [\d.]+ \| lr/);
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
