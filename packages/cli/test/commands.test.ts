import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GgmlType, GgufValueType, gv, writeGguf, writeSafetensors } from "@qlora/formats";
import { describe, expect, it } from "vitest";
import { OPTIMIZERS } from "../src/config";
import { runBin, runCli } from "./helpers";

const dir = mkdtempSync(join(tmpdir(), "qlora-cli-"));
const config = {
  architectures: ["LlamaForCausalLM"],
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 100,
};
writeFileSync(join(dir, "config.json"), JSON.stringify(config));

describe("qlora estimate", () => {
  it("prints the plan as a table and as JSON", async () => {
    const table = await runCli(["estimate", "--model", dir]);
    expect(table.code).toBe(0);
    expect(table.out).toMatch(/base weights \(NF4-DQ\)/);
    expect(table.out).toMatch(/^total\s+\d/m);
    const json = await runCli(["--json", "estimate", "--model", join(dir, "config.json"), "--lora-r", "4"]);
    const plan = JSON.parse(json.out);
    expect(plan.loraParams).toBe(2 * 4 * (64 + 64 + 64 + 32 + 64 + 32 + 64 + 64 + 64 + 128 + 64 + 128 + 128 + 64));
  });

  it("a bitsandbytes 4-bit checkpoint is planned as it loads; another quantization method is refused", async () => {
    const bnb = (extra: Record<string, unknown>) => {
      const file = join(dir, `bnb-${Object.keys(extra).length}-${JSON.stringify(extra).length}.json`);
      const q = { quant_method: "bitsandbytes", load_in_4bit: true, bnb_4bit_quant_type: "nf4", ...extra };
      writeFileSync(file, JSON.stringify({ ...config, quantization_config: q }));
      return file;
    };
    const plain = await runCli(["estimate", "--model", bnb({ bnb_4bit_use_double_quant: false })]);
    expect(plain.out).toMatch(/base weights \(NF4\)/);
    const dq = await runCli(["estimate", "--model", bnb({ bnb_4bit_use_double_quant: true })]);
    expect(dq.out).toMatch(/base weights \(NF4-DQ\)/);
    const none = await runCli(["estimate", "--model", bnb({ bnb_4bit_use_double_quant: true }), "--quant", "none"]);
    expect(none.code).toBe(2);
    expect(none.err).toMatch(
      /--quant none: .* is a bitsandbytes 4-bit checkpoint; its base weights load as 4-bit \(nf4-dq\)/,
    );
    const gptq = join(dir, "gptq.json");
    writeFileSync(gptq, JSON.stringify({ ...config, quantization_config: { quant_method: "gptq", bits: 4 } }));
    const refused = await runCli(["estimate", "--model", gptq]);
    expect(refused.code).toBe(2);
    expect(refused.err).toBe(
      `qlora: --model: ${gptq} is quantized with "gptq", which qlora does not load; estimate its unquantized release`,
    );
  });

  it("--config takes the run's settings from a train config; flags given win", async () => {
    const yaml = join(dir, "train.yaml");
    writeFileSync(
      yaml,
      `base_model: ${dir}\nload_in_4bit: true\nadapter: qlora\nlora_r: 4\nlora_dropout: 0.1\nlora_target_linear: true\nsequence_len: 48\nmicro_batch_size: 3\noptimizer: paged_adamw_8bit\ngradient_checkpointing: true\ndatasets: [{path: d.jsonl}]\n`,
    );
    const byConfig = JSON.parse((await runCli(["--json", "estimate", "--config", yaml])).out);
    const byFlags = JSON.parse(
      (
        await runCli([
          "--json",
          "estimate",
          "--model",
          dir,
          "--lora-r",
          "4",
          "--lora-dropout",
          "0.1",
          "--seq-len",
          "48",
          "--micro-batch-size",
          "3",
          "--optimizer",
          "paged_adamw_8bit",
          "--gradient-checkpointing",
        ])
      ).out,
    );
    expect(byConfig).toEqual(byFlags);
    const shorter = JSON.parse((await runCli(["--json", "estimate", "--config", yaml, "--seq-len", "16"])).out);
    expect(shorter.totalBytes).toBeLessThan(byConfig.totalBytes);
    const neither = await runCli(["estimate"]);
    expect(neither.code).toBe(2);
    expect(neither.err).toBe("qlora: estimate: give --model <dir> or --config <file>");
  });

  it("bad arguments and paths exit 2 with one readable line", async () => {
    const missing = await runCli(["estimate", "--model", join(dir, "nope")]);
    expect(missing.code).toBe(2);
    expect(missing.err).toBe(`qlora: --model: ${join(dir, "nope")} does not exist`);
    const bad = await runCli(["estimate", "--model", dir, "--seq-len", "-3"]);
    expect(bad.code).toBe(2);
    expect(bad.err).toBe('qlora: --seq-len: expected a positive integer, got "-3"');
    const dropout = await runCli(["estimate", "--model", dir, "--lora-dropout", "1.5"]);
    expect(dropout.err).toBe('qlora: --lora-dropout: expected a number in [0, 1), got "1.5"');
    const plain = JSON.parse((await runCli(["--json", "estimate", "--model", dir])).out);
    const dropped = JSON.parse((await runCli(["--json", "estimate", "--model", dir, "--lora-dropout", "0.05"])).out);
    expect(dropped.trackedPeakBytes).toBeGreaterThan(plain.trackedPeakBytes);
    const quant = await runCli(["estimate", "--model", dir, "--quant", "int3"]);
    expect(quant.err).toBe('qlora: --quant: expected nf4-dq, nf4 or none, got "int3"');
    const optimizer = await runCli(["estimate", "--model", dir, "--optimizer", "bogus"]);
    expect(optimizer.code).toBe(2);
    expect(optimizer.out).toBe("");
    expect(optimizer.err).toBe(`qlora: --optimizer: expected one of ${OPTIMIZERS.join(", ")}, got "bogus"`);
    // a config.json a load would refuse is refused here too, not planned for
    const gpt9 = join(dir, "gpt9.json");
    writeFileSync(gpt9, JSON.stringify({ ...config, architectures: ["Gpt9ForCausalLM"] }));
    const arch = await runCli(["estimate", "--model", gpt9]);
    expect(arch.code).not.toBe(0);
    expect(arch.err).toMatch(/gpt9\.json.*Gpt9ForCausalLM/);
  });

  it("--optimizer takes every name train takes and sizes Lion and SGD state as they keep it", async () => {
    const bytes = async (name: string) => {
      const r = await runCli(["--json", "estimate", "--model", dir, "--optimizer", name]);
      expect(r.code).toBe(0);
      const row = JSON.parse(r.out).rows.find((x: { part?: string }) => x.part === "optimizer");
      return [row.item, row.bytes];
    };
    const results = new Map<string, [string, number]>();
    for (const name of OPTIMIZERS) results.set(name, (await bytes(name)) as [string, number]);
    const [, adam] = results.get("adamw_torch")!;
    expect(results.get("lion_32bit")).toEqual(["optimizer state (32-bit Lion)", adam / 2]);
    expect(results.get("sgd")).toEqual(["optimizer state (32-bit SGD momentum)", adam / 2]);
    expect(results.get("paged_lion_8bit")![0]).toBe("optimizer state (8-bit Lion)");
    expect(results.get("paged_adamw_8bit")![0]).toBe("optimizer state (8-bit AdamW)");
  });

  it("plans without gradient checkpointing by default, as train; --gradient-checkpointing turns it on", async () => {
    const items = async (...flags: string[]) => {
      const r = await runCli(["--json", "estimate", "--model", dir, ...flags]);
      expect(r.code).toBe(0);
      return JSON.parse(r.out).rows.map((x: { item: string }) => x.item) as string[];
    };
    const plain = await items();
    expect(plain).toContain("saved activations (all 2 layers)");
    expect(plain.some((i) => i.startsWith("checkpointed"))).toBe(false);
    expect(await items("--no-gradient-checkpointing")).toEqual(plain);
    const ckpt = await items("--gradient-checkpointing");
    expect(ckpt).toContain("checkpointed layer inputs (3 × tokens × hidden)");
    expect(ckpt).toContain("one layer's recomputed activations");
  });
});

