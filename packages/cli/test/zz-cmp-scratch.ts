import { createModel, parseConfig, randomLayers } from "@qlora/models";
import { LoraModel } from "@qlora/lora";
import { AdamW } from "@qlora/paged-optim";
import { memoryStats, resetPeakMemory, sharedHostAllocator } from "@qlora/tensor";
import { selectDevice } from "../src/device";
import { batchLoss } from "../src/loss";
import { estimateMemory, modelShapeFromConfig, DEFAULT_ESTIMATE, formatPlan } from "../src/estimate";
selectDevice("cpu", undefined);
const rss0 = process.memoryUsage().rss;
const sizes = JSON.parse(process.argv[2]);
for (const s of sizes) {
  const t0 = Date.now();
  const raw = { architectures: ["LlamaForCausalLM"], ...s, max_position_embeddings: 2048, torch_dtype: "float32" };
  const model = createModel(
    parseConfig(raw),
    randomLayers({ seed: 1, dtype: "f32", quantize: { quantType: "nf4", doubleQuant: true, blocksize: 64 } }),
    { gradientCheckpointing: s.ckpt } as never,
  );
  LoraModel.inject(model, { r: s.r ?? 8, lora_alpha: 16, target_modules: "all-linear" });
  const params = [...model.namedParameters()].filter(([, p]) => p.requiresGrad);
  const opt = new AdamW(params, { lr: 1e-3, ...(s.bits === 8 ? { bits: 8 } : {}) } as never);
  resetPeakMemory("cpu");
  const T = s.seq * s.mb;
  const ids = new Int32Array(T).map((_, i) => (i * 13) % s.vocab_size);
  const pos = new Int32Array(T).map((_, i) => i % s.seq);
  for (let step = 0; step < 2; step++) {
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
    loraR: s.r ?? 8,
    gradientCheckpointing: s.ckpt,
    optimizerBits: s.bits ?? 32,
  });
  const optRow = plan.rows.find((r) => r.item.startsWith("optimizer"))!.bytes;
  console.log(
    JSON.stringify(s),
    "ms",
    Date.now() - t0,
    "measured",
    (measured / 1e6).toFixed(3),
    "tracked plan",
    (plan.trackedPeakBytes / 1e6).toFixed(3),
    "ratio",
    (plan.trackedPeakBytes / measured).toFixed(4),
    "opt",
    opt.stateBytes(),
    optRow,
    "total",
    (plan.totalBytes / 1e6).toFixed(2),
    "reserved",
    (sharedHostAllocator.stats().peakReservedBytes / 1e6).toFixed(2),
    "rss",
    ((process.memoryUsage().rss - rss0) / 1e6).toFixed(1),
    "rss0",
    (rss0 / 1e6).toFixed(1),
  );
  if (s.print) console.log(formatPlan(plan));
  (model as any).dispose?.();
}
