import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GgmlType, gv, writeGguf, writeSafetensors } from "@qlora/formats";
import { describe, expect, it } from "vitest";
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

  it("bad arguments and paths exit 2 with one readable line", async () => {
    const missing = await runCli(["estimate", "--model", join(dir, "nope")]);
    expect(missing.code).toBe(2);
    expect(missing.err).toBe(`qlora: --model: ${join(dir, "nope")} does not exist`);
    const bad = await runCli(["estimate", "--model", dir, "--seq-len", "-3"]);
    expect(bad.code).toBe(2);
    expect(bad.err).toBe('qlora: --seq-len: expected a positive integer, got "-3"');
    const quant = await runCli(["estimate", "--model", dir, "--quant", "int3"]);
    expect(quant.err).toBe('qlora: --quant: expected nf4-dq, nf4 or none, got "int3"');
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
      metadata: { "general.architecture": gv.str("llama") },
      tensors: [{ name: "t", type: GgmlType.F32, shape: [4], data: new Float32Array(4) }],
    });
    const gguf = await runCli(["inspect", join(dir, "m.gguf")]);
    expect(gguf.code).toBe(0);
    expect(gguf.out).toMatch(/architecture\s+llama/);
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
