/**
 * The Trainer: a loop over optimizer steps that asks hooks to observe/transform and a control object to steer,
 * and leaves how gradients/steps/collectives work to the Strategy slot. It knows nothing of LoRA or Llama: it
 * trains the parameters of a Module that require gradients, with a loss function that returns the SUM of the
 * per-token losses of a micro-batch (normalisation by the step's token count is the trainer's job).
 */
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { type Module, type Tensor, dispose, getGenerator, manualSeed, noGrad, tidy } from "@qlora/tensor";
import { safetensorsCheckpointIO, type CheckpointIO } from "./checkpoint/checkpoint-io";
import {
  latestCheckpoint,
  requireCheckpoint,
  rotateCheckpoints,
  writeCheckpointAtomic,
} from "./checkpoint/checkpoints";
import { fsyncFile } from "./checkpoint/fsutil";
import { loadStateTree, saveStateTree } from "./checkpoint/state-tree";
import { TrainerControl } from "./control";
import { TrainerError } from "./errors";
import { HookBus, type HookContext, type MicroContext } from "./events";
import type { TrainerOptimizer } from "./optimizer";
import { orderPlugins, type TrainerPlugin } from "./plugin";
import { defaultFlow } from "./plugins/default-flow";
import { f32Precision, type Precision } from "./precision";
import { createSchedule, type SchedulerOptions } from "./schedulers";
import { checkSavedState, initialState, type TrainerState } from "./state";
import { SingleProcessStrategy, type Strategy } from "./strategy";

/** Where batches come from: a deterministic sequence per epoch that can start after `skip` batches (resume). */
export interface BatchSource<B> {
  /** Micro-batches per epoch (on this rank). */
  readonly length: number;
  batches(epoch: number, skip: number): Iterable<B> | AsyncIterable<B>;
  /** Loss tokens of a batch (labels ≠ -100): the normaliser of gradient accumulation. */
  lossTokens(batch: B): number;
  /**
   * Tokens the model reads in a batch, padding excluded: `tokens_per_second` counts these (as transformers'
   * train_tokens_per_second does). Without it, tokens_per_second counts loss tokens.
   */
  inputTokens?(batch: B): number;
}

export interface LossOutput {
  /**
   * Sum of the per-token losses of the micro-batch (a scalar): the field @qlora/models' forward returns as
   * `lossSum` (its `loss` is the mean, which the trainer does not take).
   */
  readonly lossSum: Tensor;
}
/**
 * The summed token loss of one micro-batch. It runs inside `tidy`: tensors it creates and does not return are
 * disposed when it returns (what backward needs, the autograd graph holds on to).
 */
export type LossFn<B> = (model: Module, batch: B, info: { readonly training: boolean }) => LossOutput | Tensor;

export interface TrainingArgs {
  readonly outputDir?: string;
  /** One seed for everything: parameters drawn after seedEverything, dropout, shuffling, NEFTune. */
  readonly seed?: number;
  /**
   * The peak learning rate, for an optimizer that has neither parameter groups nor an `lr`. Otherwise the
   * optimizer's own lr (each group's, with groups) is the schedule's base, as torch's LambdaLR takes it, and a
   * learningRate given here must equal one of them (a mismatch is refused, not silently ignored).
   */
  readonly learningRate?: number;
  /** May be fractional, as transformers' num_train_epochs: the run is ceil(numEpochs × steps per epoch) steps. */
  readonly numEpochs?: number;
  /** Wins over numEpochs. */
  readonly maxSteps?: number;
  readonly gradientAccumulationSteps?: number;
  readonly maxGradNorm?: number;
  readonly scheduler?: Omit<SchedulerOptions, "totalSteps" | "baseLr">;
  readonly loggingSteps?: number;
  readonly evalSteps?: number;
  readonly saveSteps?: number;
  readonly saveTotalLimit?: number;
  /** Passed to the model (`setGradientCheckpointing(true)`, per decoder layer in @qlora/models). */
  readonly gradientCheckpointing?: boolean;
  /** Stop with an error after this many non-finite losses in a row (each such step is skipped). Default 5. */
  readonly maxNonFiniteInARow?: number;
  readonly metricForBestModel?: string;
  readonly greaterIsBetter?: boolean;
}

