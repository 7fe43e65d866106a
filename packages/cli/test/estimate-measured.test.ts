/**
 * `qlora estimate` against the runtime: tiny NF4+DQ Llamas with LoRA (all linears) and AdamW train for two steps
 * on the CPU backend through the CLI's own loss path, and the plan must land within 15 % of what was measured.
 *
 * "Measured peak" is `memoryStats("cpu").peakBytes`: the peak of the bytes held by tensor storages. It excludes
 * Node.js's heap and code, the caching allocator's free buffers and raw backend buffers; of the latter the plan
 * has one, the optimizer state, so the plan's tracked figure is compared with the counter and its optimizer row
 * with the optimizer's `stateBytes()`, exactly. Each step is also measured in two windows, forward and backward, against the plan's two
 * peak candidates, so a right total cannot come from two wrong halves.
 */
import { LoraModel } from "@qlora/lora";
import { batchLoss, createModel, parseConfig, randomLayers } from "@qlora/models";
import { AdamW } from "@qlora/paged-optim";
import { memoryStats, resetPeakMemory } from "@qlora/tensor";
import { describe, expect, it } from "vitest";
import { selectDevice } from "../src/device";
import {
  DEFAULT_ESTIMATE,
  type EstimateOptions,
  estimateMemory,
  modelShapeFromConfig,
  type PlanPhase,
} from "../src/estimate";

interface Case {
  name: string;
  config: Record<string, unknown>;
  seqLen: number;
  microBatchSize: number;
  gradientCheckpointing: boolean;
  loraR: number;
  optimizerBits: 32 | 8;
  /** dtype of the non-quantized weights (embeddings, norms, lm_head); config.torch_dtype says the same. */
  storage: "f32" | "bf16";
  loraDropout?: number;
}

const llama = (c: Record<string, unknown>, torchDtype = "float32") => ({
  architectures: ["LlamaForCausalLM"],
  max_position_embeddings: 1024,
  torch_dtype: torchDtype,
  ...c,
});

const CASES: Case[] = [
  {
    name: "hidden 128, 2 layers, 2×128 tokens, checkpointed (peak in a layer's backward)",
    config: llama({
      hidden_size: 128,
      intermediate_size: 344,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      vocab_size: 1000,
    }),
    seqLen: 128,
    microBatchSize: 2,
    gradientCheckpointing: true,
    loraR: 8,
    optimizerBits: 32,
    storage: "f32",
  },
  {
    name: "hidden 256, 4 layers, 2×256 tokens, checkpointed, 8-bit AdamW, bf16 embeddings and lm_head",
    config: llama(
      {
        hidden_size: 256,
        intermediate_size: 688,
        num_hidden_layers: 4,
        num_attention_heads: 8,
        num_key_value_heads: 4,
        vocab_size: 2000,
      },
      "bfloat16",
    ),
    seqLen: 256,
    microBatchSize: 2,
    gradientCheckpointing: true,
    loraR: 8,
    optimizerBits: 8,
    storage: "bf16",
  },
  {
    name: "hidden 384, 3 layers, 4×128 tokens, no checkpointing (peak at the lm_head + cross-entropy)",
    config: llama({
      hidden_size: 384,
      intermediate_size: 1024,
      num_hidden_layers: 3,
      num_attention_heads: 6,
      num_key_value_heads: 2,
      vocab_size: 4000,
    }),
    seqLen: 128,
    microBatchSize: 4,
    gradientCheckpointing: false,
    loraR: 8,
    optimizerBits: 32,
    storage: "f32",
  },
  {
    name: "hidden 256, 2 layers, 2×256 tokens, no checkpointing, lora_dropout 0.1 (a mask per LoRA linear)",
    config: llama({
      hidden_size: 256,
      intermediate_size: 688,
      num_hidden_layers: 2,
      num_attention_heads: 8,
      num_key_value_heads: 4,
      vocab_size: 2000,
    }),
    seqLen: 256,
    microBatchSize: 2,
    gradientCheckpointing: false,
    loraR: 8,
    optimizerBits: 32,
    storage: "f32",
    loraDropout: 0.1,
  },
  {
    name: "tied 32k vocabulary (two logits chunks), rank 16, checkpointed",
    config: llama({
      hidden_size: 128,
      intermediate_size: 352,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      vocab_size: 32000,
      tie_word_embeddings: true,
    }),
    seqLen: 256,
    microBatchSize: 2,
    gradientCheckpointing: true,
    loraR: 16,
    optimizerBits: 32,
    storage: "f32",
  },
];

