import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";

const ROOT = new URL("../../../", import.meta.url).pathname;
const SCRIPT = new URL("./resume-script.ts", import.meta.url).pathname;
const work = mkdtempSync(join(tmpdir(), "qlora-resume-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const data = join(work, "data.jsonl");
writeFileSync(
  data,
  Array.from({ length: 48 }, (_, i) => JSON.stringify({ prompt: `q${i}:`, completion: "ab".repeat(1 + (i % 5)) })).join(
    "\n",
  ),
);

function start(out: string, weights: string, resume: boolean, env: Record<string, string> = {}): ChildProcess {
  return spawn(
    process.execPath,
    ["--import", "tsx", "--conditions=@qlora/source", SCRIPT, out, data, weights, ...(resume ? ["resume"] : [])],
    { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] },
  );
}

/** Run to completion; returns stdout. */
function finish(p: ChildProcess): Promise<string> {
  let out = "";
  let err = "";
  p.stdout?.on("data", (d) => (out += d));
  p.stderr?.on("data", (d) => (err += d));
  return new Promise((resolve, reject) =>
    p.on("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`exit ${code}: ${err}`)))),
  );
}

/** SIGKILL the process as soon as a stdout line matches; resolves when it is dead. */
function killOn(p: ChildProcess, line: string): Promise<string> {
  let out = "";
  return new Promise((resolve) => {
    p.stdout?.on("data", (d) => {
      out += d;
      if (out.split("\n").includes(line)) p.kill("SIGKILL");
    });
    p.on("exit", (_code, signal) => resolve(`${signal}`));
  });
}

describe("kill and resume", () => {
  it("SIGKILL mid-run and mid-checkpoint-write, then resume: final weights bit-identical to an uninterrupted run", async () => {
    const ref = join(work, "ref");
    const refLog = await finish(start(ref, join(work, "ref.bin"), false));
    const total = Number(/done (\d+)/.exec(refLog)?.[1]);
    expect(total).toBeGreaterThan(10);

    // Killed mid-run (after step 7; the last checkpoint is 6), resumed from the latest checkpoint.
    const a = join(work, "a");
    expect(await killOn(start(a, join(work, "a.bin"), false, { QLORA_TEST_STEP_MS: "30" }), "step 7")).toBe("SIGKILL");
    expect(readdirSync(a).filter((n) => n.startsWith("checkpoint-"))).toEqual(["checkpoint-3", "checkpoint-6"]);
    const resumedLog = await finish(start(a, join(work, "a.bin"), true));
    expect(resumedLog.split("\n")[0]).toBe("step 7");
    expect(readFileSync(join(work, "a.bin")).equals(readFileSync(join(work, "ref.bin")))).toBe(true);

    // Killed while checkpoint-9 is being written: only the temporary directory exists; resume uses checkpoint-6.
    const b = join(work, "b");
    expect(await killOn(start(b, join(work, "b.bin"), false, { QLORA_TEST_SLOW_SAVE: "9" }), "saving 9")).toBe(
      "SIGKILL",
    );
    expect(existsSync(join(b, "checkpoint-9"))).toBe(false);
    expect(readdirSync(b).some((n) => n.startsWith(".tmp-checkpoint-9"))).toBe(true);
    const log2 = await finish(start(b, join(work, "b.bin"), true));
    expect(log2.split("\n")[0]).toBe("step 7");
    expect(readdirSync(b).some((n) => n.startsWith(".tmp-"))).toBe(false);
    expect(readFileSync(join(work, "b.bin")).equals(readFileSync(join(work, "ref.bin")))).toBe(true);
    // rotation kept two checkpoints, the newest among them
    expect(readdirSync(b).filter((n) => n.startsWith("checkpoint-"))).toContain(`checkpoint-${total}`);
    expect(readdirSync(b).filter((n) => n.startsWith("checkpoint-")).length).toBe(2);
  });
});
