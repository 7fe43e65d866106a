// Benchmark driver: runs every bench/*.bench.ts here in its own process with the @qlora/source condition.
//   pnpm --filter @qlora/lora bench [-- --reps 7 --threads 2]
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
let failed = 0;
for (const file of readdirSync(here)
  .filter((f) => f.endsWith(".bench.ts"))
  .sort()) {
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
