/**
 * Greedy decode tokens/s, batch 1, of a generated ~290M-parameter Llama: ours (NF4 + DQ on the cpu backend) vs
 * node-llama-cpp on our F32 and Q8_0 GGUF exports of the same checkpoint, at the same thread count (plus ours with
 * lm_head quantized too, to show what the bf16 lm_head costs). Each run is a
 * fresh process; runs are interleaved (ours, F32, Q8_0, ours, …) and medians compared, because the build machine
 * is shared and noisy. Decode rate = tokens after the first / time since the first (prefill excluded).
 * `--threads 2,1` runs the whole comparison once per thread count (llama.cpp's worker threads spin-wait at their
 * barriers, so on a shared machine with fewer free cores than threads its figures collapse; the second count
 * shows that). `--no-head-nf4` skips the lm_head-NF4 variant. The load average is printed before and after.
 *   pnpm --filter @qlora/models bench:decode          (= --runs 5 --threads 2)
 *   node --import tsx --conditions=@qlora/source bench/decode.ts [--runs 5] [--threads 2[,1]] [--no-head-nf4]
 */
import { execFileSync } from "node:child_process";
import { loadavg } from "node:os";
import { ensureDecodeModel, NEW_TOKENS, PROMPT_TOKENS } from "./decode-common";

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
};
const runs = arg("--runs", 5);
const threadCounts = (() => {
  const i = process.argv.indexOf("--threads");
  return (i >= 0 ? process.argv[i + 1] : "2").split(",").map(Number);
})();
const headNf4 = !process.argv.includes("--no-head-nf4");
const load = () =>
  loadavg()
    .map((x) => x.toFixed(1))
    .join(" ");
const here = new URL(".", import.meta.url).pathname;

const { dir, gguf } = await ensureDecodeModel();
const node = (script: string, ...args: string[]) =>
  JSON.parse(
    execFileSync(process.execPath, ["--import", "tsx", "--conditions=@qlora/source", `${here}${script}`, ...args], {
      encoding: "utf8",
      cwd: `${here}..`,
    })
      .trim()
      .split("\n")
      .at(-1)!,
  );

function compare(threads: number): void {
  console.log(`\nload average before: ${load()}`);
  const results: Record<string, number[]> = {
    "ours-nf4": [],
    "llama.cpp-F32": [],
    "llama.cpp-Q8_0": [],
    "ours-nf4+lm_head-nf4": [],
  };
  for (let r = 0; r < runs; r++) {
    for (const run of [
      () => node("decode-ours.ts", dir, String(threads)),
      () => node("decode-llamacpp.ts", gguf.F32, String(threads), "F32"),
      () => node("decode-llamacpp.ts", gguf.Q8_0, String(threads), "Q8_0"),
      ...(headNf4 ? [() => node("decode-ours.ts", dir, String(threads), "lm_head-nf4")] : []),
    ]) {
      const out = run();
      results[out.who].push(out.decode_tokens_per_s);
      console.error(JSON.stringify(out));
    }
  }
  const median = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    const h = Math.floor(s.length / 2);
    return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
  };
  console.log(
    `greedy decode, batch 1, prompt ${PROMPT_TOKENS} + ${NEW_TOKENS} new tokens, ${threads} threads, ${runs} interleaved runs`,
  );
  console.log("| engine | decode tokens/s (median) | runs |");
  console.log("|---|---:|---|");
  for (const [who, xs] of Object.entries(results))
    if (xs.length) console.log(`| ${who} | ${median(xs).toFixed(2)} | ${xs.map((x) => x.toFixed(2)).join(", ")} |`);
  // runs of one round ran back to back, so the per-round ratio cancels slow drifts of the machine's load
  console.log("\n| ratio | of medians | median of per-round ratios |");
  console.log("|---|---:|---:|");
  for (const ours of ["ours-nf4", "ours-nf4+lm_head-nf4"])
    for (const peer of ["llama.cpp-F32", "llama.cpp-Q8_0"]) {
      const a = results[ours];
      const b = results[peer];
      if (!a.length) continue;
      const perRound = median(a.map((x, i) => x / b[i]));
      console.log(`| ${ours} / ${peer} | ${(median(a) / median(b)).toFixed(2)}× | ${perRound.toFixed(2)}× |`);
    }
  console.log(`load average after: ${load()}`);
}

for (const threads of threadCounts) compare(threads);
