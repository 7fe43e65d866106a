/**
 * `qlora demo`: QLoRA on the embedded base model (NF4 + double quant, LoRA on every linear layer, paged AdamW).
 * Measures held-out exact-match accuracy and loss before and after, shows one sample answer before and after, and
 * writes the PEFT adapter, a llama.cpp GGUF adapter and the run report.
 */
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { exportAdapterGguf } from "@qlora/lora";
import { loadTokenDataset } from "@qlora/trainer";
import { trainConfigSchema } from "../config";
import { CliError } from "../errors";
import { type LoadedForInference, datasetLoss, ggufMapping, loadForInference } from "../infer";
import { runTrain } from "../train";
import { type AccuracyResult, accuracy } from "./evaluate";

export interface DemoOptions {
  /** Optimizer steps (default 120: about 10 seconds on 2 cores with the native backend). */
  steps?: number;
  outputDir?: string;
  quiet?: boolean;
  print?: (line: string) => void;
  signal?: AbortSignal;
}

export interface DemoScore {
  accuracy: number;
  correct: number;
  total: number;
  loss: number;
  sample: { prompt: string; expected: string; got: string };
}

export interface DemoResult {
  before: DemoScore;
  after: DemoScore;
  seconds: number;
  adapterDir: string;
  ggufAdapter: string;
  reportPath: string;
}

/** The committed assets: packages/cli/demo, next to src/ (sources) or dist/ (published package). */
export function demoAssets(): string {
  const here = import.meta.dirname;
  for (const dir of [join(here, "..", "..", "demo"), join(here, "..", "demo")])
    if (existsSync(join(dir, "base", "config.json"))) return resolve(dir);
  throw new CliError("BAD_PATH", `the embedded demo model is missing (looked for demo/base/config.json near ${here})`);
}

function readTask(file: string): { prompt: string; completion: string }[] {
  return readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l));
}

async function score(loaded: LoadedForInference, heldoutFile: string, sampleIndex: number): Promise<DemoScore> {
  const examples = readTask(heldoutFile);
  const acc: AccuracyResult = await accuracy(loaded.model, loaded.tokenizer, examples);
  const data = await loadTokenDataset({
    files: heldoutFile,
    format: "prompt_completion",
    tokenizer: loaded.tokenizer,
    maxLength: 64,
    microBatchSize: 16,
    shuffle: false,
  });
  const { loss } = datasetLoss(loaded.model, data.train);
  return { accuracy: acc.accuracy, correct: acc.correct, total: acc.total, loss, sample: acc.answers[sampleIndex] };
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

export async function runDemo(options: DemoOptions = {}): Promise<DemoResult> {
  const print = options.print ?? ((l: string) => process.stdout.write(`${l}\n`));
  const assets = demoAssets();
  const base = join(assets, "base");
  const heldout = join(assets, "task", "heldout.jsonl");
  const outputDir = resolve(options.outputDir ?? "qlora-demo-output");
  const started = performance.now();
  const sampleIndex = 0;

  print(`base model: ${base} (NF4 + double quant on load)`);
  const before = await score(
    await loadForInference(base, { quantize: "nf4", quiet: options.quiet }),
    heldout,
    sampleIndex,
  );
  print(
    `before fine-tuning: held-out accuracy ${pct(before.accuracy)} (${before.correct}/${before.total}), loss ${before.loss.toFixed(3)}`,
  );
  print(
    `  ${JSON.stringify(before.sample.prompt)} → ${JSON.stringify(before.sample.got)} (expected "${before.sample.expected}")`,
  );

  const config = trainConfigSchema.parse({
    base_model: base,
    load_in_4bit: true,
    adapter: "qlora",
    lora_r: 16,
    lora_alpha: 32,
    lora_target_linear: true,
    datasets: [{ path: join(assets, "task", "train.jsonl"), type: "prompt_completion" }],
    sequence_len: 64,
    micro_batch_size: 8,
    max_steps: options.steps ?? 120,
    learning_rate: 2e-3,
    lr_scheduler: "cosine",
    warmup_steps: 10,
    optimizer: "paged_adamw_32bit",
    logging_steps: 10,
    seed: 0,
    output_dir: outputDir,
  });
  const trained = await runTrain(config, { quiet: options.quiet, signal: options.signal });

  const tuned = await loadForInference(base, { adapter: trained.modelDir, quantize: "nf4", quiet: options.quiet });
  const after = await score(tuned, heldout, sampleIndex);
  const ggufAdapter = join(outputDir, "adapter.gguf");
  await exportAdapterGguf(tuned.lora!, ggufAdapter, { mapping: ggufMapping(tuned.config) });
  const seconds = (performance.now() - started) / 1000;
  print(
    `after fine-tuning:  held-out accuracy ${pct(after.accuracy)} (${after.correct}/${after.total}), loss ${after.loss.toFixed(3)}`,
  );
  print(
    `  ${JSON.stringify(after.sample.prompt)} → ${JSON.stringify(after.sample.got)} (expected "${after.sample.expected}")`,
  );
  print(`done in ${seconds.toFixed(0)} s`);
  print(`PEFT adapter:  ${trained.modelDir}`);
  print(`GGUF adapter:  ${ggufAdapter}`);
  print(`report:        ${trained.reportPath}`);
  return { before, after, seconds, adapterDir: trained.modelDir, ggufAdapter, reportPath: trained.reportPath };
}
