import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Module, type Tensor, manualSeed, memoryStats, tensor } from "@qlora/tensor";
import { afterEach, describe, expect, it } from "vitest";
import { FakeRankStrategy, FakeWorld, guardGrads } from "../test/helpers/fake-world";
import { type Batch, StatefulAdamW, TinyLM, memorySource, randomBatches, tinyLoss } from "../test/helpers/tiny";
import {
  type BatchSource,
  EVENT_KINDS,
  type EventName,
  Trainer,
  TrainerError,
  type TrainerPlugin,
  type TrainingArgs,
  strategyByName,
} from "./index";

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), "qlora-trainer-"));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function makeTrainer(
  batches: Batch[],
  args: Partial<TrainingArgs> = {},
  extra: {
    plugins?: TrainerPlugin[];
    eval?: Batch[];
    seed?: number;
    train?: BatchSource<Batch>;
    onWarning?: (m: string) => void;
  } = {},
) {
  manualSeed(extra.seed ?? 7);
  const model = new TinyLM();
  const optimizer = new StatefulAdamW(
    model.parameters().filter((p) => p.requiresGrad),
    { lr: 0.01 },
  );
  const trainer = new Trainer<Batch>({
    model,
    optimizer,
    loss: (m, b) => tinyLoss(m, b),
    train: extra.train ?? memorySource(batches),
    eval: extra.eval ? memorySource(extra.eval) : undefined,
    args: { learningRate: 0.01, loggingSteps: 1, ...args },
    plugins: extra.plugins,
    onWarning: extra.onWarning,
  });
  return { model, optimizer, trainer };
}

function maxAbsDiff(a: number[][], b: number[][]): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) for (let j = 0; j < a[i].length; j++) d = Math.max(d, Math.abs(a[i][j] - b[i][j]));
  return d;
}

function snapshot(t: Tensor[]): number[][] {
  return t.map((p) => [...p.toTypedArray()]);
}

describe("events", () => {
  it("fire in the documented order, with their declared kinds", async () => {
    const seen: string[] = [];
    const recorder: TrainerPlugin = {
      name: "recorder",
      hooks: Object.fromEntries(
        (Object.keys(EVENT_KINDS) as EventName[]).map((e) => [
          e,
          EVENT_KINDS[e] === "waterfall"
            ? (v: unknown) => {
                seen.push(e);
                return v;
              }
            : () => {
                seen.push(e);
                return undefined;
              },
        ]),
      ),
    };
    const { trainer } = makeTrainer(
      randomBatches(4, 2, 5, 11),
      { gradientAccumulationSteps: 2, evalSteps: 2, saveSteps: 2, outputDir: tempDir() },
      { plugins: [recorder], eval: randomBatches(1, 2, 5, 11, 9) },
    );
    await trainer.fit();
    const step = [
      "step:start",
      "batch:transform",
      "batch:transform",
      "loss:transform",
      "backward:before",
      "microstep:end",
      "loss:transform",
      "backward:before",
      "microstep:end",
      "optimizer:step:before",
      "optimizer:step:after",
      "step:end",
    ];
    expect(seen).toEqual([
      "checkpoint:resolve",
      "fit:start",
      "epoch:start",
      ...step,
      "log",
      ...step,
      "eval:start",
      "eval:end",
      "log",
      "checkpoint:save",
      "epoch:end",
      "fit:end",
    ]);
    expect(EVENT_KINDS["loss:transform"]).toBe("waterfall");
    expect(EVENT_KINDS["checkpoint:resolve"]).toBe("first");
    expect(EVENT_KINDS["step:end"]).toBe("observe");
  });

  it("orders plugins pre → registration → post, teardown events in reverse", async () => {
    const order: string[] = [];
    const mk = (name: string, o?: "pre" | "post"): TrainerPlugin => ({
      name,
      order: o,
      hooks: { "fit:start": () => void order.push(`start:${name}`), "fit:end": () => void order.push(`end:${name}`) },
    });
    const { trainer } = makeTrainer(
      randomBatches(1, 1, 4, 11),
      {},
      { plugins: [mk("b", "post"), mk("a"), mk("c", "pre")] },
    );
    await trainer.fit();
    expect(order).toEqual(["start:c", "start:a", "start:b", "end:b", "end:a", "end:c"]);
  });

  it("waterfall replaces the loss, first-result picks the resume path", async () => {
    const { trainer, model } = makeTrainer(randomBatches(2, 2, 4, 11), { scheduler: { name: "constant" } });
    const before = snapshot(model.parameters());
    trainer.hooks.on("loss:transform", (loss) => {
      const zero = loss.mul(0);
      loss.dispose();
      return zero;
    });
    await trainer.fit();
    // AdamW with zero gradients still decays weights; the head moved only by weight decay (1 - lr·wd).
    const after = snapshot(model.parameters());
    const head = model.head.weight;
    const idx = model.parameters().indexOf(head);
    for (let i = 0; i < after[idx].length; i++)
      expect(after[idx][i]).toBeCloseTo(before[idx][i] * (1 - 0.01 * 0.01) ** 2, 6);
    const t2 = makeTrainer(randomBatches(1, 1, 4, 11)).trainer;
    t2.hooks.on("checkpoint:resolve", () => undefined);
    t2.hooks.on("checkpoint:resolve", () => "/definitely/not/a/checkpoint");
    await expect(t2.fit()).rejects.toMatchObject({ code: "CHECKPOINT_NOT_FOUND" });
  });

  it("an unregister function removes a handler", async () => {
    const { trainer } = makeTrainer(randomBatches(2, 1, 4, 11));
    let n = 0;
    const off = trainer.hooks.on("step:end", () => void n++);
    off();
    await trainer.fit();
    expect(n).toBe(0);
  });
});

