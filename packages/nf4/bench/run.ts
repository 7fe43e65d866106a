// Throughput benchmark (not a test). Run: pnpm bench (in packages/nf4) —
// `tsx bench/run.ts [--reps N] [--quick] [--wall] [--no-parallel]`.
// Figures are GB/s of the float32 side (n·4 bytes: read by quantize, written by dequantize-to-f32),
// compared with a memcpy of an n·4-byte buffer measured in the same run: into a reused buffer
// (Uint8Array.prototype.set) for the "(into)" ops, into a fresh one (slice) for the allocating ops,
// so that both sides pay the same first-touch page faults.
import { availableParallelism, cpus } from "node:os";
import { dequantize4bit, dequantize4bitInto, quantize4bit, quantize4bitInto, type QuantState4bit } from "../src/index";
import { Nf4WorkerPool } from "../src/node";

const args = process.argv.slice(2);
const reps = Number(args[args.indexOf("--reps") + 1]) || 5;
const quick = args.includes("--quick");
const shapes: [number, number][] = quick
  ? [[4096, 4096]]
  : [
      [4096, 4096],
      [14336, 4096],
    ];

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  return s[s.length >> 1];
}

/** Seconds of CPU time (user + system) of this process — robust on a shared, oversubscribed machine. */
function cpuTime(fn: () => unknown): number {
  const t = process.cpuUsage();
  fn();
  const d = process.cpuUsage(t);
  return (d.user + d.system) / 1e6;
}
/** Wall-clock seconds. */
function wallTime(fn: () => unknown): number {
  const t = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t) / 1e9;
}
const useWall = args.includes("--wall");
const time = useWall ? wallTime : cpuTime;

function seeded(n: number): Float32Array {
  // cheap seeded normal-ish data (sum of uniforms) — value distribution does not change the code path
  const x = new Float32Array(n);
  let s = 0x9e3779b9;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    const u = (s >>> 0) / 4294967296;
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    x[i] = (u + (s >>> 0) / 4294967296 - 1) * 0.05;
  }
  return x;
}

/** Allocating ops are compared with a memcpy that allocates its destination too. */
const peerOf = (op: string): "set" | "slice" => (op.includes("(alloc)") ? "slice" : "set");

interface Row {
  shape: string;
  op: string;
  gbs: number;
  memcpy: number;
  peer: "set" | "slice";
}
const rows: Row[] = [];

for (const [o, i] of shapes) {
  const n = o * i;
  const x = seeded(n);
  const bytes = n * 4;
  const src = new Uint8Array(bytes);
  src.fill(1);
  const dst = new Uint8Array(bytes);
  const memcpyT = { set: [] as number[], slice: [] as number[] };
  const peers = {
    set: () => dst.set(src),
    slice: () => src.slice(), // returned, so the copy is observable and cannot be dropped
  };
  const ops: [string, () => void][] = [];
  const run = (op: string, fn: () => void) => ops.push([op, fn]);
  const st: QuantState4bit = quantize4bit(x, { shape: [o, i] });
  const bufs = { packed: new Uint8Array(n / 2), absmax: new Float32Array(n / 64) };
  run("quantize nf4 (into)", () => {
    quantize4bitInto(x, bufs, { shape: [o, i] });
  });
  run("quantize nf4 (alloc)", () => {
    quantize4bit(x, { shape: [o, i] });
  });
  run("quantize nf4+dq (into)", () => {
    quantize4bitInto(x, bufs, { shape: [o, i], doubleQuant: true });
  });
  run("quantize fp4 (into)", () => {
    quantize4bitInto(x, bufs, { shape: [o, i], quantType: "fp4" });
  });
  const outF = new Float32Array(n);
  run("dequantize nf4 -> f32 (into)", () => {
    dequantize4bitInto(st, outF);
  });
  run("dequantize nf4 -> f32 (alloc)", () => {
    dequantize4bit(st, "float32");
  });
  const stDq = quantize4bit(x, { shape: [o, i], doubleQuant: true });
  run("dequantize nf4+dq -> f32 (into)", () => {
    dequantize4bitInto(stDq, outF);
  });
  const outH = new Uint16Array(n);
  run("dequantize nf4 -> bf16 (into)", () => {
    dequantize4bitInto(st, outH, { outDtype: "bfloat16" });
  });
  dst.set(src); // touch the destination pages once
  const warm = 2;
  const times = ops.map(() => [] as number[]);
  // Two phases: the "(into)" ops first, then the allocating ones. Freeing the allocating ops'
  // garbage (hundreds of MB per call at 14336x4096) runs on a helper thread and unmaps pages; when
  // it overlapped the next timed op, that op measured up to 8x slower. The machine is shared and has
  // two cores, so that op's median was the free's, not its own.
  for (const phase of ["set", "slice"] as const) {
    for (let r = 0; r < reps + warm; r++) {
      ops.forEach(([op, fn], k) => {
        if (peerOf(op) !== phase) return;
        const tm = time(peers[phase]);
        const t = time(fn);
        if (r >= warm) {
          memcpyT[phase].push(tm);
          times[k].push(t);
        }
      });
    }
  }
  ops.forEach(([op], k) => {
    const peer = peerOf(op);
    rows.push({
      shape: `${o}x${i}`,
      op,
      gbs: bytes / median(times[k]) / 1e9,
      memcpy: bytes / median(memcpyT[peer]) / 1e9,
      peer,
    });
  });
}