export interface TrainerOptions<B> {
  readonly model: Module;
  readonly optimizer: TrainerOptimizer;
  readonly loss: LossFn<B>;
  readonly train: BatchSource<B>;
  readonly eval?: BatchSource<B>;
  readonly args: TrainingArgs;
  readonly plugins?: readonly TrainerPlugin[];
  readonly strategy?: Strategy;
  readonly precision?: Precision;
  readonly checkpointIO?: CheckpointIO;
  /** What the trainer says without stopping (a resume whose data geometry changed). Default console.warn. */
  readonly onWarning?: (message: string) => void;
}

/** How the data was cut when a checkpoint was saved: a resume under another cut reads other examples. */
interface DataGeometry {
  batchesPerEpoch: number;
  gradientAccumulationSteps: number;
  /** Absent in checkpoints written before it was recorded: one rank. */
  worldSize?: number;
}

export interface FitOptions {
  /** A checkpoint directory, or true for the latest one in outputDir (none there: start fresh). */
  readonly resumeFrom?: string | boolean;
}

/** Seed the runtime's global Philox generator (parameter init, dropout) and return the seed for data/plugins. */
export function seedEverything(seed: number): number {
  manualSeed(seed);
  return seed;
}

const PLUGIN_STATE = "plugins";

export class Trainer<B = unknown> {
  readonly state: TrainerState = initialState();
  readonly control = new TrainerControl();
  readonly hooks = new HookBus();
  readonly strategy: Strategy;
  readonly precision: Precision;
  readonly checkpointIO: CheckpointIO;
  readonly plugins: readonly TrainerPlugin[];
  readonly args: TrainingArgs & { seed: number; gradientAccumulationSteps: number };
  private model: Module;
  private readonly trainable: Map<string, Tensor>;
  private schedule: (step: number) => number = () => 1;
  /** The scheduler's base: each parameter group's lr at construction, or the one lr of an optimizer without groups. */
  private readonly baseLrs: number[];
  private stepsPerEpoch = 0;

  constructor(readonly options: TrainerOptions<B>) {
    const a = options.args;
    this.args = { ...a, seed: a.seed ?? 42, gradientAccumulationSteps: a.gradientAccumulationSteps ?? 1 };
    checkArgs(this.args);
    this.model = options.model;
    this.strategy = options.strategy ?? new SingleProcessStrategy();
    this.precision = options.precision ?? f32Precision;
    this.checkpointIO = options.checkpointIO ?? safetensorsCheckpointIO;
    this.baseLrs = baseLearningRates(options.optimizer, a.learningRate);
    this.trainable = new Map([...options.model.namedParameters()].filter(([, p]) => p.requiresGrad));
    if (this.trainable.size === 0)
      throw new TrainerError("NO_TRAINABLE", "Trainer: the model has no parameter that requires gradients");
    this.plugins = orderPlugins([defaultFlow(), ...(options.plugins ?? [])]);
    const names = new Set<string>();
    for (const p of this.plugins) {
      if (names.has(p.name)) throw new TrainerError("PLUGIN_NAME", `plugin name "${p.name}" is used twice`);
      names.add(p.name);
      for (const [event, h] of Object.entries(p.hooks)) this.hooks.on(event as never, h as never);
    }
  }

  /** One context object per call. */
  context<T extends object>(extra?: T): HookContext & T {
    return { trainer: this, state: this.state, control: this.control, ...(extra as T) };
  }

  /** The current learning rate (of the first parameter group): base × schedule(global step). */
  get lr(): number {
    return this.baseLrs[0] * this.schedule(this.state.globalStep);
  }

  private applyLr(): void {
    const f = this.schedule(this.state.globalStep);
    const opt = this.options.optimizer;
    if (opt.paramGroups) {
      for (const [i, g] of opt.paramGroups.entries()) g.lr = (this.baseLrs[i] ?? 0) * f;
    } else opt.lr = this.baseLrs[0] * f;
  }