describe("control", () => {
  it("stop ends training after the current step; save/evaluate/log flags reset every step", async () => {
    const dir = tempDir();
    const flags: boolean[] = [];
    const plugin: TrainerPlugin = {
      name: "stopper",
      order: "post",
      hooks: {
        "step:start": (ctx) => void flags.push(ctx.control.shouldSave),
        "step:end": (ctx) => {
          if (ctx.state.globalStep === 1) ctx.control.save();
          if (ctx.state.globalStep === 3) ctx.control.stop("enough");
        },
      },
    };
    const { trainer } = makeTrainer(randomBatches(10, 1, 4, 11), { outputDir: dir }, { plugins: [plugin] });
    const state = await trainer.fit();
    expect(state.globalStep).toBe(3);
    expect(trainer.control.stopReason).toBe("enough");
    expect(flags).toEqual([false, false, false]);
    expect(JSON.parse(readFileSync(join(dir, "checkpoint-1", "trainer_state.json"), "utf8")).globalStep).toBe(1);
  });
});

describe("plugins", () => {
  it("plugin state is saved in checkpoints and restored on resume", async () => {
    const dir = tempDir();
    const counter = () => {
      let steps = 0;
      const p: TrainerPlugin & { readonly steps: number } = {
        name: "counter",
        get steps() {
          return steps;
        },
        hooks: { "step:end": () => void steps++ },
        stateDict: () => ({ steps, nested: { arr: new Float32Array([1.5, Number.NaN]) } }),
        loadStateDict: (s) => {
          steps = (s as { steps: number }).steps;
        },
      };
      return p;
    };
    const c1 = counter();
    await makeTrainer(
      randomBatches(6, 1, 4, 11),
      { outputDir: dir, saveSteps: 2, maxSteps: 4 },
      { plugins: [c1] },
    ).trainer.fit();
    expect(c1.steps).toBe(4);
    const c2 = counter();
    const { trainer } = makeTrainer(randomBatches(6, 1, 4, 11), { outputDir: dir, maxSteps: 6 }, { plugins: [c2] });
    trainer.hooks.on("checkpoint:load", () => void expect(c2.steps).toBe(4));
    await trainer.fit({ resumeFrom: join(dir, "checkpoint-4") });
    expect(c2.steps).toBe(6);
  });

  it("a resume under other batching is said (its data position points at other examples); the same batching is not", async () => {
    const dir = mkdtempSync(join(tmpdir(), "qlora-recut-"));
    await makeTrainer(randomBatches(6, 1, 4, 11), { outputDir: dir, saveSteps: 2, maxSteps: 2 }).trainer.fit();
    const warned = (batches: number, accumulation: number) => {
      const said: string[] = [];
      const { trainer } = makeTrainer(
        randomBatches(batches, 1, 4, 11),
        { outputDir: dir, maxSteps: 3, gradientAccumulationSteps: accumulation },
        { onWarning: (m) => said.push(m) },
      );
      return trainer.fit({ resumeFrom: join(dir, "checkpoint-2") }).then(() => said);
    };
    expect(await warned(6, 1)).toEqual([]);
    expect(await warned(3, 1)).toEqual([
      `resume: ${join(dir, "checkpoint-2")} was saved with 6 micro-batches per epoch per rank, gradient accumulation 1, 1 rank; this run has 3 micro-batches per epoch per rank, gradient accumulation 1, 1 rank, so its data position (micro-batch 2 of the epoch) points at other examples: the rest of this epoch skips or repeats some. The run is now 3 steps long, not 2: the learning-rate schedule continues on the new length. Resume with the same micro_batch_size, gradient_accumulation_steps, number of ranks, sequence_len and data to continue exactly.`,
    ]);
    expect(await warned(6, 2)).toHaveLength(1);
  });

  it("two plugins with one name are refused", () => {
    const p = { name: "x", hooks: {} };
    expect(() => makeTrainer(randomBatches(1, 1, 4, 11), {}, { plugins: [p, p] })).toThrow(TrainerError);
  });
});

