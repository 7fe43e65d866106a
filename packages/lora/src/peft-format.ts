/**
 * PEFT's adapter directory: adapter_config.json + adapter_model.safetensors (metadata {"format": "pt"}),
 * keys `base_model.model.<module>.lora_A.weight` [r, in], `.lora_B.weight` [out, r], DoRA
 * `.lora_magnitude_vector` [out], modules_to_save under the original module path. The adapter "default"
 * lives at the top of the directory, any other in `<dir>/<name>/`. Files are written atomically.
 */
import { readFile, access } from "node:fs/promises";
import { join } from "node:path";
import {
  AtomicFile,
  FormatsError,
  openSafetensors,
  toFloat32Array,
  writeSafetensors,
  type SafetensorsDtype,
} from "@qlora/formats";
import { ensureDirectory, type SafetensorsTensorData } from "@qlora/formats";
import { type Module, type Tensor, tensor } from "@qlora/tensor";
import { type LoraConfig, configFromJson, configToJson, loraConfig } from "./config";
import { LoraError } from "./errors";
import { LoraModel, PEFT_PREFIX, type InjectOptions } from "./model";
import { ModulesToSaveWrapper } from "./modules-to-save";
import { LoraLinear } from "./layer";

export const ADAPTER_CONFIG_NAME = "adapter_config.json";
export const ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors";

/** Where an adapter lives inside a save directory. */
export function adapterDir(dir: string, adapterName: string): string {
  return adapterName === "default" ? dir : join(dir, adapterName);
}

interface AdapterEntry {
  /** PEFT's on-disk key (adapter name removed). */
  readonly key: string;
  /** The in-memory parameter name (Module.namedParameters of the model). */
  readonly memKey: string;
  readonly tensor: Tensor;
}

function adapterEntries(lm: LoraModel, adapterName: string): AdapterEntry[] {
  const config = lm.configs.get(adapterName);
  if (!config)
    throw new LoraError("BAD_ADAPTER", `adapter "${adapterName}" does not exist (have: ${lm.adapterNames.join(", ")})`);
  const out: AdapterEntry[] = [];
  const add = (key: string, memKey: string, tensor: Tensor) => out.push({ key: PEFT_PREFIX + key, memKey, tensor });
  for (const [name, m] of lm.model.namedModules()) {
    if (m instanceof LoraLinear && m.settings.has(adapterName)) {
      add(`${name}.lora_A.weight`, `${name}.lora_A.${adapterName}.weight`, m.loraA.get(adapterName).weight);
      add(`${name}.lora_B.weight`, `${name}.lora_B.${adapterName}.weight`, m.loraB.get(adapterName).weight);
      if (m.magnitude.has(adapterName))
        add(
          `${name}.lora_magnitude_vector`,
          `${name}.lora_magnitude_vector.${adapterName}.weight`,
          m.magnitude.get(adapterName).weight,
        );
      if (config.bias === "lora_only" && m.baseLayer.bias)
        add(`${name}.base_layer.bias`, `${name}.base_layer.bias`, m.baseLayer.bias);
    }
    if (m instanceof ModulesToSaveWrapper && m.copies.has(adapterName))
      for (const [p, t] of m.copies.get(adapterName).namedParameters())
        add(`${name}.${p}`, `${name}.modules_to_save.${adapterName}.${p}`, t);
  }
  if (config.bias === "all")
    for (const [n, p] of lm.model.namedParameters())
      if (n.split(".").pop() === "bias" && !n.includes(".original_module.") && !n.includes(".modules_to_save."))
        add(n, n, p);
  return out;
}

/**
 * The adapter's tensors under PEFT's on-disk keys (adapter name removed). The tensors are the model's own
 * (not copies).
 */
export function adapterStateDict(lm: LoraModel, adapterName: string): Record<string, Tensor> {
  return Object.fromEntries(adapterEntries(lm, adapterName).map((e) => [e.key, e.tensor]));
}

function toRecord(name: string, t: Tensor): SafetensorsTensorData {
  if (t.dtype === "f32") return { name, dtype: "F32", shape: [...t.shape], data: Float32Array.from(t.toTypedArray()) };
  if (t.dtype === "bf16" || t.dtype === "f16") {
    const bits = t.toHost() as Uint16Array;
    return { name, dtype: t.dtype === "bf16" ? "BF16" : "F16", shape: [...t.shape], data: Uint16Array.from(bits) };
  }
  throw new LoraError("BAD_ADAPTER", `adapter tensor "${name}" has dtype ${t.dtype}; expected a float dtype`);
}

