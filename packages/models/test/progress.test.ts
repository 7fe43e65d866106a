import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loadModel } from "../src/index";
import { TINY_MODELS, writeTinyModel } from "../scripts/make-tiny-models";
import { tempDir } from "./helpers";

const tmp = tempDir();
afterAll(() => tmp.remove());

describe("loadModel onProgress", () => {
  it("reports every layer once, in order of completion, ending at the total", async () => {
    const dir = join(tmp.path, "llama");
    await writeTinyModel(dir, TINY_MODELS.find((s) => s.name === "llama")!);
    const calls: [number, number, string][] = [];
    const { model } = await loadModel(dir, { onProgress: (done, total, path) => calls.push([done, total, path]) });
    // 2 layers × (7 linears + 2 norms) + embedding + final norm + lm_head
    expect(calls).toHaveLength(21);
    expect(calls.map(([d]) => d)).toEqual(Array.from({ length: 21 }, (_, i) => i + 1));
    expect(new Set(calls.map(([, t]) => t))).toEqual(new Set([21]));
    expect(calls.some(([, , p]) => p === "model.layers.1.mlp.down_proj")).toBe(true);
    model.dispose();
  });
});

describe("exportGguf onProgress", () => {
  it("reports every tensor once, ending at the total", async () => {
    const { writeTinyTokenizer, exportGguf } = await import("../src/index");
    const dir = join(tmp.path, "gguf-src");
    const info = await writeTinyTokenizer(dir, "llama3");
    await writeTinyModel(dir, TINY_MODELS.find((s) => s.name === "llama")!, {
      configOverrides: { vocab_size: info.vocabSize, bos_token_id: info.bosTokenId, eos_token_id: info.eosTokenId },
    });
    const calls: [number, number][] = [];
    const r = await exportGguf(dir, join(tmp.path, "m.gguf"), {
      outType: "F32",
      onProgress: (d, t) => calls.push([d, t]),
    });
    expect(calls).toHaveLength(r.tensors.length);
    expect(calls.at(-1)).toEqual([r.tensors.length, r.tensors.length]);
  });
});
