/**
 * GGUF LoRA adapter export for llama.cpp / node-llama-cpp (convert_lora_to_gguf.py's format):
 * general.type = "adapter", adapter.type = "lora", adapter.lora.alpha, tensors `<gguf name>.weight.lora_a`
 * (torch [r, in] → ggml ne [in, r]) and `.lora_b` ([out, r] → ne [r, out]), no transposition.
 *
 * llama.cpp scales every pair by alpha_file / rank (rank = lora_b's ne[0]). Our per-module scaling s_i
 * (alpha_pattern, rank_pattern, rsLoRA's α/√r) is folded so that alpha_file / r_i · B'·A = s_i · B·A:
 * alpha_file is lora_alpha (·√r with rsLoRA, exact when every module has rank r), and B' = B · s_i·r_i / alpha_file
 * where that factor is not 1. llama.cpp's `llama` architecture permutes q/k rows (rope on interleaved pairs);
 * the same permutation is applied to lora_B (it acts on output rows only).
 *
 * The name mapping is a parameter (runtime code of this package depends only on tensor/formats/nf4):
 * pass @qlora/models' `ggufArchitecture`, `ggufTensorName`, `qkPermuteHeads`, `permuteQkRows`.
 */
import { GgmlType, float32ArrayToF16, gv, writeGguf } from "@qlora/formats";
import { LoraError } from "./errors";
import { LoraLinear } from "./layer";
import type { LoraModel } from "./model";
import { ModulesToSaveWrapper } from "./modules-to-save";

export interface GgufLoraMapping {
  /** llama.cpp's general.architecture ("llama", "qwen2", ...): must equal the base GGUF's. */
  readonly architecture: string;
  /** Module path → llama.cpp tensor stem ("model.layers.0.self_attn.q_proj" → "blk.0.attn_q"). */
  readonly tensorName: (modulePath: string) => string;
  /** Heads over which the module's output rows are permuted for llama.cpp, or null. */
  readonly permuteHeads: (modulePath: string) => number | null;
  /** The row permutation (values row-major [rows, cols]). */
  readonly permuteRows: (values: Float32Array, rows: number, cols: number, heads: number) => Float32Array;
}

export interface GgufAdapterOptions {
  readonly mapping: GgufLoraMapping;
  /** Default the first active adapter. */
  readonly adapterName?: string;
  /** Tensor type of the factors: F32 (default) or F16. */
  readonly outType?: "F32" | "F16";
  /** general.name */
  readonly name?: string;
}

export interface GgufAdapterResult {
  readonly path: string;
  /** adapter.lora.alpha as written. */
  readonly alpha: number;
  /** Modules whose lora_b was rescaled to fold their own scaling, with the factor. */
  readonly folded: Readonly<Record<string, number>>;
  readonly tensors: number;
}

/** Write one adapter of `lm` as a llama.cpp GGUF adapter file (atomically). */
export async function exportAdapterGguf(
  lm: LoraModel,
  path: string,
  options: GgufAdapterOptions,
): Promise<GgufAdapterResult> {
  const name = options.adapterName ?? lm.activeAdapters[0];
  const config = name === undefined ? undefined : lm.configs.get(name);
  if (!config || name === undefined)
    throw new LoraError(
      "BAD_ADAPTER",
      `exportAdapterGguf: adapter ${JSON.stringify(name ?? null)} does not exist (have: ${lm.adapterNames.join(", ")})`,
    );
  if (config.use_dora)
    throw new LoraError(
      "NOT_EXPORTABLE",
      `exportAdapterGguf: adapter "${name}" uses DoRA (lora_magnitude_vector), which llama.cpp adapters cannot represent; merge it and export the full model instead`,
    );
  for (const [p, m] of lm.model.namedModules())
    if (m instanceof ModulesToSaveWrapper && m.copies.has(name))
      throw new LoraError(
        "NOT_EXPORTABLE",
        `exportAdapterGguf: adapter "${name}" trains "${p}" in full (modules_to_save), which llama.cpp adapters cannot represent; merge and export the full model instead`,
      );
  if (config.bias !== "none")
    throw new LoraError(
      "NOT_EXPORTABLE",
      `exportAdapterGguf: adapter "${name}" trains biases (bias="${config.bias}"), which llama.cpp adapters cannot represent`,
    );
  const alpha = config.use_rslora ? config.lora_alpha * Math.sqrt(config.r) : config.lora_alpha;
  if (alpha === 0)
    throw new LoraError(
      "NOT_EXPORTABLE",
      `exportAdapterGguf: lora_alpha is 0 (llama.cpp reads alpha 0 as "no scaling")`,
    );
  const f16 = options.outType === "F16";
  const tensors: { name: string; type: number; shape: number[]; data: ArrayBufferView }[] = [];
  const folded: Record<string, number> = {};
  const seen = new Set<string>();
  for (const [path_, layer] of lm.model.namedModules()) {
    if (!(layer instanceof LoraLinear) || !layer.settings.has(name)) continue;
    const s = layer.settingsOf(name);
    const stem = options.mapping.tensorName(path_);
    if (seen.has(stem))
      throw new LoraError("NOT_EXPORTABLE", `exportAdapterGguf: two modules map to the GGUF tensor "${stem}"`);
    seen.add(stem);
    const a = Float32Array.from(layer.loraA.get(name).weight.toTypedArray());
    let b: Float32Array = Float32Array.from(layer.loraB.get(name).weight.toTypedArray());
    const factor = (s.scaling * s.r) / alpha;
    if (Math.abs(factor - 1) > 1e-12) {
      folded[path_] = factor;
      for (let i = 0; i < b.length; i++) b[i] *= factor;
    }
    const heads = options.mapping.permuteHeads(path_);
    if (heads !== null) b = options.mapping.permuteRows(b, layer.outFeatures, s.r, heads);
    const type = f16 ? GgmlType.F16 : GgmlType.F32;
    const enc = (v: Float32Array) => (f16 ? float32ArrayToF16(v) : v);
    tensors.push({ name: `${stem}.weight.lora_a`, type, shape: [s.r, layer.inFeatures], data: enc(a) });
    tensors.push({ name: `${stem}.weight.lora_b`, type, shape: [layer.outFeatures, s.r], data: enc(b) });
  }
  if (tensors.length === 0)
    throw new LoraError("NOT_EXPORTABLE", `exportAdapterGguf: adapter "${name}" has no LoRA layers`);
  const metadata: Record<string, ReturnType<typeof gv.str> | ReturnType<typeof gv.f32>> = {
    "general.architecture": gv.str(options.mapping.architecture),
    "general.type": gv.str("adapter"),
    ...(options.name ? { "general.name": gv.str(options.name) } : {}),
    "adapter.type": gv.str("lora"),
    "adapter.lora.alpha": gv.f32(alpha),
  };
  await writeGguf(path, { metadata, tensors });
  return { path, alpha, folded, tensors: tensors.length };
}
