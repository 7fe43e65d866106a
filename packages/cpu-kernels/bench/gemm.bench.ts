// GEMM / 4-bit benchmarks against torch (OpenBLAS) measured in the same run at the same thread
// count (bench/peer_torch.py). Ratio = torch time / our time (> 1: we are faster).
//   args: --threads 2,1   --reps 7   --markdown   --items gemm_f32_512,...   --json FILE (one record per row)
//   Several whole runs with per-item medians: bench/gemm-runs.ts.
// Our runs and torch's alternate sample by sample, so both see the same machine load.
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { quantize4bit } from "@qlora/nf4";
import type { GemmNative, NativeQuantWeight } from "../src/gemm";
import { loadNative } from "../src/load";
import { getThreads, setThreads } from "../src/threads";
import { nativeQuant } from "../test/quant";
import { type DecodeFloor, measureDecodeFloor } from "./decode-floor";

const here = dirname(fileURLToPath(import.meta.url));

const arg = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : fallback;
};
const threadCounts = arg("threads", String(getThreads())).split(",").map(Number);
const reps = Number(arg("reps", "7"));
const markdown = process.argv.includes("--markdown");
const wanted = new Set(arg("items", "").split(",").filter(Boolean));
const jsonFile = arg("json", "");
const native = loadNative() as unknown as GemmNative;

interface Item {
  name: string;
  what: string;
  peer: string;
  target: number; // minimum ratio torch/ours
  setup(): () => void;
  /** Also compare our time with our own time on this item (same thread count), e.g. bf16 vs f32. */
  vsOurs?: string;
}

function random(length: number): Float32Array {
  const a = new Float32Array(length);
  for (let i = 0; i < length; i++) a[i] = Math.random() * 2 - 1;
  return a;
}

function gemm(m: number, k: number, n: number): () => void {
  const a = random(m * k),
    b = random(k * n),
    c = new Float32Array(m * n);
  return () => native.matmul(a, b, c, 1, m, k, n, false, false, m * k, k * n);
}

/** bf16 x bf16 -> f32 (the AVX512-BF16 k-pair kernel where the CPU has it: gemmBf16Kernel()). */
function gemmBf16(m: number, k: number, n: number): () => void {
  const bits = (x: Float32Array) => Uint16Array.from(new Uint32Array(x.buffer), (v) => v >>> 16);
  const a = bits(random(m * k)),
    b = bits(random(k * n)),
    c = new Float32Array(m * n);
  return () => native.matmul(a, b, c, 1, m, k, n, false, false, m * k, k * n);
}

const quantCache = new Map<string, NativeQuantWeight>();
function quantWeight(n: number, k: number): NativeQuantWeight {
  const key = `${n}x${k}`;
  let w = quantCache.get(key);
  if (!w) {
    w = nativeQuant(quantize4bit(random(n * k), { quantType: "nf4", blocksize: 64, doubleQuant: true, shape: [n, k] }));
    quantCache.set(key, w);
  }
  return w;
}

function nf4(m: number, k: number, n: number): () => void {
  const w = quantWeight(n, k),
    x = random(m * k),
    y = new Float32Array(m * n);
  return () => native.matmul4bit(x, m, y, w);
}

const items: Item[] = [
  {
    name: "gemm_f32_512",
    what: "f32 GEMM 512³",
    peer: "torch.mm f32",
    target: 0.9,
    setup: () => gemm(512, 512, 512),
    // ~2 ms a call: timed like the GEMVs (see `warmup` below), or the vCPU's ramp-up is what gets measured.
    short: true,
  },
  {
    name: "gemm_f32_2048",
    what: "f32 GEMM 2048³",
    peer: "torch.mm f32",
    target: 0.9,
    setup: () => gemm(2048, 2048, 2048),
  },
  {
    name: "gemm_f32_4096x1024x4096",
    what: "f32 GEMM (M,K,N)=(4096,1024,4096)",
    peer: "torch.mm f32",
    target: 0.9,
    setup: () => gemm(4096, 1024, 4096),
  },
  {
    name: "gemm_bf16_2048",
    what: "bf16×bf16→f32 GEMM 2048³",
    peer: "torch.mm bf16",
    target: 0.8,
    setup: () => gemmBf16(2048, 2048, 2048),
    vsOurs: "gemm_f32_2048",
  },
  {
    name: "gemm_nf4_2048x4096x4096",
    what: "NF4 GEMM (M,K,N)=(2048,4096,4096), DQ, bs64",
    peer: "torch.mm f32 dense (x·Wᵀ)",
    target: 1.0,
    setup: () => nf4(2048, 4096, 4096),
  },
  {
    name: "gemv_nf4_4096x4096",
    what: "NF4 GEMV 4096×4096 (m=1), DQ, bs64",
    peer: "torch.mv f32 dense",
    target: 2.5,
    setup: () => nf4(1, 4096, 4096),
  },
  {
    name: "gemv_nf4_14336x4096",
    what: "NF4 GEMV 14336×4096 (m=1), DQ, bs64",
    peer: "torch.mv f32 dense",
    target: 2.5,
    setup: () => nf4(1, 4096, 14336),
  },
].filter((it) => wanted.size === 0 || wanted.has(it.name));