interface Measured {
  peak: number;
  forward: number;
  backward: number;
  optimizerState: number;
}

/** Two training steps (bytes above what was alive before the model was built); the peaks are those of the second (steady) step, in the whole step and in each window. */
async function measure(c: Case): Promise<Measured> {
  // storages still alive from earlier cases in this worker (released by dispose or the garbage collector) are
  // not this run's: peaks are taken above them
  const before = memoryStats("cpu").currentBytes;
  const model = createModel(
    parseConfig(c.config),
    randomLayers({ seed: 1, dtype: c.storage, quantize: { quantType: "nf4", doubleQuant: true, blocksize: 64 } }),
    { gradientCheckpointing: c.gradientCheckpointing },
  );
  LoraModel.inject(model, {
    r: c.loraR,
    lora_alpha: 2 * c.loraR,
    target_modules: "all-linear",
    lora_dropout: c.loraDropout ?? 0,
  });
  model.train();
  const params = [...model.namedParameters()].filter(([, p]) => p.requiresGrad);
  const opt = new AdamW(params, { lr: 1e-3, bits: c.optimizerBits });
  const vocab = c.config.vocab_size as number;
  const tokens = c.seqLen * c.microBatchSize;
  const inputIds = new Int32Array(tokens).map((_, i) => (i * 13 + 5) % vocab);
  const batch = {
    rows: c.microBatchSize,
    seqLen: c.seqLen,
    inputIds,
    labels: inputIds,
    positionIds: new Int32Array(tokens).map((_, i) => i % c.seqLen),
    segmentIds: new Int32Array(tokens),
    numLossTokens: tokens - c.microBatchSize,
    numInputTokens: tokens,
  };
  const m: Measured = { peak: 0, forward: 0, backward: 0, optimizerState: 0 };
  for (let step = 0; step < 2; step++) {
    resetPeakMemory("cpu");
    const loss = batchLoss(model, batch);
    m.forward = memoryStats("cpu").peakBytes - before;
    const stepPeak = m.forward;
    resetPeakMemory("cpu");
    loss.backward();
    loss.dispose();
    m.backward = memoryStats("cpu").peakBytes - before;
    resetPeakMemory("cpu");
    await opt.step();
    opt.zeroGrad();
    m.peak = Math.max(stepPeak, m.backward, memoryStats("cpu").peakBytes - before);
  }
  m.optimizerState = opt.stateBytes();
  for (const p of model.parameters()) p.dispose();
  return m;
}

const within = (planned: number, measured: number) => Math.abs(planned / measured - 1);

describe("qlora estimate vs the measured peak of CPU training steps", () => {
  selectDevice("cpu", undefined);
  for (const c of CASES) {
    it(c.name, async () => {
      const options: EstimateOptions = { ...DEFAULT_ESTIMATE, ...c };
      const plan = estimateMemory(modelShapeFromConfig(c.config), options);
      const m = await measure(c);
      const tracked = (phase: PlanPhase) =>
        plan.rows
          .filter((r) => r.tracked && (r.phase === phase || r.phase === "persistent"))
          .reduce((s, r) => s + r.bytes, 0);
      const report = `plan ${plan.trackedPeakBytes} vs measured ${m.peak}; forward ${tracked("loss")} vs ${m.forward}; backward ${tracked("backward")} vs ${m.backward}`;
      expect(within(plan.trackedPeakBytes, m.peak), report).toBeLessThan(0.15);
      expect(within(tracked("loss"), m.forward), report).toBeLessThan(0.15);
      expect(within(tracked("backward"), m.backward), report).toBeLessThan(0.15);
      expect(plan.rows.find((r) => r.item.startsWith("optimizer state"))?.bytes).toBe(m.optimizerState);
    });
  }
});
