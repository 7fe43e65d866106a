// Run under mpirun: ranks loop over all-reduces; with argv[2] = "stall", rank 1 stops calling collectives at its
// 4th (alive and silent), so its peers' next all-reduce must time out.
import { mpiWorld, runRank } from "../../src/index";

const mode = process.argv[2];
const comm = mpiWorld({ timeoutMs: Number(process.env.TEST_TIMEOUT_MS ?? 3000) });
await runRank(
  async () => {
    for (let step = 0; step < 1000; step++) {
      if (comm.rank === 1 && step === 3) {
        if (mode === "stall") await new Promise((r) => setTimeout(r, 120_000));
      }
      const x = new Float32Array(1000).fill(comm.rank);
      await comm.allReduce(x, "sum").done;
      await new Promise((r) => setTimeout(r, 20));
    }
  },
  { abort: (code) => comm.abort(code), rank: comm.rank, worldSize: comm.worldSize },
);
await comm.close();
