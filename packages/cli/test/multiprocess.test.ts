/**
 * `qlora train --nproc 2` and `mpirun -n 2 … qlora train` as real processes over a tiny NF4 Llama: the job
 * finishes with one adapter equal to a one-process run with the doubled micro-batch, rank 0 alone prints
 * progress, and a killed rank ends the job with an error. Skipped, with the reason, without mpirun or libmpi.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { findMpirun, mpiAvailability } from "@qlora/distributed";
import { openSafetensors } from "@qlora/formats";
import { beforeAll, describe, expect, it } from "vitest";
import { BIN, runCli } from "./helpers";
import { writeTinyBase } from "./tiny";

const launcher = findMpirun();
const library = launcher.ok ? mpiAvailability() : launcher;
const skip = launcher.ok && library.ok ? "" : ` (skipped: ${launcher.reason ?? library.reason})`;
const NODE_FLAGS = ["--conditions=@qlora/source", "--import", "tsx"];
const STEPS = 3;

const root = mkdtempSync(join(tmpdir(), "qlora-nproc-"));
let config = "";

function writeConfig(name: string, steps: number, extra = ""): string {
  const file = join(root, name);
  writeFileSync(
    file,
    `base_model: ${join(root, "base")}
load_in_4bit: true
adapter: qlora
lora_r: 4
lora_alpha: 8
lora_target_linear: true
datasets: [{path: ${join(root, "data.jsonl")}, type: prompt_completion}]
sequence_len: 32
micro_batch_size: 2
max_steps: ${steps}
learning_rate: 0.01
lr_scheduler: constant
max_grad_norm: 0.5
logging_steps: 1
seed: 7
${extra}`,
  );
  return file;
}

/** `qlora …` as a subprocess; `onStderr` sees stderr as it arrives (the kill test waits for a step line). */
function qlora(
  argv: string[],
  env: Record<string, string> = {},
  onStderr?: (text: string, child: ChildProcess) => void,
): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...NODE_FLAGS, BIN, ...argv], { env: { ...process.env, ...env } });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    child.stderr.on("data", (d) => {
      err += d;
      onStderr?.(err, child);
    });
    child.on("close", (code) => resolve({ code, out, err }));
  });
}

async function adapterValues(dir: string): Promise<Map<string, Float32Array>> {
  const f = await openSafetensors(join(dir, "adapter_model.safetensors"));
  const out = new Map<string, Float32Array>();
  for (const name of f.names) out.set(name, (await f.readTyped(name, "F32")) as Float32Array);
  await f.close();
  return out;
}

function maxAbsDiff(a: Map<string, Float32Array>, b: Map<string, Float32Array>): number {
  expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
  let m = 0;
  for (const [name, x] of a) {
    const y = b.get(name) as Float32Array;
    for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i] - y[i]));
  }
  return m;
}

/** Lines Open MPI tagged with [job,rank]<stream> (OMPI_MCA_orte_tag_output=1), counted per rank. */
function linesPerRank(text: string, pattern: RegExp): number[] {
  const counts = [0, 0];
  for (const m of text.matchAll(/^\[\d+,(\d+)\]<std(?:out|err)>:(.*)$/gm))
    if (pattern.test(m[2])) counts[Number(m[1])]++;
  return counts;
}

/** The pid of rank `rank` of the job whose command line names `marker` (read from /proc). */
function rankPid(marker: string, rank: number): number | undefined {
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      if (!readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(marker)) continue;
      if (readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").includes(`OMPI_COMM_WORLD_RANK=${rank}`))
        return Number(pid);
    } catch {
      // the process ended while it was read
    }
  }
  return undefined;
}

