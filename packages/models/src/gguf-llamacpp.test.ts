/**
 * node-llama-cpp parity: llama.cpp's own loader reads our GGUF export of each tiny architecture, tokenizes as our
 * tokenizer does, gives the same next-token probabilities at every position of a prompt (F32 export, F32 KV
 * cache) and the same greedy continuation as our KV-cache generation.
 */
import { join } from "node:path";
import { noGrad, tensor } from "@qlora/tensor";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { tempDir } from "../test/helpers";
import { TINY_MODELS, writeTinyModelWithTokenizer } from "../test/tiny-with-tokenizer";
import { exportGguf, type GgufOutType } from "./gguf-export";
import { generate } from "./generate";
import { loadModel } from "./load";
import { softmax } from "./sampling";
import { loadTokenizer } from "./tokenizer";

type NodeLlamaCpp = typeof import("node-llama-cpp");
type Llama = Awaited<ReturnType<NodeLlamaCpp["getLlama"]>>;

let skipReason = "";
const lib: NodeLlamaCpp | undefined = await import("node-llama-cpp").catch((e) => {
  skipReason = `node-llama-cpp does not import: ${(e as Error).message}`;
  return undefined;
});
const llama: Llama | undefined = lib
  ? await lib.getLlama({ gpu: false, build: "never", logLevel: "error" as never }).catch((e) => {
      skipReason = `node-llama-cpp cannot load its prebuilt binary: ${(e as Error).message}`;
      return undefined;
    })
  : undefined;

const TEXT = "Hello world, the quick brown fox jumps over the lazy dog! What is the answer? é 42";
const NEW_TOKENS = 24;

let tmp: { path: string; remove(): void };
beforeAll(() => {
  tmp = tempDir("qlora-llamacpp-");
});
afterAll(async () => {
  await llama?.dispose();
  tmp?.remove();
});

/** Our next-token probabilities at every position of `ids` (full forward, no cache). */
function ourProbabilities(model: Awaited<ReturnType<typeof loadModel>>["model"], ids: number[]): Float64Array[] {
  return noGrad(() => {
    const input = tensor(Int32Array.from(ids), { dtype: "i32", shape: [1, ids.length] });
    const logits = model.forward({ inputIds: input }).logits!;
    const all = logits.toTypedArray() as Float32Array;
    input.dispose();
    logits.dispose();
    const vocab = all.length / ids.length;
    return ids.map((_, p) => softmax(all.subarray(p * vocab, (p + 1) * vocab)));
  });
}

