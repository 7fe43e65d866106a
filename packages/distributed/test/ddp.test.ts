import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
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

describe(`DDP over MPI: N ranks × micro-batch b = one process × batch N·b${noMpi}`, () => {
  for (const n of [2, 3])
    it.skipIf(!mpirun.ok)(`-n ${n}: same adapter as one process (f32 tolerance), same on every rank`, async () => {
      const out = join(work, `ddp-${n}.json`);
      const r = await runRanks(n, "ddp.ts", [out, String(MICRO), String(ACCUM), String(STEPS)]);
      expect(r.exitCode, r.stderr).toBe(0);
      const ddp = JSON.parse(readFileSync(out, "utf8"));
      const single = await trainAdapter({
        rank: 0,
        worldSize: 1,
        microBatch: MICRO * n,
        accumulation: ACCUM,
        steps: STEPS,
      });
      expect(ddp.names).toEqual(single.names);
      expect(ddp.agree).toEqual(Array(n).fill(1));
      // the adapters moved (lr 1e-2 over 3 steps), and DDP lands where one process does
      const start = await trainAdapter({ rank: 0, worldSize: 1, microBatch: MICRO * n, accumulation: ACCUM, steps: 0 });
      expect(maxAbsDiff(single.values, start.values)).toBeGreaterThan(1e-3);
      const diff = maxAbsDiff(ddp.values, single.values);
      console.log(
        `DDP -n ${n}: max |adapter - single process| = ${diff.toExponential(2)}; ${ddp.stats.allReduceCalls} bucket all-reduces (${ddp.stats.startedDuringBackward} started during backward), ${ddp.stats.allReduceBytes} bytes`,
      );
      expect(diff).toBeLessThan(1e-5);
      expect(maxAbsDiff(ddp.losses, single.losses)).toBeLessThan(1e-5);
      // several buckets per step (16 KiB cap), each all-reduced once per optimizer step (not per micro-batch)
      expect(ddp.stats.allReduceCalls % STEPS).toBe(0);
      expect(ddp.stats.allReduceCalls / STEPS).toBeGreaterThan(1);
      // buckets start inside backward (post-accumulate-grad hooks), not all at reduceGradients
      expect(ddp.stats.startedDuringBackward).toBeGreaterThan(0);
    });
});
