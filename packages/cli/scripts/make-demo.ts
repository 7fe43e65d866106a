/**
 * Builds the embedded demo (packages/cli/demo/): a small Llama-architecture base model pretrained from scratch by
 * @qlora/trainer in full-parameter mode on a generated corpus about fictional creatures, its byte-level BPE
 * tokenizer, and the question/answer task the demo fine-tunes on.
 *
 *   node --conditions=@qlora/source --import tsx packages/cli/scripts/make-demo.ts [--steps N] [--out DIR]
 *
 * Deterministic: the world, corpus and initial weights are seeded; the run prints its time and the base model's
 * knowledge-probe accuracy ("The color of the zib is" → red) and its Q/A accuracy (expected near 0: the format is new).
 */
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { writeSafetensors } from "@qlora/formats";
import {
  type LayerSource,
  createModel,
  loadTokenizer,
  parseConfig,
  randomLayers,
  writeTinyTokenizer,
  batchLoss,
} from "@qlora/models";
import { Embedding, Generator, RMSNorm, ones, randn } from "@qlora/tensor";
import { AdamW } from "@qlora/paged-optim";
import { Trainer, loadTokenDataset, progress, seedEverything } from "@qlora/trainer";
import { selectDevice } from "../src/device";
import { accuracy, probeKnowledge } from "../src/demo/evaluate";
import { makeCreatures, pretrainingCorpus, questions, vocabularyWords } from "../src/demo/world";

export const DEMO_CREATURES = 60;
export const DEMO_TRAIN_CREATURES = 45;

/** transformers' LlamaPreTrainedModel init: every weight N(0, 0.02) (embeddings too), norms exactly 1. */
function pretrainingInit(seed: number): LayerSource {
  const dense = randomLayers({ seed, std: 0.02, dtype: "f32" });
  const gen = new Generator(seed + 1);
  return {
    linear: dense.linear,
    norm: (_path, dim, eps) => new RMSNorm(dim, eps, { init: ones([dim]) }),
    embedding: (_path, vocab, dim) => {
      const z = randn([vocab, dim], { generator: gen });
      const w = z.mul(0.02);
      z.dispose();
      return new Embedding(vocab, dim, { init: w });
    },
  };
}

const { values } = parseArgs({
  options: {
    steps: { type: "string", default: "1500" },
    out: { type: "string", default: join(import.meta.dirname, "..", "demo") },
    docs: { type: "string", default: "6000" },
  },
});
const steps = Number(values.steps);
const out = resolve(values.out!);
const started = performance.now();

console.log(`backend: ${selectDevice("cpu", undefined)}`);
seedEverything(0);
const creatures = makeCreatures(DEMO_CREATURES);
const baseDir = join(out, "base");
rmSync(baseDir, { recursive: true, force: true });
mkdirSync(baseDir, { recursive: true });
const info = await writeTinyTokenizer(baseDir, "llama3", vocabularyWords(creatures));
const configJson = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  vocab_size: info.vocabSize,
  hidden_size: 256,
  intermediate_size: 688,
  num_hidden_layers: 4,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  head_dim: 32,
  max_position_embeddings: 256,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  hidden_act: "silu",
  tie_word_embeddings: true,
  bos_token_id: info.bosTokenId,
  eos_token_id: info.eosTokenId,
  torch_dtype: "bfloat16",
  initializer_range: 0.02,
};
const model = createModel(parseConfig(configJson), pretrainingInit(0));
for (const p of model.parameters()) p.requiresGrad = true;
const params = model.parameters().reduce((n, p) => n + p.size, 0);
console.log(`base model: ${(params / 1e6).toFixed(2)}M parameters, vocab ${info.vocabSize}`);

const work = await mkdtemp(join(tmpdir(), "qlora-demo-"));
const corpusFile = join(work, "corpus.jsonl");
writeFileSync(
  corpusFile,
  pretrainingCorpus(creatures, Number(values.docs))
    .map((text) => JSON.stringify({ text }))
    .join("\n"),
);
const tokenizer = await loadTokenizer(baseDir);
const data = await loadTokenDataset({
  files: corpusFile,
  format: "text",
  tokenizer,
  maxLength: 128,
  packing: true,
  microBatchSize: 8,
  seed: 0,
});
console.log(`corpus: ${data.stats.examples} documents, ${data.stats.tokens} tokens`);
const trainable = [...model.namedParameters()];
const trainer = new Trainer({
  model,
  optimizer: new AdamW(trainable, { lr: 3e-3, weightDecay: 0.01 }),
  loss: batchLoss,
  train: data.train,
  plugins: [progress()],
  args: {
    seed: 0,
    learningRate: 3e-3,
    maxSteps: steps,
    maxGradNorm: 1,
    loggingSteps: 50,
    scheduler: { name: "cosine_with_min_lr", warmupSteps: 50, minLrRate: 0.1 },
  },
});
await trainer.fit();
const trainSeconds = (performance.now() - started) / 1000;

// Save as a Hugging Face checkpoint in bf16 (what the demo loads and quantizes to NF4).
model.eval();
const records = Object.entries(model.stateDict()).map(([name, t]) => {
  const b = t.to("bf16").contiguous();
  return { name, dtype: "BF16" as const, shape: [...t.shape], data: b.toHost() as Uint16Array };
});
await writeSafetensors(join(baseDir, "model.safetensors"), records, { format: "pt" });
writeFileSync(join(baseDir, "config.json"), `${JSON.stringify(configJson, null, 2)}\n`);
writeFileSync(
  join(baseDir, "generation_config.json"),
  `${JSON.stringify({ bos_token_id: info.bosTokenId, eos_token_id: info.eosTokenIds, do_sample: false }, null, 2)}\n`,
);

const taskDir = join(out, "task");
mkdirSync(taskDir, { recursive: true });
const qa = (cs: typeof creatures) =>
  questions(cs)
    .map((q) => JSON.stringify({ prompt: q.prompt, completion: q.completion }))
    .join("\n");
writeFileSync(join(taskDir, "train.jsonl"), `${qa(creatures.slice(0, DEMO_TRAIN_CREATURES))}\n`);
writeFileSync(join(taskDir, "heldout.jsonl"), `${qa(creatures.slice(DEMO_TRAIN_CREATURES))}\n`);
writeFileSync(join(taskDir, "facts.jsonl"), `${creatures.map((c) => JSON.stringify(c)).join("\n")}\n`);

const probe = await probeKnowledge(model, tokenizer, creatures);
const heldout = await accuracy(model, tokenizer, questions(creatures.slice(DEMO_TRAIN_CREATURES)));
console.log(
  `pretraining: ${steps} steps in ${trainSeconds.toFixed(0)} s; knowledge probe ${(100 * probe).toFixed(1)}%; held-out Q/A accuracy ${(100 * heldout.accuracy).toFixed(1)}% (before fine-tuning)`,
);
rmSync(work, { recursive: true, force: true });
