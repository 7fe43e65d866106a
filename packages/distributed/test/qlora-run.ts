/**
 * The DDP equivalence setup: a tiny generated Llama quantized NF4 + double quant, LoRA on all linear layers,
 * paged-optim's AdamW, clipping and gradient accumulation. Global batch i is rows [i·N·b, (i+1)·N·b); rank r
 * trains on its slice [i·N·b + r·b, i·N·b + (r+1)·b), so N ranks with micro-batch b see exactly one process's
 * micro-batch N·b.
 */
import { LoraModel } from "@qlora/lora";
import { type CausalLM, createModel, parseConfig, randomLayers } from "@qlora/models";
import { AdamW } from "@qlora/paged-optim";
import { type Module, type Tensor, manualSeed, tensor } from "@qlora/tensor";
import { type BatchSource, type CheckpointIO, type Strategy, type TokenBatch, Trainer, collate } from "@qlora/trainer";

const SEQ = 12;
const ROWS = 48;

function rows(): { inputIds: Int32Array; labels: Int32Array }[] {
  let s = 4242;
  const rnd = (n: number) => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s % n;
  };
  return Array.from({ length: ROWS }, () => {
    const a = rnd(50);
    const len = 6 + rnd(SEQ - 6); // uneven lengths: uneven loss-token counts per rank
    const ids = Array.from({ length: len }, (_, k) => (k === 0 ? 1 : 4 + ((a + k) % 50)));
    const labels = ids.map((v, k) => (k < 2 ? -100 : v));
    return { inputIds: Int32Array.from(ids), labels: Int32Array.from(labels) };
  });
}

function source(batches: TokenBatch[]): BatchSource<TokenBatch> {
  return {
    length: batches.length,
    *batches(_epoch, skip) {
      yield* batches.slice(skip);
    },
    lossTokens: (b) => b.numLossTokens,
  };
}

function llamaLoss(model: Module, b: TokenBatch): Tensor {
  const shape = [b.rows, b.seqLen];
  const ids = tensor(b.inputIds, { dtype: "i32", shape });
  const pos = tensor(b.positionIds, { dtype: "i32", shape });
  const seg = tensor(b.segmentIds, { dtype: "i32", shape });
  const labels = tensor(b.labels, { dtype: "i32", shape });
  const out = (model as CausalLM).forward({ inputIds: ids, positionIds: pos, segmentIds: seg, labels });
  for (const t of [ids, pos, seg, labels]) t.dispose();
  out.loss?.dispose();
  return out.lossSum as Tensor;
}

export interface RunOptions {
  rank: number;
  worldSize: number;
  /** Rows per micro-batch on this rank. */
  microBatch: number;
  accumulation: number;
  steps: number;
  strategy?: Strategy;
  /** Checkpoint every step into this directory (the trainer's default safetensors CheckpointIO). */
  outputDir?: string;
  /** Resume from the latest checkpoint in outputDir. */
  resume?: boolean;
  /** Called at the start of every optimizer step with its index (steps done) and a reader of the adapter. */
  onStep?: (step: number, adapter: () => number[]) => void;
  /** Decoder layers of the tiny Llama (default 2). */
  layers?: number;
  /** Default true (the model's own per-layer checkpoints). */
  gradientCheckpointing?: boolean;
  /** The trainer's CheckpointIO, built for the injected LoRA model. */
  checkpointIO?: (lora: LoraModel) => CheckpointIO;
  /** Called after a checkpoint was loaded (resume), with the adapter values then. */
  onLoad?: (values: number[]) => void;
}

export async function trainAdapter(
  o: RunOptions,
): Promise<{ values: number[]; names: string[]; losses: number[]; optimizerStateBytes: number }> {
  manualSeed(0);
  const config = parseConfig({
    architectures: ["LlamaForCausalLM"],
    vocab_size: 64,
    hidden_size: 64,
    intermediate_size: 128,
    num_hidden_layers: o.layers ?? 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: 64,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
  });
  const model = createModel(
    config,
    randomLayers({ seed: 1, std: 0.1, quantize: { quantType: "nf4", doubleQuant: true, blocksize: 64 } }),
  );
  const lora = LoraModel.inject(model, { r: 4, lora_alpha: 8, target_modules: "all-linear", lora_dropout: 0 });
  const trainable = [...model.namedParameters()].filter(([, p]) => p.requiresGrad);
  const optimizer = new AdamW(trainable, { lr: 1e-2, weightDecay: 0 });
  const all = rows();
  const global = o.microBatch * o.worldSize;
  const batches: TokenBatch[] = [];
  for (let i = 0; (i + 1) * global <= all.length; i++) {
    const mine = all.slice(i * global + o.rank * o.microBatch, i * global + (o.rank + 1) * o.microBatch);
    batches.push(
      collate(
        mine.map((r) => [r]),
        SEQ,
        0,
      ),
    );
  }
  const losses: number[] = [];
  const trainer = new Trainer<TokenBatch>({
    model,
    optimizer,
    loss: llamaLoss,
    train: source(batches),
    strategy: o.strategy,
    checkpointIO: o.checkpointIO?.(lora),
    args: {
      seed: 0,
      learningRate: 1e-2,
      maxSteps: Math.max(1, o.steps),
      gradientAccumulationSteps: o.accumulation,
      maxGradNorm: 0.5,
      gradientCheckpointing: o.gradientCheckpointing ?? true, // hooks must fire once per parameter under recomputation too
      loggingSteps: 1,
      scheduler: { name: "constant" },
      ...(o.outputDir ? { outputDir: o.outputDir, saveSteps: 1 } : {}),
    },
  });
  const adapter = () => trainable.flatMap(([, p]) => Array.from(p.toTypedArray() as Float32Array));
  trainer.hooks.on("step:start", (ctx) => o.onStep?.(ctx.state.globalStep, adapter));
  trainer.hooks.on("step:end", (ctx) => {
    if (ctx.loss !== undefined) losses.push(ctx.loss);
  });
  trainer.hooks.on("checkpoint:load", () => o.onLoad?.(adapter()));
  if (o.steps > 0) await trainer.fit({ resumeFrom: o.resume });
  const values: number[] = [];
  const names: string[] = [];
  for (const [n, p] of trainable) {
    names.push(n);
    values.push(...(p.toTypedArray() as Float32Array));
  }
  return { values, names, losses, optimizerStateBytes: optimizer.stateBytes() };
}