  async fit(fit: FitOptions = {}): Promise<TrainerState> {
    const { train } = this.options;
    const accum = this.args.gradientAccumulationSteps;
    if (!(train.length > 0))
      throw new TrainerError("EMPTY_DATASET", "Trainer.fit: the training data has no batches (empty dataset)");
    seedEverything(this.args.seed);
    this.stepsPerEpoch = Math.ceil(train.length / accum);
    const maxSteps = this.args.maxSteps ?? Math.ceil(this.stepsPerEpoch * (this.args.numEpochs ?? 1));
    this.state.maxSteps = maxSteps;
    this.schedule = createSchedule({ name: "linear", ...this.args.scheduler, totalSteps: maxSteps });
    await this.strategy.setup({ model: this.model, optimizer: this.options.optimizer, params: this.trainable });
    this.model = this.strategy.wrapModel(this.model);
    this.precision.setup(this.model, this.trainable);
    this.setGradientCheckpointing(this.args.gradientCheckpointing ?? false);
    this.model.train();

    const resumeDir = await this.resolveResume(fit.resumeFrom);
    if (resumeDir) await this.loadCheckpoint(resumeDir);
    try {
      await this.hooks.emit("fit:start", this.context());
      this.fitSteps = { run: 0, trained: 0, nonFinite: 0 };
      await this.loop(maxSteps);
      this.checkSomethingTrained();
      await this.hooks.emit("fit:end", this.context());
    } catch (error) {
      await this.hooks.emit("error", this.context({ error }));
      throw error;
    } finally {
      // what comes next is evaluation, generation or saving: no dropout (fit switches back to training mode)
      this.model.eval();
      await this.strategy.teardown();
    }
    return this.state;
  }

  private async loop(maxSteps: number): Promise<void> {
    const accum = this.args.gradientAccumulationSteps;
    const { train } = this.options;
    while (this.state.globalStep < maxSteps && !this.control.shouldStop) {
      if (this.state.batchInEpoch === 0) await this.hooks.emit("epoch:start", this.context());
      const it = iterate(train.batches(this.state.epoch, this.state.batchInEpoch));
      for (;;) {
        const micro: B[] = [];
        while (micro.length < accum) {
          const r = await it.next();
          if (r.done) break;
          micro.push(r.value);
        }
        if (micro.length === 0) break;
        await this.trainStep(micro);
        await this.afterStep();
        if (this.state.globalStep >= maxSteps || this.control.shouldStop) break;
      }
      await it.return?.();
      if (this.state.batchInEpoch >= train.length) {
        await this.hooks.emit("epoch:end", this.context());
        this.state.epoch++;
        this.state.batchInEpoch = 0;
      } else if (this.state.globalStep < maxSteps && !this.control.shouldStop) {
        throw new TrainerError(
          "DATA_SHORT",
          `training data yielded ${this.state.batchInEpoch} batches in epoch ${this.state.epoch}, expected ${train.length}`,
        );
      }
    }
  }

  /** Forward/backward over the micro-batches, then clip and step: one optimizer step. */
  private async trainStep(rawMicro: B[]): Promise<void> {
    const { strategy } = this;
    const optimizer = this.options.optimizer;
    this.control.resetStep();
    await this.hooks.emit("step:start", this.context());
    const micro: B[] = [];
    for (const [i, b] of rawMicro.entries())
      micro.push((await this.hooks.waterfall("batch:transform", b, this.microContext(b, i))) as B);
    const { train } = this.options;
    const counts = new Float64Array([
      micro.reduce((s, b) => s + train.lossTokens(b), 0),
      micro.reduce((s, b) => s + (train.inputTokens ? train.inputTokens(b) : train.lossTokens(b)), 0),
    ]);
    await strategy.allReduce(counts, "sum");
    const [stepTokens, stepInputTokens] = counts;
    let lossSum = 0;
    // stepTokens is global, so every rank takes the same branch here. A non-finite loss still runs its backward:
    // every rank makes the same backward calls, so a strategy that communicates during backward cannot hang.
    let finite = stepTokens > 0;
    for (const [i, batch] of (finite ? micro : []).entries()) {
      let loss = this.callLoss(batch, true);
      loss = await this.hooks.waterfall("loss:transform", loss, this.microContext(batch, i));
      const scaled = loss.div(stepTokens);
      const value = loss.item();
      if (loss !== scaled) loss.dispose();
      lossSum += value;
      if (!Number.isFinite(value)) finite = false;
      const ctx = this.microContext(batch, i, scaled);
      await this.hooks.emit("backward:before", ctx);
      await strategy.backward(scaled);
      scaled.dispose();
      await this.hooks.emit("microstep:end", ctx);
    }
    // Every rank must agree to skip: one rank's non-finite loss skips the step everywhere.
    const bad = new Float64Array([finite ? 0 : 1]);
    await strategy.allReduce(bad, "max");
    finite = bad[0] === 0;
    let gradNorm: number | undefined;
    if (finite) {
      await strategy.reduceGradients();
      gradNorm = await strategy.clipGradients(this.args.maxGradNorm);
      finite = Number.isFinite(gradNorm);
    }
    const lr = this.lr;
    if (finite) {
      this.applyLr();
      await this.hooks.emit("optimizer:step:before", this.context({ lr, gradNorm }));
      await strategy.optimizerStep(optimizer);
      await this.hooks.emit("optimizer:step:after", this.context({ lr, gradNorm }));
    }
    strategy.zeroGrad(optimizer);
    this.state.globalStep++;
    this.state.batchInEpoch += rawMicro.length;
    this.state.tokensSeen += stepTokens;
    this.trackNonFinite(finite, stepTokens);
    this.fitSteps.run++;
    if (finite && stepTokens > 0) this.fitSteps.trained++;
    else if (stepTokens > 0) this.fitSteps.nonFinite++;
    const meanLoss = finite ? await this.globalMean(lossSum, stepTokens) : Number.NaN;
    this.lastStep = { loss: meanLoss, tokens: stepTokens, inputTokens: stepInputTokens, lr, gradNorm };
    await this.hooks.emit("step:end", this.context({ loss: meanLoss, skipped: !finite, tokens: stepTokens }));
  }

