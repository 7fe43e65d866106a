/**
 * One MPI job per world size (rank start-up dominates the time here): each job first checks every collective
 * against its definition, then trains the tiny QLoRA setup with DDP; the assertions are split by topic below.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mpirun, noMpi, runRanks } from "./helpers";
import { trainAdapter } from "./qlora-run";

const work = mkdtempSync(join(tmpdir(), "qlora-ddp-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const MICRO = 2;
const ACCUM = 2;
const STEPS = 3;

function maxAbsDiff(a: number[], b: number[]): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

for (const n of [2, 3]) {
  describe(`mpirun -n ${n}${noMpi}`, () => {
    // biome-ignore lint/suspicious/noExplicitAny: the job's JSON result
    let job: any;
    beforeAll(async () => {
      if (!mpirun.ok) return;
      const out = join(work, `job-${n}.json`);
      const r = await runRanks(n, "job.ts", [out, String(MICRO), String(ACCUM), String(STEPS)]);
      if (r.exitCode !== 0) throw new Error(`mpirun -n ${n} exited ${r.exitCode}:\n${r.stderr}`);
      job = JSON.parse(readFileSync(out, "utf8"));
    });

    it.skipIf(!mpirun.ok)("every collective, f32/f64/i32, odd sizes, overlapped: matches its definition", () => {
      const res = job.collectives;
      expect(res.worldSize).toBe(n);
      expect(res.failures).toEqual([]);
      expect(res.failuresPerRank).toEqual(Array(n).fill(0));
      expect(res.cases).toBeGreaterThan(100);
    });

    it.skipIf(!mpirun.ok)(
      `DDP: ${n} ranks × micro-batch ${MICRO} give one process's batch-${n * MICRO} adapter (f32 tolerance)`,
      async () => {
        const single = await trainAdapter({
          rank: 0,
          worldSize: 1,
          microBatch: MICRO * n,
          accumulation: ACCUM,
          steps: STEPS,
        });
        expect(job.names).toEqual(single.names);
        expect(job.agree).toEqual(Array(n).fill(1)); // every rank ends with rank 0's adapter, bit for bit
        const start = await trainAdapter({
          rank: 0,
          worldSize: 1,
          microBatch: MICRO * n,
          accumulation: ACCUM,
          steps: 0,
        });
        expect(maxAbsDiff(single.values, start.values)).toBeGreaterThan(1e-3); // the adapters moved
        const diff = maxAbsDiff(job.values, single.values);
        const { stats } = job;
        console.log(
          `DDP -n ${n}: max |adapter - single process| = ${diff.toExponential(2)}; ${stats.allReduceCalls} bucket all-reduces (${stats.startedDuringBackward} started during backward), ${stats.allReduceBytes} bytes`,
        );
        expect(diff).toBeLessThan(1e-5);
        expect(maxAbsDiff(job.losses, single.losses)).toBeLessThan(1e-5);
        // several buckets per step (16 KiB cap), each all-reduced once per optimizer step (not per micro-batch)
        expect(stats.allReduceCalls % STEPS).toBe(0);
        expect(stats.allReduceCalls / STEPS).toBeGreaterThan(1);
        // buckets start inside backward (post-accumulate-grad hooks), not all at reduceGradients
        expect(stats.startedDuringBackward).toBeGreaterThan(0);
      },
    );

    it.skipIf(!mpirun.ok)(
      "sharded gradients + optimizer state: the same adapter as DDP and one process; each rank holds ~1/N of the optimizer state",
      async () => {
        const single = await trainAdapter({
          rank: 0,
          worldSize: 1,
          microBatch: MICRO * n,
          accumulation: ACCUM,
          steps: STEPS,
        });
        const { sharded } = job;
        expect(sharded.agree).toEqual(Array(n).fill(1));
        expect(maxAbsDiff(sharded.values, single.values)).toBeLessThan(1e-5);
        expect(maxAbsDiff(sharded.values, job.values)).toBeLessThan(1e-5);
        expect(maxAbsDiff(sharded.losses, single.losses)).toBeLessThan(1e-5);
        const perRank: number[] = sharded.optimizerStateBytesPerRank;
        // the ranks' states partition the one-process state exactly, and the largest share is close to 1/N
        expect(perRank.reduce((a, b) => a + b, 0)).toBe(single.optimizerStateBytes);
        expect(Math.max(...perRank)).toBeLessThanOrEqual((single.optimizerStateBytes / n) * 1.2);
        console.log(
          `sharded -n ${n}: optimizer state per rank ${perRank.join(", ")} bytes vs one process ${single.optimizerStateBytes}; max adapter diff vs one process ${maxAbsDiff(sharded.values, single.values).toExponential(2)}`,
        );
      },
    );
  });
}

describe(`failures end the job on every rank${noMpi}`, () => {
  it.skipIf(!mpirun.ok)(
    "-n 3: a rank killed mid-training ends every other rank with a message (no hang); resuming from the last checkpoint gives the uninterrupted adapter",
    async () => {
      const outputDir = join(work, "resume");
      const args = [join(work, "resumed.json"), String(MICRO), String(ACCUM), String(STEPS)];
      const r = await runRanks(3, "job.ts", args, {
        TEST_OUTPUT_DIR: outputDir,
        TEST_KILL_RANK: "1",
        TEST_KILL_AT_STEP: "2",
        QLORA_COLLECTIVE_TIMEOUT_MS: "10000",
      });
      expect(r.exitCode).not.toBe(0);
      expect(r.seconds).toBeLessThan(60);
      // mpirun names the dead rank and stops the others; a surviving rank says why it stops
      expect(r.stderr).toMatch(/process rank 1 .*signal 9/);
      expect(r.stderr).toMatch(/\[rank [02]\/3\] error: stopped by the launcher: another rank failed/);
      expect(existsSync(join(outputDir, "checkpoint-2", "trainer_state.json"))).toBe(true);
      expect(existsSync(join(outputDir, "checkpoint-3"))).toBe(false);

      const resumed = await runRanks(3, "job.ts", args, { TEST_OUTPUT_DIR: outputDir, TEST_RESUME: "1" });
      expect(resumed.exitCode, resumed.stderr).toBe(0);
      const job = JSON.parse(readFileSync(args[0], "utf8"));
      expect(job.losses.length).toBe(1); // only step 3 ran after the resume
      const single = await trainAdapter({
        rank: 0,
        worldSize: 1,
        microBatch: MICRO * 3,
        accumulation: ACCUM,
        steps: STEPS,
      });
      expect(maxAbsDiff(job.values, single.values)).toBeLessThan(1e-5);
    },
  );

  it.skipIf(!mpirun.ok)("-n 2: a silent rank makes its peer's collective time out and the job end", async () => {
    const r = await runRanks(2, "failure.ts", ["stall"], { TEST_TIMEOUT_MS: "2000" });
    expect(r.exitCode).not.toBe(0);
    expect(r.seconds).toBeLessThan(40);
    expect(r.stderr).toMatch(
      /\[rank 0\/2\] error: DistributedError TIMEOUT: allReduce on rank 0 of 2: peers did not arrive within 2000 ms/,
    );
  });
});
