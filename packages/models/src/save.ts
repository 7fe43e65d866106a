/**
 * saveQuantized: write a model as a bitsandbytes 4-bit checkpoint in exactly the layout transformers +
 * bitsandbytes save and load (bnb-4bit-format spec §6): each Linear4bit as `weight` (U8 packed codes) plus
 * `weight.absmax`, `weight.quant_map`, [`weight.nested_absmax`, `weight.nested_quant_map`],
 * `weight.quant_state.bitsandbytes__<type>`; everything else in its own dtype; config.json with
 * `quantization_config`. Every file is written under a temporary name and renamed.
 */
import { join } from "node:path";
import { AtomicFile, ensureDirectory, type SafetensorsDtype, writeSafetensors } from "@qlora/formats";
import { packQuantState, type TensorRecord } from "@qlora/nf4";
import { Linear4bit, type Module, type Tensor } from "@qlora/tensor";
import type { CausalLM } from "./causal-lm";
import { ModelError } from "./errors";
import type { QuantizeOptions } from "./layers";

const ST_DTYPE: Record<string, SafetensorsDtype> = { f32: "F32", bf16: "BF16", f16: "F16", u8: "U8", i32: "I32" };

function tensorRecord(key: string, t: Tensor): TensorRecord & { dtype: SafetensorsDtype } {
  const dtype = ST_DTYPE[t.dtype];
  if (!dtype)
    throw new ModelError("tensor_dtype", `saveQuantized: "${key}" has dtype ${t.dtype}, which cannot be saved`, {
      key,
    });
  const raw = t.toHost() as ArrayBufferView;
  const bytes = new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength).slice();
  return { dtype: dtype as "U8", shape: [...t.shape], bytes };
}

/** name → record in module order: each module's own parameters, a Linear4bit's packed weight key set. */
export function quantizedRecords(model: Module): Map<string, TensorRecord> {
  const out = new Map<string, TensorRecord>();
  for (const [name, m] of model.namedModules()) {
    const pre = name ? `${name}.` : "";
    if (m instanceof Linear4bit)
      for (const [k, rec] of Object.entries(packQuantState(m.quantState, { prefix: pre }))) out.set(k, rec);
    for (const [n, p] of m.namedParameters()) if (!n.includes(".")) out.set(pre + n, tensorRecord(pre + n, p));
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
  /** The 4-bit settings to record in quantization_config (loadModel's `quantization`). */
  quantization: Required<QuantizeOptions>;
  generationConfig?: Record<string, unknown> | null;
}

/** Write `model` to `dir` as a bitsandbytes 4-bit Hugging Face checkpoint (model.safetensors + config.json). */
export async function saveQuantized(model: CausalLM, dir: string, options: SaveQuantizedOptions): Promise<void> {
  if (![...model.namedModules()].some(([, m]) => m instanceof Linear4bit))
    throw new ModelError(
      "bad_argument",
      `saveQuantized(${dir}): the model has no Linear4bit layer; a quantization_config would misdescribe it`,
    );
  await ensureDirectory(dir);
  const recs = quantizedRecords(model);
  await writeSafetensors(
    join(dir, "model.safetensors"),
    [...recs].map(([name, r]) => ({ name, dtype: r.dtype, shape: r.shape, data: r.bytes })),
    { format: "pt" },
  );
  const config = { ...model.config.raw, quantization_config: quantizationConfig(options.quantization) };
  await writeTextAtomic(join(dir, "config.json"), sortedJson(config));
  if (options.generationConfig)
    await writeTextAtomic(join(dir, "generation_config.json"), sortedJson(options.generationConfig));
}
