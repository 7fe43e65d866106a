/**
 * One run of node-llama-cpp's greedy decode (batch 1, CPU prebuilt) of a GGUF file, in a fresh process. Prints
 * one JSON line.
 *   node --import tsx --conditions=@qlora/source bench/decode-llamacpp.ts <file.gguf> <threads> <label>
 */
import { getLlama } from "node-llama-cpp";
import { decodeRate, NEW_TOKENS, PROMPT } from "./decode-common";

const [path, threadArg, label] = process.argv.slice(2);
if (!path) throw new Error("usage: decode-llamacpp.ts <file.gguf> <threads> <label>");
const threads = Number(threadArg ?? 2);
const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" as never });
const t0 = performance.now();
const model = await llama.loadModel({ modelPath: path });
const context = await model.createContext({ contextSize: 256, threads, batchSize: 256 });
const loadSeconds = (performance.now() - t0) / 1000;
const seq = context.getSequence();
const stamps: number[] = [];
const start = performance.now();
for await (const _ of seq.evaluate(PROMPT as never[], { temperature: 0 })) {
  stamps.push(performance.now());
  if (stamps.length === NEW_TOKENS) break;
}
console.log(
  JSON.stringify({
    who: `llama.cpp-${label}`,
    threads,
    tokens: stamps.length,
    prefill_ms: stamps[0] - start,
    decode_tokens_per_s: decodeRate(stamps),
    load_s: loadSeconds,
  }),
);
await context.dispose();
await model.dispose();
await llama.dispose();
