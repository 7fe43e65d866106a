/** Bad input: each a ModelError (or formats' typed error) naming the file and the key; parseConfig fuzzed. */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { SafetensorsError, writeSafetensors } from "@qlora/formats";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TINY_MODELS, writeTinyModel } from "../scripts/make-tiny-models";
import { loadModel, ModelError, parseConfig, saveQuantized } from "../src";
import { tempDir } from "./helpers";

const dir = tempDir();
const llama = TINY_MODELS.find((s) => s.name === "llama")!;
const base = () => ({ ...llama.config });

async function expectModelError(p: Promise<unknown>, code: string, ...parts: (string | RegExp)[]) {
  const e = await p.then(
    () => null,
    (x) => x,
  );
  expect(e).toBeInstanceOf(ModelError);
  expect((e as ModelError).code).toBe(code);
  for (const part of parts) expect((e as Error).message).toMatch(part);
  return e as ModelError;
}

beforeAll(async () => {
  await writeTinyModel(join(dir.path, "ok"), llama);
});
afterAll(() => dir.remove());

/** A good model whose config.json is then edited (`null` deletes a key). */
async function modelWithConfig(name: string, overrides: Record<string, unknown>) {
  const d = join(dir.path, name);
  await writeTinyModel(d, llama);
  const cfg = JSON.parse(readFileSync(join(d, "config.json"), "utf8"));
  for (const [k, v] of Object.entries(overrides)) {
    if (v === null) delete cfg[k];
    else cfg[k] = v;
  }
  writeFileSync(join(d, "config.json"), JSON.stringify(cfg));
  return d;
}

