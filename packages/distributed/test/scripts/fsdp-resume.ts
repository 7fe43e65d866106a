// Run under mpirun: FSDP training of the tiny QLoRA setup with a checkpoint every step (fsdpCheckpointIO: one PEFT
// adapter + one optimizer shard per rank), or resumed from the latest checkpoint in the output directory.
// argv: out.json outputDir microBatch accumulation steps save|resume. Rank 0 writes the result to out.json.
import { writeFileSync } from "node:fs";
import { FsdpStrategy, fsdpCheckpointIO, mpiWorld, runRank } from "../../src/index";
import { trainAdapter } from "../qlora-run";

const [out, outputDir, micro, accum, steps, mode] = [
  process.argv[2],
  process.argv[3],
  ...process.argv.slice(4, 7).map(Number),
  process.argv[7],
] as [string, string, number, number, number, string];
const comm = mpiWorld();
await runRank(
  async () => {
    const strategy = new FsdpStrategy({ communicator: comm });
    let afterLoad: number[] | undefined;
    let afterStep2: number[] | undefined;
    const r = await trainAdapter({
      rank: comm.rank,
      worldSize: comm.worldSize,
      microBatch: micro,
      accumulation: accum,
      steps,
      strategy,
      outputDir,
      resume: mode === "resume",
      checkpointIO: (lora) => fsdpCheckpointIO({ strategy, lora, baseModelNameOrPath: "tiny-llama" }),
      onLoad: (v) => {
        afterLoad = v;
      },
      onStep: (step, adapter) => {
        if (step === 2) afterStep2 = adapter();
      },
    });
    if (comm.rank === 0) writeFileSync(out, JSON.stringify({ ...r, afterLoad, afterStep2 }));
  },
  { abort: (c) => comm.abort(c), rank: comm.rank, worldSize: comm.worldSize },
);
await comm.close();
