// Run under mpirun: the collectives check, then DDP, sharded-optimizer and FSDP training of the tiny QLoRA setup,
// an FSDP checkpoint run ($TEST_FSDP_CKPT_DIR, $TEST_FSDP_CKPT_MODE save|resume) and the resume of a DDP run whose
// rank was killed ($TEST_DDP_RESUME_DIR); rank 0 writes the results to argv[2] (one job per world size keeps the
// suite fast: rank start-up dominates).
// With $TEST_OUTPUT_DIR (the failure test) only DDP runs, checkpointing every step into it, and rank
// $TEST_KILL_RANK kills itself (SIGKILL) at the start of step $TEST_KILL_AT_STEP.
import { writeFileSync } from "node:fs";
import {
  DdpStrategy,
  FsdpStrategy,
  ShardedOptimizerStrategy,
  fsdpCheckpointIO,
  mpiWorld,
  runRank,
} from "../../src/index";
import { type RunOptions, trainAdapter } from "../qlora-run";
import { checkCollectives } from "./collectives";

const [out, micro, accum, steps] = [process.argv[2], ...process.argv.slice(3).map(Number)];
const comm = mpiWorld();
const failureRun = process.env.TEST_OUTPUT_DIR !== undefined;
/** This rank's run of the tiny setup with the job's micro-batch, accumulation and steps unless overridden. */
const train = (o: Partial<RunOptions>) =>
  trainAdapter({
    rank: comm.rank,
    worldSize: comm.worldSize,
    microBatch: micro,
    accumulation: accum,
    steps,
    ...o,
  });

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
    const collectives = failureRun ? undefined : await checkCollectives(comm);
    phase("collectives");
    const ddp = newDdp();
    const killAt = process.env.TEST_KILL_RANK === String(comm.rank) ? Number(process.env.TEST_KILL_AT_STEP) : -1;
    const t0 = performance.now();
    const r = await train({
      strategy: ddp,
      outputDir: process.env.TEST_OUTPUT_DIR,
      onStep: (step) => {
        if (step === killAt) process.kill(process.pid, "SIGKILL");
      },
    });
    const seconds = (performance.now() - t0) / 1000;
    const agree = await agreeWithRank0(r.values);
    phase("ddp");
    // The sharded-optimizer strategy on the same data (not in the failure run: it cannot checkpoint yet).
    const sharded = failureRun ? undefined : await shardedRun();
    phase("sharded");
    const fsdp = failureRun ? undefined : await fsdpRuns();
    phase("fsdp");
    const ckptDir = process.env.TEST_FSDP_CKPT_DIR;
    const fsdpCheckpoint = ckptDir ? await fsdpCheckpointRun(ckptDir, process.env.TEST_FSDP_CKPT_MODE) : undefined;
    phase("fsdpCheckpoint");
    const resumeDir = process.env.TEST_DDP_RESUME_DIR;
    const ddpResume = resumeDir ? await train({ strategy: newDdp(), outputDir: resumeDir, resume: true }) : undefined;
    phase("ddpResume");
    if (comm.rank === 0)
      writeFileSync(
        out,
        JSON.stringify({
          collectives,
          ...r,
          stats: ddp.stats,
          agree,
          seconds,
          sharded,
          fsdp,
          fsdpCheckpoint,
          ddpResume: ddpResume && { values: ddpResume.values, losses: ddpResume.losses },
          phases,
        }),
      );
  },
  { abort: (c) => comm.abort(c), rank: comm.rank, worldSize: comm.worldSize },
);
await comm.close();

function newDdp(): DdpStrategy {
  return new DdpStrategy({ communicator: comm, bucketCapBytes: 16 * 1024, gradientAccumulationSteps: accum });
}

/** Per rank: 1 when this rank's adapter equals rank 0's bit for bit (rank 0's is broadcast), else 0. */
async function agreeWithRank0(values: number[]): Promise<number[]> {
  const mine = Float64Array.from(values);
  const root = mine.slice();
  await comm.broadcast(root, 0).done;
  const same = mine.every((v, i) => v === root[i]);
  return [...(await comm.allGather(Int32Array.of(same ? 1 : 0)).done)];
}

async function shardedRun() {
  const strategy = new ShardedOptimizerStrategy({ communicator: comm });
  const s = await train({ strategy });
  const bytes = await comm.allGather(Float64Array.of(s.optimizerStateBytes)).done;
  return {
    values: s.values,
    losses: s.losses,
    optimizerStateBytesPerRank: [...bytes],
    agree: await agreeWithRank0(s.values),
    stats: strategy.stats,
  };
}

/**
 * FSDP on the DDP setup (adapter, counters), then on an 8-layer variant for the per-rank memory figures (one
 * step of one micro-batch: the memory figures do not depend on the number of micro-batches).
 */
async function fsdpRuns() {
  const run = async (o: Partial<RunOptions>) => {
    const st = new FsdpStrategy({ communicator: comm });
    const r = await train({ ...o, strategy: st });
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
    const agree = await agreeWithRank0(r.values);
    return { values: r.values, losses: r.losses, agree, perRank, stats: { ...st.stats, ...g } };
  };
  return { tiny: await run({}), deep: await run({ layers: 8, steps: 1, accumulation: 1 }) };
}

/**
 * FSDP with a checkpoint every step (fsdpCheckpointIO), or resumed from the latest one in `dir`. The global batch
 * is 6 rows at every world size (6/N per rank), so runs at different N train on the same batches.
 */
async function fsdpCheckpointRun(dir: string, mode: string | undefined) {
  const strategy = new FsdpStrategy({ communicator: comm });
  let afterLoad: number[] | undefined;
  let afterStep2: number[] | undefined;
  const r = await train({
    microBatch: 6 / comm.worldSize,
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
