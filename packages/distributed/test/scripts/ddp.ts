// Run under mpirun: DDP training of the tiny QLoRA setup; rank 0 writes the adapter and figures to argv[2].
import { writeFileSync } from "node:fs";
import { DdpStrategy, mpiWorld, runRank } from "../../src/index";
import { trainAdapter } from "../qlora-run";

const [out, micro, accum, steps] = [process.argv[2], ...process.argv.slice(3).map(Number)];
const comm = mpiWorld({ timeoutMs: 60_000 });
await runRank(
  async () => {
    const strategy = new DdpStrategy({
      communicator: comm,
      bucketCapBytes: 16 * 1024,
      gradientAccumulationSteps: accum,
    });
    const t0 = performance.now();
    const r = await trainAdapter({
      rank: comm.rank,
      worldSize: comm.worldSize,
      microBatch: micro,
      accumulation: accum,
      steps,
      strategy,
    });
    const seconds = (performance.now() - t0) / 1000;
    // every rank must end with the same adapter
    const mine = Float64Array.from(r.values);
    const root = mine.slice();
    await comm.broadcast(root, 0).done;
    const sameAsRank0 = mine.every((v, i) => v === root[i]);
    const agree = await comm.allGather(new Int32Array([sameAsRank0 ? 1 : 0])).done;
    if (comm.rank === 0)
      writeFileSync(out, JSON.stringify({ ...r, stats: strategy.stats, agree: [...agree], seconds }));
  },
  { abort: (c) => comm.abort(c), rank: comm.rank, worldSize: comm.worldSize },
);
await comm.close();
