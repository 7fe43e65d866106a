/**
 * Merging into a bitsandbytes 4-bit base, full fine-tunes of a bf16 checkpoint, modules_to_save on a tied model,
 * adapter_config.json's task_type / base_model_name_or_path and the chat template saved with an adapter.
 */
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { openGguf, openSafetensors } from "@qlora/formats";
import { dequantizeModel, loadModel, loadTokenizer, writeTinyTokenizer } from "@qlora/models";
import type { Linear } from "@qlora/tensor";
import { afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { TINY_MODELS, writeTinyModel } from "../../models/scripts/make-tiny-models";
import {
  CHAT_TEMPLATE_FILE,
  baseModelReference,
  loadForInference,
  resolveChatTemplate,
  saveChatTemplate,
} from "../src/infer";
import { CHATML_TEMPLATE } from "../src/chat-templates";
import { runCli } from "./helpers";
import { writeRandomAdapter, writeTinyBase } from "./tiny";

const root = mkdtempSync(join(tmpdir(), "qlora-merge-"));
let base = "";
let adapter = "";
let q4 = "";
let data = "";
/** A bf16 checkpoint with tied embeddings (as the demo model and Llama 3.2 1B). */
let tied = "";

beforeAll(async () => {
  base = await writeTinyBase(join(root, "base"));
  adapter = await writeRandomAdapter(base, join(root, "adapter"));
  q4 = join(root, "q4");
  expect((await runCli(["--quiet", "quantize", base, "--out", q4])).code).toBe(0);
  tied = join(root, "tied");
  const info = await writeTinyTokenizer(tied, "llama3");
  await writeTinyModel(tied, TINY_MODELS.find((s) => s.name === "llama3")!, {
    dtype: "bfloat16",
    configOverrides: { vocab_size: info.vocabSize, bos_token_id: info.bosTokenId, eos_token_id: info.eosTokenId },
  });
  data = join(root, "data.jsonl");
  const rows = [];
  for (let i = 0; i < 16; i++) rows.push(JSON.stringify({ prompt: `colour ${i % 5}:`, completion: " red blue" }));
  writeFileSync(data, rows.join("\n"));
}, 120_000);

afterEach(() => {
  vi.restoreAllMocks();
});

const evalLoss = async (args: string[]) => {
  const r = await runCli(["--json", "eval", "--data", data, ...args]);
  expect(r.err).toBe("");
  expect(r.code).toBe(0);
  return JSON.parse(r.out).loss as number;
};

async function dtypes(dir: string, file = "model.safetensors"): Promise<Record<string, string>> {
  const f = await openSafetensors(join(dir, file));
  const out = Object.fromEntries([...f.names].map((n) => [n, f.info(n).dtype as string]));
  await f.close();
  return out;
}

const config = (dir: string) => JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));