  /** Last finished step's figures, read by the log step. */
  lastStep: { loss: number; tokens: number; inputTokens: number; lr: number; gradNorm: number | undefined } | undefined;
  private logAccum = this.freshLogWindow();
  private freshLogWindow() {
    return { loss: 0, tokens: 0, inputTokens: 0, lossTokensRead: 0, steps: 0, since: performance.now() };
  }

  /** Steps this fit() ran, how many updated the weights, and how many were skipped as non-finite. */
  private fitSteps = { run: 0, trained: 0, nonFinite: 0 };

  /** A fit whose every step was skipped changed nothing: an error, not a "trained N steps" that wrote an untouched adapter. */
  private checkSomethingTrained(): void {
    const { run, trained, nonFinite } = this.fitSteps;
    if (run === 0 || trained > 0) return;
    if (nonFinite > 0)
      throw new TrainerError(
        "NON_FINITE_LOSS",
        `every step of this run (${run}) had a NaN/Inf loss or gradient norm and was skipped: nothing was trained; check the model weights, the data and the learning rate`,
      );
    throw new TrainerError(
      "NO_LOSS_TOKENS",
      `no step of this run (${run}) had a token with a label (every label was -100, e.g. each answer truncated away): nothing was trained`,
    );
  }

  private trackNonFinite(finite: boolean, stepTokens: number): void {
    if (finite) {
      this.state.nonFiniteInARow = 0;
      return;
    }
    if (stepTokens === 0) return; // a step with nothing to learn from is not a numeric failure
    this.state.nonFiniteInARow++;
    this.state.nonFiniteTotal++;
    const limit = this.args.maxNonFiniteInARow ?? 5;
    if (this.state.nonFiniteInARow >= limit)
      throw new TrainerError(
        "NON_FINITE_LOSS",
        `loss or gradient norm was NaN/Inf for ${this.state.nonFiniteInARow} steps in a row (step ${this.state.globalStep}; ${this.state.nonFiniteTotal} skipped in total); lower the learning rate, check the data, or use precision "f32"`,
      );
  }

  /** Token-weighted mean loss over all ranks. */
  private async globalMean(localSum: number, stepTokens: number): Promise<number> {
    const s = new Float64Array([localSum]);
    await this.strategy.allReduce(s, "sum");
    return s[0] / stepTokens;
  }

  private microContext(batch: B, microStep: number, loss?: Tensor): MicroContext {
    return this.context({ batch, microStep, loss });
  }

  private async afterStep(): Promise<void> {
    const s = this.lastStep;
    if (s) {
      // Throughput counts every step (a skipped one read its tokens too); the mean loss only the finite ones.
      this.logAccum.inputTokens += s.inputTokens;
      this.logAccum.lossTokensRead += s.tokens;
      if (Number.isFinite(s.loss)) {
        this.logAccum.loss += s.loss * s.tokens;
        this.logAccum.tokens += s.tokens;
      }
    }
    this.logAccum.steps++;
    if (this.control.shouldEvaluate && this.options.eval) await this.evaluate();
    if (this.control.shouldLog) await this.logStep();
    if (this.control.shouldSave && this.args.outputDir) await this.saveCheckpoint();
  }