describe("qlora eval", () => {
  it("an unknown --quantize is refused before anything is loaded, as generate refuses it", async () => {
    for (const command of ["eval", "generate"]) {
      const extra = command === "eval" ? ["--data", join(dir, "d.jsonl")] : ["--prompt", "hi"];
      const r = await runCli([command, "--model", dir, ...extra, "--quantize", "bogus"]);
      expect(r.code).toBe(2);
      expect(r.err).toBe('qlora: --quantize: expected nf4 or none, got "bogus"');
    }
  });

  it("a --data file whose format cannot be told is refused naming --data, not an internal option", async () => {
    const r = await runCli(["eval", "--model", dir, "--data", "/dev/null"]);
    expect(r.code).toBe(2);
    expect(r.err).toBe(
      "qlora: --data: /dev/null: cannot tell the file format from its extension; expected .jsonl, .json, .txt or .parquet",
    );
  });
});

describe("qlora inspect", () => {
  it("summarises a safetensors file, a checkpoint directory and a GGUF file", async () => {
    await writeSafetensors(join(dir, "model.safetensors"), [
      { name: "a", dtype: "F32", shape: [2, 3], data: new Float32Array(6) },
      { name: "b", dtype: "BF16", shape: [4], data: new Uint16Array(4) },
    ]);
    const file = await runCli(["--json", "inspect", join(dir, "model.safetensors")]);
    expect(file.code).toBe(0);
    expect(JSON.parse(file.out).details).toMatchObject({ tensors: 2, params: 10, byDtype: { F32: 6, BF16: 4 } });
    const ckpt = await runCli(["inspect", dir]);
    expect(ckpt.out).toMatch(/\(checkpoint\)/);
    expect(ckpt.out).toMatch(/architecture\s+LlamaForCausalLM/);
    await writeGguf(join(dir, "m.gguf"), {
      metadata: {
        "general.architecture": gv.str("llama"),
        "tokenizer.ggml.tokens": gv.arr(
          GgufValueType.STRING,
          Array.from({ length: 20 }, (_, i) => `t${i}`),
        ),
        "tokenizer.ggml.eos_token_id": gv.u32(7),
        "tokenizer.chat_template": gv.str("{% for m in messages %}\n{{ m.content }}{% endfor %}"),
      },
      tensors: [{ name: "t", type: GgmlType.F32, shape: [4], data: new Float32Array(4) }],
    });
    const gguf = await runCli(["inspect", join(dir, "m.gguf")]);
    expect(gguf.code).toBe(0);
    expect(gguf.out).toMatch(/architecture\s+llama/);
    expect(gguf.out).toMatch(/tokenizer\.ggml\.eos_token_id\s+7/);
    expect(gguf.out).toMatch(/tokenizer\.chat_template\s+\{% for m in messages %\}\\n\{\{ m\.content \}\}/);
    // --json has every metadata value, long arrays as their length
    const meta = JSON.parse((await runCli(["--json", "inspect", join(dir, "m.gguf")])).out).details.metadata;
    expect(meta).toMatchObject({
      "general.architecture": "llama",
      "tokenizer.ggml.tokens": "[20 items]",
      "tokenizer.ggml.eos_token_id": 7,
    });
  });

  it("a run directory: losses to 4 significant digits, step and best metric from @qlora/trainer's state", async () => {
    const run = join(dir, "run");
    mkdirSync(join(run, "checkpoint-2"), { recursive: true });
    writeFileSync(
      join(run, "metrics.jsonl"),
      [
        { step: 1, loss: 1.2345678 },
        { step: 2, loss: 0.784126341342926 },
        { step: 2, eval_loss: 0.91234567, eval_perplexity: 2.49 },
      ]
        .map((r) => JSON.stringify(r))
        .join("\n"),
    );
    writeFileSync(
      join(run, "checkpoint-2", "trainer_state.json"),
      JSON.stringify({ globalStep: 2, bestMetric: 0.91234567, logHistory: [] }),
    );
    const r = await runCli(["inspect", run]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^ {2}last train loss\s+0\.7841 \(step 2\)$/m);
    expect(r.out).toMatch(/^ {2}last eval loss\s+0\.9123 \(step 2\)$/m);
    expect(r.out).toMatch(/^ {2}global_step\s+2$/m);
    expect(r.out).toMatch(/^ {2}best_metric\s+0\.9123$/m);
  });

  it("a corrupt file or an unknown path is a clear error", async () => {
    writeFileSync(join(dir, "bad.safetensors"), "not a safetensors file");
    const bad = await runCli(["inspect", join(dir, "bad.safetensors")]);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(new RegExp(`^qlora: ${join(dir, "bad.safetensors")}: `));
    const none = await runCli(["inspect", join(dir, "missing")]);
    expect(none.err).toBe(`qlora: ${join(dir, "missing")}: no such file or directory`);
  });
});

