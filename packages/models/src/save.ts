/**
 * saveQuantized: write a model as a bitsandbytes 4-bit checkpoint in exactly the layout transformers +
 * bitsandbytes save and load (bnb-4bit-format spec §6): each Linear4bit as `weight` (U8 packed codes) plus
 * `weight.absmax`, `weight.quant_map`, [`weight.nested_absmax`, `weight.nested_quant_map`],
 * `weight.quant_state.bitsandbytes__<type>`; everything else in its own dtype; config.json with
 * `quantization_config`. Every file is written under a temporary name and renamed.
 */
import { join } from "node:path";
import {
  AtomicFile,
  ensureDirectory,
  removeStaleShards,
  type SafetensorsDtype,
  writeSafetensors,
} from "@qlora/formats";
import { packQuantState, type TensorRecord } from "@qlora/nf4";
import { Linear, Linear4bit, type Module, type Tensor, keep, noGrad } from "@qlora/tensor";
import type { CausalLM } from "./causal-lm";
import { ModelError } from "./errors";
import type { QuantizeOptions } from "./layers";

const ST_DTYPE: Record<string, SafetensorsDtype> = { f32: "F32", bf16: "BF16", f16: "F16", u8: "U8", i32: "I32" };

type FloatDtype = "f32" | "bf16" | "f16";
const TORCH_DTYPE = { f32: "float32", bf16: "bfloat16", f16: "float16" } as const;
const isFloat = (d: string): d is FloatDtype => d === "f32" || d === "bf16" || d === "f16";

function tensorRecord(key: string, t: Tensor, storage?: FloatDtype): TensorRecord & { dtype: SafetensorsDtype } {
  const dtype = ST_DTYPE[storage && isFloat(t.dtype) ? storage : t.dtype];
  if (!dtype)
    throw new ModelError("tensor_dtype", `saveQuantized: "${key}" has dtype ${t.dtype}, which cannot be saved`, {
      key,
    });
  const cast = storage && isFloat(t.dtype) && t.dtype !== storage ? noGrad(() => t.to(storage)) : undefined;
  try {
    const raw = (cast ?? t).toHost() as ArrayBufferView;
    const bytes = new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength).slice();
    return { dtype: dtype as "U8", shape: [...t.shape], bytes };
  } finally {
    cast?.dispose();
  }
}

/**
 * name → record in module order: each module's own parameters, a Linear4bit's packed weight key set. `storage`
 * casts the floating-point tensors that are not 4-bit (norms, embeddings, skipped linears) and is the dtype the 4-bit
 * weights' quant_state names; default: their own dtypes.
 */
export function quantizedRecords(model: Module, storage?: FloatDtype): Map<string, TensorRecord> {
  const out = new Map<string, TensorRecord>();
  for (const [name, m] of model.namedModules()) {
    const pre = name ? `${name}.` : "";
    if (m instanceof Linear4bit) {
      // the quant_state's dtype is what bitsandbytes dequantizes to: the checkpoint's dtype when one is given
      const state = storage ? { ...m.quantState, dtype: TORCH_DTYPE[storage] } : m.quantState;
      for (const [k, rec] of Object.entries(packQuantState(state, { prefix: pre }))) out.set(k, rec);
    }
    for (const [n, p] of m.namedParameters()) if (!n.includes(".")) out.set(pre + n, tensorRecord(pre + n, p, storage));
  }
  return out;
}

/** transformers' BitsAndBytesConfig.to_dict() for a 4-bit model (sorted keys, as config files are written). */
export function quantizationConfig(q: Required<QuantizeOptions>): Record<string, unknown> {
  return {
    _load_in_4bit: true,
    _load_in_8bit: false,
    bnb_4bit_compute_dtype: "float32",
    bnb_4bit_quant_storage: "uint8",
    bnb_4bit_quant_type: q.quantType,
    bnb_4bit_use_double_quant: q.doubleQuant,
    llm_int8_enable_fp32_cpu_offload: false,
    llm_int8_has_fp16_weight: false,
    llm_int8_skip_modules: q.skipModules,
    llm_int8_threshold: 6.0,
    load_in_4bit: true,
    load_in_8bit: false,
    quant_method: "bitsandbytes",
  };
}