describe("qlora merge into a bitsandbytes 4-bit base", () => {
  it("dequantizes, merges in f32 and writes a dense checkpoint that evaluates like adapter-on-base; no per-layer warnings", async () => {
    const warn = vi.spyOn(console, "warn");
    const onQ4 = await evalLoss(["--model", q4, "--adapter", adapter]);
    const f32 = join(root, "merged-q4-f32");
    const m = await runCli(["--quiet", "merge", "--model", q4, "--adapter", adapter, "--out", f32, "--dtype", "f32"]);
    expect(m.err).toBe("");
    expect(m.code).toBe(0);
    expect(warn).not.toHaveBeenCalled();
    expect(new Set(Object.values(await dtypes(f32)))).toEqual(new Set(["F32"]));
    expect(Object.keys(await dtypes(f32)).some((k) => /absmax|quant_map|quant_state/.test(k))).toBe(false);
    expect(config(f32).quantization_config).toBeUndefined();
    expect(config(f32).torch_dtype).toBe("float32");
    // the merged model is the dequantized base + ΔW: the adapter-on-4-bit-base loss, to f32 rounding
    const merged = await evalLoss(["--model", f32, "--quantize", "none"]);
    expect(Math.abs(merged - onQ4) / onQ4).toBeLessThan(1e-5);

    // the default (bf16): every tensor BF16, no quantization_config, loads and evaluates close
    const bf16 = join(root, "merged-q4-bf16");
    expect((await runCli(["--quiet", "merge", "--model", q4, "--adapter", adapter, "--out", bf16])).code).toBe(0);
    expect(new Set(Object.values(await dtypes(bf16)))).toEqual(new Set(["BF16"]));
    expect(config(bf16).quantization_config).toBeUndefined();
    expect(config(bf16).torch_dtype).toBe("bfloat16");
    const mergedBf16 = await evalLoss(["--model", bf16, "--quantize", "none"]);
    expect(Math.abs(mergedBf16 - onQ4) / onQ4).toBeLessThan(2e-2);
    // only the finished output directories remain: no temporary ones beside them
    expect(readdirSync(root).filter((n) => n.includes(".tmp-"))).toEqual([]);
  });

  it("--dtype nf4 over a blocksize-128 base without double quant keeps both (read from the tensors); quantize refuses a 4-bit input", async () => {
    const q128 = join(root, "q128");
    expect(
      (await runCli(["--quiet", "quantize", base, "--out", q128, "--blocksize", "128", "--no-double-quant"])).code,
    ).toBe(0);
    const out = join(root, "merged-q128-nf4");
    const m = await runCli(["--quiet", "merge", "--model", q128, "--adapter", adapter, "--out", out, "--dtype", "nf4"]);
    expect(m.err).toBe("");
    const f = await openSafetensors(join(out, "model.safetensors"));
    const state = JSON.parse(
      Buffer.from(await f.read("model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4")).toString(),
    );
    expect(f.names).not.toContain("model.layers.0.self_attn.q_proj.weight.nested_absmax");
    await f.close();
    expect(state.blocksize).toBe(128);
    expect(config(out).quantization_config.bnb_4bit_use_double_quant).toBe(false);
    // re-quantizing a 4-bit directory would copy its tensors under a config claiming other settings: refused
    const again = await runCli(["quantize", q128, "--out", join(root, "q128-fp4"), "--quant-type", "fp4"]);
    expect(again.code).toBe(2);
    expect(again.err).toBe(
      `qlora: model_dir: ${q128} is already a bitsandbytes 4-bit checkpoint (quantization_config in config.json); quantize its dense original, or copy the directory`,
    );
  });

  it("export --format gguf of a bitsandbytes 4-bit base writes the dequantized weights it computes with", async () => {
    const out = join(root, "q4.gguf");
    const r = await runCli([
      "--quiet",
      "export",
      "--model",
      q4,
      "--format",
      "gguf",
      "--gguf-type",
      "f32",
      "--out",
      out,
    ]);
    expect(r.err).toBe("");
    expect(r.out).toBe(`wrote f32 GGUF to ${out} (dequantized from bitsandbytes 4-bit)`);
    const { model } = await loadModel(q4);
    dequantizeModel(model);
    const v = model.getSubmodule<Linear>("model.layers.0.self_attn.v_proj").weight.toTypedArray();
    const g = await openGguf(out);
    const bytes = await g.read("blk.0.attn_v.weight");
    expect(Array.from(new Float32Array(bytes.slice().buffer))).toEqual(Array.from(v));
    model.dispose();
    // nothing is left beside the output
    expect(readdirSync(root).filter((n) => n.includes("dequantized"))).toEqual([]);
  });

  it("--dtype nf4 writes a proper bitsandbytes checkpoint (U8 codes, quantization_config) that reloads", async () => {
    const out = join(root, "merged-q4-nf4");
    const m = await runCli(["--quiet", "merge", "--model", q4, "--adapter", adapter, "--out", out, "--dtype", "nf4"]);
    expect(m.code).toBe(0);
    const d = await dtypes(out);
    expect(d["model.layers.0.self_attn.q_proj.weight"]).toBe("U8");
    expect(d["model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4"]).toBe("U8");
    expect(config(out).quantization_config).toMatchObject({ load_in_4bit: true, bnb_4bit_quant_type: "nf4" });
    const onQ4 = await evalLoss(["--model", q4, "--adapter", adapter]);
    const reloaded = await evalLoss(["--model", out]);
    expect(Math.abs(reloaded - onQ4) / onQ4).toBeLessThan(5e-2);
    expect(readdirSync(root).filter((n) => n.includes(".tmp-"))).toEqual([]);
  });
});

