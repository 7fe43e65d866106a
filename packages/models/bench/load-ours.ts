/**
 * Load a generated bf16 checkpoint and quantize it to NF4+DQ (cpu backend), in a fresh process. Prints one JSON
 * line: seconds, GB/s of bf16 source, peak RSS growth during the load, the final in-memory model size
 * (allocator bytes), the largest source tensor, and whether peak ≤ final + largest + 256 MiB holds.
 *   node --import tsx --conditions=@qlora/source bench/load-ours.ts <dir>
 */
import { registerCpuBackend } from "@qlora/cpu-kernels";
import { openShardedSafetensors } from "@qlora/formats";
import { memoryStats } from "@qlora/tensor";
import { loadModel } from "../src";

const dir = process.argv[2];
if (!dir) throw new Error("usage: load-ours.ts <dir>");
const cpu = registerCpuBackend();
const st = await openShardedSafetensors(dir);
let bytes = 0;
let largest = 0;
for (const n of st.names) {
  bytes += st.info(n).byteLength;
  largest = Math.max(largest, st.info(n).byteLength);
}
await st.close();
const rss0 = process.resourceUsage().maxRSS * 1024;
const rssNow0 = process.memoryUsage().rss;
const alloc0 = memoryStats("cpu").currentBytes;
const t0 = performance.now();
const cpu0 = process.cpuUsage();
const threads = process.env.QLORA_QUANTIZE_THREADS;
const { model } = await loadModel(dir, threads ? { quantizeThreads: Number(threads) } : {});
const seconds = (performance.now() - t0) / 1000;
const cpuUsed = process.cpuUsage(cpu0);
// CPU time of all the process's threads (main, cpu-kernels pool, libuv reads): on a shared machine the wall
// time depends on the other jobs; this does much less
const cpuSeconds = (cpuUsed.user + cpuUsed.system) / 1e6;
const peakGrowth = process.resourceUsage().maxRSS * 1024 - rss0;
// resident growth that stays after the load: the allocator's tensors (Linear4bit's state tensors are its only
// copy of the 4-bit state) plus the runtime's own heap
const finalRssGrowth = process.memoryUsage().rss - rssNow0;
const finalBytes = memoryStats("cpu").currentBytes - alloc0;
const bound = finalBytes + largest + 256 * 2 ** 20;
console.log(
  JSON.stringify({
    who: "ours",
    backend: cpu ? "cpu" : "reference",
    seconds,
    cpu_seconds: cpuSeconds,
    source_bytes: bytes,
    gb_per_s: bytes / seconds / 1e9,
    peak_rss_growth_bytes: peakGrowth,
    final_model_bytes: finalBytes,
    final_rss_growth_bytes: finalRssGrowth,
    largest_tensor_bytes: largest,
    rss_bound_bytes: bound,
    rss_within_bound: peakGrowth <= bound,
  }),
);
model.dispose();
