// Optimizer step over the parameter set of a Llama-3-8B r=16 all-linear LoRA adapter (q,k,v,o,gate,up,down
// A/B matrices × 32 layers = 41,943,040 parameters in 448 tensors) on the cpu backend, against torch on the
// same number of threads, measured in the same run, interleaved (ours, torch, ours, torch, ...):
//   AdamW 32-bit and 8-bit state vs torch.optim.AdamW (foreach=False and foreach=True);
//   Lion 32-bit and 8-bit state vs lion-pytorch's update written in torch (per tensor and torch._foreach_*);
//   with several threads each torch variant also runs with OMP_WAIT_POLICY=PASSIVE. The fastest variant is the peer.
// Prints medians of wall time and of process CPU time per step, ratios (fastest torch / ours: > 1 means we are
// faster) and the state bytes of 8-bit vs 32-bit. The wall-time ratio is the figure; the CPU-time ratio is a check
// on a shared machine, where wall time also counts waiting for a core (with 2 threads it includes spin-waits).
//   pnpm --filter @qlora/paged-optim bench
//   (THREADS=2 ROUNDS=3 STEPS=5 OPTIMIZERS=adamw,lion TORCH_WAIT_POLICIES=default,PASSIVE by default;
//   THREADS=2,1 measures both thread counts)
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { cpuBackend, cpuBackendInfo, setThreads } from "@qlora/cpu-kernels";
import { type Tensor, tensor } from "@qlora/tensor";
import { AdamW, kernelsFor, Lion } from "../src/index";

const THREAD_COUNTS = (process.env.THREADS ?? "2").split(",").map(Number);
const OPTIMIZERS = (process.env.OPTIMIZERS ?? "adamw,lion").split(",") as ("adamw" | "lion")[];
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const STEPS = Number(process.env.STEPS ?? 5);
// torch's OpenMP wait policies measured with several threads ("default,PASSIVE"; "PASSIVE" alone skips the
// spinning variant, which takes minutes per step on an oversubscribed machine)
const WAIT_POLICIES = (process.env.TORCH_WAIT_POLICIES ?? "default,PASSIVE").split(",");
const WARMUP = 2;
const PEER = fileURLToPath(new URL("./torch_optim.py", import.meta.url));

const HIDDEN = 4096;
const INTER = 14336;
const KV = 1024;
const R = 16;
const MODULES: Record<string, [number, number]> = {
  q_proj: [HIDDEN, HIDDEN],
  k_proj: [HIDDEN, KV],
  v_proj: [HIDDEN, KV],
  o_proj: [HIDDEN, HIDDEN],
  gate_proj: [HIDDEN, INTER],
  up_proj: [HIDDEN, INTER],
  down_proj: [INTER, HIDDEN],
};

function fill(n: number, scale: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return a;
}

