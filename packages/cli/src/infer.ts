/**
 * Loading a model (optionally with a PEFT adapter) for the inference-side commands, and the small pieces they share:
 * the llama.cpp name mapping for adapter export, loss over a dataset, and a dense Hugging Face checkpoint writer.
 */
import { copyFile, mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { writeSafetensors, type SafetensorsDtype } from "@qlora/formats";
import {
  type CausalLM,
  type HfTokenizer,
  type ModelConfig,
  batchLoss,
  ggufArchitecture,
  ggufTensorName,
  loadModel,
  loadTokenizer,
  permuteQkRows,
  qkPermuteHeads,
} from "@qlora/models";
import { type GgufLoraMapping, type LoraModel, loadAdapter } from "@qlora/lora";
import { noGrad, type Tensor } from "@qlora/tensor";
import type { TokenBatchSource } from "@qlora/trainer";
import { CliError } from "./errors";
import { layerProgress } from "./progress";

export interface LoadedForInference {
  model: CausalLM;
  config: ModelConfig;
  tokenizer: HfTokenizer;
  lora?: LoraModel;
  generationConfig: Record<string, unknown> | null;
}

export const TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];

export function requireModelDir(dir: string, flag = "--model"): void {
  if (!existsSync(join(dir, "config.json")))
    throw new CliError("BAD_PATH", `${flag}: ${dir} is not a model directory (no config.json)`);
}

export function requireAdapterDir(dir: string): void {
  if (!existsSync(join(dir, "adapter_config.json")))
    throw new CliError("BAD_PATH", `--adapter: ${dir} is not a PEFT adapter directory (no adapter_config.json)`);
}

/** quantize "nf4" (default for inference: what QLoRA trained against) or "none" (dense, checkpoint dtype). */
export async function loadForInference(
  modelDir: string,
  options: { adapter?: string; quantize?: "nf4" | "none"; quiet?: boolean } = {},
): Promise<LoadedForInference> {
  requireModelDir(modelDir);
  if (options.adapter) requireAdapterDir(options.adapter);
  const quantize = options.quantize === "none" ? false : undefined;
  const bar = layerProgress(`loading ${modelDir}`, options.quiet);
  const { model, config, generationConfig } = await loadModel(modelDir, {
    quantize,
    onProgress: bar.onProgress,
  }).finally(bar.stop);
  const tokenizer = await loadTokenizer(modelDir);
  const lora = options.adapter ? await loadAdapter(model, options.adapter) : undefined;
  model.eval();
  return { model, config, tokenizer, lora, generationConfig };
}

/** llama.cpp names and q/k permutation of this model, for the adapter GGUF. */
export function ggufMapping(config: ModelConfig): GgufLoraMapping {
  const heads = { numHeads: config.numHeads, numKvHeads: config.numKvHeads };
  return {
    architecture: ggufArchitecture(config.architecture),
    tensorName: (p) => ggufTensorName(p),
    permuteHeads: (p) => qkPermuteHeads(config.architecture, p, heads),
    permuteRows: (v, rows, cols, h) => permuteQkRows(v, rows, cols, h),
  };
}

/** Mean loss per token and the token count over every batch of `data` (no gradients). */
export function datasetLoss(model: CausalLM, data: TokenBatchSource): { loss: number; tokens: number } {
  let sum = 0;
  let tokens = 0;
  noGrad(() => {
    for (const batch of data.batches(0, 0)) {
      const l = batchLoss(model, batch);
      sum += l.item();
      l.dispose();
      tokens += batch.numLossTokens;
    }
  });
  if (tokens === 0) throw new CliError("BAD_ARGUMENT", "the data has no tokens that carry loss");
  return { loss: sum / tokens, tokens };
}

const SAFETENSORS_DTYPE: Record<"f32" | "bf16" | "f16", { st: SafetensorsDtype; torch: string }> = {
  f32: { st: "F32", torch: "float32" },
  bf16: { st: "BF16", torch: "bfloat16" },
  f16: { st: "F16", torch: "float16" },
};

/** Write a dense model as a Hugging Face checkpoint in `dtype`, with config.json and the tokenizer files of `from`. */
export async function saveDense(
  model: CausalLM,
  from: string,
  out: string,
  dtype: "f32" | "bf16" | "f16",
): Promise<void> {
  await mkdir(out, { recursive: true });
  const target = SAFETENSORS_DTYPE[dtype];
  const casts: Tensor[] = [];
  try {
    const records = Object.entries(model.stateDict()).map(([name, t]) => {
      const c = t.to(dtype).contiguous();
      casts.push(c);
      return { name, dtype: target.st, shape: [...t.shape], data: c.toHost() as ArrayBufferView };
    });
    await writeSafetensors(join(out, "model.safetensors"), records, { format: "pt" });
  } finally {
    for (const c of casts) c.dispose();
  }
  const config = JSON.parse(await readFile(join(from, "config.json"), "utf8"));
  config.torch_dtype = target.torch;
  delete config.quantization_config;
  await writeJsonAtomic(join(out, "config.json"), config);
  await copyTokenizerFiles(from, out);
}

/** Copy the tokenizer (and generation config) files, each under a temporary name first, then renamed. */
export async function copyTokenizerFiles(from: string, out: string): Promise<void> {
  for (const f of [...TOKENIZER_FILES, "generation_config.json"]) {
    if (!existsSync(join(from, f))) continue;
    const tmp = join(out, `.${f}.tmp-${process.pid}`);
    await copyFile(join(from, f), tmp);
    await rename(tmp, join(out, f));
  }
}

export async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, `${JSON.stringify(value, null, 2)}\n`);
  await rename(tmp, path);
}