async function train(name: string, yaml: string): Promise<{ code: number; out: string; err: string; dir: string }> {
  const dir = join(root, name);
  const file = join(root, `${name}.yaml`);
  writeFileSync(
    file,
    `${yaml}datasets: [{path: ${data}, type: prompt_completion}]\nsequence_len: 32\nmicro_batch_size: 4\nmax_steps: 2\nlearning_rate: 0.01\noutput_dir: ${dir}\n`,
  );
  const r = await runCli(["--quiet", "--json", "train", file]);
  return { ...r, dir };
}

describe("qlora merge into a bf16 base", () => {
  it("--dtype f32 keeps the f32 merge (not rounded back to bf16) and carries the adapter's chat template", async () => {
    const ad = await writeRandomAdapter(tied, join(root, "tied-adapter"));
    await saveChatTemplate(ad, CHATML_TEMPLATE);
    const out = join(root, "tied-merged-f32");
    const r = await runCli(["--quiet", "merge", "--model", tied, "--adapter", ad, "--out", out, "--dtype", "f32"]);
    expect(r.err).toBe("");
    // merged weights are not all bf16-representable (low 16 bits zero) as a bf16 merge would leave them
    const f = await openSafetensors(join(out, "model.safetensors"));
    const q = f.info("model.layers.0.self_attn.q_proj.weight");
    expect(q.dtype).toBe("F32");
    const bits = new Uint32Array((await f.read("model.layers.0.self_attn.q_proj.weight")).slice().buffer);
    await f.close();
    expect(bits.some((b) => (b & 0xffff) !== 0)).toBe(true);
    const merged = await evalLoss(["--model", out, "--quantize", "none"]);
    const onBase = await evalLoss(["--model", tied, "--adapter", ad, "--quantize", "none"]);
    expect(Math.abs(merged - onBase) / onBase).toBeLessThan(1e-5);
    // the chat template travels: chat_template.jinja in the merged model, read back by loadTokenizer
    expect(readFileSync(join(out, CHAT_TEMPLATE_FILE), "utf8")).toBe(CHATML_TEMPLATE);
    expect((await loadTokenizer(out)).chatTemplate).toBe(CHATML_TEMPLATE);
    const peft = join(root, "tied-peft");
    expect(
      (await runCli(["--quiet", "export", "--model", tied, "--adapter", ad, "--format", "peft", "--out", peft])).err,
    ).toBe("");
    expect(readFileSync(join(peft, CHAT_TEMPLATE_FILE), "utf8")).toBe(CHATML_TEMPLATE);
  });

  it("--dtype nf4 keeps embeddings and norms in the base's bf16; a merge over an earlier sharded model removes its shards", async () => {
    const ad = await writeRandomAdapter(tied, join(root, "tied-adapter-nf4"));
    const out = join(root, "tied-merged-nf4");
    // an earlier sharded save in the output directory: its index would shadow the new model.safetensors
    await writeTinyModel(out, TINY_MODELS.find((s) => s.name === "llama3")!, { maxShardSize: 20_000 });
    expect(readdirSync(out)).toContain("model.safetensors.index.json");
    writeFileSync(join(out, CHAT_TEMPLATE_FILE), CHATML_TEMPLATE); // the earlier model's: loaders prefer this file
    const r = await runCli(["--quiet", "merge", "--model", tied, "--adapter", ad, "--out", out, "--dtype", "nf4"]);
    expect(r.err).toBe("");
    expect(readdirSync(out).filter((f) => f.includes("safetensors"))).toEqual(["model.safetensors"]);
    expect(existsSync(join(out, CHAT_TEMPLATE_FILE))).toBe(false);
    expect(config(out).torch_dtype).toBe("bfloat16");
    const d = await dtypes(out);
    expect(d["model.layers.0.self_attn.q_proj.weight"]).toBe("U8");
    for (const name of ["model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"])
      expect(d[name], name).toBe("BF16");
    const f = await openSafetensors(join(out, "model.safetensors"));
    const state = await f.read("model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4");
    await f.close();
    expect(JSON.parse(Buffer.from(state).toString()).dtype).toBe("bfloat16");
    // a transformers v5 base names it "dtype": read the same, and the merged config keeps one key
    const v5 = join(root, "tied-v5");
    cpSync(tied, v5, { recursive: true });
    const { torch_dtype, ...rest } = config(tied);
    writeFileSync(join(v5, "config.json"), JSON.stringify({ ...rest, dtype: torch_dtype }));
    const outV5 = join(root, "tied-v5-merged");
    expect(
      (await runCli(["--quiet", "merge", "--model", v5, "--adapter", ad, "--out", outV5, "--dtype", "nf4"])).err,
    ).toBe("");
    expect((await dtypes(outV5))["model.embed_tokens.weight"]).toBe("BF16");
    expect([config(outV5).dtype, config(outV5).torch_dtype]).toEqual(["bfloat16", undefined]);
    const f32 = join(root, "tied-v5-f32");
    expect(
      (await runCli(["--quiet", "merge", "--model", v5, "--adapter", ad, "--out", f32, "--dtype", "f32"])).err,
    ).toBe("");
    expect([config(f32).dtype, config(f32).torch_dtype]).toEqual(["float32", undefined]);
    const reloaded = await evalLoss(["--model", out]);
    const onBase = await evalLoss(["--model", tied, "--adapter", ad]);
    expect(Math.abs(reloaded - onBase) / onBase).toBeLessThan(5e-2);
  });
});

