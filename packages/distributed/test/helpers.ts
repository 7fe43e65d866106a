import { join } from "node:path";
import { findMpirun, launch, mpiAvailability } from "../src/index";

export const ROOT = join(import.meta.dirname, "../../..");
const launcher = findMpirun();
// The binding and libmpi.so.40 must load too (dlopen only here; MPI_Init happens in the ranks).
const library = launcher.ok ? mpiAvailability() : launcher;
export const mpirun = { ok: launcher.ok && library.ok, reason: launcher.reason ?? library.reason };
/** Skip reason for tests that need mpirun. */
export const noMpi = mpirun.ok ? "" : ` (skipped: ${mpirun.reason})`;

/** Run a test script (TypeScript, from sources) on n ranks; returns mpirun's result and wall time. */
export async function runRanks(n: number, script: string, args: string[] = [], env: Record<string, string> = {}) {
  const t0 = performance.now();
  const r = await launch({
    nproc: n,
    argv: ["--import", "tsx", "--conditions=@qlora/source", join(import.meta.dirname, "scripts", script), ...args],
    // Containers often forbid the cross-memory-attach copy Open MPI's shared-memory transport tries first.
    env: { OMPI_MCA_btl_vader_single_copy_mechanism: "none", ...env },
    stdio: "pipe",
  });
  return { ...r, seconds: (performance.now() - t0) / 1000 };
}
