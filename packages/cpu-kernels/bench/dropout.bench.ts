// Dropout masks (LoRA's lora_dropout draws one per LoRA linear per step): the native Philox kernel against the same
// stream drawn in TypeScript on the host (the path a backend without the kernel takes), and torch's fastest mask
// (`empty(n).bernoulli_(1 − p).mul_(1/(1 − p))`, 2 threads) as the peer when /usr/bin/python3 has torch.
//   BENCH_ONLY=dropout pnpm --filter @qlora/cpu-kernels bench -- --reps 7
import { spawnSync } from "node:child_process";
import { Generator, createReferenceBackend, dropoutMask } from "@qlora/tensor";
import { cpuBackend, setThreads } from "../src/index";

const reps = Number(process.argv[process.argv.indexOf("--reps") + 1] ?? 5) || 5;
const n = 1 << 23;
const p = 0.1;
setThreads(2);
const { dropoutMask: _kernel, ...hostOnly } = createReferenceBackend({ name: "host" });
const rate = (f: () => void) => {
  const t = performance.now();
  f();
  return n / (performance.now() - t) / 1e3; // M elements per second
};
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const native: number[] = [];
const host: number[] = [];
for (let r = 0; r < reps; r++) {
  native.push(rate(() => dropoutMask([n], p, { generator: new Generator(r), backend: cpuBackend }).dispose()));
  host.push(rate(() => dropoutMask([n], p, { generator: new Generator(r), backend: hostOnly as never }).dispose()));
}
const torch = spawnSync(
  "/usr/bin/python3",
  [
    "-c",
    `import torch,time
torch.set_num_threads(2)
r=[]
for _ in range(${reps}):
  t=time.perf_counter(); torch.empty(${n}).bernoulli_(${1 - p}).mul_(${1 / (1 - p)}); r.append(${n}/(time.perf_counter()-t)/1e6)
print(sorted(r)[len(r)//2])`,
  ],
  { encoding: "utf8" },
);
const peer = torch.status === 0 ? Number(torch.stdout.trim()) : undefined;
console.log(`dropout mask, ${n} elements, p ${p}, 2 threads, median of ${reps}:`);
console.log(`  native kernel ${median(native).toFixed(0)} M/s; TypeScript on the host ${median(host).toFixed(0)} M/s`);
console.log(
  peer === undefined
    ? "  torch peer: not available (/usr/bin/python3 without torch)"
    : `  torch bernoulli_ + mul_ ${peer.toFixed(0)} M/s: native ÷ torch ${(median(native) / peer).toFixed(2)}×`,
);