describe("train: model and adapter setup", () => {
  it("a full fine-tune of a bf16 checkpoint trains f32 master weights and saves an F32 checkpoint", async () => {
    const r = await train("full-bf16", `base_model: ${tied}\n`);
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    const d = await dtypes(join(r.dir, "model"));
    expect(new Set(Object.values(d))).toEqual(new Set(["F32"]));
    expect(await evalLoss(["--model", join(r.dir, "model"), "--quantize", "none"])).toBeLessThan(
      await evalLoss(["--model", tied, "--quantize", "none"]),
    );
  });

  it("a full fine-tune of a 4-bit checkpoint is a config error saying to use adapter: qlora", async () => {
    const r = await train("full-q4", `base_model: ${q4}\n`);
    expect(r.code).toBe(2);
    expect(r.err).toBe(
      `qlora: base_model: ${q4} is a bitsandbytes 4-bit checkpoint (quantization_config in config.json); cannot full-fine-tune a 4-bit checkpoint; use adapter: qlora (or a dense base_model)`,
    );
  });

  it("lora_modules_to_save: [embed_tokens] on a tied bf16 base trains an f32 copy for the input side (PEFT's default); adapter_config has CAUSAL_LM and the absolute base path", async () => {
    const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
    const r = await train(
      "mts-embed",
      `base_model: ${tied}\nload_in_4bit: true\nadapter: qlora\nlora_target_modules: [q_proj]\nlora_modules_to_save: [embed_tokens]\n`,
    );
    expect(warn.mock.calls.map((c) => String(c[0]))).toContainEqual(
      expect.stringContaining(
        'LoraConfig.modules_to_save: "model.embed_tokens" is tied to "lm_head" (tie_word_embeddings); adapter "default" trains an f32 copy for the input side only and the output head keeps the base matrix (PEFT without ensure_weight_tying)',
      ),
    );
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    const dir = join(r.dir, "adapter");
    expect(await dtypes(dir, "adapter_model.safetensors")).toMatchObject({
      "base_model.model.model.embed_tokens.weight": "F32",
    });
    const cfg = JSON.parse(readFileSync(join(dir, "adapter_config.json"), "utf8"));
    expect(cfg).toMatchObject({ task_type: "CAUSAL_LM", ensure_weight_tying: false, peft_version: "0.18.0" });
    expect(cfg.base_model_name_or_path).toBe(resolve(tied));
    // prompt_completion data: no chat template was trained with, none is saved
    expect(existsSync(join(dir, CHAT_TEMPLATE_FILE))).toBe(false);
    // the trained embedding is what the adapter and the merged model compute with; the head keeps the base matrix
    const withAdapter = await evalLoss(["--model", tied, "--adapter", dir, "--quantize", "none"]);
    expect(Math.abs(withAdapter - (await evalLoss(["--model", tied, "--quantize", "none"])))).toBeGreaterThan(1e-4);
    const merged = join(root, "merged-embed");
    expect(
      (await runCli(["--quiet", "merge", "--model", tied, "--adapter", dir, "--out", merged, "--dtype", "f32"])).code,
    ).toBe(0);
    expect(config(merged).tie_word_embeddings).toBe(false);
    expect((await dtypes(merged))["lm_head.weight"]).toBe("F32");
    expect(
      Math.abs((await evalLoss(["--model", merged, "--quantize", "none"])) - withAdapter) / withAdapter,
    ).toBeLessThan(1e-5);
  });

  it("peft_ensure_weight_tying: one trained embedding the tied head reads too; the merged model stays tied", async () => {
    const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
    const r = await train(
      "mts-embed-tied",
      `base_model: ${tied}\nadapter: lora\nlora_target_modules: [q_proj]\nlora_modules_to_save: [embed_tokens]\npeft_ensure_weight_tying: true\n`,
    );
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    expect(warn.mock.calls.map((c) => String(c[0])).filter((m) => m.includes("tied"))).toEqual([]);
    const dir = join(r.dir, "adapter");
    expect(JSON.parse(readFileSync(join(dir, "adapter_config.json"), "utf8")).ensure_weight_tying).toBe(true);
    const withAdapter = await evalLoss(["--model", tied, "--adapter", dir, "--quantize", "none"]);
    const merged = join(root, "merged-embed-tied");
    expect(
      (await runCli(["--quiet", "merge", "--model", tied, "--adapter", dir, "--out", merged, "--dtype", "f32"])).code,
    ).toBe(0);
    expect(config(merged).tie_word_embeddings).toBe(true);
    expect((await dtypes(merged))["lm_head.weight"]).toBeUndefined();
    expect(
      Math.abs((await evalLoss(["--model", merged, "--quantize", "none"])) - withAdapter) / withAdapter,
    ).toBeLessThan(1e-5);
  });

  it("lora_modules_to_save: [lm_head] on a tied model trains an untied head (as PEFT), saying so; merge unties it", async () => {
    const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
    const r = await train(
      "mts-head",
      `base_model: ${tied}\nload_in_4bit: true\nadapter: qlora\nlora_target_modules: [q_proj]\nlora_modules_to_save: [lm_head]\n`,
    );
    expect(r.code).toBe(0);
    expect(warn.mock.calls.map((c) => String(c[0]))).toContainEqual(
      expect.stringContaining(
        'LoraConfig.modules_to_save: "lm_head" is tied to the input embedding (tie_word_embeddings)',
      ),
    );
    const dir = join(r.dir, "adapter");
    const d = await dtypes(dir, "adapter_model.safetensors");
    expect(d["base_model.model.lm_head.weight"]).toBe("F32");
    warn.mockClear();
    const withAdapter = await evalLoss(["--model", tied, "--adapter", dir, "--quantize", "none"]);
    // loading the adapter to use it is not the moment to explain what training it did
    expect(warn.mock.calls.map((c) => String(c[0])).filter((m) => m.includes("is tied to"))).toEqual([]);
    const merged = join(root, "merged-head");
    expect(
      (await runCli(["--quiet", "merge", "--model", tied, "--adapter", dir, "--out", merged, "--dtype", "f32"])).code,
    ).toBe(0);
    expect(config(merged).tie_word_embeddings).toBe(false);
    expect(Object.keys(await dtypes(merged))).toContain("lm_head.weight");
    expect(
      Math.abs((await evalLoss(["--model", merged, "--quantize", "none"])) - withAdapter) / withAdapter,
    ).toBeLessThan(1e-2);
  });

  it("base_model_name_or_path: an absolute path for a local directory, the name as given for a hub id", () => {
    expect(baseModelReference(base)).toBe(resolve(base));
    expect(baseModelReference("meta-llama/Llama-3.2-1B")).toBe("meta-llama/Llama-3.2-1B");
  });
});

