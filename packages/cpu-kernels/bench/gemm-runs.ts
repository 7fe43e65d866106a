// Runs bench/gemm.bench.ts several times, each in a fresh process (on these VMs whole processes differ by more
// than the samples inside one), and prints every item's ratios and their median: the table BENCHMARKS.md asks for.
//   node --import tsx --conditions=@qlora/source bench/gemm-runs.ts --runs 5 [gemm.bench.ts args: --threads 2 --reps 7 ...]
//   (or: pnpm --filter @qlora/cpu-kernels bench:runs -- --runs 5 --threads 2 --reps 7)
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { GemmBenchRecord } from "./gemm.bench";

interface RunOutput {
  isa: { gemm: string; gemv: string; peer: string };
  records: GemmBenchRecord[];
}

const here = dirname(fileURLToPath(import.meta.url));
const argv = process.argv.slice(2);
const runsAt = argv.indexOf("--runs");
const runs = runsAt >= 0 ? Number(argv[runsAt + 1]) : 5;
if (!Number.isInteger(runs) || runs < 1)
  throw new Error(`--runs: expected a positive integer, got ${argv[runsAt + 1]}`);
const passThrough = runsAt >= 0 ? [...argv.slice(0, runsAt), ...argv.slice(runsAt + 2)] : argv;

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

function runOnce(run: number, dir: string): RunOutput {
  const file = join(dir, `run-${run}.json`);
  const started = new Date().toISOString().slice(11, 19);
  console.log(`run ${run + 1}/${runs} (${started} UTC)`);
  const r = spawnSync(
    process.execPath,
    ["--import", "tsx", "--conditions=@qlora/source", join(here, "gemm.bench.ts"), ...passThrough, "--json", file],
    { stdio: "inherit" },
  );
  if (r.status !== 0) throw new Error(`gemm.bench.ts run ${run + 1} failed (exit ${r.status ?? r.signal})`);
  return JSON.parse(readFileSync(file, "utf8")) as RunOutput;
}

const dir = mkdtempSync(join(tmpdir(), "qlora-gemm-runs-"));
try {
  const outputs = Array.from({ length: runs }, (_, run) => runOnce(run, dir));
  const isa = outputs[0]!.isa;
  console.log(`\n| item | threads | torch/ours per run | median | target |\n|---|---:|---|---:|---|`);
  for (const first of outputs[0]!.records) {
    const same = outputs.map((o) => o.records.find((r) => r.item === first.item && r.threads === first.threads)!);
    const ratios = same.map((r) => r.ratio);
    const m = median(ratios);
    const ours = same.map((r) => r.oursMs);
    const theirs = same.map((r) => r.torchMs);
    const range = (xs: number[]) => `${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)}`;
    console.log(
      `| ${first.what} | ${first.threads} | ${ratios.map((x) => x.toFixed(2)).join(" / ")} (ours ${range(ours)} ms, torch ${range(theirs)}) | ${m.toFixed(3)} | ≥ ${first.target} ${m >= first.target ? "met" : "**missed**"} |`,
    );
  }
  const torch = isa.peer.split(" ")[1] ?? "?"; // the peer's banner: "ready <version> <threads> <fastest forms>"
  console.log(`(GEMM tile ${isa.gemm}, GEMV ${isa.gemv}; peer torch ${torch}; ${runs} runs, median of per-run ratios)`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