async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  const f = await AtomicFile.create(path);
  await f.write(new TextEncoder().encode(`${JSON.stringify(sortKeys(value), null, 2)}\n`));
  await f.commit();
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === "object")
    return Object.fromEntries(
      Object.keys(v)
        .sort()
        .map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]),
    );
  return v;
}

export interface SaveOptions {
  /** Adapters to write; default all. */
  readonly adapters?: readonly string[];
  /** Written into adapter_config.json's base_model_name_or_path when the config has none. */
  readonly baseModelNameOrPath?: string;
  /** Written into adapter_config.json's task_type when the config has none ("CAUSAL_LM" for a causal LM). */
  readonly taskType?: string;
}

/** save_pretrained: one directory per adapter (default at the top), config + safetensors, atomic writes. */
export async function saveAdapter(lm: LoraModel, dir: string, options: SaveOptions = {}): Promise<string[]> {
  const written: string[] = [];
  for (const name of options.adapters ?? lm.adapterNames) {
    const config = lm.configs.get(name);
    if (!config) throw new LoraError("BAD_ADAPTER", `saveAdapter: adapter "${name}" does not exist`);
    const out = adapterDir(dir, name);
    await ensureDirectory(out);
    const sd = adapterStateDict(lm, name);
    const records = Object.keys(sd)
      .sort()
      .map((k) => toRecord(k, sd[k]));
    // re-validated: a bad taskType option is an error naming LoraConfig.task_type, not a written file
    const cfg: LoraConfig = loraConfig({
      ...config,
      base_model_name_or_path: config.base_model_name_or_path ?? options.baseModelNameOrPath ?? null,
      task_type: config.task_type ?? options.taskType ?? null,
    });
    await writeSafetensors(join(out, ADAPTER_WEIGHTS_NAME), records, { format: "pt" });
    await writeJsonAtomic(join(out, ADAPTER_CONFIG_NAME), configToJson(cfg));
    written.push(out);
  }
  return written;
}