describe("gradient accumulation", () => {
  it("normalises by the step's total loss tokens: equals one big batch, not a mean of means", async () => {
    const micro = randomBatches(3, 2, 6, 11, 3);
    const tokens = micro.map((b) => b.labels.flat().filter((l) => l !== -100).length);
    expect(new Set(tokens).size).toBeGreaterThan(1); // uneven, so a mean of means would differ
    const big: Batch = { ids: micro.flatMap((b) => b.ids), labels: micro.flatMap((b) => b.labels) };
    const grads = async (batches: Batch[], accum: number) => {
      const { trainer, model } = makeTrainer(batches, { gradientAccumulationSteps: accum, maxSteps: 1 });
      let g: number[][] = [];
      trainer.hooks.on("optimizer:step:before", () => {
        g = model
          .parameters()
          .filter((p) => p.requiresGrad)
          .map((p) => [...(p.grad?.toTypedArray() ?? [])]);
      });
      await trainer.fit();
      return g;
    };
    const accumulated = await grads(micro, 3);
    const oneBatch = await grads([big], 1);
    const maxDiff = maxAbsDiff(accumulated, oneBatch);
    const maxAbs = Math.max(...accumulated.flat().map(Math.abs));
    expect(maxAbs).toBeGreaterThan(1e-3);
    expect(maxDiff).toBeLessThan(1e-6 * maxAbs + 1e-7);
    // mean of means: each micro-batch normalised by its own count, averaged: a different gradient.
    const { trainer, model } = makeTrainer(micro, { gradientAccumulationSteps: 3, maxSteps: 1 });
    let mm: number[][] = [];
    let i = 0;
    trainer.hooks.on("loss:transform", (loss) => {
      const total = tokens.reduce((a, b) => a + b, 0);
      const scaled = loss.mul(total / (3 * tokens[i++]));
      loss.dispose();
      return scaled;
    });
    trainer.hooks.on("optimizer:step:before", () => {
      mm = model
        .parameters()
        .filter((p) => p.requiresGrad)
        .map((p) => [...(p.grad?.toTypedArray() ?? [])]);
    });
    await trainer.fit();
    const mmDiff = maxAbsDiff(mm, oneBatch);
    expect(mmDiff).toBeGreaterThan(1e-4 * maxAbs);
  });
});