async function llamaRun(path: string, ids: number[], vocab: number, kvF32: boolean, text = TEXT) {
  const model = await llama!.loadModel({ modelPath: path });
  // One thread: llama.cpp's spinning pool crawls on an oversubscribed 2-core machine. An F32 KV cache, as the
  // default F16 one rounds keys/values (measured up to 4e-4 in probability) where ours keeps f32.
  const context = await model.createContext({
    contextSize: 256,
    threads: 1,
    flashAttention: false,
    ...(kvF32 ? { experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32" } : {}),
  });
  try {
    const tokens = Array.from(model.tokenize(text), Number);
    const seq = context.getSequence();
    const out = await seq.controlledEvaluate(
      ids.map(
        (t) => [t, { generateNext: { probabilities: true } }] as [never, { generateNext: { probabilities: true } }],
      ),
    );
    const probs = out.map((o) => {
      const p = new Float64Array(vocab);
      for (const [t, v] of o!.next.probabilities!) p[t as number] = v;
      return p;
    });
    await seq.clearHistory();
    const greedy: number[] = [];
    for await (const t of seq.evaluate(ids as never[], { temperature: 0 })) {
      greedy.push(t as number);
      if (greedy.length === NEW_TOKENS) break;
    }
    return { probs, greedy, tokens };
  } finally {
    await context.dispose();
    await model.dispose();
  }
}

function maxAbsDiff(a: Float64Array[], b: Float64Array[]): number {
  let worst = 0;
  for (let p = 0; p < a.length; p++)
    for (let i = 0; i < a[p].length; i++) worst = Math.max(worst, Math.abs(a[p][i] - b[p][i]));
  return worst;
}

describe.skipIf(!llama)(
  `node-llama-cpp 3.21.1 runs our GGUF export${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    describe.each(TINY_MODELS.map((s) => [s.name, s] as const))("tiny %s", (_name, spec) => {
      it("F32: same tokens, next-token probabilities within 1e-5 at every position, same greedy continuation", async () => {
        const { dir, info } = await writeTinyModelWithTokenizer(tmp.path, spec);
        const path = join(dir, "f32.gguf");
        await exportGguf(dir, path, { outType: "F32" });
        const tok = await loadTokenizer(dir);
        const ids = tok.encode(TEXT);
        expect(ids.length).toBeGreaterThan(16);
        const { model } = await loadModel(dir, { quantize: false });
        const ours = ourProbabilities(model, ids);
        const theirs = await llamaRun(path, ids, info.vocabSize, true);

        // llama.cpp's tokenizer, reading our tokenizer metadata, splits the text as ours does
        expect(theirs.tokens).toEqual(tok.encode(TEXT, { addSpecialTokens: false }));
        const diff = maxAbsDiff(ours, theirs.probs);
        expect(diff).toBeLessThan(1e-5);
        // not vacuous: the model's distributions are far from uniform and differ between positions
        expect(Math.max(...ours.map((p) => Math.max(...p)))).toBeGreaterThan(5 / info.vocabSize);

        const [mine] = await generate(model, [ids], { maxNewTokens: NEW_TOKENS });
        expect(mine.tokens).toEqual(theirs.greedy);
        model.dispose();
      });
    });

    // llama.cpp rounds activations too (to f16/bf16, or to 8-bit blocks for Q8_0 dot products), so these bounds are
    // a few times the measured error (F16 8.7e-4, BF16 7.0e-4, Q8_0 4.1e-2 on 2026-12-07), not f32 tolerance.
    it("F16, BF16 and Q8_0 exports load; probabilities within their rounding of ours, same top token almost everywhere", async () => {
      const spec = TINY_MODELS.find((s) => s.name === "llama3")!;
      const { dir, info } = await writeTinyModelWithTokenizer(join(tmp.path, "types"), spec);
      const tok = await loadTokenizer(dir);
      const ids = tok.encode(TEXT);
      const { model } = await loadModel(dir, { quantize: false });
      const ours = ourProbabilities(model, ids);
      model.dispose();
      const bounds: Record<Exclude<GgufOutType, "F32">, number> = { F16: 3e-3, BF16: 3e-3, Q8_0: 0.1 };
      const measured: Record<string, number> = {};
      const sameTop: Record<string, number> = {};
      const top = (p: Float64Array) => p.indexOf(Math.max(...p));
      for (const outType of ["F16", "BF16", "Q8_0"] as const) {
        const path = join(dir, `${outType}.gguf`);
        await exportGguf(dir, path, { outType });
        const theirs = await llamaRun(path, ids, info.vocabSize, true);
        measured[outType] = maxAbsDiff(ours, theirs.probs);
        sameTop[outType] = ours.filter((p, i) => top(p) === top(theirs.probs[i])).length / ours.length;
      }
      console.info("max |Δp| vs ours (F32 weights):", measured, "same top-1 fraction:", sameTop);
      for (const outType of ["F16", "BF16", "Q8_0"] as const) {
        expect(measured[outType], outType).toBeLessThan(bounds[outType]);
        expect(measured[outType], outType).toBeGreaterThan(1e-5); // the weights really are rounded
        expect(sameTop[outType], outType).toBeGreaterThanOrEqual(0.9);
      }
    });
  },
);