  private async logStep(): Promise<void> {
    const a = this.logAccum;
    const seconds = (performance.now() - a.since) / 1000;
    const metrics: Record<string, number> = {
      loss: a.tokens ? a.loss / a.tokens : Number.NaN,
      lr: this.lastStep?.lr ?? this.lr,
      tokens_per_second: a.inputTokens / Math.max(seconds, 1e-9),
      loss_tokens_per_second: a.lossTokensRead / Math.max(seconds, 1e-9),
      epoch: this.state.epoch + this.state.batchInEpoch / this.options.train.length,
      // the process's resident memory at each logged step: leaks and paging show as a slope (rss() is cheap)
      "memory/rss": process.memoryUsage.rss(),
    };
    if (this.lastStep?.gradNorm !== undefined) metrics.grad_norm = this.lastStep.gradNorm;
    this.logAccum = this.freshLogWindow();
    await this.log(metrics);
  }

  /** The loss function's summed loss of one micro-batch, in a tidy scope, checked to be one scalar tensor. */
  private callLoss(batch: B, training: boolean): Tensor {
    const out = tidy(() => this.options.loss(this.model, batch, { training }));
    const loss = isTensor(out) ? out : out instanceof Object && "lossSum" in out ? out.lossSum : undefined;
    if (!isTensor(loss) || loss.size !== 1) {
      dispose(out);
      const got = isTensor(loss) ? `a tensor of shape [${loss.shape.join(", ")}]` : describeLossOutput(out);
      throw new TrainerError(
        "BAD_LOSS",
        `the loss function must return the micro-batch's summed token loss as a scalar Tensor or { lossSum }, got ${got}`,
      );
    }
    if ((loss as unknown as Record<symbol, unknown>)[Symbol.for("qlora.meanLoss")] === true) {
      dispose(out);
      throw new TrainerError(
        "BAD_LOSS",
        "the loss function returned a model's mean loss (forward().loss); return the summed loss (forward().lossSum, or batchLoss from @qlora/models): the trainer divides by the step's loss tokens itself",
      );
    }
    // The rest of a returned object (a forward output's logits or mean loss) is not used.
    if (out !== loss) dispose(Object.values(out).filter((v) => v !== loss));
    return loss;
  }

  /** Record metrics in the log history and emit `log`. */
  async log(metrics: Record<string, number>): Promise<void> {
    this.state.logHistory.push({ ...metrics, step: this.state.globalStep });
    await this.hooks.emit("log", this.context({ metrics }));
  }

  /** Mean loss per token and perplexity over the eval data (all ranks). */
  async evaluate(): Promise<Record<string, number>> {
    const data = this.options.eval;
    if (!data) throw new TrainerError("NO_EVAL_DATA", "Trainer.evaluate: no eval data was given");
    await this.hooks.emit("eval:start", this.context({}));
    const wasTraining = this.model.training;
    this.model.eval();
    const sums = new Float64Array(2);
    try {
      for await (const batch of iterable(data.batches(0, 0))) {
        const value = noGrad(() => {
          const loss = this.callLoss(batch, false);
          const v = loss.item();
          loss.dispose();
          return v;
        });
        sums[0] += value;
        sums[1] += data.lossTokens(batch);
      }
    } finally {
      this.model.train(wasTraining);
    }
    await this.strategy.allReduce(sums, "sum");
    if (sums[1] === 0) throw new TrainerError("EMPTY_DATASET", "Trainer.evaluate: the eval data has no loss tokens");
    const evalLoss = sums[0] / sums[1];
    const metrics = { eval_loss: evalLoss, eval_perplexity: Math.exp(evalLoss) };
    this.updateBest(metrics);
    this.state.logHistory.push({ ...metrics, step: this.state.globalStep });
    await this.hooks.emit("eval:end", this.context({ metrics }));
    return metrics;
  }

  private bestStep = -1;
  private updateBest(metrics: Record<string, number>): void {
    const key = this.args.metricForBestModel ?? "eval_loss";
    const v = metrics[key];
    if (v === undefined || !Number.isFinite(v)) return;
    const better = this.args.greaterIsBetter ? (a: number, b: number) => a > b : (a: number, b: number) => a < b;
    if (this.state.bestMetric === null || better(v, this.state.bestMetric)) {
      this.state.bestMetric = v;
      this.bestStep = this.state.globalStep;
    }
  }

  /** The step of the best evaluation so far (by metricForBestModel), or -1. */
  get bestEvalStep(): number {
    return this.bestStep;
  }