describe("non-finite guard", () => {
  it("skips a NaN step, counts it, and stops after N in a row with a clear message", async () => {
    const { trainer, model } = makeTrainer(randomBatches(8, 1, 4, 11), { maxNonFiniteInARow: 3 });
    const before = snapshot(model.parameters());
    trainer.hooks.on("loss:transform", (loss, ctx) => {
      if (ctx.state.globalStep < 1) return loss;
      const nan = loss.mul(Number.NaN);
      loss.dispose();
      return nan;
    });
    const err = await trainer.fit().catch((e) => e);
    expect(err).toBeInstanceOf(TrainerError);
    expect(err.code).toBe("NON_FINITE_LOSS");
    expect(err.message).toMatch(/NaN\/Inf for 3 steps in a row/);
    expect(trainer.state.nonFiniteTotal).toBe(3);
    expect(trainer.state.globalStep).toBe(4);
    expect(snapshot(model.parameters())).not.toEqual(before); // step 1 trained
  });

  it("a single NaN step is skipped and training goes on", async () => {
    const { trainer, model } = makeTrainer(randomBatches(3, 1, 4, 11));
    const afterStep: number[][][] = [];
    trainer.hooks.on("loss:transform", (loss, ctx) => {
      if (ctx.state.globalStep !== 1) return loss;
      const inf = loss.div(0);
      loss.dispose();
      return inf;
    });
    trainer.hooks.on("step:end", () => void afterStep.push(snapshot(model.parameters())));
    const state = await trainer.fit();
    expect(state.globalStep).toBe(3);
    expect(state.nonFiniteTotal).toBe(1);
    expect(afterStep[1]).toEqual(afterStep[0]);
    expect(afterStep[2]).not.toEqual(afterStep[1]);
  });
});

describe("a run that trains nothing", () => {
  it("every step non-finite: an error, not a finished run", async () => {
    const { trainer } = makeTrainer(randomBatches(3, 1, 4, 11));
    trainer.hooks.on("loss:transform", (loss) => {
      const nan = loss.mul(Number.NaN);
      loss.dispose();
      return nan;
    });
    await expect(trainer.fit()).rejects.toMatchObject({
      code: "NON_FINITE_LOSS",
      message: /every step of this run \(3\) had a NaN\/Inf loss or gradient norm and was skipped: nothing was trained/,
    });
  });

  it("no label in any batch: an error naming the cause", async () => {
    const unlabeled = randomBatches(2, 1, 4, 11).map((b) => ({ ...b, labels: b.labels.map((r) => r.map(() => -100)) }));
    await expect(makeTrainer(unlabeled).trainer.fit()).rejects.toMatchObject({
      code: "NO_LOSS_TOKENS",
      message: /no step of this run \(2\) had a token with a label/,
    });
  });
});