function sortedJson(v: Record<string, unknown>): string {
  const sort = (x: unknown): unknown =>
    x && typeof x === "object" && !Array.isArray(x)
      ? Object.fromEntries(
          Object.keys(x)
            .sort()
            .map((k) => [k, sort((x as Record<string, unknown>)[k])]),
        )
      : x;
  return `${JSON.stringify(sort(v), null, 2)}\n`;
}

async function writeTextAtomic(path: string, text: string): Promise<void> {
  const f = await AtomicFile.create(path);
  try {
    await f.write(new TextEncoder().encode(text));
    await f.commit();
  } catch (e) {
    await f.abort();
    throw e;
  }
}

export interface SaveQuantizedOptions {
  /**
   * The 4-bit settings to record in quantization_config (loadModel's `quantization`). Default: read from the
   * model's Linear4bit layers (type, blocksize, double quant) and its dense linears (skip list).
   */
  quantization?: Required<QuantizeOptions>;
  /**
   * Storage dtype of the tensors that stay dense (embeddings, norms, skipped linears), recorded as the config's
   * torch_dtype. Default: each tensor's own dtype (a bf16 checkpoint quantized on load keeps them bf16).
   */
  dtype?: FloatDtype;
  generationConfig?: Record<string, unknown> | null;
}

/** The settings a model's 4-bit layers were made with, as loadModel's `quantization` reports them. */
function quantizationOf(model: Module): Required<QuantizeOptions> {
  const layers = [...model.namedModules()];
  const first = layers.find(([, m]) => m instanceof Linear4bit)?.[1] as Linear4bit;
  const state = first.quantState;
  const skipModules = layers.filter(([, m]) => m instanceof Linear).map(([name]) => name.split(".").at(-1) as string);
  return {
    quantType: state.quantType,
    blocksize: state.blocksize,
    doubleQuant: !(state.absmax instanceof Float32Array),
    // loadModel's default skip list always names lm_head (tied heads are no Linear); dense linears join it
    skipModules: [...new Set(["lm_head", ...skipModules])],
  };
}

/** Write `model` to `dir` as a bitsandbytes 4-bit Hugging Face checkpoint (model.safetensors + config.json). */
export async function saveQuantized(model: CausalLM, dir: string, options: SaveQuantizedOptions = {}): Promise<void> {
  if (![...model.namedModules()].some(([, m]) => m instanceof Linear4bit))
    throw new ModelError(
      "bad_argument",
      `saveQuantized(${dir}): the model has no Linear4bit layer; a quantization_config would misdescribe it`,
    );
  if (options.dtype !== undefined && !(options.dtype in TORCH_DTYPE))
    throw new ModelError(
      "bad_argument",
      `saveQuantized: options.dtype must be "f32", "bf16" or "f16", got ${JSON.stringify(options.dtype)}`,
      { key: "dtype" },
    );
  await ensureDirectory(dir);
  const recs = quantizedRecords(model, options.dtype);
  await writeSafetensors(
    join(dir, "model.safetensors"),
    [...recs].map(([name, r]) => ({ name, dtype: r.dtype, shape: r.shape, data: r.bytes })),
    { format: "pt" },
  );
  await removeStaleShards(dir, ["model.safetensors"]);
  const quantization = options.quantization ?? quantizationOf(model);
  const config: Record<string, unknown> = {
    ...model.config.raw,
    quantization_config: quantizationConfig(quantization),
  };
  if (options.dtype) setDtype(config, TORCH_DTYPE[options.dtype]);
  untieOwnHead(config, recs.has("lm_head.weight"));
  await writeTextAtomic(join(dir, "config.json"), sortedJson(config));
  if (options.generationConfig)
    await writeTextAtomic(join(dir, "generation_config.json"), sortedJson(options.generationConfig));
}

/** An output head with its own weight (an untied copy trained as modules_to_save, merged) is no longer tied. */
function untieOwnHead(config: Record<string, unknown>, hasHead: boolean): void {
  if (config.tie_word_embeddings === true && hasHead) config.tie_word_embeddings = false;
}

/**
 * Record the checkpoint's dtype under the key(s) its config uses: `torch_dtype` (transformers v4), `dtype` (v5, which
 * still reads the old key), or `torch_dtype` when it has neither. A stale second key would contradict the first.
 */
function setDtype(config: Record<string, unknown>, torchName: string): void {
  const keys = ["torch_dtype", "dtype"].filter((k) => typeof config[k] === "string");
  for (const k of keys.length ? keys : ["torch_dtype"]) config[k] = torchName;
}

