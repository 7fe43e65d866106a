// Run under mpirun: the collectives check, then DDP, sharded-optimizer and FSDP training of the tiny QLoRA setup,
// and an FSDP checkpoint run ($TEST_FSDP_CKPT_DIR, $TEST_FSDP_CKPT_MODE save|resume); rank 0 writes the results
// to argv[2] (one job per world size keeps the suite fast: rank start-up dominates).
import { writeFileSync } from "node:fs";
import {
  DdpStrategy,
  FsdpStrategy,
  ShardedOptimizerStrategy,
  fsdpCheckpointIO,
  mpiWorld,
  runRank,
} from "../../src/index";
import { trainAdapter } from "../qlora-run";
import { checkCollectives } from "./collectives";

const [out, micro, accum, steps] = [process.argv[2], ...process.argv.slice(3).map(Number)];
const comm = mpiWorld();
await runRank(
  async () => {
    // wall seconds of each part on rank 0 (to see where the suite's time goes)
    const phases: Record<string, number> = {};
    let mark = performance.now();
    const phase = (name: string) => {
      const now = performance.now();
      phases[name] = Math.round(now - mark) / 1000;
      mark = now;
    };
    const collectives = process.env.TEST_OUTPUT_DIR ? undefined : await checkCollectives(comm);
    phase("collectives");
    const strategy = new DdpStrategy({
      communicator: comm,
      bucketCapBytes: 16 * 1024,
      gradientAccumulationSteps: accum,
    });
    // Failure test: this rank dies (SIGKILL) at the start of the given step.
    const killAt = process.env.TEST_KILL_RANK === String(comm.rank) ? Number(process.env.TEST_KILL_AT_STEP) : -1;
    const t0 = performance.now();
    const r = await trainAdapter({
      rank: comm.rank,
      worldSize: comm.worldSize,
      microBatch: micro,
      accumulation: accum,
      steps,
      strategy,
      outputDir: process.env.TEST_OUTPUT_DIR,
      resume: process.env.TEST_RESUME === "1",
      onStep: (step) => {
        if (step === killAt) process.kill(process.pid, "SIGKILL");
      },
    });
    const seconds = (performance.now() - t0) / 1000;
    // every rank must end with the same adapter
    const mine = Float64Array.from(r.values);
    const root = mine.slice();
    await comm.broadcast(root, 0).done;
    const sameAsRank0 = mine.every((v, i) => v === root[i]);
    const agree = await comm.allGather(new Int32Array([sameAsRank0 ? 1 : 0])).done;
    // The sharded-optimizer strategy on the same data (not in the failure/resume runs: it cannot checkpoint yet).
    phase("ddp");
    let sharded: unknown;
    if (!process.env.TEST_OUTPUT_DIR) {
      const st = new ShardedOptimizerStrategy({ communicator: comm });
      const s = await trainAdapter({
        rank: comm.rank,
        worldSize: comm.worldSize,
        microBatch: micro,
        accumulation: accum,
        steps,
        strategy: st,
      });
      const bytes = await comm.allGather(Float64Array.of(s.optimizerStateBytes)).done;
      const same = Float64Array.from(s.values);
      const root = same.slice();
      await comm.broadcast(root, 0).done;
      const agreeS = await comm.allGather(Int32Array.of(same.every((v, i) => v === root[i]) ? 1 : 0)).done;
      sharded = {
        values: s.values,
        losses: s.losses,
        optimizerStateBytesPerRank: [...bytes],
        agree: [...agreeS],
        stats: st.stats,
      };
    }
    phase("sharded");
    const fsdp = process.env.TEST_OUTPUT_DIR ? undefined : await fsdpRuns();
    phase("fsdp");
    const ckptDir = process.env.TEST_FSDP_CKPT_DIR;
    const fsdpCheckpoint = ckptDir ? await fsdpCheckpointRun(ckptDir, process.env.TEST_FSDP_CKPT_MODE) : undefined;
    phase("fsdpCheckpoint");
    if (comm.rank === 0)
      writeFileSync(
        out,
        JSON.stringify({
          collectives,
          ...r,
          stats: strategy.stats,
          agree: [...agree],
          seconds,
          sharded,
          fsdp,
          fsdpCheckpoint,
          phases,
        }),
      );
  },
  { abort: (c) => comm.abort(c), rank: comm.rank, worldSize: comm.worldSize },
);
await comm.close();

/** FSDP on the DDP setup (adapter, counters), then on an 8-layer variant for the per-rank memory figures. */
async function fsdpRuns() {
  const run = async (layers: number, steps: number) => {
    const st = new FsdpStrategy({ communicator: comm });
    const r = await trainAdapter({
      rank: comm.rank,
      worldSize: comm.worldSize,
      microBatch: micro,
      accumulation: accum,
      steps,
      layers,
      strategy: st,
    });
    const m = st.memory();
    const g = st.gatherStats;
    // per rank: [unsharded base, shard, peak gathered, largest unit, optimizer state, forward gathers, recompute gathers]
    const row = [
      m.unshardedBaseBytes,
      m.shardBytes,
      m.peakGatheredBytes,
      m.largestUnitBytes,
      r.optimizerStateBytes,
      g.forwardGathers,
      g.recomputeGathers,
    ];
    const all = await comm.allGather(Float64Array.from(row)).done;
    const perRank = Array.from({ length: comm.worldSize }, (_, k) => Array.from(all.slice(k * 7, (k + 1) * 7)));
    const same = Float64Array.from(r.values);
    const root = same.slice();
    await comm.broadcast(root, 0).done;
    const agreeF = await comm.allGather(Int32Array.of(same.every((v, i) => v === root[i]) ? 1 : 0)).done;
    return { values: r.values, losses: r.losses, agree: [...agreeF], perRank, stats: { ...st.stats, ...g } };
  };
  return { tiny: await run(2, steps), deep: await run(8, 1) };
}

/**
 * FSDP with a checkpoint every step (fsdpCheckpointIO), or resumed from the latest one in `dir`. The global batch
 * is 6 rows at every world size (6/N per rank), so runs at different N train on the same batches.
 */
async function fsdpCheckpointRun(dir: string, mode: string | undefined) {
  const strategy = new FsdpStrategy({ communicator: comm });
  let afterLoad: number[] | undefined;
  let afterStep2: number[] | undefined;
  const r = await trainAdapter({
    rank: comm.rank,
    worldSize: comm.worldSize,
    microBatch: 6 / comm.worldSize,
    accumulation: accum,
    steps: 3,
    strategy,
    outputDir: dir,
    resume: mode === "resume",
    checkpointIO: (lora) => fsdpCheckpointIO({ strategy, lora, baseModelNameOrPath: "tiny-llama" }),
    onLoad: (v) => {
      afterLoad = v;
    },
    onStep: (step, adapter) => {
      if (step === 2) afterStep2 = adapter();
    },
  });
  return { values: r.values, losses: r.losses, afterLoad, afterStep2 };
}
