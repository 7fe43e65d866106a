// Throughput benchmark (not a test). Run: pnpm bench (in packages/nf4) — `tsx bench/run.ts [--reps N] [--quick]`.
// Figures are GB/s of the float32 side (n·4 bytes: read by quantize, written by dequantize-to-f32),
// compared with a memcpy of an n·4-byte buffer (Uint8Array.prototype.set) measured in the same run.
import { cpus } from "node:os";
import { dequantize4bit, quantize4bit, type QuantState4bit } from "../src/index";

const args = process.argv.slice(2);
const reps = Number(args[args.indexOf("--reps") + 1]) || 5;
const quick = args.includes("--quick");
const shapes: [number, number][] = quick ? [[4096, 4096]] : [[4096, 4096], [14336, 4096]];

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  return s[s.length >> 1];
}

function time(fn: () => void): number {
  const t = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t) / 1e9;
}

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

interface Row {
  shape: string;
  op: string;
  gbs: number;
  memcpy: number;
}
const rows: Row[] = [];

for (const [o, i] of shapes) {
  const n = o * i;
  const x = seeded(n);
  const bytes = n * 4;
  const src = new Uint8Array(bytes);
  src.fill(1);
  const dst = new Uint8Array(bytes);
  const memcpyT: number[] = [];
  const run = (op: string, fn: () => void) => {
    fn(); // warm-up
    const ts: number[] = [];
    for (let r = 0; r < reps; r++) {
      memcpyT.push(time(() => dst.set(src)));
      ts.push(time(fn));
    }
    rows.push({ shape: `${o}x${i}`, op, gbs: bytes / median(ts) / 1e9, memcpy: 0 });
  };
  let st: QuantState4bit = quantize4bit(x, { shape: [o, i] });
  run("quantize nf4", () => {
    st = quantize4bit(x, { shape: [o, i] });
  });
  run("quantize nf4+dq", () => {
    quantize4bit(x, { shape: [o, i], doubleQuant: true });
  });
  run("quantize fp4", () => {
    quantize4bit(x, { shape: [o, i], quantType: "fp4" });
  });
  run("dequantize nf4 -> f32", () => {
    dequantize4bit(st, "float32");
  });
  const stDq = quantize4bit(x, { shape: [o, i], doubleQuant: true });
  run("dequantize nf4+dq -> f32", () => {
    dequantize4bit(stDq, "float32");
  });
  run("dequantize nf4 -> bf16", () => {
    dequantize4bit(st, "bfloat16");
  });
  const mc = bytes / median(memcpyT) / 1e9;
  for (const r of rows) if (r.shape === `${o}x${i}`) r.memcpy = mc;
}

const target = (op: string) => (op.startsWith("quantize") ? 0.1 : op.endsWith("f32") ? 0.3 : NaN);
console.log(`@qlora/nf4 benchmark — ${new Date().toISOString()} — ${cpus()[0]?.model ?? "?"} — node ${process.version} — median of ${reps}, 1 thread`);
console.log("GB/s of the f32 side (n·4 bytes) vs memcpy (Uint8Array.set) of an n·4-byte buffer, same run\n");
const head = ["shape", "op", "ours GB/s", "memcpy GB/s", "ratio", "target"];
const table = rows.map((r) => [
  r.shape,
  r.op,
  r.gbs.toFixed(2),
  r.memcpy.toFixed(2),
  (r.gbs / r.memcpy).toFixed(3),
  Number.isNaN(target(r.op)) ? "-" : `>= ${target(r.op)}`,
]);
const w = head.map((h, k) => Math.max(h.length, ...table.map((t) => t[k].length)));
const line = (c: string[]) => c.map((s, k) => (k < 2 ? s.padEnd(w[k]) : s.padStart(w[k]))).join("  ");
console.log(line(head));
console.log(w.map((k) => "-".repeat(k)).join("  "));
for (const t of table) console.log(line(t));
