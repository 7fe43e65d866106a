/**
 * A training run for the kill-and-resume test (run as a subprocess by resume.test.ts):
 *   node --import tsx --conditions=@qlora/source resume-script.ts <outputDir> <data.jsonl> <weights.bin> [resume]
 * Prints "step N" after each step and "saving N" when a checkpoint write starts; QLORA_TEST_SLOW_SAVE=N makes the
 * write of checkpoint N stall (after its model file) so the parent can kill it mid-write.
 */
import { writeFileSync } from "node:fs";
import { manualSeed } from "@qlora/tensor";
import { type CheckpointIO, Trainer, loadTokenDataset, neftune, safetensorsCheckpointIO } from "../src/index";
import { charTokenizer } from "./helpers/char-tokenizer";
import { StatefulAdamW, TinyLM, tokenBatchLoss } from "./helpers/tiny";

const [outputDir, dataFile, weightsFile, resume] = process.argv.slice(2);
const slowAt = Number(process.env.QLORA_TEST_SLOW_SAVE ?? -1);
const stepDelay = Number(process.env.QLORA_TEST_STEP_MS ?? 0);

const slowIO: CheckpointIO = {
  async saveModel(dir, state, model) {
    const step = Number(/checkpoint-(\d+)|\.tmp-checkpoint-(\d+)/.exec(dir)?.slice(1).find(Boolean));
    process.stdout.write(`saving ${step}\n`);
    await safetensorsCheckpointIO.saveModel(dir, state, model);
    if (step === slowAt) await new Promise((r) => setTimeout(r, 60_000));
  },
  loadModel: (dir, model) => safetensorsCheckpointIO.loadModel(dir, model),
};

const data = await loadTokenDataset({
  files: dataFile,
  tokenizer: charTokenizer,
  maxLength: 24,
  microBatchSize: 2,
  packing: true,
  seed: 5,
});
manualSeed(3);
const model = new TinyLM(256, 16, 0.1);
const optimizer = new StatefulAdamW(
  model.parameters().filter((p) => p.requiresGrad),
  { lr: 0.02 },
);
const trainer = new Trainer({
  model,
  optimizer,
  loss: (m, b) => tokenBatchLoss(m, b),
  train: data.train,
  args: {
    outputDir,
    seed: 3,
    numEpochs: 3,
    gradientAccumulationSteps: 2,
    maxGradNorm: 1,
    saveSteps: 3,
    saveTotalLimit: 2,
    scheduler: { name: "cosine", warmupSteps: 2 },
  },
  plugins: [neftune({ alpha: 3 })],
  checkpointIO: slowIO,
});
trainer.hooks.on("step:end", async (ctx) => {
  process.stdout.write(`step ${ctx.state.globalStep}\n`);
  if (stepDelay) await new Promise((r) => setTimeout(r, stepDelay));
});
await trainer.fit({ resumeFrom: resume === "resume" ? true : undefined });
const bytes = model
  .parameters()
  .filter((p) => p.requiresGrad)
  .map((p) => Buffer.from((p.toTypedArray() as Float32Array).buffer));
writeFileSync(weightsFile, Buffer.concat(bytes));
process.stdout.write(`done ${trainer.state.globalStep}\n`);
