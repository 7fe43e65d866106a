// Run under mpirun: ranks loop over all-reduces; argv[2] picks how rank 1 fails.
//   kill: rank 1 SIGKILLs itself mid-job;  stall: rank 1 stops calling collectives (alive, silent).
import { mpiWorld, runRank } from "../../src/index";

const mode = process.argv[2];
const comm = mpiWorld({ timeoutMs: Number(process.env.TEST_TIMEOUT_MS ?? 3000) });
await runRank(
  async () => {
    for (let step = 0; step < 1000; step++) {
      if (comm.rank === 1 && step === 3) {
        if (mode === "kill") process.kill(process.pid, "SIGKILL");
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