  /**
   * transformers' load_best_model_at_end: restore the trainable weights of the checkpoint saved at the best
   * evaluation into the model. Returns its directory, or null when no checkpoint was saved at that step (the model
   * keeps its last weights).
   */
  async loadBestModel(): Promise<string | null> {
    const dir = this.state.bestCheckpoint;
    const outputDir = this.args.outputDir;
    if (!dir || !outputDir || this.bestStep < 0 || dir !== join(outputDir, `checkpoint-${this.bestStep}`)) return null;
    await namingCheckpoint(dir, () => this.checkpointIO.loadModel(dir, this.model));
    await this.strategy.barrier();
    return dir;
  }

  /** Write output_dir/checkpoint-<step>/ atomically, then rotate. */
  async saveCheckpoint(): Promise<string> {
    const outputDir = this.args.outputDir;
    if (!outputDir) throw new TrainerError("NO_OUTPUT_DIR", "saveCheckpoint: args.outputDir is not set");
    const step = this.state.globalStep;
    const modelState = this.strategy.modelStateDict({ full: true });
    const optimState = this.strategy.optimizerStateDict(this.options.optimizer, { full: true });
    const dir = join(outputDir, `checkpoint-${step}`);
    if (this.bestStep === step) this.state.bestCheckpoint = dir;
    const pluginStates = Object.fromEntries(
      this.plugins.filter((p) => p.stateDict).map((p) => [p.name, p.stateDict?.()]),
    );
    const gen = getGenerator();
    // Rank 0 writes the (full) checkpoint; sharded strategies gather what it needs in modelStateDict/optimizerStateDict.
    if (this.strategy.rank === 0)
      await writeCheckpointAtomic(outputDir, step, async (tmp) => {
        await this.checkpointIO.saveModel(tmp, modelState, this.model);
        await saveStateTree(tmp, "optimizer", optimState);
        await saveStateTree(tmp, PLUGIN_STATE, pluginStates);
        await writeJson(join(tmp, "rng_state.json"), { seed: gen.seed, offset: gen.offset });
        await writeJson(join(tmp, "scheduler.json"), { ...this.args.scheduler, step, lr: this.lr });
        await writeJson(join(tmp, "trainer_state.json"), {
          ...this.state,
          bestStep: this.bestStep,
          dataGeometry: this.dataGeometry(),
        });
      });
    await this.strategy.barrier();
    await this.hooks.emit("checkpoint:save", this.context({ dir }));
    if (this.args.saveTotalLimit && this.strategy.rank === 0)
      await rotateCheckpoints(outputDir, this.args.saveTotalLimit, this.state.bestCheckpoint);
    return dir;
  }

  private async resolveResume(resumeFrom: string | boolean | undefined): Promise<string | undefined> {
    if (typeof resumeFrom === "string") return requireCheckpoint(resumeFrom);
    const fromHook = await this.hooks.first("checkpoint:resolve", this.context());
    if (fromHook) return requireCheckpoint(fromHook);
    if (resumeFrom === true && this.args.outputDir) return latestCheckpoint(this.args.outputDir);
    return undefined;
  }

  /** Restore model, optimizer, RNG, data position, trainer state and plugin states from a checkpoint. */
  async loadCheckpoint(dir: string): Promise<void> {
    const stateFile = join(dir, "trainer_state.json");
    const saved = checkSavedState(await readJson(stateFile), (key, message) => {
      throw new TrainerError("CHECKPOINT_INVALID", `${stateFile}: ${message}`, { file: stateFile, key });
    });
    await namingCheckpoint(dir, () => this.checkpointIO.loadModel(dir, this.model));
    const optimizerState = await loadStateTree(dir, "optimizer");
    await namingCheckpoint(dir, () => this.strategy.loadOptimizerStateDict(this.options.optimizer, optimizerState));
    const plugins = (await loadStateTree(dir, PLUGIN_STATE)) as Record<string, unknown>;
    for (const p of this.plugins) if (p.loadStateDict && p.name in plugins) p.loadStateDict(plugins[p.name]);
    const rngFile = join(dir, "rng_state.json");
    const rng = (await readJson(rngFile)) as { seed?: unknown; offset?: unknown } | null;
    for (const key of ["seed", "offset"] as const)
      if (!Number.isSafeInteger(rng?.[key]) || (rng?.[key] as number) < 0)
        throw new TrainerError(
          "CHECKPOINT_INVALID",
          `${rngFile}: "${key}" must be a non-negative integer, got ${JSON.stringify(rng?.[key]) ?? "nothing"}`,
          { file: rngFile, key },
        );
    manualSeed(rng!.seed as number).offset = rng!.offset as number;
    const { bestStep, dataGeometry, ...state } = saved as typeof saved & { dataGeometry?: DataGeometry };
    this.warnIfRecut(dir, dataGeometry, state.batchInEpoch, state.maxSteps);
    Object.assign(this.state, state, { maxSteps: this.state.maxSteps });
    this.bestStep = bestStep ?? -1;
    await this.hooks.emit("checkpoint:load", this.context({ dir }));
  }