const target = (op: string) => (op.startsWith("quantize") ? 0.1 : op.includes("-> f32") ? 0.3 : NaN);
console.log(
  `@qlora/nf4 benchmark — ${new Date().toISOString()} — ${cpus()[0]?.model ?? "?"} — node ${process.version} — median of ${reps}, 1 thread`,
);
console.log(
  `GB/s of the f32 side (n·4 bytes) vs memcpy (Uint8Array.set) of an n·4-byte buffer, same run, interleaved; ${
    useWall ? "wall-clock" : "process CPU time (user+sys; pass --wall for wall-clock)"
  }; "(into)" ops run first, then the allocating ones\n`,
);
const head = ["shape", "op", "ours GB/s", "memcpy GB/s", "peer", "ratio", "target"];
const table = rows.map((r) => [
  r.shape,
  r.op,
  r.gbs.toFixed(2),
  r.memcpy.toFixed(2),
  r.peer === "set" ? "reused dst" : "fresh dst",
  (r.gbs / r.memcpy).toFixed(3),
  Number.isNaN(target(r.op)) ? "-" : `>= ${target(r.op)}`,
]);
const w = head.map((h, k) => Math.max(h.length, ...table.map((t) => t[k].length)));
const line = (c: string[]) => c.map((s, k) => (k < 2 ? s.padEnd(w[k]) : s.padStart(w[k]))).join("  ");
console.log(line(head));
console.log(w.map((k) => "-".repeat(k)).join("  "));
for (const t of table) console.log(line(t));

// Parallel quantize (@qlora/nf4/node): wall-clock, since process CPU time sums all threads.
if (!args.includes("--no-parallel")) {
  const threads = Math.max(2, availableParallelism());
  const n = 4096 * 4096;
  const x = seeded(n);
  // SharedArrayBuffer-backed input: the workers read it in place (no per-range copies)
  const xs = new Float32Array(new SharedArrayBuffer(n * 4));
  xs.set(x);
  const pool = new Nf4WorkerPool(threads);
  const serial: number[] = [];
  const par: number[] = [];
  for (let r = 0; r < reps + 1; r++) {
    const t0 = wallTime(() => quantize4bit(x));
    const t = process.hrtime.bigint();
    await pool.quantize(xs);
    const t1 = Number(process.hrtime.bigint() - t) / 1e9;
    if (r > 0) {
      serial.push(t0);
      par.push(t1);
    }
  }
  await pool.close();
  const ms = (v: number) => `${(v * 1e3).toFixed(0)} ms`;
  console.log(
    `\nparallel quantize nf4 4096x4096, wall-clock, median of ${reps}: 1 thread ${ms(median(serial))}, ` +
      `Nf4WorkerPool(${threads}) ${ms(median(par))} (speedup ${(median(serial) / median(par)).toFixed(2)}x; ` +
      `SharedArrayBuffer input; includes allocating and copying back the outputs)`,
  );
}
