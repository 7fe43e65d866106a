/**
 * The LoRA up-projection y += s·t·Bᵀ (t [m, r], B [n, r]) three ways on the cpu backend: matmulAccumulate
 * (Backend.matmul with out/alpha/beta), the allocating composition y.add(t.matmul(B.T).mul(s)), and PyTorch's
 * y.addmm_(t, B.T, alpha=s) in the same run (peer). Medians of interleaved repetitions.
 *
 *   cd packages/tensor && npx tsx --conditions=@qlora/source bench/accumulate.ts [--reps 15]
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import * as t from "../src/index";

const here = dirname(fileURLToPath(import.meta.url));
const i = process.argv.indexOf("--reps");
const REPS = i >= 0 ? Number(process.argv[i + 1]) : 15;
if (existsSync(join(here, "../../cpu-kernels/build/Release/qlora_cpu.node")))
  (await import(pathToFileURL(join(here, "../../cpu-kernels/src/index.ts")).href)).registerCpuBackend();
const be = t.getBackend();
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const shapes: [number, number, number][] = [
  [1024, 4096, 16],
  [1024, 1024, 64],
  [2048, 2816, 16],
];
const ours: Record<string, { acc: number; alloc: number }> = {};
for (const [m, n, r] of shapes) {
  const y = t.randn([m, n], { backend: be });
  const tt = t.randn([m, r], { backend: be });
  const B = t.randn([n, r], { backend: be });
  const acc: number[] = [];
  const alloc: number[] = [];
  for (let k = 0; k < REPS + 2; k++) {
    let t0 = performance.now();
    t.matmulAccumulate(y, tt, B.T, 0.5, 1);
    const a = performance.now() - t0;
    t0 = performance.now();
    const z = t.tidy(() => y.add(t.matmul(tt, B.T).mul(0.5)));
    const b = performance.now() - t0;
    z.dispose();
    if (k >= 2) {
      acc.push(a);
      alloc.push(b);
    }
  }
  ours[`${m}x${n} r=${r}`] = { acc: median(acc), alloc: median(alloc) };
}
const py = `
import json, time, torch
torch.manual_seed(0); torch.set_num_threads(${Number(process.env.QLORA_THREADS ?? 2)})
r={}
for m,n,k in ${JSON.stringify(shapes)}:
    y=torch.randn(m,n); t=torch.randn(m,k); B=torch.randn(n,k); ts=[]
    for i in range(${REPS}+2):
        t0=time.perf_counter(); y.addmm_(t,B.T,alpha=0.5); d=(time.perf_counter()-t0)*1e3
        if i>=2: ts.append(d)
    r[f"{m}x{n} r={k}"]=sorted(ts)[len(ts)//2]
print(json.dumps(r))
`;
const res = spawnSync("/usr/bin/python3", ["-c", py], { encoding: "utf8" });
const peer: Record<string, number> = res.status === 0 ? JSON.parse(res.stdout.trim().split("\n").pop()!) : {};
if (res.status !== 0) console.error(`PyTorch peer unavailable: ${res.stderr?.slice(0, 300)}`);
console.log(`y += 0.5·t·Bᵀ on backend ${be.name}; medians of ${REPS}; PyTorch ${res.status === 0 ? "addmm_" : "n/a"}`);
console.log("| m×n, rank | matmulAccumulate (ms) | y.add(t@Bᵀ·s) (ms) | PyTorch addmm_ (ms) | ours/PyTorch |");
console.log("|---|---:|---:|---:|---:|");
for (const [k, v] of Object.entries(ours))
  console.log(
    `| ${k} | ${v.acc.toFixed(2)} | ${v.alloc.toFixed(2)} | ${peer[k]?.toFixed(2) ?? "n/a"} | ${peer[k] ? (v.acc / peer[k]).toFixed(2) : "n/a"} |`,
  );
