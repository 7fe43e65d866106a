/**
 * Tiny random-weight models in exact Hugging Face layout (config.json, model.safetensors or shards +
 * model.safetensors.index.json, generation_config.json), one per supported architecture and feature
 * (llama3 rope scaling, linear scaling + biases, tied embeddings, Qwen2 q/k/v bias, Qwen3 q/k norm, GQA/MQA,
 * sliding-window attention).
 * Deterministic: the same spec always gives the same bytes (the parity fixtures record a hash of them).
 *
 *   pnpm exec tsx packages/models/scripts/make-tiny-models.ts <outDir> [--dtype bf16] [--shards]
 *
 * Tests call `writeTinyModel(dir, spec)` directly. models-gen adds tokenizer files next to these.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { writeSafetensors, writeShardedSafetensors } from "@qlora/formats";
import { f32ToBf16, f32ToF16 } from "@qlora/nf4";

export interface TinySpec {
  name: string;
  seed: number;
  config: Record<string, unknown>;
}

const BASE = {
  vocab_size: 320,
  hidden_size: 64,
  intermediate_size: 160,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  max_position_embeddings: 512,
  rms_norm_eps: 1e-5,
  hidden_act: "silu",
  bos_token_id: 1,
  eos_token_id: 2,
  initializer_range: 0.02,
  use_cache: true,
};

export const TINY_MODELS: readonly TinySpec[] = [
  {
    name: "llama",
    seed: 1,
    config: { ...BASE, architectures: ["LlamaForCausalLM"], model_type: "llama", rope_theta: 10000 },
  },
  {
    name: "llama3",
    seed: 2,
    config: {
      ...BASE,
      architectures: ["LlamaForCausalLM"],
      model_type: "llama",
      rope_theta: 500000,
      tie_word_embeddings: true,
      head_dim: 16,
      // original_max_position_embeddings 64 puts the 8 frequency pairs of head_dim 16 in all three llama3
      // bands (kept, smoothed, divided by factor).
      rope_scaling: {
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 64,
        rope_type: "llama3",
      },
      bos_token_id: 1,
      eos_token_id: [2, 3],
    },
  },
  {
    name: "llama-linear-bias",
    seed: 3,
    config: {
      ...BASE,
      architectures: ["LlamaForCausalLM"],
      model_type: "llama",
      rope_theta: 10000,
      rope_scaling: { type: "linear", factor: 4 },
      attention_bias: true,
      mlp_bias: true,
      num_key_value_heads: 4,
    },
  },
  {
    name: "mistral",
    seed: 4,
    config: {
      ...BASE,
      architectures: ["MistralForCausalLM"],
      model_type: "mistral",
      rope_theta: 1000000,
      sliding_window: 4096,
      num_key_value_heads: 1,
    },
  },
  {
    name: "qwen2",
    seed: 5,
    config: {
      ...BASE,
      architectures: ["Qwen2ForCausalLM"],
      model_type: "qwen2",
      rope_theta: 1000000,
      tie_word_embeddings: true,
      use_sliding_window: false,
      sliding_window: 32768,
      rms_norm_eps: 1e-6,
    },
  },
  {
    name: "qwen3",
    seed: 6,
    config: {
      ...BASE,
      architectures: ["Qwen3ForCausalLM"],
      model_type: "qwen3",
      rope_theta: 1000000,
      head_dim: 32,
      attention_bias: false,
      tie_word_embeddings: false,
      rms_norm_eps: 1e-6,
    },
  },
];

/**
 * Sliding-window attention at windows shorter than the parity sequence (128) and than a packed sequence
 * (50): Mistral on every layer; Qwen2 with use_sliding_window on layers ≥ max_window_layers only. Kept
 * out of TINY_MODELS because the GGUF tests compare against llama.cpp, whose llama architecture has no
 * sliding window.
 */
export const SLIDING_WINDOW_MODELS: readonly TinySpec[] = [
  {
    name: "mistral-swa",
    seed: 7,
    config: {
      ...BASE,
      architectures: ["MistralForCausalLM"],
      model_type: "mistral",
      rope_theta: 10000,
      sliding_window: 48,
    },
  },
  {
    name: "qwen2-swa",
    seed: 8,
    config: {
      ...BASE,
      architectures: ["Qwen2ForCausalLM"],
      model_type: "qwen2",
      rope_theta: 1000000,
      use_sliding_window: true,
      sliding_window: 37,
      max_window_layers: 1,
      rms_norm_eps: 1e-6,
    },
  },
];

/** Every model the PyTorch parity fixtures cover. */
export const PARITY_MODELS: readonly TinySpec[] = [...TINY_MODELS, ...SLIDING_WINDOW_MODELS];

/** Deterministic normals: mulberry32 + Box-Muller (no dependency on the tensor runtime's generator). */
function normals(seed: number) {
  let s = seed >>> 0;
  const u32 = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
  return (n: number, std: number, mean = 0) => {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i += 2) {
      const u1 = (u32() + 1) / 4294967297;
      const u2 = u32() / 4294967296;
      const r = Math.sqrt(-2 * Math.log(u1));
      out[i] = mean + std * r * Math.cos(2 * Math.PI * u2);
      if (i + 1 < n) out[i + 1] = mean + std * r * Math.sin(2 * Math.PI * u2);
    }
    return out;
  };
}