function median(t: number[]): number {
  const s = [...t].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

/** torch in a child process answering "name calls" with elapsed ms (bench/peer_torch.py). */
async function startPeer(threads: number) {
  const child = spawn(
    "/usr/bin/python3",
    [join(here, "peer_torch.py"), "--threads", String(threads), "--items", items.map((i) => i.name).join(",")],
    {
      stdio: ["pipe", "pipe", "inherit"],
      // torch.set_num_threads does not reach Debian's OpenBLAS (its own pthread pool): pin it too.
      env: { ...process.env, OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads) },
    },
  );
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async () => {
    const r = await lines.next();
    if (r.done) throw new Error("peer_torch.py exited early");
    return r.value;
  };
  const banner = await next();
  return {
    banner,
    async time(name: string, calls: number, warmup: number): Promise<number> {
      child.stdin.write(`${name} ${calls} ${warmup}\n`);
      return Number(await next()) / calls;
    },
    stop: () => child.stdin.end(),
  };
}

/** Bytes a 4-bit GEMV streams: packed codes + 8-bit absmax + nested absmax and code table. */
function packedBytes(w: NativeQuantWeight): number {
  return (
    w.codes.byteLength + (w.qabsmax?.byteLength ?? 0) + (w.nestedAbsmax?.byteLength ?? 0) + (w.code?.byteLength ?? 0)
  );
}

/** [n, k] of a GEMV item's weight. */
function gemvShape(it: Item): [number, number] {
  return it.name === "gemv_nf4_4096x4096" ? [4096, 4096] : [14336, 4096];
}

/**
 * Our GEMV's read bandwidth over the packed weight vs a memcpy of the same number of bytes (one thread,
 * TypedArray.set = memmove, out of cache like the weight), measured now: the GEMV is meant to be memory bound.
 */
function gemvBandwidth(it: Item, threads: number, oursMs: number): string {
  const [n, k] = gemvShape(it);
  const bytes = packedBytes(quantWeight(n, k));
  const src = new Uint8Array(bytes).fill(1),
    dst = new Uint8Array(bytes);
  const times: number[] = [];
  for (let r = 0; r < reps; r++) {
    for (let c = 0; c < 20; c++) dst.set(src);
    const t0 = process.hrtime.bigint();
    for (let c = 0; c < 20; c++) dst.set(src);
    times.push(Number(process.hrtime.bigint() - t0) / 1e6 / 20);
  }
  const gbs = (ms: number) => (bytes / ms / 1e6).toFixed(1);
  return `${it.what} at ${threads} thread(s): ${(bytes / 2 ** 20).toFixed(1)} MiB packed, ours ${gbs(oursMs)} GB/s read vs memcpy ${gbs(median(times))} GB/s (1 thread, bytes copied per second)`;
}

let decodeFloor: DecodeFloor | string | undefined;
/**
 * On AVX2 the GEMV is bound by decoding the 4-bit weights, not by memory. Decoding n·k weights at
 * gemv_decode_floor.cc's rate (exact byte-plane decode, no FMAs, codes in L1) on every thread is the fastest a GEMV
 * built on that decode could run here, and torch's time in this run divided by that is the best ratio it could
 * reach. (The program also times the cheaper-looking alternatives: the lookups without rebuilding floats, which no
 * exact kernel can skip, and a gather from a table of weight pairs.)
 */
function gemvDecodeFloor(it: Item, threads: number, torchMs: number): string {
  const [n, k] = gemvShape(it);
  decodeFloor ??=
    native.gemvIsa() === "avx2"
      ? measureDecodeFloor()
      : `the GEMV here runs the ${native.gemvIsa()} kernel, not the AVX2 byte-plane decode`;
  const head = `${it.what} at ${threads} thread(s), decode floor`;
  if (typeof decodeFloor === "string") return `${head}: not measured (${decodeFloor})`;
  const { clock_ghz: ghz, shuffle_fma_per_cycle: mixed, ns_per_64_weights: ns } = decodeFloor;
  const floorMs = (((n * k) / 64) * ns.byte_planes) / threads / 1e6;
  const cycles = (t: number) => (t * ghz).toFixed(1);
  return (
    `${head}: the exact byte-plane decode alone takes ${cycles(ns.byte_planes)} cycles per 64 weights at ${ghz.toFixed(2)} GHz ` +
    `(its 8 vpshufb lookups alone ${cycles(ns.lookups_only)}, a vpgatherdq pair table ${cycles(ns.gather)}), ` +
    `so ≥ ${floorMs.toFixed(2)} ms on ${threads} thread(s) whatever the memory: torch/ours ≤ ${(torchMs / floorMs).toFixed(2)} in this run ` +
    `(the GEMV's FMAs come on top: independent vpshufb and vfmadd, alternating, retire ${mixed.toFixed(2)} per cycle)`
  );
}

