/**
 * One QLoRA training step on a generated ~125M Llama (hidden 768, 12 layers, 12/4 heads, ffn 2048, vocab 32000):
 * NF4 + double-quant base, LoRA r=16 on all linear layers, gradient checkpointing, paged-optim AdamW, micro-batch
 * 4 × seq 256, on the native cpu backend. Prints one JSON line: tokens/s, peak RSS and the per-phase breakdown.
 *   node --import tsx --conditions=@qlora/source packages/trainer/bench/qlora-step.ts [steps]
 */
import { registerCpuBackend, setThreads } from "@qlora/cpu-kernels";
import { LoraModel } from "@qlora/lora";
import { createModel, parseConfig, randomLayers } from "@qlora/models";
import { AdamW } from "@qlora/paged-optim";
import { type Module, getBackend, tensor } from "@qlora/tensor";
import { type BatchSource, type TokenBatch, Trainer, collate } from "../src/index";

const steps = Number(process.argv[2] ?? 3);
const threads = Number(process.env.QLORA_THREADS ?? 2);
if (!registerCpuBackend()) throw new Error("the native cpu backend did not load");
setThreads(threads);
const [batch, seq, vocab] = [4, 256, 32000];
const config = parseConfig({
  architectures: ["LlamaForCausalLM"],
  vocab_size: vocab,
  hidden_size: 768,
  intermediate_size: 2048,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  num_key_value_heads: 4,
  max_position_embeddings: 2048,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
});
const model = createModel(config, randomLayers({ seed: 1, quantize: { quantType: "nf4", doubleQuant: true } }));
LoraModel.inject(model, { r: 16, lora_alpha: 32, target_modules: "all-linear", lora_dropout: 0 });
const trainable = [...model.namedParameters()].filter(([, p]) => p.requiresGrad);
const optimizer = new AdamW(trainable, { lr: 1e-4 });

const t = { data: 0, forward: 0, backward: 0, optimizer: 0 };
let mark = 0;
const now = () => performance.now();
let seed = 7;
const source: BatchSource<TokenBatch> = {
  length: steps + 1,
  *batches(_e, skip) {
    for (let i = skip; i < steps + 1; i++) {
      const t0 = now();
      const rows = Array.from({ length: batch }, () => {
        const ids = Int32Array.from({ length: seq }, () => {
          seed = (seed * 1103515245 + 12345) % 2147483648;
          return seed % vocab;
        });
        return { inputIds: ids, labels: ids };
      });
      const b = collate(
        rows.map((r) => [r]),
        seq,
        0,
      );
      t.data += now() - t0;
      yield b;
    }
  },
  lossTokens: (b) => b.numLossTokens,
};

function loss(m: Module, b: TokenBatch) {
  const t0 = now();
  const shape = [b.rows, b.seqLen];
  const out = (m as ReturnType<typeof createModel>).forward({
    inputIds: tensor(b.inputIds, { dtype: "i32", shape }),
    positionIds: tensor(b.positionIds, { dtype: "i32", shape }),
    labels: tensor(b.labels, { dtype: "i32", shape }),
  });
  out.loss?.dispose();
  t.forward += now() - t0;
  return out.lossSum!;
}

const trainer = new Trainer({
  model,
  optimizer,
  loss,
  train: source,
  args: { learningRate: 1e-4, maxSteps: steps + 1, gradientCheckpointing: true, maxGradNorm: 1, loggingSteps: 1000 },
});
const stepTimes: number[] = [];
let stepStart = 0;
const reset = () => Object.assign(t, { data: 0, forward: 0, backward: 0, optimizer: 0 });
trainer.hooks.on("step:start", () => {
  stepStart = now();
});
trainer.hooks.on("backward:before", () => {
  mark = now();
});
trainer.hooks.on("microstep:end", () => {
  t.backward += now() - mark;
});
trainer.hooks.on("optimizer:step:before", () => {
  mark = now();
});
trainer.hooks.on("optimizer:step:after", () => {
  t.optimizer += now() - mark;
});
trainer.hooks.on("step:end", (ctx) => {
  if (ctx.state.globalStep === 1)
    reset(); // step 1 is warm-up
  else stepTimes.push(now() - stepStart);
});
await trainer.fit();
const per = (ms: number) => +(ms / steps / 1000).toFixed(3);
const stepSec = stepTimes.reduce((a, b) => a + b, 0) / stepTimes.length / 1000;
console.log(
  JSON.stringify({
    impl: "qlora-ts",
    backend: getBackend().name,
    threads,
    steps,
    tokens_per_s: +((batch * seq) / stepSec).toFixed(1),
    step_s: +stepSec.toFixed(3),
    step_s_each: stepTimes.map((x) => +(x / 1000).toFixed(3)),
    breakdown_s: { data: per(t.data), forward: per(t.forward), backward: per(t.backward), optimizer: per(t.optimizer) },
    peak_rss_mib: +(process.resourceUsage().maxRSS / 1024).toFixed(1),
  }),
);
