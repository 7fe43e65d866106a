/**
 * Hugging Face → llama.cpp naming, in one place for the base-model GGUF export and the LoRA adapter export:
 * architecture strings, tensor names (`model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`) and the
 * q/k row permutation llama.cpp's `llama` architecture needs (it applies rope to interleaved pairs, transformers
 * to the two halves of each head; convert_hf_to_gguf.py's `LlamaModel.permute`). Qwen2/Qwen3 use llama.cpp's
 * NEOX rope (halves, like transformers), so their rows stay as they are.
 *
 * For a LoRA pair the permutation acts on the output rows, i.e. on lora_B only (lora_A is untouched).
 */
import type { Architecture } from "./config";
import { ModelError } from "./errors";

/** llama.cpp's `general.architecture` for each supported transformers architecture. */
export const GGUF_ARCHITECTURES: Readonly<Record<Architecture, string>> = {
  LlamaForCausalLM: "llama",
  MistralForCausalLM: "llama", // convert_hf_to_gguf.py registers MistralForCausalLM with LlamaModel
  Qwen2ForCausalLM: "qwen2",
  Qwen3ForCausalLM: "qwen3",
};

export function ggufArchitecture(arch: Architecture): string {
  const a = GGUF_ARCHITECTURES[arch];
  if (!a) throw new ModelError("gguf_unsupported", `GGUF export: no llama.cpp architecture for ${arch}`, { key: arch });
  return a;
}

/** Per-layer module suffix → llama.cpp tensor stem. */
const LAYER_NAMES: Readonly<Record<string, string>> = {
  input_layernorm: "attn_norm",
  "self_attn.q_proj": "attn_q",
  "self_attn.k_proj": "attn_k",
  "self_attn.v_proj": "attn_v",
  "self_attn.o_proj": "attn_output",
  "self_attn.q_norm": "attn_q_norm",
  "self_attn.k_norm": "attn_k_norm",
  post_attention_layernorm: "ffn_norm",
  "mlp.gate_proj": "ffn_gate",
  "mlp.up_proj": "ffn_up",
  "mlp.down_proj": "ffn_down",
};

const GLOBAL_NAMES: Readonly<Record<string, string>> = {
  "model.embed_tokens": "token_embd",
  "model.norm": "output_norm",
  lm_head: "output",
};

/** Checkpoint tensors llama.cpp does not want (recomputed at load): skipped, not an error. */
export function isSkippedForGguf(hfName: string): boolean {
  return hfName.endsWith(".rotary_emb.inv_freq");
}

/**
 * The GGUF name of a checkpoint tensor (`….weight` / `….bias`), or of a module path without the suffix
 * (`model.layers.0.self_attn.q_proj` → `blk.0.attn_q`, as the LoRA export needs). Unknown names are a
 * ModelError (`gguf_unmapped_tensor`) naming the tensor.
 */
export function ggufTensorName(hfName: string): string {
  const m = /^(.*?)(\.(weight|bias))?$/.exec(hfName)!;
  const [path, suffix = ""] = [m[1], m[2]];
  const global = GLOBAL_NAMES[path];
  if (global) return global + suffix;
  const layer = /^model\.layers\.(\d+)\.(.+)$/.exec(path);
  const stem = layer ? LAYER_NAMES[layer[2]] : undefined;
  if (layer && stem) return `blk.${layer[1]}.${stem}${suffix}`;
  throw new ModelError(
    "gguf_unmapped_tensor",
    `GGUF export: no llama.cpp name for tensor "${hfName}" (known: model.embed_tokens, model.norm, lm_head, model.layers.N.{${Object.keys(LAYER_NAMES).join(", ")}})`,
    { key: hfName },
  );
}

/**
 * How many heads a q/k tensor's rows are permuted over for llama.cpp, or null when it is not permuted:
 * q_proj uses num_attention_heads, k_proj num_key_value_heads, only for the `llama` architecture
 * (weights and, with attention_bias, biases).
 */
export function qkPermuteHeads(
  arch: Architecture,
  hfName: string,
  heads: { numHeads: number; numKvHeads: number },
): number | null {
  if (ggufArchitecture(arch) !== "llama") return null;
  if (/\.self_attn\.q_proj(\.(weight|bias))?$/.test(hfName)) return heads.numHeads;
  if (/\.self_attn\.k_proj(\.(weight|bias))?$/.test(hfName)) return heads.numKvHeads;
  return null;
}

/**
 * convert_hf_to_gguf.py's permute: rows viewed as [heads, 2, headDim/2] become [heads, headDim/2, 2], i.e. within
 * each head output row 2i+j comes from input row j·headDim/2 + i. `values` is row-major [rows, cols]
 * (cols = 1 for a bias); returns a new array.
 */
export function permuteQkRows<T extends Float32Array | Uint16Array>(
  values: T,
  rows: number,
  cols: number,
  heads: number,
): T {
  if (rows % heads !== 0 || (rows / heads) % 2 !== 0 || values.length !== rows * cols)
    throw new ModelError(
      "bad_argument",
      `permuteQkRows: ${rows} rows × ${cols} cols (${values.length} values) cannot be split into ${heads} heads of even size`,
      { key: "rows" },
    );
  const headDim = rows / heads;
  const half = headDim / 2;
  const out = new (values.constructor as { new (n: number): T })(values.length);
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < half; i++)
      for (let j = 0; j < 2; j++) {
        const dst = (h * headDim + 2 * i + j) * cols;
        const src = (h * headDim + j * half + i) * cols;
        out.set(values.subarray(src, src + cols), dst);
      }
  return out;
}
