/**
 * Loading: NF4 on load equals dequantize-then-dense, checkpoint dtypes are kept, shards load like one file,
 * quantize → saveQuantized → load pre-quantized gives identical bytes and logits.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { cpuBackend, cpuBackendInfo } from "@qlora/cpu-kernels";
import { openSafetensors } from "@qlora/formats";
import {
  HostAllocator,
  availableBackends,
  createReferenceBackend,
  type Embedding,
  Linear,
  Linear4bit,
  noGrad,
  type RMSNorm,
  registerBackend,
  type Tensor,
  unregisterBackend,
} from "@qlora/tensor";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TINY_MODELS, writeTinyModel } from "../scripts/make-tiny-models";
import { type CausalLM, dequantizeModel, loadModel, saveDense, saveQuantized, TiedLmHead, upcastLinears } from "../src";
import { readFixture, relErr, tempDir } from "./helpers";

const dir = tempDir();
const native = cpuBackendInfo(cpuBackend)?.native === true && cpuBackend.quantize4bit !== undefined;
const spec = (name: string) => TINY_MODELS.find((s) => s.name === name)!;
const path = (...p: string[]) => join(dir.path, ...p);
beforeAll(async () => {
  await writeTinyModel(path("llama"), spec("llama"));
  await writeTinyModel(path("qwen2-bf16"), spec("qwen2"), { dtype: "bfloat16" });
  await writeTinyModel(path("qwen2-bf16-sharded"), spec("qwen2"), { dtype: "bfloat16", maxShardSize: 60_000 });
  await writeTinyModel(path("qwen3"), spec("qwen3"));
});
afterAll(() => dir.remove());

const ids = () => readFixture("llama").tensor("input_ids");
const logitsOf = (m: CausalLM, inputIds: Tensor = ids()) =>
  noGrad(() => m.forward({ inputIds }).logits!.toTypedArray() as Float32Array);

describe("quantize on load", () => {
  it("every linear but lm_head becomes NF4+DQ blocksize 64; embeddings/norms/lm_head keep the checkpoint dtype", async () => {
    const { model, quantization, preQuantized } = await loadModel(path("llama"));
    expect(preQuantized).toBe(false);
    expect(quantization).toEqual({ quantType: "nf4", blocksize: 64, doubleQuant: true, skipModules: ["lm_head"] });
    const q = model.getSubmodule<Linear4bit>("model.layers.1.mlp.down_proj");
    expect(q).toBeInstanceOf(Linear4bit);
    expect(q.quantState.blocksize).toBe(64);
    expect(q.quantState.quantType).toBe("nf4");
    expect(q.quantState.absmax).not.toBeInstanceOf(Float32Array); // nested (double-quantized)
    expect(model.getSubmodule("lm_head")).toBeInstanceOf(Linear);
    const kinds = [...model.namedModules()].filter(([, m]) => m instanceof Linear4bit).map(([n]) => n);
    expect(kinds).toHaveLength(2 * 7);
    model.dispose();

    const bf = await loadModel(path("qwen2-bf16"));
    expect(bf.model.getSubmodule<Embedding>("model.embed_tokens").weight.dtype).toBe("bf16");
    expect(bf.model.getSubmodule<RMSNorm>("model.layers.0.input_layernorm").weight.dtype).toBe("bf16");
    expect(bf.model.getSubmodule("lm_head")).toBeInstanceOf(TiedLmHead);
    // Qwen2's q/k/v biases survive quantization of their weights, o_proj has none
    expect(bf.model.getSubmodule<Linear4bit>("model.layers.0.self_attn.k_proj").bias?.shape).toEqual([32]);
    expect(bf.model.getSubmodule<Linear4bit>("model.layers.0.self_attn.o_proj").bias).toBeNull();
    bf.model.dispose();
  });

  it("FP4, no double quant and other blocksizes are selectable; a skip list keeps modules dense", async () => {
    const { model } = await loadModel(path("llama"), {
      quantize: { quantType: "fp4", doubleQuant: false, blocksize: 128, skipModules: ["lm_head", "down_proj"] },
    });
    const q = model.getSubmodule<Linear4bit>("model.layers.0.self_attn.q_proj");
    expect(q.quantState.quantType).toBe("fp4");
    expect(q.quantState.blocksize).toBe(128);
    expect(q.quantState.absmax).toBeInstanceOf(Float32Array);
    expect(model.getSubmodule("model.layers.0.mlp.down_proj")).toBeInstanceOf(Linear);
    model.dispose();
  });

  it("NF4 logits equal the dense model holding the dequantized weights (f32 tolerance)", async () => {
    const { model } = await loadModel(path("qwen3"));
    const dense = (await loadModel(path("qwen3"), { quantize: false })).model;
    for (const [name, m] of model.namedModules()) {
      if (!(m instanceof Linear4bit)) continue;
      const bias = dense.getSubmodule<Linear>(name).bias;
      dense.setSubmodule(
        name,
        new Linear(m.inFeatures, m.outFeatures, { init: { weight: m.dequantizedWeight(), bias } }),
      );
    }
    const a = logitsOf(model);
    const b = logitsOf(dense);
    expect(relErr(a, b)).toBeLessThan(1e-5);
    // and the quantization did change something (the comparison is not vacuous)
    const orig = (await loadModel(path("qwen3"), { quantize: false })).model;
    expect(relErr(a, logitsOf(orig))).toBeGreaterThan(1e-3);
    for (const m of [model, dense, orig]) m.dispose();
  });

  it("an f16 checkpoint keeps f16 tables and norms and gives the f32 model's logits up to f16 weight rounding", async () => {
    const d = path("qwen3-f16");
    await writeTinyModel(d, spec("qwen3"), { dtype: "float16" });
    const half = await loadModel(d, { quantize: false });
    expect(half.model.getSubmodule<Embedding>("model.embed_tokens").weight.dtype).toBe("f16");
    expect(half.model.getSubmodule<RMSNorm>("model.layers.0.self_attn.q_norm").weight.dtype).toBe("f16");
    const full = await loadModel(path("qwen3"), { quantize: false });
    const err = relErr(logitsOf(half.model), logitsOf(full.model));
    // f16 keeps 11 significant bits (relative rounding ≤ 2^-11 ≈ 4.9e-4 per weight); through 2 layers the
    // logits move by about that (measured 7e-4), far below what a wrong dtype path would give (≈ 1)
    expect(err).toBeLessThan(3e-3);
    expect(err).toBeGreaterThan(0);
    half.model.dispose();
    full.model.dispose();
  });

  it("a sharded bf16 checkpoint loads to the same logits as the single file", async () => {
    const one = await loadModel(path("qwen2-bf16"));
    const many = await loadModel(path("qwen2-bf16-sharded"));
    expect(readFileSync(path("qwen2-bf16-sharded", "model.safetensors.index.json"), "utf8")).toContain("weight_map");
    expect(Array.from(logitsOf(many.model))).toEqual(Array.from(logitsOf(one.model)));
    expect(many.generationConfig).toEqual({ bos_token_id: 1, eos_token_id: 2, do_sample: false });
    one.model.dispose();
    many.model.dispose();
  });
});

describe("quantizing on worker threads", () => {
  it("weights of ≥ 1M elements quantized on 2 workers are byte-identical to the calling thread's", async () => {
    const d = path("wide");
    await writeTinyModel(d, spec("llama"), {
      dtype: "bfloat16",
      configOverrides: { hidden_size: 1024, intermediate_size: 1024, num_hidden_layers: 1, num_attention_heads: 8 },
    });
    const one = await loadModel(d, { quantizeThreads: 1 });
    const two = await loadModel(d, { quantizeThreads: 2 });
    const name = "model.layers.0.mlp.gate_proj";
    const [a, b] = [one, two].map((m) => m.model.getSubmodule<Linear4bit>(name).quantState);
    expect(a.shape).toEqual([1024, 1024]);
    expect(Buffer.from(b.packed).equals(Buffer.from(a.packed))).toBe(true);
    expect(b.absmax).toEqual(a.absmax);
    one.model.dispose();
    two.model.dispose();
  });

  it.skipIf(!native)(
    `the cpu backend's native quantizer gives the reference backend's bytes (its 2-worker load)${native ? "" : " — skipped: the cpu-kernels addon (with quantize4bit) did not load"}`,
    async () => {
      const d = path("wide-native");
      await writeTinyModel(d, spec("llama"), {
        dtype: "bfloat16",
        configOverrides: { hidden_size: 1024, intermediate_size: 1024, num_hidden_layers: 1, num_attention_heads: 8 },
      });
      const cpu = await loadModel(d, { backend: cpuBackend });
      const ref = await loadModel(d, { backend: "reference", quantizeThreads: 2 });
      let compared = 0;
      for (const [name, m] of cpu.model.namedModules()) {
        if (!(m instanceof Linear4bit)) continue;
        compared++;
        const a = cpu.model.stateDict();
        const b = ref.model.stateDict();
        const bytes = (t: Tensor) => {
          const v = t.toTypedArray();
          return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
        };
        for (const key of Object.keys(a).filter((k) => k.startsWith(`${name}.`)))
          expect(bytes(a[key]).equals(bytes(b[key])), key).toBe(true);
      }
      expect(compared).toBe(7); // q, k, v, o, gate, up, down
      expect(cpu.model.getSubmodule<Linear4bit>("model.layers.0.mlp.gate_proj").quantizedWeight.backend).toBe(
        cpuBackend,
      );
      cpu.model.dispose();
      ref.model.dispose();
    },
  );
});

describe("a load that fails half-way", () => {
  it("frees every layer already built and the read in flight: the backend's bytes are back where they were", async () => {
    const d = path("half-way");
    await writeTinyModel(d, spec("llama"), { dtype: "bfloat16" });
    const cfg = JSON.parse(readFileSync(join(d, "config.json"), "utf8"));
    writeFileSync(join(d, "config.json"), JSON.stringify({ ...cfg, intermediate_size: 96 })); // mlp shapes now wrong
    // A reference backend with an allocator of its own counts this load's bytes alone: back to exactly zero. The
    // cpu backend shares the process's allocator with every earlier test, whose unreferenced tensors the garbage
    // collector may free while this load runs: there the count must not grow.
    const isolated = createReferenceBackend({ name: "half-way", allocator: new HostAllocator() });
    await expect(loadModel(d, { backend: isolated })).rejects.toMatchObject({ code: "tensor_shape" });
    expect(isolated.memoryStats().peakBytes).toBeGreaterThan(0); // it did hold layers before the failure
    expect(isolated.memoryStats().currentBytes).toBe(0);
    if (native) {
      const before = cpuBackend.memoryStats().currentBytes;
      // the attention projections of layer 0 are quantized before the mlp's gate_proj is found wrong
      await expect(loadModel(d, { backend: cpuBackend })).rejects.toMatchObject({ code: "tensor_shape" });
      expect(cpuBackend.memoryStats().currentBytes).toBeLessThanOrEqual(before);
    }
  });
});

describe("bitsandbytes checkpoints", () => {
  it("quantize → saveQuantized → load pre-quantized → save gives identical bytes and identical logits", async () => {
    const first = await loadModel(path("qwen2-bf16"));
    await saveQuantized(first.model, path("bnb-1"), {
      quantization: first.quantization!,
      generationConfig: first.generationConfig,
    });
    const second = await loadModel(path("bnb-1"));
    expect(second.preQuantized).toBe(true);
    expect(second.unusedKeys).toEqual([]);
    // without `quantization`: the settings are read from the model's own 4-bit layers
    await saveQuantized(second.model, path("bnb-2"), { generationConfig: second.generationConfig });
    for (const f of ["model.safetensors", "config.json", "generation_config.json"])
      expect(readFileSync(path("bnb-2", f)).equals(readFileSync(path("bnb-1", f)))).toBe(true);
    expect(Array.from(logitsOf(second.model))).toEqual(Array.from(logitsOf(first.model)));
    first.model.dispose();
    second.model.dispose();
  });

  it("saveQuantized's dtype sets the storage of the tensors that stay dense (and torch_dtype); 4-bit keys unchanged", async () => {
    const m = await loadModel(path("qwen2-bf16"));
    await saveQuantized(m.model, path("bnb-f16"), { dtype: "f16" });
    const st = await openSafetensors(path("bnb-f16", "model.safetensors"));
    const ref = await openSafetensors(path("bnb-1", "model.safetensors"));
    expect(st.info("model.embed_tokens.weight").dtype).toBe("F16");
    expect(st.info("model.norm.weight").dtype).toBe("F16");
    expect(st.info("model.layers.0.self_attn.q_proj.bias").dtype).toBe("F16");
    for (const k of ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight.absmax"])
      expect(Buffer.from(await st.read(k)).equals(Buffer.from(await ref.read(k)))).toBe(true);
    // the quant_state names the checkpoint's dtype (what bitsandbytes dequantizes to)
    const state = Buffer.from(await st.read("model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4"));
    expect(JSON.parse(state.toString()).dtype).toBe("float16");
    await st.close();
    await ref.close();
    expect(JSON.parse(readFileSync(path("bnb-f16", "config.json"), "utf8")).torch_dtype).toBe("float16");
    // a transformers v5 config names its dtype "dtype": that key is the one set (no contradicting torch_dtype)
    const { torch_dtype: _v4, ...v5raw } = m.model.config.raw;
    (m.model.config as { raw: Record<string, unknown> }).raw = { ...v5raw, dtype: "bfloat16" };
    await saveQuantized(m.model, path("bnb-f16-v5"), { dtype: "f16" });
    const v5 = JSON.parse(readFileSync(path("bnb-f16-v5", "config.json"), "utf8"));
    expect([v5.dtype, v5.torch_dtype]).toEqual(["float16", undefined]);
    await expect(saveQuantized(m.model, path("never"), { dtype: "int8" as "f16" })).rejects.toThrow(
      'saveQuantized: options.dtype must be "f32", "bf16" or "f16", got "int8"',
    );
    m.model.dispose();
  });

  it("saveQuantized of a tied model whose head got its own weight (a merged modules_to_save copy) writes it untied", async () => {
    const m = await loadModel(path("qwen2-bf16"));
    const embedding = m.model.getSubmodule<Embedding>("model.embed_tokens").weight;
    const own = noGrad(() => embedding.to("f32").mul(1.5));
    const [vocab, hidden] = embedding.shape;
    m.model.setSubmodule("lm_head", new Linear(hidden, vocab, { bias: false, init: { weight: own } }));
    const before = Array.from(logitsOf(m.model));
    await saveQuantized(m.model, path("bnb-own-head"));
    expect(JSON.parse(readFileSync(path("bnb-own-head", "config.json"), "utf8")).tie_word_embeddings).toBe(false);
    const back = await loadModel(path("bnb-own-head"));
    expect(back.unusedKeys).toEqual([]);
    expect(relErr(logitsOf(back.model), before)).toBeLessThan(1e-6);
    m.model.dispose();
    back.model.dispose();
  });

  it("saveDense writes a dense checkpoint that loads to the same logits (bf16 storage); a 4-bit model is refused", async () => {
    const dense = await loadModel(path("qwen2-bf16"), { quantize: false });
    await saveDense(dense.model, path("dense-1"));
    const config = JSON.parse(readFileSync(path("dense-1", "config.json"), "utf8"));
    expect(config.torch_dtype).toBe("bfloat16");
    expect(config.quantization_config).toBeUndefined();
    const back = await loadModel(path("dense-1"), { quantize: false });
    expect(back.unusedKeys).toEqual([]);
    expect(Array.from(logitsOf(back.model))).toEqual(Array.from(logitsOf(dense.model)));
    const nf4 = await loadModel(path("qwen2-bf16"));
    await expect(saveDense(nf4.model, path("dense-2"))).rejects.toThrow(
      /saveDense\(.*dense-2\): "model\.layers\.0\.self_attn\.q_proj" is a 4-bit layer; call dequantizeModel\(model\)/,
    );
    // upcastLinears: a bf16 model's dense linears become frozen f32 copies, computing the same logits
    const upcast = await loadModel(path("qwen2-bf16"), { quantize: false });
    const bf16Logits = Array.from(logitsOf(upcast.model));
    expect(upcastLinears(upcast.model)).toBeGreaterThan(0);
    for (const [, m] of upcast.model.namedModules())
      if (m instanceof Linear) expect([m.weight.dtype, m.weight.requiresGrad]).toEqual(["f32", false]);
    expect(relErr(logitsOf(upcast.model), bf16Logits)).toBeLessThan(1e-6);
    expect(upcastLinears(upcast.model)).toBe(0);
    upcast.model.dispose();
    // dequantizeModel: every 4-bit layer becomes a dense f32 Linear of its dequantized weight; then it saves
    expect(dequantizeModel(nf4.model)).toBeGreaterThan(0);
    const before = Array.from(logitsOf(nf4.model));
    await saveDense(nf4.model, path("dense-2"), { dtype: "f32" });
    const reloaded = await loadModel(path("dense-2"), { quantize: false });
    expect(relErr(logitsOf(reloaded.model), before)).toBeLessThan(1e-6);
    reloaded.model.dispose();
    for (const m of [dense.model, back.model, nf4.model]) m.dispose();
  });

  it("writes the bitsandbytes key set and quantization_config", async () => {
    const st = await openSafetensors(path("bnb-1", "model.safetensors"));
    const p = "model.layers.0.self_attn.q_proj.weight";
    expect(st.info(p)).toMatchObject({ dtype: "U8", shape: [(64 * 64) / 2, 1] });
    expect(st.info(`${p}.absmax`)).toMatchObject({ dtype: "U8", shape: [64] });
    expect(st.info(`${p}.quant_map`)).toMatchObject({ dtype: "F32", shape: [16] });
    expect(st.info(`${p}.nested_absmax`)).toMatchObject({ dtype: "F32", shape: [1] });
    expect(st.info(`${p}.nested_quant_map`)).toMatchObject({ dtype: "F32", shape: [256] });
    expect(st.info("model.layers.0.self_attn.q_proj.bias")).toMatchObject({ dtype: "BF16", shape: [64] });
    expect(st.info("model.embed_tokens.weight")).toMatchObject({ dtype: "BF16", shape: [320, 64] });
    expect(st.has("lm_head.weight")).toBe(false); // tied, as save_pretrained leaves it out
    const json = new TextDecoder().decode(await st.read(`${p}.quant_state.bitsandbytes__nf4`));
    expect(json).toMatch(
      /^\{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": \[64, 64\], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": /,
    );
    await st.close();
    const cfg = JSON.parse(readFileSync(path("bnb-1", "config.json"), "utf8"));
    expect(cfg.quantization_config).toMatchObject({
      quant_method: "bitsandbytes",
      load_in_4bit: true,
      bnb_4bit_quant_type: "nf4",
      bnb_4bit_use_double_quant: true,
      llm_int8_skip_modules: ["lm_head"],
    });
    expect(cfg.architectures).toEqual(["Qwen2ForCausalLM"]);
  });
});

describe("the backend a load lands on", () => {
  it("warns once when only the TypeScript reference backend is registered, not when it is asked for by name", async () => {
    const seen: string[] = [];
    const first = await loadModel(path("llama"), { onWarning: (m) => seen.push(m) });
    expect(seen).toHaveLength(availableBackends().length === 1 ? 1 : 0);
    if (seen.length)
      expect(seen[0]).toMatch(/no native backend is registered.*registerCpuBackend\(\) from "@qlora\/cpu-kernels"/);
    const named = await loadModel(path("llama"), { backend: "reference", onWarning: (m) => seen.push(m) });
    expect(seen.length).toBeLessThanOrEqual(1);
    registerBackend(cpuBackend, 10);
    try {
      const onCpu = await loadModel(path("llama"), { onWarning: (m) => seen.push(`cpu: ${m}`) });
      expect(seen.filter((m) => m.startsWith("cpu: "))).toEqual([]);
      onCpu.model.dispose();
    } finally {
      unregisterBackend(cpuBackend.name);
    }
    for (const m of [first.model, named.model]) m.dispose();
  });
});

describe("a config.json that disagrees with the weights", () => {
  it("fewer layers than the checkpoint holds: a warning naming the unused tensors", async () => {
    await writeTinyModel(path("llama-short"), spec("llama"));
    const file = path("llama-short", "config.json");
    const config = JSON.parse(readFileSync(file, "utf8"));
    const last = config.num_hidden_layers - 1;
    writeFileSync(file, JSON.stringify({ ...config, num_hidden_layers: last }));
    const seen: string[] = [];
    const { model, unusedKeys } = await loadModel(path("llama-short"), {
      backend: "reference",
      onWarning: (m) => seen.push(m),
    });
    expect(unusedKeys.some((k) => k.startsWith(`model.layers.${last}.`))).toBe(true);
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatch(
      new RegExp(`loadModel: \\d+ tensor\\(s\\) of .*llama-short were not used .*"model\\.layers\\.${last}\\.`),
    );
    expect(seen[0]).toMatch(/check num_hidden_layers and the architecture/);
    model.dispose();
    const clean: string[] = [];
    (await loadModel(path("llama"), { backend: "reference", onWarning: (m) => clean.push(m) })).model.dispose();
    expect(clean).toEqual([]);
  });
});

describe("bad quantize options", () => {
  it("are ModelErrors naming the option, raised before any weight is read", async () => {
    await expect(loadModel(path("llama"), { backend: "reference", quantize: { blocksize: 48 } })).rejects.toMatchObject(
      {
        name: "ModelError",
        code: "bad_argument",
        message: "loadModel: options.quantize.blocksize must be one of 32, 64, 128, 256, 512, 1024, 2048, 4096, got 48",
      },
    );
    await expect(
      loadModel(path("llama"), { backend: "reference", quantize: { quantType: "int4" as never } }),
    ).rejects.toThrow(/options.quantize.quantType must be "nf4" or "fp4", got "int4"/);
  });
});
