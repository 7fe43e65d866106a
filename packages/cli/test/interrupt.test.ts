import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { BIN } from "./helpers";
import { writeTinyBase } from "./tiny";

describe("Ctrl-C during qlora train", () => {
  it("writes a checkpoint at the end of the current step and exits 0", async () => {
    const root = mkdtempSync(join(tmpdir(), "qlora-int-"));
    const base = await writeTinyBase(join(root, "base"));
    const data = join(root, "d.jsonl");
    writeFileSync(
      data,
      Array.from({ length: 32 }, (_, i) => JSON.stringify({ prompt: `n ${i}:`, completion: " ok" })).join("\n"),
    );
    const out = join(root, "run");
    writeFileSync(
      join(root, "c.yaml"),
      `base_model: ${base}\nload_in_4bit: true\nadapter: qlora\nlora_target_linear: true\ndatasets: [{path: ${data}, type: prompt_completion}]\nsequence_len: 32\nmicro_batch_size: 2\nmax_steps: 100000\noutput_dir: ${out}\nlogging_steps: 1\n`,
    );
    const child = spawn(
      process.execPath,
      ["--conditions=@qlora/source", "--import", "tsx", BIN, "--quiet", "train", join(root, "c.yaml")],
      {
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    // Interrupt once training is under way (metrics.jsonl gets a line per step).
    const started = Date.now();
    while (!existsSync(join(out, "metrics.jsonl")) && Date.now() - started < 60_000)
      await new Promise((r) => setTimeout(r, 200));
    const exited = new Promise<number | null>((r) => child.on("exit", (c) => r(c)));
    child.kill("SIGINT");
    // Never leave a training process behind, whatever the assertions say.
    const timer = setTimeout(() => child.kill("SIGKILL"), 90_000);
    const code = await exited;
    clearTimeout(timer);
    expect(stderr).toMatch(/interrupted — writing a checkpoint/);
    expect(code).toBe(0);
    const checkpoints = readdirSync(out).filter((n) => n.startsWith("checkpoint-"));
    expect(checkpoints).toHaveLength(1);
    expect(existsSync(join(out, checkpoints[0], "adapter_model.safetensors"))).toBe(true);
    expect(stdout).toMatch(/^interrupted; weights: /m);
  }, 120_000);
});