  private dataGeometry(): DataGeometry {
    return {
      batchesPerEpoch: this.options.train.length,
      gradientAccumulationSteps: this.args.gradientAccumulationSteps ?? 1,
      worldSize: this.strategy.worldSize,
    };
  }

  /**
   * The saved data position counts micro-batches: under another batching (or another number of ranks) it points at
   * other examples, and an epoch-based run's length (the schedule's) changes.
   */
  private warnIfRecut(dir: string, saved: DataGeometry | undefined, batchInEpoch: number, savedMaxSteps: number): void {
    const now = this.dataGeometry();
    const ranks = (g: DataGeometry) => g.worldSize ?? 1;
    if (
      !saved ||
      (saved.batchesPerEpoch === now.batchesPerEpoch &&
        saved.gradientAccumulationSteps === now.gradientAccumulationSteps &&
        ranks(saved) === ranks(now))
    )
      return;
    const cut = (g: DataGeometry) =>
      `${g.batchesPerEpoch} micro-batches per epoch per rank, gradient accumulation ${g.gradientAccumulationSteps}, ${ranks(g)} rank${ranks(g) === 1 ? "" : "s"}`;
    const length =
      savedMaxSteps !== this.state.maxSteps
        ? ` The run is now ${this.state.maxSteps} steps long, not ${savedMaxSteps}: the learning-rate schedule continues on the new length.`
        : "";
    (this.options.onWarning ?? console.warn)(
      `resume: ${dir} was saved with ${cut(saved)}; this run has ${cut(now)}, so its data position (micro-batch ${batchInEpoch} of the epoch) points at other examples: the rest of this epoch skips or repeats some.${length} Resume with the same micro_batch_size, gradient_accumulation_steps, number of ranks, sequence_len and data to continue exactly.`,
    );
  }

  /** The model's own switch: a setGradientCheckpointing(on) method or a boolean gradientCheckpointing field. */
  private setGradientCheckpointing(on: boolean): void {
    const m = this.model as Module & {
      setGradientCheckpointing?: (on: boolean) => void;
      gradientCheckpointing?: unknown;
    };
    if (typeof m.setGradientCheckpointing === "function") m.setGradientCheckpointing(on);
    else if (typeof m.gradientCheckpointing === "boolean") m.gradientCheckpointing = on;
    else if (on)
      throw new TrainerError(
        "UNSUPPORTED",
        "gradientCheckpointing: the model has neither setGradientCheckpointing(on) nor a gradientCheckpointing flag; turn the option off or use a model that supports it",
      );
  }
}

/** A checkpoint that does not fit this run (another lora_r, another optimizer) is named in the error. */
async function namingCheckpoint(dir: string, op: () => unknown): Promise<void> {
  try {
    await op();
  } catch (e) {
    const message = (e as Error).message;
    if (message.includes(dir)) throw e;
    throw new TrainerError("CHECKPOINT_MISMATCH", `${dir}: the checkpoint does not fit this run: ${message}`, {
      file: dir,
    });
  }
}

/** A tensor by its shape, not `instanceof`: a second copy of @qlora/tensor in node_modules makes another class. */
function isTensor(x: unknown): x is Tensor {
  const t = x as Partial<Tensor> | null | undefined;
  return (
    t instanceof Object && Array.isArray(t.shape) && typeof t.item === "function" && typeof t.dispose === "function"
  );
}

function describeLossOutput(out: unknown): string {
  if (out instanceof Object) return `an object with keys [${Object.keys(out).slice(0, 8).join(", ")}]`;
  return out === undefined ? "undefined" : `a ${typeof out}`;
}

/**
 * The schedule's base, as torch's LambdaLR takes it: the optimizer's group lrs, or its lr when it has no groups;
 * args.learningRate only for an optimizer with neither. A learningRate that disagrees is refused, not ignored.
 */