function adapter(): [string, Tensor][] {
  const out: [string, Tensor][] = [];
  let seed = 1;
  for (let layer = 0; layer < 32; layer++)
    for (const [mod, [fin, fout]] of Object.entries(MODULES))
      for (const [ab, shape] of [
        ["A", [R, fin]],
        ["B", [fout, R]],
      ] as const) {
        const n = shape[0] * shape[1];
        const p = tensor(fill(n, 0.01, seed++), { shape: [...shape], backend: cpuBackend, requiresGrad: true });
        p.grad = tensor(fill(n, 1e-3, seed++), { shape: [...shape], backend: cpuBackend });
        const block = mod.endsWith("proj") && ["q", "k", "v", "o"].includes(mod[0]) ? "self_attn" : "mlp";
        out.push([`base_model.model.model.layers.${layer}.${block}.${mod}.lora_${ab}.default.weight`, p]);
      }
  return out;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

interface Timing {
  seconds: number[]; // wall time per step
  cpuSeconds: number[]; // CPU time of the whole process per step (all threads)
}

function ours(params: [string, Tensor][], name: "adamw" | "lion", bits: 8 | 32): Timing & { stateBytes: number } {
  const opt =
    name === "adamw"
      ? new AdamW(params, { lr: 1e-4, weightDecay: 0.01, bits })
      : new Lion(params, { lr: 1e-4, weightDecay: 0.01, bits });
  const seconds: number[] = [];
  const cpuSeconds: number[] = [];
  for (let i = 0; i < WARMUP + STEPS; i++) {
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    opt.step();
    const c = process.cpuUsage(c0);
    if (i >= WARMUP) {
      seconds.push((performance.now() - t0) / 1000);
      cpuSeconds.push((c.user + c.system) / 1e6);
    }
  }
  const stateBytes = opt.stateBytes();
  opt.dispose();
  return { seconds, cpuSeconds, stateBytes };
}

// A torch variant: foreach or not, and (with several threads) the OpenMP wait policy. libgomp's default
// spins at barriers, which collapses when the cores are shared (seconds per step); PASSIVE sleeps instead.
// Both are measured and the fastest variant is the peer, so torch is compared at its best.
interface PeerVariant {
  row: string;
  foreach: boolean;
  waitPolicy?: "PASSIVE";
}

function peerVariants(name: "adamw" | "lion", threads: number): PeerVariant[] {
  const base = name === "adamw" ? "torch.optim.AdamW" : "torch Lion (lion-pytorch)";
  const flavours: [string, boolean][] =
    name === "adamw"
      ? [
          ["foreach=False", false],
          ["foreach=True", true],
        ]
      : [
          ["per tensor", false],
          ["_foreach", true],
        ];
  const out: PeerVariant[] = [];
  for (const [label, foreach] of flavours) {
    if (threads === 1 || WAIT_POLICIES.includes("default")) out.push({ row: `${base} ${label}`, foreach });
    if (threads > 1 && WAIT_POLICIES.includes("PASSIVE"))
      out.push({ row: `${base} ${label}, OMP PASSIVE`, foreach, waitPolicy: "PASSIVE" });
  }
  return out;
}

function torchPeer(name: "adamw" | "lion", threads: number, v: PeerVariant): Timing {
  const args = [PEER, name, String(threads), v.foreach ? "1" : "0", String(WARMUP), String(STEPS)];
  const env: NodeJS.ProcessEnv = { ...process.env, OMP_NUM_THREADS: String(threads), MKL_NUM_THREADS: String(threads) };
  if (v.waitPolicy) env.OMP_WAIT_POLICY = v.waitPolicy;
  const r = spawnSync("/usr/bin/python3", args, { encoding: "utf8", env });
  if (r.status !== 0) throw new Error(`torch peer failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").at(-1)!);
}

const OUR_NAMES = {
  adamw: ["qlora AdamW, 32-bit state", "qlora AdamW, 8-bit state (bnb blockwise)"],
  lion: ["qlora Lion, 32-bit state", "qlora Lion, 8-bit state (bnb blockwise)"],
};

function report(
  name: "adamw" | "lion",
  peers: PeerVariant[],
  t: Record<string, Timing>,
  bytes32: number,
  bytes8: number,
): void {
  const wall = (row: string) => median(t[row].seconds);
  const cpu = (row: string) => median(t[row].cpuSeconds);
  const peerWall = Math.min(...peers.map((v) => wall(v.row)));
  const peerCpu = Math.min(...peers.map((v) => cpu(v.row)));
  console.log(`${"".padEnd(48)}  wall ms/step  vs torch   CPU ms/step  vs torch`);
  for (const row of [...peers.map((v) => v.row), ...OUR_NAMES[name]]) {
    const w = wall(row);
    const c = cpu(row);
    console.log(
      `${row.padEnd(48)} ${(w * 1000).toFixed(1).padStart(12)} ${`${(peerWall / w).toFixed(2)}×`.padStart(9)}` +
        ` ${(c * 1000).toFixed(1).padStart(13)} ${`${(peerCpu / c).toFixed(2)}×`.padStart(9)}`,
    );
  }
  console.log(
    `${name} state bytes: 32-bit ${(bytes32 / 2 ** 20).toFixed(1)} MiB, 8-bit ${(bytes8 / 2 ** 20).toFixed(1)} MiB, ratio ${(bytes8 / bytes32).toFixed(4)}`,
  );
}

if (!cpuBackendInfo(cpuBackend)?.native) throw new Error("the native cpu backend did not load: build it first");
const params = adapter();
const count = params.reduce((a, [, p]) => a + p.size, 0);
for (const threads of THREAD_COUNTS) {
  setThreads(threads);
  for (const name of OPTIMIZERS) {
    console.log(
      `\n${name} step, ${params.length} tensors, ${count} parameters; ${threads} thread(s) on both sides; kernels: ${kernelsFor(cpuBackend).source}; ` +
        `${ROUNDS} interleaved rounds × ${STEPS} steps (after ${WARMUP} warm-up steps)`,
    );
    const t: Record<string, Timing> = {};
    const add = (row: string, x: Timing) => {
      t[row] = {
        seconds: [...(t[row]?.seconds ?? []), ...x.seconds],
        cpuSeconds: [...(t[row]?.cpuSeconds ?? []), ...x.cpuSeconds],
      };
    };
    let bytes32 = 0;
    let bytes8 = 0;
    const peers = peerVariants(name, threads);
    for (let round = 0; round < ROUNDS; round++) {
      // ours and torch alternate: 32-bit, a torch variant, 8-bit, the next variant, ...
      for (let k = 0; k < Math.max(2, peers.length); k++) {
        if (k < 2) {
          const bits = k === 0 ? 32 : 8;
          const r = ours(params, name, bits);
          add(OUR_NAMES[name][k], r);
          if (bits === 32) bytes32 = r.stateBytes;
          else bytes8 = r.stateBytes;
        }
        if (k < peers.length) add(peers[k].row, torchPeer(name, threads, peers[k]));
      }
    }
    report(name, peers, t, bytes32, bytes8);
  }
}