/** A frozen dense f32 Linear over `weight` / `bias` (already f32, owned by it) put where `name` was; `old` is freed. */
function replaceByF32Linear(
  model: Module,
  name: string,
  old: Linear | Linear4bit,
  weight: Tensor,
  bias: Tensor | null,
) {
  const dense = new Linear(old.inFeatures, old.outFeatures, { init: { weight, bias } });
  for (const p of dense.parameters()) p.requiresGrad = false;
  model.setSubmodule(name, dense);
  old.dispose();
}

const f32Copy = (t: Tensor) => keep(noGrad(() => t.detach().cast("f32")));

/**
 * Replace every Linear4bit of `model` by a dense f32 Linear holding its dequantized weight (transformers'
 * model.dequantize()). Returns how many layers were dequantized.
 */
export function dequantizeModel(model: Module): number {
  let n = 0;
  for (const [name, m] of [...model.namedModules()]) {
    if (!(m instanceof Linear4bit)) continue;
    replaceByF32Linear(model, name, m, keep(m.dequantizedWeight()), m.bias ? f32Copy(m.bias) : null);
    n++;
  }
  return n;
}

/**
 * Replace every dense Linear held in bf16/f16 by a frozen f32 copy, so that merging an adapter adds its delta at full
 * precision (a bf16 weight plus the delta would round back to bf16). Returns how many layers were upcast.
 */
export function upcastLinears(model: Module): number {
  let n = 0;
  for (const [name, m] of [...model.namedModules()]) {
    if (!(m instanceof Linear) || m.weight.dtype === "f32") continue;
    replaceByF32Linear(model, name, m, f32Copy(m.weight), m.bias ? f32Copy(m.bias) : null);
    n++;
  }
  return n;
}

export interface SaveDenseOptions {
  /** Storage dtype of every tensor (default "bf16", as most Hugging Face checkpoints). */
  dtype?: "f32" | "bf16" | "f16";
  generationConfig?: Record<string, unknown> | null;
}

/**
 * Write a dense `model` to `dir` as a Hugging Face checkpoint (model.safetensors + config.json without
 * quantization_config): save_pretrained for a merged or fully fine-tuned model. A model with 4-bit layers is
 * refused: dequantize it first, or use saveQuantized. Tokenizer files are not written (copy them from the base).
 */
export async function saveDense(model: CausalLM, dir: string, options: SaveDenseOptions = {}): Promise<void> {
  const dtype = options.dtype ?? "bf16";
  if (!(dtype in TORCH_DTYPE))
    throw new ModelError(
      "bad_argument",
      `saveDense: options.dtype must be "f32", "bf16" or "f16", got ${JSON.stringify(dtype)}`,
      {
        key: "dtype",
      },
    );
  const quantized = [...model.namedModules()].find(([, m]) => m instanceof Linear4bit);
  if (quantized)
    throw new ModelError(
      "bad_argument",
      `saveDense(${dir}): "${quantized[0]}" is a 4-bit layer; call dequantizeModel(model) before merging an adapter (merging into 4-bit weights re-quantizes them), load the base with quantize: false, or write a 4-bit checkpoint with saveQuantized`,
    );
  await ensureDirectory(dir);
  const state = model.stateDict();
  const casts: Tensor[] = [];
  try {
    const records = Object.entries(state).map(([name, t]) => {
      const c = t.to(dtype).contiguous();
      casts.push(c);
      return { name, dtype: ST_DTYPE[dtype], shape: [...t.shape], data: c.toHost() as ArrayBufferView };
    });
    await writeSafetensors(join(dir, "model.safetensors"), records, { format: "pt" });
    await removeStaleShards(dir, ["model.safetensors"]);
  } finally {
    for (const c of casts) c.dispose();
  }
  const { quantization_config: _dropped, ...raw } = model.config.raw;
  const config: Record<string, unknown> = { ...raw };
  setDtype(config, TORCH_DTYPE[dtype]);
  untieOwnHead(config, "lm_head.weight" in state);
  await writeTextAtomic(join(dir, "config.json"), sortedJson(config));
  if (options.generationConfig)
    await writeTextAtomic(join(dir, "generation_config.json"), sortedJson(options.generationConfig));
}