function baseLearningRates(optimizer: TrainerOptimizer, learningRate: number | undefined): number[] {
  const own = optimizer.paramGroups?.map((g) => g.lr) ?? (typeof optimizer.lr === "number" ? [optimizer.lr] : null);
  if (own === null) {
    if (learningRate === undefined)
      throw new TrainerError(
        "BAD_ARGUMENT",
        "TrainingArgs.learningRate is required: the optimizer has neither parameter groups nor an lr to take it from",
        { key: "learningRate" },
      );
    return [learningRate];
  }
  if (learningRate !== undefined && !own.includes(learningRate))
    throw new TrainerError(
      "BAD_ARGUMENT",
      `TrainingArgs.learningRate ${learningRate} equals no lr of the optimizer (${own.join(", ")}): the schedule ` +
        "scales the optimizer's own lr, so set lr on the optimizer and leave learningRate out (or make them agree)",
      { key: "learningRate" },
    );
  return own;
}

const TRAINING_ARGS: readonly (keyof TrainingArgs)[] = [
  "outputDir",
  "seed",
  "learningRate",
  "numEpochs",
  "maxSteps",
  "gradientAccumulationSteps",
  "maxGradNorm",
  "scheduler",
  "loggingSteps",
  "evalSteps",
  "saveSteps",
  "saveTotalLimit",
  "gradientCheckpointing",
  "maxNonFiniteInARow",
  "metricForBestModel",
  "greaterIsBetter",
];

/** A key TrainingArgs does not have (a typo from JSON or YAML, which TypeScript cannot see) is refused, not ignored. */
function checkArgNames(a: object): void {
  for (const key of Object.keys(a)) {
    if ((TRAINING_ARGS as readonly string[]).includes(key)) continue;
    const k = key.toLowerCase();
    const near = TRAINING_ARGS.find(
      (n) => n.toLowerCase() === k || n.toLowerCase().startsWith(k) || k.startsWith(n.toLowerCase()),
    );
    throw new TrainerError(
      "BAD_ARGUMENT",
      `TrainingArgs.${key} is not a training argument${near ? ` (did you mean "${near}"?)` : `; known: ${TRAINING_ARGS.join(", ")}`}`,
      { key },
    );
  }
}

function checkArgs(a: TrainingArgs & { gradientAccumulationSteps: number }): void {
  checkArgNames(a);
  const positiveInt = (v: number | undefined, name: string) => {
    if (v !== undefined && !(Number.isInteger(v) && v > 0))
      throw new TrainerError("BAD_ARGUMENT", `TrainingArgs.${name} must be a positive integer, got ${v}`, {
        key: name,
      });
  };
  if (a.learningRate !== undefined && !(a.learningRate >= 0))
    throw new TrainerError("BAD_ARGUMENT", `TrainingArgs.learningRate must be ≥ 0, got ${a.learningRate}`, {
      key: "learningRate",
    });
  positiveInt(a.gradientAccumulationSteps, "gradientAccumulationSteps");
  positiveInt(a.maxSteps, "maxSteps");
  if (a.numEpochs !== undefined && !(Number.isFinite(a.numEpochs) && a.numEpochs > 0))
    throw new TrainerError("BAD_ARGUMENT", `TrainingArgs.numEpochs must be a positive number, got ${a.numEpochs}`, {
      key: "numEpochs",
    });
  positiveInt(a.loggingSteps, "loggingSteps");
  positiveInt(a.evalSteps, "evalSteps");
  positiveInt(a.saveSteps, "saveSteps");
}

function iterate<T>(src: Iterable<T> | AsyncIterable<T>): AsyncIterator<T> | Iterator<T> {
  return Symbol.asyncIterator in src ? src[Symbol.asyncIterator]() : src[Symbol.iterator]();
}
async function* iterable<T>(src: Iterable<T> | AsyncIterable<T>): AsyncIterable<T> {
  yield* src;
}

async function writeJson(path: string, value: unknown): Promise<void> {
  await writeFile(path, JSON.stringify(value, null, 2));
  await fsyncFile(path);
}
async function readJson(path: string): Promise<unknown> {
  try {
    return JSON.parse(await readFile(path, "utf8"));
  } catch (e) {
    throw new TrainerError("CHECKPOINT_READ", `${path}: ${(e as Error).message}`, { file: path });
  }
}
