/**
 * Every file-writing command as a real `qlora` subprocess over real files, in the order a user runs them:
 * train → eval → generate → quantize → merge → export → report → inspect, plus their exit codes on bad input.
 */
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { runBin } from "./helpers";
import { writeTinyBase } from "./tiny";

describe("qlora as a subprocess, end to end", () => {
  it("train, eval, generate, quantize, merge, export, report and inspect on a tiny model", async () => {
    const root = mkdtempSync(join(tmpdir(), "qlora-sub-"));
    const base = await writeTinyBase(join(root, "base"));
    const data = join(root, "d.jsonl");
    writeFileSync(
      data,
      Array.from({ length: 24 }, (_, i) => JSON.stringify({ prompt: `n${i % 5}:`, completion: " yes" })).join("\n"),
    );
    const run = join(root, "run");
    writeFileSync(
      join(root, "c.yaml"),
      `base_model: ${base}\nload_in_4bit: true\nadapter: qlora\nlora_target_linear: true\ndatasets: [{path: ${data}, type: prompt_completion}]\nsequence_len: 32\nmicro_batch_size: 4\nmax_steps: 6\nlearning_rate: 0.01\noutput_dir: ${run}\n`,
    );
    const ok = async (argv: string[]) => {
      const r = await runBin(argv);
      expect(r.err.replace(/\(node:\d+\) .*Warning.*\n(.*--trace-warnings.*\n)?/g, "")).not.toMatch(/^qlora: /m);
      expect(r.code).toBe(0);
      return r.out;
    };
    const train = JSON.parse(await ok(["--quiet", "--json", "train", join(root, "c.yaml")]));
    expect(train.globalStep).toBe(6);
    const adapter = join(run, "adapter");
    const ev = JSON.parse(await ok(["--json", "eval", "--model", base, "--adapter", adapter, "--data", data]));
    expect(ev.perplexity).toBeCloseTo(Math.exp(ev.loss), 6);
    expect(
      JSON.parse(await ok(["--json", "generate", "--model", base, "--prompt", "n1:", "--max-new-tokens", "3"]))
        .completion,
    ).toBeTypeOf("string");
    await ok(["quantize", base, "--out", join(root, "nf4")]);
    await ok(["merge", "--model", base, "--adapter", adapter, "--out", join(root, "merged"), "--dtype", "bf16"]);
    await ok([
      "export",
      "--model",
      join(root, "merged"),
      "--format",
      "gguf",
      "--gguf-type",
      "q8_0",
      "--out",
      join(root, "m.gguf"),
    ]);
    await ok(["export", "--model", base, "--adapter", adapter, "--format", "gguf", "--out", join(root, "a.gguf")]);
    await ok(["report", run]);
    for (const f of ["nf4/config.json", "merged/model.safetensors", "m.gguf", "a.gguf", "run/report.html"])
      expect(existsSync(join(root, f))).toBe(true);
    expect(await ok(["inspect", join(root, "nf4")])).toMatch(/quantization\s+nf4/);
    expect(await ok(["inspect", adapter])).toMatch(/\(adapter\)/);
    expect(await ok(["inspect", run])).toMatch(/\(run\)/);
    const bad = await runBin(["merge", "--model", base, "--adapter", join(root, "none"), "--out", join(root, "x")]);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/^qlora: --adapter: .* is not a PEFT adapter directory/m);
  }, 180_000);
});
