/**
 * The headline goal at small scale: a tiny generated Llama, quantized NF4 + double quant, LoRA on all linear layers,
 * paged-optim's AdamW, gradient checkpointing, packed data — eval loss falls well below its start; and QLoRA vs 16-bit
 * LoRA (the same random weights stored bf16 instead of NF4, same data and seed) end within 5% in eval loss.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LoraModel } from "@qlora/lora";
import { AdamW } from "@qlora/paged-optim";
import { Linear4bit, manualSeed } from "@qlora/tensor";
import { existsSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import { Trainer, type TokenDataset, bf16MixedPrecision, f32Precision, loadTokenDataset } from "../src/index";
import { llamaLoss, peftCheckpointIO, tinyLlama } from "./helpers/llama";

const work = mkdtempSync(join(tmpdir(), "qlora-e2e-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Synthetic task: after a prompt token a, the completion counts up from a (successor function over 60 tokens). */
function writeTask(): string {
  const rows: string[] = [];
  let s = 12345;
  const rnd = (n: number) => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s % n;
  };
  for (let i = 0; i < 160; i++) {
    const a = rnd(60);
    const completion = Array.from({ length: 8 }, (_, k) => 4 + ((a + k + 1) % 60));
    rows.push(JSON.stringify({ input_ids: [1, 4 + a, ...completion, 2], labels: [-100, -100, ...completion, 2] }));
  }
  const file = join(work, "task.jsonl");
  writeFileSync(file, rows.join("\n"));
  return file;
}

async function train(kind: "nf4" | "bf16", data: TokenDataset) {
  manualSeed(0);
  const model = tinyLlama(kind, 1);
  const lora = LoraModel.inject(model, { r: 8, lora_alpha: 16, target_modules: "all-linear", lora_dropout: 0 });
  const trainable = [...model.namedParameters()].filter(([, p]) => p.requiresGrad);
  const optimizer = new AdamW(trainable, { lr: 3e-2, weightDecay: 0 });
  const make = (m: typeof model, o: typeof optimizer, io: ReturnType<typeof peftCheckpointIO>) =>
    new Trainer({
      model: m,
      optimizer: o,
      loss: llamaLoss,
      train: data.train,
      eval: data.eval,
      checkpointIO: io,
      // 16-bit LoRA: frozen bf16 weights with f32 trainable adapters, checked by the precision slot
      precision: kind === "bf16" ? bf16MixedPrecision : f32Precision,
      args: {
        outputDir: join(work, kind),
        saveSteps: 40,
        seed: 0,
        learningRate: 3e-2,
        maxSteps: 40,
        gradientAccumulationSteps: 1,
        maxGradNorm: 1,
        gradientCheckpointing: true,
        loggingSteps: 10,
        scheduler: { name: "cosine", warmupSteps: 2 },
      },
    });
  const trainer = make(model, optimizer, peftCheckpointIO(lora));
  const start = (await trainer.evaluate()).eval_loss;
  await trainer.fit();
  const end = (await trainer.evaluate()).eval_loss;
  // The checkpoint holds a PEFT adapter; loading it into a fresh model restores the same eval loss.
  const ckpt = join(work, kind, "checkpoint-40");
  for (const f of ["adapter_model.safetensors", "adapter_config.json", "optimizer.json", "trainer_state.json"])
    expect(existsSync(join(ckpt, f))).toBe(true);
  manualSeed(0);
  const fresh = tinyLlama(kind, 1);
  const freshLora = LoraModel.inject(fresh, { r: 8, lora_alpha: 16, target_modules: "all-linear", lora_dropout: 0 });
  const freshOpt = new AdamW(
    [...fresh.namedParameters()].filter(([, p]) => p.requiresGrad),
    { lr: 3e-2 },
  );
  const reloaded = make(fresh, freshOpt, peftCheckpointIO(freshLora));
  await reloaded.loadCheckpoint(ckpt);
  expect((await reloaded.evaluate()).eval_loss).toBe(end);
  const quantized = [...model.namedModules()].filter(([, m]) => m instanceof Linear4bit).length;
  const frozenDtypes = new Set([...model.namedParameters()].filter(([, p]) => !p.requiresGrad).map(([, p]) => p.dtype));
  return { start, end, quantized, frozenDtypes, loraLayers: lora.loraLayers().length, trainable: trainable.length };
}

describe("end to end: QLoRA on a tiny generated Llama", () => {
  it("eval loss falls well below its start, and QLoRA ends within 5% of 16-bit LoRA", async () => {
    const data = await loadTokenDataset({
      files: writeTask(),
      maxLength: 48,
      microBatchSize: 2,
      packing: true,
      validationSplit: 32,
      seed: 0,
    });
    const q = await train("nf4", data);
    expect(q.quantized).toBe(14); // 2 layers × (q, k, v, o, gate, up, down)
    expect(q.loraLayers).toBe(14);
    expect(q.trainable).toBe(28);
    expect(q.end).toBeLessThan(0.6 * q.start);
    const dense = await train("bf16", data);
    expect(dense.quantized).toBe(0);
    expect([...dense.frozenDtypes]).toEqual(["bf16"]);
    expect(Math.abs(q.end - dense.end) / dense.end).toBeLessThan(0.05);
    console.log(
      `e2e: QLoRA eval loss ${q.start.toFixed(4)} -> ${q.end.toFixed(4)}; 16-bit (bf16 base) LoRA ${dense.start.toFixed(4)} -> ${dense.end.toFixed(4)}`,
    );
  });
});