describe(`qlora train on several processes${skip}`, () => {
  let job: { code: number | null; out: string; err: string };
  beforeAll(async () => {
    if (skip) return;
    await writeTinyBase(join(root, "base"));
    const rows = Array.from({ length: 24 }, (_, i) =>
      JSON.stringify({ prompt: `item ${i % 7} is`, completion: ` ${["red", "green", "blue"][i % 3]} ${i}` }),
    );
    writeFileSync(join(root, "data.jsonl"), rows.join("\n"));
    config = writeConfig("c.yaml", STEPS, `save_steps: ${STEPS}\n`);
    job = await qlora(["train", config, "--nproc", "2", "--output-dir", join(root, "nproc")], {
      OMPI_MCA_orte_tag_output: "1",
    });
  }, 120_000);

  it.skipIf(!!skip)(
    "--nproc 2 × micro-batch 2 ends with one adapter equal to one process with micro-batch 4 (f32 tolerance)",
    async () => {
      expect(job.err).not.toMatch(/error/i);
      expect(job.code).toBe(0);
      const run = join(root, "nproc");
      // rank 0 alone writes: one adapter, one checkpoint, one metrics file with one record per step
      expect(readdirSync(run).sort()).toEqual(["adapter", `checkpoint-${STEPS}`, "metrics.jsonl", "report.html"]);
      const metrics = readFileSync(join(run, "metrics.jsonl"), "utf8").trim().split("\n");
      expect(metrics.filter((l) => l.includes('"loss"'))).toHaveLength(STEPS);
      const single = await runCli([
        "--quiet",
        "train",
        config,
        "--micro-batch-size",
        "4",
        "--output-dir",
        join(root, "single"),
      ]);
      expect(single.code).toBe(0);
      const a = await adapterValues(join(run, "adapter"));
      const b = await adapterValues(join(root, "single", "adapter"));
      // training moved the adapter: LoRA's B starts at zero
      expect([...b.entries()].some(([n, v]) => n.includes("lora_B") && v.some((x) => Math.abs(x) > 1e-3))).toBe(true);
      const diff = maxAbsDiff(a, b);
      console.log(`--nproc 2: max |adapter - one process, micro-batch 4| = ${diff.toExponential(2)}`);
      expect(diff).toBeLessThan(1e-5);
      // and the losses logged per step agree
      const losses = (file: string) =>
        readFileSync(file, "utf8")
          .trim()
          .split("\n")
          .map((l) => JSON.parse(l))
          .filter((r) => r.loss !== undefined)
          .map((r) => r.loss as number);
      const l2 = losses(join(run, "metrics.jsonl"));
      const l1 = losses(join(root, "single", "metrics.jsonl"));
      expect(l2).toHaveLength(STEPS);
      for (let i = 0; i < STEPS; i++) expect(Math.abs(l2[i] - l1[i])).toBeLessThan(1e-5);
      // The difference above is rounding: one process pads its 4 rows to their longest, each rank its 2 rows, so
      // the GEMMs differ in shape. One process with the ranks' own micro-batches (2 rows, accumulated over 2)
      // sums the same gradients in the same order: bit for bit the same adapter.
      const accumulated = await runCli([
        "--quiet",
        "train",
        config,
        "--gradient-accumulation-steps",
        "2",
        "--output-dir",
        join(root, "accumulated"),
      ]);
      expect(accumulated.code).toBe(0);
      expect(maxAbsDiff(a, await adapterValues(join(root, "accumulated", "adapter")))).toBe(0);
    },
  );

  it.skipIf(!!skip)(
    "an epoch whose batches do not divide over the ranks trains every example: the adapter equals one process accumulating",
    async () => {
      // 21 rows, micro-batches of 2: 11 batches, so rank 1's last step is an empty batch (nothing dropped)
      const rows = Array.from({ length: 21 }, (_, i) =>
        JSON.stringify({ prompt: `thing ${i % 5} is`, completion: ` ${["big", "small", "odd"][i % 3]} ${i}` }),
      );
      writeFileSync(join(root, "data21.jsonl"), rows.join("\n"));
      const epoch = writeConfig("epoch.yaml", 1);
      writeFileSync(
        epoch,
        readFileSync(epoch, "utf8")
          .replace("data.jsonl", "data21.jsonl")
          .replace(/^max_steps: 1$/m, "num_epochs: 1"),
      );
      const two = await qlora(["--json", "train", epoch, "--nproc", "2", "--output-dir", join(root, "epoch-2")]);
      expect(two.code).toBe(0);
      const one = await runCli([
        "--quiet",
        "--json",
        "train",
        epoch,
        "--gradient-accumulation-steps",
        "2",
        "--output-dir",
        join(root, "epoch-1"),
      ]);
      expect(one.code).toBe(0);
      expect(JSON.parse(two.out.trim().split("\n").at(-1)!).globalStep).toBe(6);
      expect(JSON.parse(one.out).globalStep).toBe(6);
      const diff = maxAbsDiff(
        await adapterValues(join(root, "epoch-2", "adapter")),
        await adapterValues(join(root, "epoch-1", "adapter")),
      );
      expect(diff).toBe(0);
    },
    120_000,
  );

  it.skipIf(!!skip)("only rank 0 prints progress and the result", () => {
    const steps = linesPerRank(job.err, /^step \d+\/\d+ loss/);
    expect(steps).toEqual([STEPS, 0]);
    expect(linesPerRank(job.out, /^trained \d+ steps/)).toEqual([1, 0]);
  });

  it.skipIf(!!skip)(
    "mpirun -n 2 node … qlora train (the user's own launcher) with fsdp: [full_shard]: FSDP's adapter equals DDP's",
    async () => {
      const out = join(root, "fsdp");
      const fsdp = writeConfig(
        "fsdp.yaml",
        STEPS,
        `save_steps: ${STEPS}\nfsdp: [full_shard, auto_wrap]\nfsdp_config:\n  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer\n  fsdp_state_dict_type: FULL_STATE_DICT\n`,
      );
      const args = ["-n", "2", "--oversubscribe", "-x", "OMPI_MCA_btl_vader_single_copy_mechanism=none"];
      if (process.getuid?.() === 0) args.push("--allow-run-as-root");
      args.push(process.execPath, ...NODE_FLAGS, BIN, "--quiet", "--json", "train", fsdp, "--output-dir", out);
      const r = await new Promise<{ code: number; out: string; err: string }>((resolve) =>
        execFile(
          process.env.QLORA_MPIRUN ?? "mpirun",
          args,
          { timeout: 120_000, maxBuffer: 16 << 20 },
          (error, stdout, stderr) => resolve({ code: error ? Number(error.code ?? 1) : 0, out: stdout, err: stderr }),
        ),
      );
      expect(r.err).not.toMatch(/error/i);
      expect(r.code).toBe(0);
      expect(JSON.parse(r.out).globalStep).toBe(STEPS); // one JSON result: rank 0's
      const diff = maxAbsDiff(
        await adapterValues(join(out, "adapter")),
        await adapterValues(join(root, "nproc", "adapter")),
      );
      console.log(`FSDP vs DDP (2 ranks): max |adapter difference| = ${diff.toExponential(2)}`);
      expect(diff).toBeLessThan(1e-5);
      // FSDP's checkpoint: the PEFT adapter whole, the optimizer state as one shard per rank
      const files = readdirSync(join(out, `checkpoint-${STEPS}`));
      expect(files).toContain("adapter_model.safetensors");
      // (DDP's checkpoint has one optimizer file: these shards show the fsdp strategy ran)
      expect(files.filter((f) => /^optimizer-shard-\d-of-2\.safetensors$/.test(f))).toHaveLength(2);
      // one process with the same config resumes that 2-rank checkpoint (FSDP over a world of one)
      const resumed = await runCli([
        "--quiet",
        "--json",
        "train",
        fsdp,
        "--output-dir",
        out,
        "--max-steps",
        String(STEPS + 2),
        "--resume-from-checkpoint",
        "true",
      ]);
      expect(resumed.err).toBe("");
      expect(JSON.parse(resumed.out).globalStep).toBe(STEPS + 2);
    },
    120_000,
  );

  it.skipIf(!!skip)(
    "an error on one rank is printed with its rank and ends every rank (no hang)",
    async () => {
      // rank 0 alone writes into output_dir: a directory where its metrics file goes fails rank 0 while rank 1
      // waits in a collective (an output_dir that is a file is refused before any rank starts)
      const blocked = join(root, "blocked");
      mkdirSync(join(blocked, "metrics.jsonl"), { recursive: true });
      const t0 = performance.now();
      const r = await qlora(["train", config, "--nproc", "2", "--output-dir", blocked]);
      expect(r.code).not.toBe(0);
      expect(r.err).toMatch(
        /\[rank 0\/2\] error: .*blocked\/metrics.jsonl: cannot read the metrics file \(EISDIR\); ending the job on every rank/,
      );
      expect(r.err).not.toMatch(/\[rank 1\/2\] error: (?!stopped by the launcher)/);
      expect(r.err).toMatch(/qlora: train --nproc 2: the job failed/);
      expect((performance.now() - t0) / 1000).toBeLessThan(60);
    },
    120_000,
  );

  it.skipIf(!!skip)(
    "a killed rank ends the whole job non-zero, with an error",
    async () => {
      const long = writeConfig("long.yaml", 400);
      let killed = false;
      const t0 = performance.now();
      const r = await qlora(["train", long, "--nproc", "2", "--output-dir", join(root, "killed")], {}, (err) => {
        if (killed || !/step 2\/400/.test(err)) return;
        const pid = rankPid(long, 1);
        if (pid === undefined) return;
        killed = true;
        process.kill(pid, "SIGKILL");
      });
      const seconds = (performance.now() - t0) / 1000;
      expect(killed, r.err).toBe(true);
      expect(r.code).not.toBe(0);
      expect(r.err).toMatch(/rank 1 .*exited on signal 9/s); // mpirun names the rank that died
      expect(r.err).toMatch(/\[rank 0\/2\] error: stopped by the launcher: another rank failed/); // the survivor says why
      expect(r.err).toMatch(/qlora: train --nproc 2: the job failed/);
      expect(existsSync(join(root, "killed", "adapter"))).toBe(false);
      expect(seconds).toBeLessThan(100);
    },
    120_000,
  );

  for (const [signal, code, said] of [
    ["SIGTERM", 143, "SIGTERM"],
    ["SIGINT", 130, "Ctrl-C"],
  ] as const)
    it.skipIf(!!skip)(
      `${signal} to the --nproc launcher alone stops the ranks too (exit ${code}), leaving nothing training behind`,
      async () => {
        const long = writeConfig(`${signal}.yaml`, 400);
        let sent = false;
        const out = join(root, `${signal}-run`);
        const r = await qlora(["train", long, "--nproc", "2", "--output-dir", out], {}, (err, child) => {
          if (sent || !/step 2\/400/.test(err)) return;
          sent = true;
          child.kill(signal); // the launcher's pid only, as `kill <pid>`, `timeout` or a job scheduler does
        });
        expect(sent, r.err).toBe(true);
        expect(r.code).toBe(code);
        expect(r.err).toContain(`qlora: train --nproc 2: interrupted (${said}): mpirun stopped the ranks`);
        // mpirun and its ranks are gone when the launcher has exited
        expect([rankPid(long, 0), rankPid(long, 1)]).toEqual([undefined, undefined]);
        expect(existsSync(join(out, "adapter"))).toBe(false);
      },
      120_000,
    );
});