describe("bad input gives typed errors naming file and key", () => {
  it("missing config key", async () => {
    const d = await modelWithConfig("no-hidden", { hidden_size: null });
    const e = await expectModelError(loadModel(d), "config_missing_key", "config.json", '"hidden_size"');
    expect(e.file).toBe(join(d, "config.json"));
    expect(e.key).toBe("hidden_size");
  });

  it("unknown architecture lists the supported ones", async () => {
    const d = await modelWithConfig("gpt2", { architectures: ["GPT2LMHeadModel"] });
    await expectModelError(
      loadModel(d),
      "unsupported_architecture",
      "GPT2LMHeadModel",
      "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM",
    );
  });

  it("unsupported rope_scaling type", async () => {
    const d = await modelWithConfig("yarn", { rope_scaling: { type: "yarn", factor: 4 } });
    const e = await expectModelError(loadModel(d), "unsupported_rope_scaling", '"yarn"', "config.json");
    expect(e.key).toBe("rope_scaling");
    expect(() => parseConfig({ ...base(), rope_scaling: { rope_type: "llama3", factor: 8 } })).toThrow(
      /low_freq_factor/,
    );
    // a factor-less linear scaling is named, not run with NaN frequencies
    expect(() => parseConfig({ ...base(), rope_scaling: { type: "linear" } })).toThrow(
      'rope_scaling (linear) lacks "factor"',
    );
  });

  it("an unknown quantize option is refused with the name it was likely meant to be", async () => {
    const d = await modelWithConfig("typo-opt", {});
    await expect(loadModel(d, { quantize: { blockSize: 128 } as never })).rejects.toThrow(
      'loadModel: options.quantize.blockSize is not a quantize option (did you mean "blocksize"?)',
    );
  });

  it("a checkpoint quantized by another method (GPTQ, bitsandbytes 8-bit) is refused by name", async () => {
    const gptq = await modelWithConfig("gptq", { quantization_config: { quant_method: "gptq", bits: 4 } });
    const e = await expectModelError(loadModel(gptq), "unsupported_quantization", 'quant_method "gptq"', "config.json");
    expect(e.key).toBe("quantization_config");
    const bnb8 = await modelWithConfig("bnb8", {
      quantization_config: { quant_method: "bitsandbytes", load_in_8bit: true },
    });
    await expectModelError(loadModel(bnb8), "unsupported_quantization", "bitsandbytes 8-bit", "unquantized release");
    // AutoGPTQ's older layout says so only in quantize_config.json
    const gptqOld = await modelWithConfig("gptq-old", {});
    writeFileSync(join(gptqOld, "quantize_config.json"), JSON.stringify({ bits: 4, group_size: 128 }));
    await expectModelError(loadModel(gptqOld), "unsupported_quantization", "GPTQ-quantized", "quantize_config.json");
  });

  it("transformers v5's rope_parameters is read as rope_theta + rope_scaling", () => {
    const llama3 = { factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 };
    const v4 = parseConfig({ ...base(), rope_theta: 500000, rope_scaling: { rope_type: "llama3", ...llama3 } });
    const v5 = parseConfig({ ...base(), rope_parameters: { rope_type: "llama3", rope_theta: 500000, ...llama3 } });
    expect(v5.ropeTheta).toBe(500000);
    expect(v5.ropeScaling).toEqual(v4.ropeScaling);
    expect(v5.ropeScaling).not.toBeNull();
    const plain = parseConfig({ ...base(), rope_parameters: { rope_theta: 1e6, rope_type: "default" } });
    expect([plain.ropeTheta, plain.ropeScaling]).toEqual([1e6, null]);
    expect(parseConfig({ ...base(), rope_parameters: { rope_theta: 1e6 } }).ropeScaling).toBeNull();
    expect(() => parseConfig({ ...base(), rope_parameters: { rope_type: "yarn", factor: 4 } })).toThrow(
      'rope_parameters type "yarn" is not supported',
    );
    expect(() => parseConfig({ ...base(), rope_parameters: [1] })).toThrow(/rope_parameters/);
  });

  it("config.json that is not JSON", async () => {
    const d = join(dir.path, "badjson");
    await writeTinyModel(d, llama);
    writeFileSync(join(d, "config.json"), "{ nope");
    await expectModelError(loadModel(d), "config_unreadable", join(d, "config.json"));
  });

  it("a tensor missing from the shards", async () => {
    const d = join(dir.path, "missing");
    await writeTinyModel(d, llama, { maxShardSize: 100_000 });
    const idx = JSON.parse(readFileSync(join(d, "model.safetensors.index.json"), "utf8"));
    const key = "model.layers.1.mlp.up_proj.weight";
    const shard = idx.weight_map[key];
    // rewrite that shard without the tensor and drop it from the index
    const { openSafetensors } = await import("@qlora/formats");
    const st = await openSafetensors(join(d, shard));
    const kept = [];
    for (const n of st.names)
      if (n !== key)
        kept.push({ name: n, dtype: st.info(n).dtype, shape: [...st.info(n).shape], data: await st.read(n) });
    await st.close();
    await writeSafetensors(join(d, shard), kept, { format: "pt" });
    delete idx.weight_map[key];
    writeFileSync(join(d, "model.safetensors.index.json"), JSON.stringify(idx));
    const e = await expectModelError(loadModel(d), "tensor_missing", key, "model.safetensors.index.json");
    expect(e.key).toBe(key);
  });

  it("a tensor whose shape does not match the config", async () => {
    const d = await modelWithConfig("shape", { intermediate_size: 96 });
    const e = await expectModelError(
      loadModel(d),
      "tensor_shape",
      "model.layers.0.mlp.gate_proj.weight",
      "[160,64]",
      "[96,64]",
      "model.safetensors",
    );
    expect(e.file).toBe(join(d, "model.safetensors"));
  });

  it("a missing shard file is formats' typed error naming it", async () => {
    const d = join(dir.path, "noshard");
    await writeTinyModel(d, llama, { maxShardSize: 100_000 });
    const idx = JSON.parse(readFileSync(join(d, "model.safetensors.index.json"), "utf8"));
    const { rmSync } = await import("node:fs");
    rmSync(join(d, Object.values(idx.weight_map)[0] as string));
    await expect(loadModel(d)).rejects.toBeInstanceOf(SafetensorsError);
  });

  it("saveQuantized refuses a model without 4-bit layers", async () => {
    const { model, quantization } = await loadModel(join(dir.path, "ok"), { quantize: false });
    expect(quantization).toBeNull();
    await expect(
      saveQuantized(model, join(dir.path, "never"), {
        quantization: { quantType: "nf4", blocksize: 64, doubleQuant: true, skipModules: [] },
      }),
    ).rejects.toThrow(/no Linear4bit layer/);
    model.dispose();
  });

  it("bad values name the key and what was expected", () => {
    expect(() => parseConfig({ ...base(), num_key_value_heads: 3 })).toThrow(
      /num_key_value_heads.*divisor of num_attention_heads \(4\)/,
    );
    expect(() => parseConfig({ ...base(), vocab_size: -1 })).toThrow(/"vocab_size" is -1; expected a positive integer/);
    expect(() => parseConfig({ ...base(), hidden_act: "gelu" })).toThrow(/hidden_act/);
    expect(() => parseConfig({ ...base(), num_hidden_layers: 2 ** 31 - 1 })).toThrow(/num_hidden_layers.*≤ 65536/);
    const qwenSwa = { ...base(), architectures: ["Qwen2ForCausalLM"], use_sliding_window: true, sliding_window: 8 };
    expect(() => parseConfig({ ...qwenSwa, layer_types: ["full_attention"] })).toThrow(
      /"layer_types" is \["full_attention"\]; expected a list of 2 "full_attention" \/ "sliding_attention" entries/,
    );
    expect(() => parseConfig({ ...qwenSwa, max_window_layers: -1 })).toThrow(/"max_window_layers" is -1/);
    expect(() => parseConfig({ ...base(), architectures: ["MistralForCausalLM"], sliding_window: 0 })).toThrow(
      /"sliding_window" is 0; expected a positive integer/,
    );
  });

  it("sliding windows per layer follow transformers: Mistral every layer, Qwen2 by max_window_layers or layer_types", () => {
    const mistral = parseConfig({ ...base(), architectures: ["MistralForCausalLM"], sliding_window: 16 });
    expect(mistral.layerWindows).toEqual([16, 16]);
    const qwen = { ...base(), architectures: ["Qwen2ForCausalLM"], sliding_window: 16 };
    expect(parseConfig(qwen).layerWindows).toEqual([0, 0]); // use_sliding_window defaults to false
    expect(parseConfig({ ...qwen, use_sliding_window: true }).layerWindows).toEqual([0, 0]); // default 28 full layers
    expect(parseConfig({ ...qwen, use_sliding_window: true, max_window_layers: 1 }).layerWindows).toEqual([0, 16]);
    const types = { layer_types: ["sliding_attention", "full_attention"] };
    expect(parseConfig({ ...qwen, use_sliding_window: true, ...types }).layerWindows).toEqual([16, 0]);
    expect(parseConfig({ ...base(), sliding_window: 16 }).layerWindows).toEqual([0, 0]); // Llama has none
  });

  it("parseConfig on arbitrary values: a ModelConfig or a ModelError, nothing else", () => {
    const keys = Object.keys(base());
    const value = fc.oneof(
      fc.constant(null),
      fc.integer(),
      fc.double(),
      fc.string(),
      fc.boolean(),
      fc.array(fc.integer()),
      fc.object(),
    );
    fc.assert(
      fc.property(
        fc.subarray(keys),
        fc.dictionary(
          fc.constantFrom(...keys, "rope_scaling", "head_dim", "sliding_window", "use_sliding_window", "layer_types"),
          value,
        ),
        (drop, set) => {
          const raw: Record<string, unknown> = { ...base(), ...set };
          for (const k of drop) delete raw[k];
          try {
            const c = parseConfig(raw);
            expect(c.hiddenSize).toBeGreaterThan(0);
            expect(c.numHeads % c.numKvHeads).toBe(0);
          } catch (e) {
            if (!(e instanceof ModelError)) throw e;
          }
        },
      ),
      { numRuns: 2000 },
    );
    fc.assert(
      fc.property(fc.anything(), (raw) => {
        try {
          parseConfig(raw);
        } catch (e) {
          if (!(e instanceof ModelError)) throw e;
        }
      }),
      { numRuns: 500 },
    );
  });
});