describe("resuming from a damaged checkpoint", () => {
  async function checkpoint(): Promise<string> {
    const outputDir = tempDir();
    await makeTrainer(randomBatches(2, 1, 4, 11), { outputDir, saveSteps: 1 }).trainer.fit();
    return join(outputDir, "checkpoint-1");
  }
  function edit(file: string, change: (v: Record<string, unknown>) => unknown): void {
    writeFileSync(file, JSON.stringify(change(JSON.parse(readFileSync(file, "utf8")))));
  }

  it("a trainer_state.json with a negative or non-numeric step is refused, naming the file and key", async () => {
    for (const [value, shown] of [
      [-5, "-5"],
      ["abc", '"abc"'],
    ] as const) {
      const dir = await checkpoint();
      edit(join(dir, "trainer_state.json"), (s) => ({ ...s, globalStep: value }));
      const { trainer } = makeTrainer(randomBatches(4, 1, 4, 11), { maxSteps: 3 });
      const err = await trainer.fit({ resumeFrom: dir }).catch((e) => e);
      expect(err).toMatchObject({ code: "CHECKPOINT_INVALID", detail: { key: "globalStep" } });
      expect(err.message).toContain(`trainer_state.json: "globalStep" must be a non-negative integer, got ${shown}`);
    }
  });

  it("a checkpoint of another model shape names the checkpoint directory", async () => {
    const dir = await checkpoint();
    manualSeed(7);
    const wider = new TinyLM(11, 16);
    const trainer = new Trainer<Batch>({
      model: wider,
      optimizer: new StatefulAdamW(
        wider.parameters().filter((p) => p.requiresGrad),
        { lr: 0.01 },
      ),
      loss: (m, b) => tinyLoss(m, b),
      train: memorySource(randomBatches(4, 1, 4, 11)),
      args: { maxSteps: 3 },
    });
    const err = await trainer.fit({ resumeFrom: dir }).catch((e) => e);
    expect(err).toMatchObject({ code: "CHECKPOINT_MISMATCH" });
    expect(err.message).toMatch(
      new RegExp(`^${dir.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: the checkpoint does not fit this run: `),
    );
  });

  it("an rng_state.json without a seed is refused the same way", async () => {
    const dir = await checkpoint();
    edit(join(dir, "rng_state.json"), () => []);
    const { trainer } = makeTrainer(randomBatches(4, 1, 4, 11), { maxSteps: 3 });
    await expect(trainer.fit({ resumeFrom: dir })).rejects.toThrow(
      /rng_state.json: "seed" must be a non-negative integer, got nothing/,
    );
  });
});

