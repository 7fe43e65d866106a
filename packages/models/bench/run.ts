/**
 * @qlora/models benchmarks (not tests). Each measurement runs in a fresh child process; ours and the peer
 * alternate (A B A B) and medians are printed with ratios.
 *   pnpm --filter @qlora/models bench            (BENCH_ROUNDS=2, BENCH_ONLY=layer|load)
 * 1. One decoder layer (hidden 2048, 16/4 heads, ffn 5632, batch 2 × seq 512) forward + backward: NF4+DQ
 *    frozen weights on the `cpu` backend vs dense f32 frozen weights in PyTorch (OMP_NUM_THREADS=2).
 * 2. Load + quantize to NF4+DQ of a generated ~1B-parameter bf16 checkpoint (2 shards) vs `cat` of the same
 *    files (page cache, the read floor); peak RSS during the 1B load and during the load of a ~300M model
 *    against final size + largest tensor + 256 MiB.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ONE_B, THREE_HUNDRED_M, writeBenchCheckpoint } from "./checkpoint";

const here = dirname(fileURLToPath(import.meta.url));
const rounds = Number(process.env.BENCH_ROUNDS ?? 2);
const only = process.env.BENCH_ONLY;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const env = { ...process.env, OMP_NUM_THREADS: "2", OPENBLAS_NUM_THREADS: "2" };

function runJson(cmd: string, args: string[]): Record<string, number | string | boolean> {
  const r = spawnSync(cmd, args, { env, encoding: "utf8", maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed:\n${r.stderr}`);
  const line = r.stdout.trim().split("\n").pop()!;
  return JSON.parse(line);
}
const ts = (file: string, ...args: string[]) =>
  runJson(process.execPath, ["--import", "tsx", "--conditions=@qlora/source", join(here, file), ...args]);

function layer() {
  const ours: Record<string, number>[] = [];
  const torch: Record<string, number>[] = [];
  for (let r = 0; r < rounds; r++) {
    ours.push(ts("layer-ours.ts", "3") as Record<string, number>);
    torch.push(runJson("/usr/bin/python3", [join(here, "layer_torch.py"), "3"]) as Record<string, number>);
  }
  const o = median(ours.map((x) => x.tokens_per_s));
  const t = median(torch.map((x) => x.tokens_per_s));
  const om = median(ours.map((x) => x.peak_rss_growth_bytes));
  const tm = median(torch.map((x) => x.peak_rss_growth_bytes));
  console.log("\n## decoder layer fwd+bwd (hidden 2048, 16/4 heads, ffn 5632, 2 × 512 tokens)");
  console.log("| | ours (NF4+DQ, cpu) | PyTorch (dense f32) | ratio |\n|---|---:|---:|---:|");
  console.log(
    `| tokens/s (median of ${rounds} runs × 3 iters) | ${o.toFixed(1)} | ${t.toFixed(1)} | ${(o / t).toFixed(2)}× |`,
  );
  console.log(
    `| peak RSS growth (MiB) | ${(om / 2 ** 20).toFixed(0)} | ${(tm / 2 ** 20).toFixed(0)} | ${(om / tm).toFixed(2)}× |`,
  );
  console.log(`runs: ours ${JSON.stringify(ours)}\n      torch ${JSON.stringify(torch)}`);
}

async function load() {
  const big = join(tmpdir(), "qlora-models-bench-1b");
  if (!existsSync(join(big, "config.json"))) await writeBenchCheckpoint(big, ONE_B, 2);
  const files = readdirSync(big)
    .filter((f) => f.endsWith(".safetensors"))
    .map((f) => join(big, f));
  const ours: Record<string, number>[] = [];
  const cat: number[] = [];
  for (let r = 0; r < rounds; r++) {
    ours.push(ts("load-ours.ts", big) as Record<string, number>);
    const t0 = performance.now();
    execFileSync("sh", ["-c", `cat ${files.join(" ")} > /dev/null`]);
    cat.push((ours[0].source_bytes as number) / ((performance.now() - t0) / 1000) / 1e9);
  }
  const s = median(ours.map((x) => x.seconds));
  const g = median(ours.map((x) => x.gb_per_s));
  const c = median(cat);
  const mib = (x: number | boolean) => ((x as number) / 2 ** 20).toFixed(0);
  const peak = median(ours.map((x) => x.peak_rss_growth_bytes));
  const bound1b = ours[0].rss_bound_bytes;
  console.log(`\n## load ~1B bf16 checkpoint (2 shards, ${(ours[0].source_bytes / 1e9).toFixed(2)} GB) → NF4+DQ`);
  console.log("| | ours: load + quantize | `cat` (page cache) | ratio |\n|---|---:|---:|---:|");
  console.log(
    `| GB/s of bf16 source (median of ${rounds}) | ${g.toFixed(3)} | ${c.toFixed(2)} | ${(g / c).toFixed(3)}× |`,
  );
  console.log(`| seconds | ${s.toFixed(2)} | | |`);
  console.log(`| CPU seconds (all threads) | ${median(ours.map((x) => x.cpu_seconds)).toFixed(2)} | | |`);
  console.log(
    `peak RSS growth ${mib(peak)} MiB (median) ≤ final ${mib(ours[0].final_model_bytes)} + largest tensor ${mib(ours[0].largest_tensor_bytes)} + 256 = ${mib(bound1b)} MiB: ${peak <= bound1b} (every run: ${ours.map((x) => x.rss_within_bound).join(", ")})`,
  );
  console.log(`runs: ${JSON.stringify(ours)}`);

  const mid = join(tmpdir(), "qlora-models-bench-300m");
  if (!existsSync(join(mid, "config.json"))) await writeBenchCheckpoint(mid, THREE_HUNDRED_M, 2);
  const m = ts("load-ours.ts", mid) as Record<string, number | boolean>;
  console.log("\n## peak RSS while loading a ~300M bf16 checkpoint → NF4+DQ");
  console.log(
    `peak RSS growth ${mib(m.peak_rss_growth_bytes)} MiB ≤ final ${mib(m.final_model_bytes)} + largest tensor ${mib(m.largest_tensor_bytes)} + 256 = ${mib(m.rss_bound_bytes)} MiB: ${m.rss_within_bound}`,
  );
}

if (!only || only === "layer") layer();
if (!only || only === "load") await load();
