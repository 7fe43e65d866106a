// Benchmark driver: runs every bench/*.bench.ts in this folder, one child process each (so each
// file owns its setup and output), passing the command-line arguments through.
//   pnpm --filter @qlora/cpu-kernels bench [-- --threads 2,1 --reps 5 --markdown]
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const only = process.env.BENCH_ONLY; // e.g. BENCH_ONLY=gemm runs gemm.bench.ts only
const files = readdirSync(here)
  .filter((f) => f.endsWith(".bench.ts") && (!only || f.startsWith(only)))
  .sort();
let failed = 0;
for (const file of files) {
  console.log(`\n## ${file}`);
  const r = spawnSync(
    process.execPath,
    ["--import", "tsx", "--conditions=@qlora/source", join(here, file), ...process.argv.slice(2)],
    {
      stdio: "inherit",
    },
  );
  if (r.status !== 0) {
    console.error(`${file} failed (exit ${r.status ?? r.signal})`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