describe("evaluation and arguments", () => {
  it("evaluate gives token-mean loss and perplexity", async () => {
    const evalData = randomBatches(2, 2, 4, 11, 5);
    const { trainer, model } = makeTrainer(randomBatches(1, 1, 4, 11), {}, { eval: evalData });
    const m = await trainer.evaluate();
    let sum = 0;
    let n = 0;
    for (const b of evalData) {
      const l = tinyLoss(model, b);
      sum += l.item();
      l.dispose();
      n += b.labels.flat().filter((x) => x !== -100).length;
    }
    expect(m.eval_loss).toBeCloseTo(sum / n, 5);
    expect(m.eval_perplexity).toBeCloseTo(Math.exp(sum / n), 4);
  });

  it("an empty dataset is an error, not a zero-step run; bad arguments name the argument", async () => {
    await expect(makeTrainer([]).trainer.fit()).rejects.toMatchObject({ code: "EMPTY_DATASET" });
    expect(() => makeTrainer(randomBatches(1, 1, 4, 11), { gradientAccumulationSteps: 0 })).toThrow(
      /gradientAccumulationSteps must be a positive integer/,
    );
    // a typo from JSON or YAML (TypeScript cannot see it there) is refused, not silently ignored
    expect(() => makeTrainer(randomBatches(1, 1, 4, 11), { evalStep: 5 } as never)).toThrow(
      'TrainingArgs.evalStep is not a training argument (did you mean "evalSteps"?)',
    );
    await expect(
      makeTrainer(randomBatches(1, 1, 4, 11), { gradientCheckpointing: true }).trainer.fit(),
    ).rejects.toThrow(/setGradientCheckpointing/);
    await expect(makeTrainer(randomBatches(1, 1, 4, 11), { saveSteps: 1 }).trainer.fit()).rejects.toThrow(
      /saveSteps is set but TrainingArgs.outputDir is not/,
    );
    expect(() => strategyByName("nope")).toThrow(/strategy "nope" is not registered; registered: single/);
    expect(strategyByName("single").worldSize).toBe(1);
  });

  it("fractional epochs run ceil(epochs × steps per epoch) steps, as transformers; a non-positive count is named", async () => {
    const { trainer, model } = makeTrainer(randomBatches(4, 1, 4, 11), { numEpochs: 1.3 });
    const state = await trainer.fit();
    // fit ends in eval mode (what follows is evaluation, generation or saving)
    expect(model.training).toBe(false);
    expect(state.globalStep).toBe(Math.ceil(4 * 1.3));
    // every step record carries the process's RSS (the report's memory curve)
    const steps = state.logHistory.filter((r) => "loss" in r);
    expect(steps).toHaveLength(6);
    for (const r of steps) expect(r["memory/rss"]).toBeGreaterThan(1e6);
    expect(() => makeTrainer(randomBatches(1, 1, 4, 11), { numEpochs: 0 })).toThrow(
      "TrainingArgs.numEpochs must be a positive number, got 0",
    );
  });

  it("max_steps wins over epochs and repeats the data", async () => {
    const { trainer } = makeTrainer(randomBatches(2, 1, 4, 11), { maxSteps: 5, numEpochs: 1 });
    const s = await trainer.fit();
    expect(s.globalStep).toBe(5);
    expect(s.epoch).toBe(2);
    expect(s.batchInEpoch).toBe(1);
  });

  it("tokens_per_second counts the tokens read, loss_tokens_per_second those with a label; loss tokens without inputTokens", async () => {
    const data = randomBatches(4, 2, 6, 11, 3);
    const read = (b: Batch) => b.ids.flat().length;
    const labelled = (b: Batch) => b.labels.flat().filter((l) => l !== -100).length;
    const train = { ...memorySource(data), inputTokens: read };
    const { trainer } = makeTrainer(data, { loggingSteps: 2, numEpochs: 1 }, { train });
    await trainer.fit();
    const logs = trainer.state.logHistory.filter((m) => "tokens_per_second" in m);
    expect(logs.map((m) => m.step)).toEqual([1, 2, 4]); // the first step, then every loggingSteps
    for (const [i, m] of logs.entries()) {
      const window = data.slice(i ? logs[i - 1].step : 0, m.step);
      const ratio = window.reduce((s, b) => s + read(b), 0) / window.reduce((s, b) => s + labelled(b), 0);
      expect(m.tokens_per_second / m.loss_tokens_per_second).toBeCloseTo(ratio, 12);
      expect(ratio).toBeGreaterThan(1);
    }
    const plain = makeTrainer(data, { loggingSteps: 2, numEpochs: 1 }).trainer;
    await plain.fit();
    for (const m of plain.state.logHistory.filter((h) => "tokens_per_second" in h))
      expect(m.tokens_per_second).toBe(m.loss_tokens_per_second);
  });
});

describe("strategy slot", () => {
  it("a fake two-rank DDP strategy: called at the right points, grads touched only through it, same weights as one process", async () => {
    const data = randomBatches(8, 2, 5, 11, 4);
    const single = makeTrainer(data, { gradientAccumulationSteps: 2, maxGradNorm: 0.5 });
    await single.trainer.fit();
    const world = new FakeWorld(2);
    const ranks = [0, 1].map((rank) => {
      manualSeed(7);
      const model = new TinyLM();
      const params = model.parameters().filter((p) => p.requiresGrad);
      const optimizer = new StatefulAdamW(params, { lr: 0.01 });
      const strategy = new FakeRankStrategy(world, rank);
      const violations: string[] = [];
      guardGrads(params, () => strategy.inside, violations);
      const trainer = new Trainer<Batch>({
        model,
        optimizer,
        loss: (m, b) => tinyLoss(m, b),
        train: memorySource(data.filter((_, i) => i % 2 === rank)),
        args: { learningRate: 0.01, loggingSteps: 1, maxGradNorm: 0.5 },
        strategy,
      });
      return { model, trainer, strategy, violations };
    });
    await Promise.all(ranks.map((r) => r.trainer.fit()));
    for (const r of ranks) {
      expect(r.violations).toEqual([]);
      const a = snapshot(r.model.parameters());
      const b = snapshot(single.model.parameters());
      expect(maxAbsDiff(a, b)).toBeLessThan(1e-6);
      const step = [
        "allReduce:sum", // loss tokens of the step across ranks
        "backward",
        "allReduce:max", // every rank agrees whether the step is finite
        "reduceGradients",
        "clipGradients",
        "optimizerStep",
        "zeroGrad",
        "allReduce:sum", // mean loss for logging
      ];
      expect(r.strategy.calls).toEqual(["setup", "wrapModel", ...Array(4).fill(step).flat(), "teardown"]);
    }
  });
});