/** Read adapter_config.json of one adapter directory. */
export async function readAdapterConfig(dir: string): Promise<LoraConfig> {
  const path = join(dir, ADAPTER_CONFIG_NAME);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    throw new LoraError("BAD_FILE", `${path}: cannot read the adapter config (${(e as Error).message})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new LoraError("BAD_FILE", `${path}: not valid JSON (${(e as Error).message})`);
  }
  return configFromJson(json, path);
}

async function exists(p: string): Promise<boolean> {
  try {
    await access(p);
    return true;
  } catch {
    return false;
  }
}

/** Read every tensor of the adapter's safetensors as f32 values (F32, BF16, F16 accepted). */
async function readAdapterTensors(path: string): Promise<Map<string, { shape: number[]; values: Float32Array }>> {
  try {
    const f = await openSafetensors(path);
    try {
      const out = new Map<string, { shape: number[]; values: Float32Array }>();
      for (const name of f.names) {
        const info = f.info(name);
        const dtype = info.dtype as SafetensorsDtype;
        if (dtype !== "F32" && dtype !== "BF16" && dtype !== "F16")
          throw new LoraError(
            "BAD_FILE",
            `${path}: tensor "${name}" is ${dtype}; adapter tensors must be F32, BF16 or F16`,
          );
        out.set(name, { shape: [...info.shape], values: toFloat32Array(await f.read(name), dtype) });
      }
      return out;
    } finally {
      await f.close();
    }
  } catch (e) {
    // the formats package names the file and tensor; rethrown as this package's error class
    if (e instanceof FormatsError) throw new LoraError("BAD_FILE", `${path}: ${e.message}`);
    throw e;
  }
}

export interface LoadOptions extends InjectOptions {
  /** Keep the loaded adapter trainable (PEFT's is_trainable); default false: frozen, for inference. */
  readonly isTrainable?: boolean;
}

/** A config that does not fit the model (targets that match nothing, a bad pattern) is named by its file. */
function onConfig<T>(file: string, op: () => T): T {
  try {
    return op();
  } catch (e) {
    if (e instanceof LoraError) throw new LoraError(e.code, `${file}: ${e.message}`);
    throw e;
  }
}

/**
 * PeftModel.from_pretrained / load_adapter: inject the adapter described by `dir`'s adapter_config.json into
 * `target` (a plain model, or a LoraModel that gets one more adapter) and load its weights. Every expected key
 * must be present with its shape, and no other key may be in the file.
 */
export async function loadAdapter<M extends Module>(
  target: M | LoraModel<M>,
  dir: string,
  options: LoadOptions = {},
): Promise<LoraModel<M>> {
  const name = options.adapterName ?? "default";
  const config = await readAdapterConfig(dir);
  const configPath = join(dir, ADAPTER_CONFIG_NAME);
  const weightsPath = join(dir, ADAPTER_WEIGHTS_NAME);
  if (!(await exists(weightsPath))) {
    const bin = await exists(join(dir, "adapter_model.bin"));
    throw new LoraError(
      "BAD_FILE",
      `${weightsPath}: not found${bin ? " (adapter_model.bin is a pickle; save the adapter with safe_serialization=True)" : ""}`,
    );
  }
  const tensors = await readAdapterTensors(weightsPath);
  // weights come from the file: a data-dependent init (pissa/olora/loftq) must not rewrite the base again
  const special =
    config.init_lora_weights !== true && config.init_lora_weights !== false && config.init_lora_weights !== "gaussian";
  if (special)
    (options.onWarning ?? console.warn)(
      `${dir}: adapter was initialised with init_lora_weights=${JSON.stringify(config.init_lora_weights)}; loading it assumes the base model already holds the residual weights`,
    );
  const injectConfig = { ...config, init_lora_weights: true as const, inference_mode: !options.isTrainable };
  const lm = target instanceof LoraModel ? (target as LoraModel<M>) : null;
  const model = lm ? lm.model : (target as M);
  const result = onConfig(
    configPath,
    () => lm ?? LoraModel.inject(model, injectConfig, { ...options, adapterName: name }),
  );
  if (lm) onConfig(configPath, () => lm.addAdapter(name, injectConfig, options));
  try {
    copyAdapterWeights(result, name, tensors, weightsPath);
  } catch (e) {
    // leave the model as it was: no half-loaded adapter
    if (lm) lm.deleteAdapter(name);
    else result.unload();
    throw e;
  }
  // restore the saved init method (written back on save); without isTrainable the adapter is in inference
  // mode (PEFT's is_trainable=False): markTrainable keeps it frozen
  result.configs.set(
    name,
    Object.freeze({
      ...result.configs.get(name)!,
      init_lora_weights: config.init_lora_weights,
      inference_mode: !options.isTrainable,
    }),
  );
  result.setAdapter(result.activeAdapters);
  // PEFT's load_adapter/from_pretrained: an adapter loaded for inference runs in eval mode (no LoRA dropout, which a
  // freshly injected adapter would otherwise apply: its Dropout modules start in training mode)
  if (!options.isTrainable) result.model.eval();
  return result;
}

/** Check the file's keys and shapes against the injected adapter and copy the values in place. */
function copyAdapterWeights(
  lm: LoraModel,
  name: string,
  tensors: Map<string, { shape: number[]; values: Float32Array }>,
  weightsPath: string,
): void {
  const model = lm.model;
  const entries = adapterEntries(lm, name);
  const expected = new Set(entries.map((e) => e.key));
  const missing = [...expected].filter((k) => !tensors.has(k));
  const unexpected = [...tensors.keys()].filter((k) => !expected.has(k));
  if (missing.length || unexpected.length)
    throw new LoraError(
      "BAD_FILE",
      `${weightsPath}: keys do not match the model with this adapter_config.json: missing [${missing.join(", ")}], unexpected [${unexpected.join(", ")}]`,
    );
  const sd: Record<string, Tensor> = {};
  for (const e of entries) {
    const src = tensors.get(e.key)!;
    if (src.shape.join() !== e.tensor.shape.join())
      throw new LoraError(
        "BAD_FILE",
        `${weightsPath}: "${e.key}" has shape ${JSON.stringify(src.shape)}, the model expects ${JSON.stringify(e.tensor.shape)}`,
      );
    sd[e.memKey] = tensor(src.values, { shape: src.shape, backend: e.tensor.backend });
  }
  model.loadStateDict(sd, { strict: false }); // the public in-place copy (casts to each parameter's dtype)
  for (const t of Object.values(sd)) t.dispose();
}
