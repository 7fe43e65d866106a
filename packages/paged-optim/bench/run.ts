// AdamW step over the parameter set of a Llama-3-8B r=16 all-linear LoRA adapter (q,k,v,o,gate,up,down
// A/B matrices × 32 layers = 41,943,040 parameters), 32-bit and 8-bit state, on the cpu backend, against
// torch.optim.AdamW (foreach=False and foreach=True; the faster one is the peer) on the same number of
// threads, measured in the same run, interleaved (ours, torch, ours, torch, ...). Prints medians and ratios
// and the state bytes of 8-bit vs 32-bit.
//   pnpm --filter @qlora/paged-optim bench     (THREADS=2 ROUNDS=3 STEPS=5 by default; THREADS=2,1 for both)
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { cpuBackend, cpuBackendInfo, setThreads } from "@qlora/cpu-kernels";
import { type Tensor, tensor } from "@qlora/tensor";
import { AdamW, kernelsFor } from "../src/index";

const THREAD_COUNTS = (process.env.THREADS ?? "2").split(",").map(Number);
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const STEPS = Number(process.env.STEPS ?? 5);
const WARMUP = 2;
const PEER = fileURLToPath(new URL("./torch_adamw.py", import.meta.url));

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

function ours(params: [string, Tensor][], bits: 8 | 32): { seconds: number[]; stateBytes: number } {
  const opt = new AdamW(params, { lr: 1e-4, weightDecay: 0.01, bits });
  const seconds: number[] = [];
  for (let i = 0; i < WARMUP + STEPS; i++) {
    const t0 = performance.now();
    opt.step();
    if (i >= WARMUP) seconds.push((performance.now() - t0) / 1000);
  }
  const stateBytes = opt.stateBytes();
  opt.dispose();
  return { seconds, stateBytes };
}

function torchPeer(THREADS: number, foreach: boolean): number[] {
  const r = spawnSync("/usr/bin/python3", [PEER, String(THREADS), foreach ? "1" : "0", String(WARMUP), String(STEPS)], {
    encoding: "utf8",
    env: { ...process.env, OMP_NUM_THREADS: String(THREADS), MKL_NUM_THREADS: String(THREADS) },
  });
  if (r.status !== 0) throw new Error(`torch peer failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").at(-1)!).seconds;
}

if (!cpuBackendInfo(cpuBackend)?.native) throw new Error("the native cpu backend did not load: build it first");
const params = adapter();
const count = params.reduce((a, [, p]) => a + p.size, 0);
for (const THREADS of THREAD_COUNTS) {
  setThreads(THREADS);
  console.log(
    `\nAdamW step, ${params.length} tensors, ${count} parameters; ${THREADS} thread(s) on both sides; kernels: ${kernelsFor(cpuBackend).source}; ` +
      `${ROUNDS} interleaved rounds × ${STEPS} steps (after ${WARMUP} warm-up steps)`,
  );
  const t32: number[] = [];
  const t8: number[] = [];
  const tf: number[] = [];
  const tt: number[] = [];
  let bytes32 = 0;
  let bytes8 = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const a = ours(params, 32);
    t32.push(...a.seconds);
    bytes32 = a.stateBytes;
    tf.push(...torchPeer(THREADS, false));
    const b = ours(params, 8);
    t8.push(...b.seconds);
    bytes8 = b.stateBytes;
    tt.push(...torchPeer(THREADS, true));
  }
  const peer = Math.min(median(tf), median(tt));
  const rows: [string, number][] = [
    ["torch.optim.AdamW foreach=False", median(tf)],
    ["torch.optim.AdamW foreach=True", median(tt)],
    ["qlora AdamW, 32-bit state", median(t32)],
    ["qlora AdamW, 8-bit state (bnb blockwise)", median(t8)],
  ];
  for (const [name, s] of rows)
    console.log(
      `${name.padEnd(44)} ${(s * 1000).toFixed(1).padStart(8)} ms/step   speed vs fastest torch: ${(peer / s).toFixed(2)}×`,
    );
  console.log(
    `state bytes: 32-bit ${(bytes32 / 2 ** 20).toFixed(1)} MiB, 8-bit ${(bytes8 / 2 ** 20).toFixed(1)} MiB, ratio ${(bytes8 / bytes32).toFixed(4)}`,
  );
}