/** [name, shape, kind] of every tensor in checkpoint order. */
export function tensorList(c: Record<string, unknown>): [string, number[], "embed" | "linear" | "bias" | "norm"][] {
  const n = (k: string) => c[k] as number;
  const hid = n("hidden_size");
  const heads = n("num_attention_heads");
  const kv = (c.num_key_value_heads as number) ?? heads;
  const d = (c.head_dim as number) ?? hid / heads;
  const ffn = n("intermediate_size");
  const arch = (c.architectures as string[])[0];
  const qkvBias = arch === "Qwen2ForCausalLM" || c.attention_bias === true;
  const oBias = arch !== "Qwen2ForCausalLM" && c.attention_bias === true;
  const mlpBias = arch === "LlamaForCausalLM" && c.mlp_bias === true;
  const out: [string, number[], "embed" | "linear" | "bias" | "norm"][] = [
    ["model.embed_tokens.weight", [n("vocab_size"), hid], "embed"],
  ];
  const lin = (p: string, o: number, i: number, bias: boolean) => {
    out.push([`${p}.weight`, [o, i], "linear"]);
    if (bias) out.push([`${p}.bias`, [o], "bias"]);
  };
  for (let l = 0; l < n("num_hidden_layers"); l++) {
    const p = `model.layers.${l}`;
    out.push([`${p}.input_layernorm.weight`, [hid], "norm"]);
    lin(`${p}.self_attn.q_proj`, heads * d, hid, qkvBias);
    lin(`${p}.self_attn.k_proj`, kv * d, hid, qkvBias);
    lin(`${p}.self_attn.v_proj`, kv * d, hid, qkvBias);
    lin(`${p}.self_attn.o_proj`, hid, heads * d, oBias);
    if (arch === "Qwen3ForCausalLM") {
      out.push([`${p}.self_attn.q_norm.weight`, [d], "norm"]);
      out.push([`${p}.self_attn.k_norm.weight`, [d], "norm"]);
    }
    lin(`${p}.mlp.gate_proj`, ffn, hid, mlpBias);
    lin(`${p}.mlp.up_proj`, ffn, hid, mlpBias);
    lin(`${p}.mlp.down_proj`, hid, ffn, mlpBias);
    out.push([`${p}.post_attention_layernorm.weight`, [hid], "norm"]);
  }
  out.push(["model.norm.weight", [hid], "norm"]);
  if (c.tie_word_embeddings !== true) out.push(["lm_head.weight", [n("vocab_size"), hid], "linear"]);
  return out;
}

export interface WriteTinyOptions {
  /** Storage dtype; default "float32". */
  dtype?: "float32" | "bfloat16" | "float16";
  /** Write as several shards + index (max shard size in bytes), as save_pretrained does for big models. */
  maxShardSize?: number;
  /** Override config keys (e.g. a bigger hidden size for benchmarks); `null` deletes a key. */
  configOverrides?: Record<string, unknown>;
}

/** Write one tiny model directory; returns its config object. */
export async function writeTinyModel(dir: string, spec: TinySpec, options: WriteTinyOptions = {}) {
  const dtype = options.dtype ?? "float32";
  const config: Record<string, unknown> = { ...spec.config, torch_dtype: dtype, transformers_version: "4.46.0" };
  for (const [k, v] of Object.entries(options.configOverrides ?? {})) {
    if (v === null) delete config[k];
    else config[k] = v;
  }
  await mkdir(dir, { recursive: true });
  const draw = normals(spec.seed);
  const tensors = tensorList(config).map(([name, shape, kind]) => {
    const count = shape.reduce((a, b) => a * b, 1);
    // Weights large enough that attention and the MLP do more than average (std 1/√fan_in).
    const values =
      kind === "embed"
        ? draw(count, 1)
        : kind === "linear"
          ? draw(count, 1 / Math.sqrt(shape[1]))
          : kind === "bias"
            ? draw(count, 0.1)
            : draw(count, 0.1, 1);
    const data = dtype === "float32" ? values : dtype === "bfloat16" ? f32ToBf16(values) : f32ToF16(values);
    const st = dtype === "float32" ? "F32" : dtype === "bfloat16" ? "BF16" : "F16";
    return { name, dtype: st as "F32", shape, data };
  });
  if (options.maxShardSize)
    await writeShardedSafetensors(dir, tensors, { maxShardSize: options.maxShardSize, metadata: { format: "pt" } });
  else await writeSafetensors(join(dir, "model.safetensors"), tensors, { format: "pt" });
  await writeFile(join(dir, "config.json"), `${JSON.stringify(config, null, 2)}\n`);
  const eos = config.eos_token_id;
  await writeFile(
    join(dir, "generation_config.json"),
    `${JSON.stringify({ bos_token_id: config.bos_token_id, eos_token_id: eos, do_sample: false }, null, 2)}\n`,
  );
  return config;
}

async function main(argv: string[]) {
  const out = argv.find((a) => !a.startsWith("--"));
  if (!out) throw new Error("usage: make-tiny-models.ts <outDir> [--dtype bfloat16|float16] [--shards]");
  const dtIdx = argv.indexOf("--dtype");
  const dtype = (dtIdx >= 0 ? argv[dtIdx + 1] : "float32") as WriteTinyOptions["dtype"];
  const shards = argv.includes("--shards");
  for (const spec of PARITY_MODELS) {
    await writeTinyModel(join(out, spec.name), spec, { dtype, maxShardSize: shards ? 200_000 : undefined });
    console.log(`${join(out, spec.name)}`);
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) await main(process.argv.slice(2));