describe("--device", () => {
  it("cuda without a usable GPU is a clear error; an unknown device names the choices", async () => {
    const cuda = await runCli(["--device", "cuda", "estimate", "--model", dir]);
    expect(cuda.code).toBe(2);
    expect(cuda.err).toMatch(
      /^qlora: --device cuda: (no usable CUDA device \(.+\)|@qlora\/cuda-kernels is not installed)/,
    );
    const bad = await runCli(["--device", "tpu", "estimate", "--model", dir]);
    expect(bad.err).toBe('qlora: --device: expected cpu, cuda or auto, got "tpu"');
  });

  it("--threads beyond what the pool runs is refused by name (it used to abort inside std::thread)", async () => {
    const r = await runCli(["--threads", "100000", "estimate", "--model", dir]);
    expect(r.code).toBe(2);
    expect(r.err).toBe('qlora: --threads: expected at most 1024, got "100000"');
  });
});

describe("the qlora binary", () => {
  it("runs as a subprocess: --help exits 0, an unknown command exits 2", async () => {
    const help = await runBin(["--help"]);
    expect(help.code).toBe(0);
    expect(help.out).toMatch(/Usage: qlora/);
    const unknown = await runBin(["frobnicate"]);
    expect(unknown.code).toBe(2);
    expect(unknown.err).toMatch(/unknown command 'frobnicate'/);
  });
});