describe("strategy slot: one rank's NaN", () => {
  it("skips the step on every rank (no hang, same weights on both ranks)", async () => {
    const data = randomBatches(6, 2, 5, 11, 4);
    const world = new FakeWorld(2);
    const ranks = [0, 1].map((rank) => {
      manualSeed(7);
      const model = new TinyLM();
      const trainer = new Trainer<Batch>({
        model,
        optimizer: new StatefulAdamW(
          model.parameters().filter((p) => p.requiresGrad),
          { lr: 0.01 },
        ),
        loss: (m, b) => tinyLoss(m, b),
        train: memorySource(data.filter((_, i) => i % 2 === rank)),
        args: { learningRate: 0.01 },
        strategy: new FakeRankStrategy(world, rank),
      });
      if (rank === 1)
        trainer.hooks.on("loss:transform", (loss, ctx) => {
          if (ctx.state.globalStep !== 1) return loss;
          const nan = loss.mul(Number.NaN);
          loss.dispose();
          return nan;
        });
      return { model, trainer };
    });
    const states = await Promise.all(ranks.map((r) => r.trainer.fit()));
    expect(states.map((s) => s.nonFiniteTotal)).toEqual([1, 1]);
    expect(snapshot(ranks[0].model.parameters())).toEqual(snapshot(ranks[1].model.parameters()));
  });
});

describe("clipping, precision, gradient checkpointing flag", () => {
  it("max_grad_norm: the pre-clip norm is reported and gradients are scaled to the limit", async () => {
    const { trainer, model } = makeTrainer(randomBatches(1, 2, 5, 11), { maxGradNorm: 0.01 });
    let reported = 0;
    let after = 0;
    trainer.hooks.on("optimizer:step:before", (ctx) => {
      reported = ctx.gradNorm ?? 0;
      let s = 0;
      for (const p of model.parameters()) for (const g of p.grad?.toTypedArray() ?? []) s += g * g;
      after = Math.sqrt(s);
    });
    await trainer.fit();
    expect(reported).toBeGreaterThan(0.01);
    expect(after).toBeCloseTo(0.01, 6);
  });

  it("precision slot checks its contract; the gradient checkpointing flag reaches the model", async () => {
    const { bf16MixedPrecision } = await import("./precision");
    const { model } = makeTrainer(randomBatches(1, 1, 4, 11));
    expect(() =>
      bf16MixedPrecision.setup(model, new Map([...model.namedParameters()].filter(([, p]) => p.requiresGrad))),
    ).toThrow(/frozen parameter "norm.weight" is f32; load the base model with dtype bf16/);
    manualSeed(1);
    const flagged = Object.assign(new TinyLM(), { gradientCheckpointing: false });
    const t = new Trainer<Batch>({
      model: flagged,
      optimizer: new StatefulAdamW(flagged.parameters().filter((p) => p.requiresGrad)),
      loss: (m, b) => tinyLoss(m, b),
      train: memorySource(randomBatches(1, 1, 4, 11)),
      args: { gradientCheckpointing: true },
    });
    await t.fit();
    expect(flagged.gradientCheckpointing).toBe(true);
  });
});

