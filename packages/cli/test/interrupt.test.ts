import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { onInterrupt, signalExitCode } from "../src/commands/signals";
import { BIN } from "./helpers";
import { writeTinyBase } from "./tiny";

/** Start a long `qlora train`, send `signal` once training is under way, and collect what it did. */
async function interruptTraining(signal: NodeJS.Signals) {
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
  child.kill(signal);
  // Never leave a training process behind, whatever the assertions say.
  const timer = setTimeout(() => child.kill("SIGKILL"), 90_000);
  const code = await exited;
  clearTimeout(timer);
  return { code, stdout, stderr, out, checkpoints: readdirSync(out).filter((n) => n.startsWith("checkpoint-")) };
}

describe("Ctrl-C during qlora train", () => {
  it("writes a checkpoint at the end of the current step and exits 130, as shells expect of SIGINT", async () => {
    const r = await interruptTraining("SIGINT");
    expect(r.stderr).toMatch(/interrupted — writing a checkpoint/);
    expect(r.code).toBe(130);
    expect(r.checkpoints).toHaveLength(1);
    expect(existsSync(join(r.out, r.checkpoints[0], "adapter_model.safetensors"))).toBe(true);
    expect(r.stdout).toMatch(/^interrupted; weights: /m);
  }, 120_000);

  it("SIGTERM (plain kill) is handled like SIGINT: checkpoint, weights, exit 143", async () => {
    const r = await interruptTraining("SIGTERM");
    expect(r.stderr).toMatch(/interrupted \(SIGTERM\) — writing a checkpoint/);
    expect(r.code).toBe(143);
    expect(r.checkpoints).toHaveLength(1);
    expect(existsSync(join(r.out, r.checkpoints[0], "adapter_model.safetensors"))).toBe(true);
    expect(r.stdout).toMatch(/^interrupted; weights: /m);
  }, 120_000);
});

describe("onInterrupt", () => {
  it("the first SIGINT or SIGTERM aborts, a second one of either exits with 128 + its number", () => {
    expect(signalExitCode("SIGINT")).toBe(130);
    expect(signalExitCode("SIGTERM")).toBe(143);
    const before = { int: process.listenerCount("SIGINT"), term: process.listenerCount("SIGTERM") };
    const said: string[] = [];
    const exits: number[] = [];
    const i = onInterrupt(
      (s) => said.push(s),
      (code) => exits.push(code),
    );
    try {
      expect(i.signal.aborted).toBe(false);
      process.emit("SIGTERM", "SIGTERM");
      expect(i.signal.aborted).toBe(true);
      expect(i.received()).toBe("SIGTERM");
      expect(said).toEqual(["SIGTERM"]);
      expect(exits).toEqual([]);
      process.emit("SIGINT", "SIGINT");
      expect(exits).toEqual([130]);
      expect(said).toEqual(["SIGTERM"]);
    } finally {
      i.dispose();
    }
    expect(process.listenerCount("SIGINT")).toBe(before.int);
    expect(process.listenerCount("SIGTERM")).toBe(before.term);
  });
});

describe("Ctrl-C during qlora demo", () => {
  it("stops after the current step and exits 130 (it used to exit 0, as if it had finished)", async () => {
    const out = mkdtempSync(join(tmpdir(), "qlora-demo-int-"));
    const child = spawn(
      process.execPath,
      ["--conditions=@qlora/source", "--import", "tsx", BIN, "demo", "--steps", "100000", "--out", out],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let stdout = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", () => {});
    const exited = new Promise<number | null>((r) => child.on("exit", (c) => r(c)));
    const started = Date.now();
    while (!existsSync(join(out, "metrics.jsonl")) && Date.now() - started < 60_000)
      await new Promise((r) => setTimeout(r, 200));
    child.kill("SIGINT");
    const timer = setTimeout(() => child.kill("SIGKILL"), 90_000);
    const code = await exited;
    clearTimeout(timer);
    rmSync(out, { recursive: true, force: true });
    expect(code).toBe(130);
    expect(stdout).toMatch(/before fine-tuning: held-out accuracy/);
  }, 120_000);
});