const rows: string[][] = [];
/** The same rows as data, for --json (bench/gemm-runs.ts reads them). */
export interface GemmBenchRecord {
  item: string;
  what: string;
  threads: number;
  oursMs: number;
  torchMs: number;
  ratio: number;
  target: number;
}
const records: GemmBenchRecord[] = [];
const oursMedian = new Map<string, number>(); // `${name}@${threads}` -> ms
const notes: string[] = [];
let peerVersion = "";
for (const threads of threadCounts) {
  setThreads(threads);
  const peer = await startPeer(threads);
  peerVersion = peer.banner;
  for (const it of items) {
    const fn = it.setup();
    const short = it.name.startsWith("gemv") || ("short" in it && it.short === true);
    const calls = short ? 20 : 1; // one sample = `calls` back-to-back runs
    fn(); // warm-up: page faults, packing buffers, pool start
    const ours: number[] = [],
      theirs: number[] = [];
    // Every sample (ours and torch's) starts with `warmup` untimed calls: after an idle pause the
    // second vCPU of this VM needs tens of milliseconds of work to come back to full speed (measured:
    // a 4096² GEMV at 2 threads takes 0.74 ms after 300 ms idle + 10 calls, 0.45 ms after 100 calls),
    // which would otherwise be timed. Both sides get the same number of warm-up calls.
    const warmup = short ? 100 : 1;
    for (let r = 0; r < reps; r++) {
      for (let c = 0; c < warmup; c++) fn();
      const t0 = process.hrtime.bigint();
      for (let c = 0; c < calls; c++) fn();
      ours.push(Number(process.hrtime.bigint() - t0) / 1e6 / calls);
      // The same idle pause before torch's sample as before ours, so neither side starts on vCPUs the
      // other just warmed up (with torch straight after ours, only our samples followed an idle pause).
      await sleep(300);
      theirs.push(await peer.time(it.name, calls, warmup));
      // OpenBLAS worker threads busy-wait for a while after each call; let them go back to sleep
      // before our next sample so they do not steal our cores (ours block immediately).
      await sleep(300);
    }
    if (it.name.startsWith("gemv")) notes.push(gemvBandwidth(it, threads, median(ours)));
    const o = median(ours),
      t = median(theirs),
      ratio = t / o;
    oursMedian.set(`${it.name}@${threads}`, o);
    if (it.name.startsWith("gemv")) notes.push(gemvDecodeFloor(it, threads, t));
    const base = it.vsOurs && oursMedian.get(`${it.vsOurs}@${threads}`);
    if (base)
      notes.push(
        `${it.what} at ${threads} thread(s): ours ${o.toFixed(2)} ms vs our ${it.vsOurs} ${base.toFixed(2)} ms (${(base / o).toFixed(2)}× faster)`,
      );
    records.push({ item: it.name, what: it.what, threads, oursMs: o, torchMs: t, ratio, target: it.target });
    rows.push([
      it.what,
      String(threads),
      o.toFixed(2),
      `${t.toFixed(2)} (${it.peer})`,
      ratio.toFixed(2),
      `≥ ${it.target}`,
      ratio >= it.target ? "met" : "MISSED",
    ]);
  }
  peer.stop();
}

const header = ["item", "threads", "ours ms (median)", "torch ms (median)", "torch/ours", "target", ""];
if (markdown) {
  console.log(`| ${header.join(" | ")} |\n|${header.map(() => "---").join("|")}|`);
  for (const r of rows) console.log(`| ${r.join(" | ")} |`);
} else {
  const w = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(w[i]!)).join("  ");
  console.log(line(header));
  for (const r of rows) console.log(line(r));
}
for (const n of notes) console.log(n);
console.log(
  `(ours: GEMM tile ${native.gemmIsa()}, GEMV ${native.gemvIsa()}, bf16 ${native.gemmBf16Kernel()}; peer: torch ${peerVersion.split(" ")[1]}, fastest form: ${peerVersion.split(" ")[3] ?? "?"}; ${reps} interleaved samples per item, each after warm-up calls (GEMV and 512³: 100 warm-up and 20 timed calls per sample), medians; ratio = torch time / our time)`,
);
if (jsonFile) {
  const isa = { gemm: native.gemmIsa(), gemv: native.gemvIsa(), peer: peerVersion };
  writeFileSync(jsonFile, JSON.stringify({ isa, records }));
}