describe("the loss function's contract", () => {
  function withLoss(loss: (m: Module, b: Batch) => unknown, args: Partial<TrainingArgs> = {}) {
    manualSeed(7);
    const model = new TinyLM();
    const optimizer = new StatefulAdamW(
      model.parameters().filter((p) => p.requiresGrad),
      { lr: 0.01 },
    );
    return new Trainer<Batch>({
      model,
      optimizer,
      loss: loss as never,
      train: memorySource(randomBatches(4, 2, 5, 11)),
      args: { loggingSteps: 1, ...args },
    });
  }

  it("takes { lossSum } like a bare tensor, and frees what it built and did not return", async () => {
    const bare = withLoss((m, b) => tinyLoss(m, b));
    await bare.fit();
    const leaked: Tensor[] = [];
    const objectForm = withLoss((m, b) => {
      // Tensors a user's loss function makes and forgets, plus an extra field in the returned object.
      leaked.push(tensor([1, 2, 3]), tensor([4]));
      return { lossSum: tinyLoss(m, b), extra: tensor([5, 6]) };
    });
    const live: number[] = [];
    objectForm.hooks.on("step:end", () => void live.push(memoryStats("cpu").currentBytes));
    await objectForm.fit();
    const losses = (t: Trainer<Batch>) => t.state.logHistory.map((r) => r.loss);
    expect(losses(objectForm)).toEqual(losses(bare));
    expect(leaked.length).toBe(8);
    expect(leaked.every((t) => t.disposed)).toBe(true);
    expect(live.at(-1)).toBe(live[0]);
  });

  it("a return that is not one summed loss is a TrainerError naming what came back", async () => {
    const meanOnly = withLoss((m, b) => ({ loss: tinyLoss(m, b), tokenCount: 3 }));
    await expect(meanOnly.fit()).rejects.toThrow(
      /must return the micro-batch's summed token loss as a scalar Tensor or \{ lossSum \}, got an object with keys \[loss, tokenCount\]/,
    );
    const vector = withLoss(() => tensor([1, 2]));
    await expect(vector.fit()).rejects.toMatchObject({ code: "BAD_LOSS", message: /a tensor of shape \[2\]/ });
    await expect(withLoss(() => undefined).fit()).rejects.toThrow(/got undefined/);
    // a model's mean loss (tagged by @qlora/models' forward with this registered symbol) is refused by name
    const mean = withLoss((m, b) => {
      const sum = tinyLoss(m, b);
      const t = sum.div(3);
      sum.dispose();
      Object.defineProperty(t, Symbol.for("qlora.meanLoss"), { value: true });
      return t;
    });
    await expect(mean.fit()).rejects.toThrow(
      /returned a model's mean loss \(forward\(\)\.loss\); return the summed loss/,
    );
  });

  it("the peak lr is the optimizer's group lr; a learningRate that matches no group is refused", async () => {
    const t = withLoss((m, b) => tinyLoss(m, b), { scheduler: { name: "constant" } });
    await t.fit();
    expect(t.state.logHistory.every((r) => r.lr === 0.01)).toBe(true);
    expect(() => withLoss((m, b) => tinyLoss(m, b), { learningRate: 1e-9 })).toThrow(
      /TrainingArgs.learningRate 1e-9 equals no lr of the optimizer \(0.01\)/,
    );
    expect(() => withLoss((m, b) => tinyLoss(m, b), { learningRate: 0.01 })).not.toThrow();
  });
});

describe("memory", () => {
  it("live tensor bytes are flat across steps (no leaked losses, grads or clipped copies)", async () => {
    const { trainer } = makeTrainer(randomBatches(30, 2, 5, 11), { gradientAccumulationSteps: 2, maxGradNorm: 0.1 });
    const live: number[] = [];
    trainer.hooks.on("step:end", () => void live.push(memoryStats("cpu").currentBytes));
    await trainer.fit();
    expect(live).toHaveLength(15);
    expect(live[14]).toBe(live[2]);
  });
});
