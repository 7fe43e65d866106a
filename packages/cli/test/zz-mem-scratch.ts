import { createModel, parseConfig, randomLayers } from "@qlora/models";
import { LoraModel } from "@qlora/lora";
import { AdamW } from "@qlora/paged-optim";
import { memoryStats, resetPeakMemory, tensor, emptyCache } from "@qlora/tensor";
import { selectDevice } from "../src/device";
import { batchLoss } from "../src/loss";
import { estimateMemory, modelShapeFromConfig, DEFAULT_ESTIMATE, formatPlan } from "../src/estimate";
selectDevice("cpu", undefined);
const sizes = [
  {
    hidden_size: 128,
    intermediate_size: 344,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 1000,
    seq: 128,
    mb: 2,
    ckpt: true,
  },
  {
    hidden_size: 256,
    intermediate_size: 688,
    num_hidden_layers: 4,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    vocab_size: 2000,
    seq: 256,
    mb: 2,
    ckpt: true,
  },
  {
    hidden_size: 384,
    intermediate_size: 1024,
    num_hidden_layers: 3,
    num_attention_heads: 6,
    num_key_value_heads: 2,
    vocab_size: 4000,
    seq: 128,
    mb: 4,
    ckpt: false,
  },
];
for (const s of sizes) {
  const raw = { architectures: ["LlamaForCausalLM"], ...s, max_position_embeddings: 512, torch_dtype: "float32" };
  const model = createModel(
    parseConfig(raw),
    randomLayers({ seed: 1, dtype: "f32", quantize: { quantType: "nf4", doubleQuant: true, blocksize: 64 } }),
    { gradientCheckpointing: s.ckpt } as never,
  );
  const lm = LoraModel.inject(model, { r: 8, lora_alpha: 16, target_modules: "all-linear" });
  const params = [...model.namedParameters()].filter(([, p]) => p.requiresGrad);
  const opt = new AdamW(params, { lr: 1e-3 });
  emptyCache?.();
  resetPeakMemory("cpu");
  const T = s.seq * s.mb;
  const ids = new Int32Array(T).map((_, i) => (i * 13) % s.vocab_size);
  const pos = new Int32Array(T).map((_, i) => i % s.seq);
  for (let step = 0; step < 3; step++) {
    const b = {
      rows: s.mb,
      seqLen: s.seq,
      inputIds: ids,
      labels: ids,
      positionIds: pos,
      segmentIds: new Int32Array(T),
      numLossTokens: T - s.mb,
    };
    const l = batchLoss(model, b as never);
    l.backward();
    l.dispose();
    await opt.step();
    opt.zeroGrad();
  }
  const measured = memoryStats("cpu").peakBytes;
  const plan = estimateMemory(modelShapeFromConfig(raw), {
    ...DEFAULT_ESTIMATE,
    seqLen: s.seq,
    microBatchSize: s.mb,
    loraR: 8,
    gradientCheckpointing: s.ckpt,
    optimizerBits: 32,
  });
  console.log(
    JSON.stringify(s),
    "measured",
    (measured / 1e6).toFixed(2),
    "MB estimate",
    (plan.totalBytes / 1e6).toFixed(2),
    "ratio",
    (plan.totalBytes / measured).toFixed(3),
  );
  console.log(formatPlan(plan));
  model.dispose?.();
  lm;
}
