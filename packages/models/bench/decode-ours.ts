/**
 * One run of our greedy decode (batch 1) on the cpu backend, NF4 + double quant (lm_head and embeddings bf16), in a
 * fresh process. Prints one JSON line. `lm_head-nf4` quantizes lm_head too (bitsandbytes' default skips it).
 *   node --import tsx --conditions=@qlora/source bench/decode-ours.ts <modelDir> <threads> [lm_head-nf4]
 */
import { registerCpuBackend, setThreads } from "@qlora/cpu-kernels";
import { generate } from "../src/generate";
import { loadModel } from "../src/load";
import { decodeRate, NEW_TOKENS, PROMPT } from "./decode-common";

const [dir, threadArg, variant] = process.argv.slice(2);
const quantizeHead = variant === "lm_head-nf4";
if (!dir) throw new Error("usage: decode-ours.ts <modelDir> <threads>");
const threads = Number(threadArg ?? 2);
if (!registerCpuBackend()) throw new Error("the cpu backend did not load; the figure would be the reference backend's");
setThreads(threads);
const t0 = performance.now();
const { model } = await loadModel(dir, quantizeHead ? { quantize: { skipModules: [] } } : {});
const loadSeconds = (performance.now() - t0) / 1000;
const stamps: number[] = [];
const start = performance.now();
const [r] = await generate(model, [PROMPT], {
  maxNewTokens: NEW_TOKENS,
  onToken: () => stamps.push(performance.now()),
});
console.log(
  JSON.stringify({
    who: quantizeHead ? "ours-nf4+lm_head-nf4" : "ours-nf4",
    threads,
    tokens: r.tokens.length,
    prefill_ms: stamps[0] - start,
    decode_tokens_per_s: decodeRate(stamps),
    load_s: loadSeconds,
  }),
);
