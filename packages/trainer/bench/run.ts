/**
 * pnpm --filter @qlora/trainer bench: the QLoRA step benchmark against its PyTorch peer, run alternately (A B A B)
 * as separate processes (each reports its own peak RSS), medians and ratios printed.
 */
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../../../", import.meta.url));
const steps = process.env.QLORA_BENCH_STEPS ?? "3";
const rounds = Number(process.env.QLORA_BENCH_ROUNDS ?? 2);
const ours = () =>
  JSON.parse(
    execFileSync(
      process.execPath,
      [
        "--import",
        "tsx",
        "--conditions=@qlora/source",
        fileURLToPath(new URL("./qlora-step.ts", import.meta.url)),
        steps,
      ],
      { cwd: root, encoding: "utf8" },
    )
      .trim()
      .split("\n")
      .at(-1) as string,
  );
const peer = () =>
  JSON.parse(
    execFileSync("/usr/bin/python3", [fileURLToPath(new URL("./torch_step.py", import.meta.url)), steps], {
      encoding: "utf8",
    })
      .trim()
      .split("\n")
      .at(-1) as string,
  );
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const a: { tokens_per_s: number; peak_rss_mib: number }[] = [];
const b: { tokens_per_s: number; peak_rss_mib: number }[] = [];
for (let i = 0; i < rounds; i++) {
  const x = ours();
  console.log(JSON.stringify(x));
  a.push(x);
  const y = peer();
  console.log(JSON.stringify(y));
  b.push(y);
}
const tps = [median(a.map((r) => r.tokens_per_s)), median(b.map((r) => r.tokens_per_s))];
const rss = [median(a.map((r) => r.peak_rss_mib)), median(b.map((r) => r.peak_rss_mib))];
console.log(
  `tokens/s   qlora-ts ${tps[0]}  pytorch ${tps[1]}  ratio ${(tps[0] / tps[1]).toFixed(2)}x (target >= 1.2x)`,
);
console.log(
  `peak RSS   qlora-ts ${rss[0]} MiB  pytorch ${rss[1]} MiB  ratio ${(rss[0] / rss[1]).toFixed(2)}x (target <= 0.5x)`,
);