describe("the chat template an adapter trained with", () => {
  it("is saved as chat_template.jinja beside the adapter (and checkpoints) and used by generate / chat; --chat-template overrides", async () => {
    const messages = join(root, "messages.jsonl");
    writeFileSync(
      messages,
      Array.from({ length: 8 }, (_, i) =>
        JSON.stringify({
          messages: [
            { role: "user", content: `hi ${i}` },
            { role: "assistant", content: "hello" },
          ],
        }),
      ).join("\n"),
    );
    const dir = join(root, "chatml-run");
    const file = join(root, "chatml-run.yaml");
    writeFileSync(
      file,
      `base_model: ${base}\nload_in_4bit: true\nadapter: qlora\nlora_target_modules: [q_proj]\ndatasets: [{path: ${messages}, type: chat_template}]\nchat_template: chatml\nsequence_len: 64\nmicro_batch_size: 4\nmax_steps: 2\nsave_steps: 2\noutput_dir: ${dir}\n`,
    );
    const r = await runCli(["--quiet", "--json", "train", file]);
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    const ad = join(dir, "adapter");
    expect(readFileSync(join(ad, CHAT_TEMPLATE_FILE), "utf8")).toBe(CHATML_TEMPLATE);
    expect(readFileSync(join(dir, "checkpoint-2", CHAT_TEMPLATE_FILE), "utf8")).toBe(CHATML_TEMPLATE);

    const chat = [{ role: "user", content: "hi" }];
    const withAdapter = await loadForInference(base, { adapter: ad, quantize: "none", quiet: true });
    expect(withAdapter.tokenizer.applyChatTemplate(chat, { addGenerationPrompt: true })).toBe(
      "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    );
    const overridden = await loadForInference(base, {
      adapter: ad,
      quantize: "none",
      quiet: true,
      chatTemplate: "tokenizer_default",
    });
    expect(overridden.tokenizer.applyChatTemplate(chat)).toMatch(/<\|start_header_id\|>user<\|end_header_id\|>/);
    const jinja = join(root, "mine.jinja");
    writeFileSync(jinja, "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}");
    const fromFile = await loadForInference(base, { quantize: "none", quiet: true, chatTemplate: jinja });
    expect(fromFile.tokenizer.applyChatTemplate(chat)).toBe("[user] hi\n");

    // generate --chat runs with the adapter's template; the base's gives another prompt
    const gen = (extra: string[]) =>
      runCli(
        ["--json", "generate", "--model", base, "--adapter", ad, "--prompt", "hi", "--chat"].concat(
          ["--max-new-tokens", "4", "--quantize", "none"],
          extra,
        ),
      );
    const g = await gen([]);
    expect(g.err).toBe("");
    expect(g.code).toBe(0);
    expect((await gen(["--chat-template", "chatml"])).out).toBe(g.out);
  });

  it("a --chat-template that is neither a known name nor a file, or a broken saved template, is an error naming it", async () => {
    const r = await runCli(["generate", "--model", base, "--prompt", "x", "--chat", "--chat-template", "nope.jinja"]);
    expect(r.code).toBe(2);
    expect(r.err).toBe(
      'qlora: --chat-template: expected chatml, tokenizer_default or a Jinja template file, got "nope.jinja" (no such file)',
    );
    const broken = join(root, "broken-adapter");
    cpSync(adapter, broken, { recursive: true });
    writeFileSync(join(broken, CHAT_TEMPLATE_FILE), "{% for m in messages %}");
    expect(() => resolveChatTemplate(undefined, broken)).toThrow(
      new RegExp(`^${join(broken, CHAT_TEMPLATE_FILE).replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}: not a chat template`),
    );
    // a broken template file given by flag is named too
    expect(() => resolveChatTemplate(join(broken, CHAT_TEMPLATE_FILE))).toThrow(
      `--chat-template ${join(broken, CHAT_TEMPLATE_FILE)}: not a chat template this CLI can render`,
    );
  });
});
