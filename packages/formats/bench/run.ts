/**
 * Benchmark: sequential tensor-by-tensor read of a 2 GiB safetensors file vs `cat file > /dev/null`,
 * and streaming write (with fsync) vs `dd if=/dev/zero bs=1M count=2048 conv=fsync`.
 *
 *   cd packages/formats && pnpm bench            # BENCH_RUNS=5 BENCH_DIR=/some/disk to override
 *
 * Reads are measured warm: the file is read once by `cat` first so both sides read from the page
 * cache (this measures copy-out cost, not the disk). Three ways of reading: a fresh buffer per
 * tensor (`iterate()`), one reused tensor-sized buffer (`iterate({reuseBuffer: true})`), and
 * 8 MiB pieces through one buffer (`iterateChunks()`). Writes go to the disk under BENCH_DIR
 * (default: the OS temp dir), write zeros like dd, and both sides include fsync.
 * Prints medians of BENCH_RUNS runs; runs of ours and the peer are interleaved.
 */
import { spawnSync } from "node:child_process";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir, cpus, totalmem, release } from "node:os";
import { join } from "node:path";
import { SafetensorsWriter, openSafetensors } from "../src/index";

const MiB = 1 << 20;
const TENSOR = 64 * MiB;
const COUNT = 32; // 2 GiB
const RUNS = Number(process.env.BENCH_RUNS ?? 3);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const now = () => performance.now() / 1000;

function sh(cmd: string): number {
  const t = now();
  const r = spawnSync("sh", ["-c", cmd], { stdio: ["ignore", "ignore", "pipe"] });
  if (r.status !== 0) throw new Error(`${cmd} failed: ${r.stderr}`);
  return now() - t;
}

const decls = Array.from({ length: COUNT }, (_, i) => ({
  name: `model.layers.${i}.weight`,
  dtype: "BF16" as const,
  shape: [TENSOR / 2 / 4096, 4096],
}));
// zeros, the same bytes dd writes from /dev/zero (a virtual disk may treat zero blocks specially)
const chunk = new Uint8Array(8 * MiB);

async function ourWrite(path: string): Promise<number> {
  const t = now();
  const w = await SafetensorsWriter.create(path, decls, { format: "pt" }, { durable: true });
  for (const d of decls) for (let o = 0; o < TENSOR; o += chunk.byteLength) await w.writeChunk(d.name, chunk);
  await w.finish();
  return now() - t;
}

/** No I/O: allocate a fresh 64 MiB buffer per tensor and touch it, the floor for fresh-buffer reads. */
function touchOnly(): number {
  const t = now();
  for (let i = 0; i < COUNT; i++) Buffer.allocUnsafeSlow(TENSOR).fill(1);
  return now() - t;
}

async function ourReadChunks(path: string): Promise<number> {
  const t = now();
  const f = await openSafetensors(path);
  let n = 0;
  for await (const { data } of f.iterateChunks()) n += data.byteLength;
  await f.close();
  if (n !== COUNT * TENSOR) throw new Error("short read");
  return now() - t;
}

async function ourRead(path: string, reuseBuffer: boolean): Promise<number> {
  const t = now();
  const f = await openSafetensors(path);
  let n = 0;
  for await (const { data } of f.iterate({ reuseBuffer })) n += data.byteLength;
  await f.close();
  if (n !== COUNT * TENSOR) throw new Error("short read");
  return now() - t;
}

const dir = await mkdtemp(join(process.env.BENCH_DIR ?? tmpdir(), "qlora-formats-bench-"));
try {
  const file = join(dir, "bench.safetensors");
  const ddFile = join(dir, "dd.bin");
  const res = {
    ourW: [] as number[],
    ddW: [] as number[],
    dd8W: [] as number[],
    touch: [] as number[],
    ourR: [] as number[],
    ourRReuse: [] as number[],
    ourRChunks: [] as number[],
    cat: [] as number[],
  };
  for (let r = 0; r < RUNS; r++) {
    await rm(ddFile, { force: true });
    res.ddW.push(sh(`dd if=/dev/zero of=${ddFile} bs=1M count=${(COUNT * TENSOR) / MiB} conv=fsync 2>/dev/null`));
    await rm(ddFile, { force: true });
    res.dd8W.push(
      sh(`dd if=/dev/zero of=${ddFile} bs=8M count=${(COUNT * TENSOR) / (8 * MiB)} conv=fsync 2>/dev/null`),
    );
    await rm(ddFile, { force: true });
    await rm(file, { force: true });
    res.ourW.push(await ourWrite(file));
  }
  const size = (await stat(file)).size;
  sh(`cat ${file} > /dev/null`); // warm the page cache
  for (let r = 0; r < RUNS; r++) {
    res.cat.push(sh(`cat ${file} > /dev/null`));
    res.ourR.push(await ourRead(file, false));
    res.ourRReuse.push(await ourRead(file, true));
    res.ourRChunks.push(await ourReadChunks(file));
    res.touch.push(touchOnly());
  }
  const gb = (s: number) => size / s / 1e9;
  const ddGb = (s: number) => (COUNT * TENSOR) / s / 1e9;
  const rows: [string, number, string, number][] = [
    ["read, fresh buffer per tensor (warm)", gb(median(res.ourR)), "cat > /dev/null (warm)", gb(median(res.cat))],
    ["read, iterate({reuseBuffer}) (warm)", gb(median(res.ourRReuse)), "cat > /dev/null (warm)", gb(median(res.cat))],
    [
      "read, iterateChunks() 8 MiB pieces (warm)",
      gb(median(res.ourRChunks)),
      "cat > /dev/null (warm)",
      gb(median(res.cat)),
    ],
    ["write + fsync (SafetensorsWriter)", ddGb(median(res.ourW)), "dd bs=1M conv=fsync", ddGb(median(res.ddW))],
    ["write + fsync (SafetensorsWriter)", ddGb(median(res.ourW)), "dd bs=8M conv=fsync", ddGb(median(res.dd8W))],
  ];
  const cpu = cpus()[0]?.model ?? "?";
  console.log(
    `@qlora/formats bench — ${new Date().toISOString()} — ${cpus().length}× ${cpu}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM, Linux ${release()}, Node ${process.version}`,
  );
  console.log(
    `file: ${(size / 2 ** 30).toFixed(2)} GiB (${COUNT} × 64 MiB BF16 tensors) in ${dir}; medians of ${RUNS} runs\n`,
  );
  console.log("| ours | GB/s | peer | GB/s | ratio |");
  console.log("|---|---:|---|---:|---:|");
  for (const [a, x, b, y] of rows)
    console.log(`| ${a} | ${x.toFixed(2)} | ${b} | ${y.toFixed(2)} | ${(x / y).toFixed(2)}× |`);
  console.log(
    `\nfloor for fresh-buffer reads: allocating and touching 32 fresh 64 MiB buffers, no I/O: ${ddGb(median(res.touch)).toFixed(2)} GB/s`,
  );
  console.log(
    `\nraw seconds: ${JSON.stringify(Object.fromEntries(Object.entries(res).map(([k, v]) => [k, v.map((s) => +s.toFixed(3))])))}`,
  );
} finally {
  await rm(dir, { recursive: true, force: true });
}
