import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  bf16ArrayToFloat32,
  dequantizeQ8_0,
  f16ArrayToFloat32,
  GgmlType,
  openGguf,
  openShardedSafetensors,
  toFloat32Array,
  writeSafetensors,
} from "@qlora/formats";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TINY_MODELS, writeTinyModelWithTokenizer } from "../test/tiny-with-tokenizer";
import { parseConfig } from "./config";
import { ModelError } from "./errors";
import { exportGguf } from "./gguf-export";
import { ggufTensorName, permuteQkRows, qkPermuteHeads } from "./gguf-names";
import { inverseFrequencies } from "./rope";
import { loadTokenizer } from "./tokenizer";
import { tempDir } from "../test/helpers";

let tmp: { path: string; remove(): void };
beforeAll(() => {
  tmp = tempDir("qlora-gguf-");
});
afterAll(() => tmp.remove());

/** Index of the first element that differs (bitwise, so -0 ≠ 0), or -1; element-wise toEqual is slow on big arrays. */
function firstDifference(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return i;
  return -1;
}

async function checkpoint(dir: string): Promise<Map<string, { shape: number[]; values: Float32Array }>> {
  const st = await openShardedSafetensors(dir);
  const out = new Map<string, { shape: number[]; values: Float32Array }>();
  for (const n of st.names) {
    const info = st.info(n);
    out.set(n, { shape: [...info.shape], values: toFloat32Array(await st.read(n), info.dtype) });
  }
  await st.close();
  return out;
}

describe.each(TINY_MODELS.map((s) => [s.name, s] as const))("F32 export of tiny %s", (_name, spec) => {
  it("has llama.cpp names, hyperparameters, tokenizer metadata and the checkpoint's values (q/k permuted)", async () => {
    const { dir, info } = await writeTinyModelWithTokenizer(tmp.path, spec);
    const out = join(dir, "f32.gguf");
    await exportGguf(dir, out, { outType: "F32" });
    const config = parseConfig(JSON.parse(await readFile(join(dir, "config.json"), "utf8")));
    const g = await openGguf(out);
    const arch = g.get("general.architecture") as string;
    expect(arch).toBe(spec.name.startsWith("qwen") ? spec.name : "llama");
    expect(g.get(`${arch}.embedding_length`)).toBe(config.hiddenSize);
    expect(g.get(`${arch}.block_count`)).toBe(config.numLayers);
    expect(g.get(`${arch}.feed_forward_length`)).toBe(config.intermediateSize);
    expect(g.get(`${arch}.attention.head_count`)).toBe(config.numHeads);
    expect(g.get(`${arch}.attention.head_count_kv`)).toBe(config.numKvHeads);
    expect(g.get(`${arch}.attention.key_length`)).toBe(config.headDim);
    expect(g.get(`${arch}.rope.freq_base`)).toBe(Math.fround(config.ropeTheta));
    expect(g.get(`${arch}.context_length`)).toBe(config.maxPositionEmbeddings);
    expect(g.get(`${arch}.attention.layer_norm_rms_epsilon`)).toBe(Math.fround(config.rmsNormEps));
    if (config.ropeScaling?.type === "linear") {
      expect(g.get(`${arch}.rope.scaling.type`)).toBe("linear");
      expect(g.get(`${arch}.rope.scaling.factor`)).toBe(config.ropeScaling.factor);
    }

    // tokenizer
    const tok = await loadTokenizer(dir);
    const tokens = g.get("tokenizer.ggml.tokens") as string[];
    expect(tokens).toHaveLength(config.vocabSize);
    expect(tokens).toEqual(Array.from({ length: tokens.length }, (_, id) => tok.idToToken(id)));
    const spm = info.family === "llama2" || info.family === "mistral";
    expect(g.get("tokenizer.ggml.model")).toBe(spm ? "llama" : "gpt2");
    if (!spm) {
      expect(g.get("tokenizer.ggml.pre")).toBe(info.family === "llama3" ? "llama-bpe" : "qwen2");
      expect((g.get("tokenizer.ggml.merges") as string[]).length).toBeGreaterThan(50);
    } else {
      const types = g.get("tokenizer.ggml.token_type") as Int32Array;
      expect([types[0], types[1], types[2], types[3], types[3 + 255]]).toEqual([2, 3, 3, 6, 6]);
      expect((g.get("tokenizer.ggml.scores") as Float32Array).length).toBe(config.vocabSize);
      expect(g.get("tokenizer.ggml.add_space_prefix")).toBe(true);
    }
    expect(g.get("tokenizer.ggml.bos_token_id")).toBe(info.bosTokenId ?? undefined);
    expect(g.get("tokenizer.ggml.eos_token_id")).toBe(info.eosTokenId);
    expect(g.get("tokenizer.ggml.add_bos_token")).toBe(info.bosTokenId !== null);
    expect(g.get("tokenizer.ggml.add_eos_token")).toBe(false);
    expect(g.get("tokenizer.chat_template")).toBe(tok.chatTemplate);

    // tensors
    const ckpt = await checkpoint(dir);
    const expected = [...ckpt.keys()].filter((n) => !(n === "lm_head.weight" && config.tieWordEmbeddings));
    const names = g.tensors.map((t) => t.name);
    expect(names.filter((n) => n !== "rope_freqs.weight").sort()).toEqual(expected.map(ggufTensorName).sort());
    for (const hf of expected) {
      const t = g.info(ggufTensorName(hf));
      const { shape, values } = ckpt.get(hf)!;
      expect(t.type).toBe(GgmlType.F32);
      expect(t.ne).toEqual([...shape].reverse());
      const heads = qkPermuteHeads(config.architecture, hf, config);
      const want = heads === null ? values : permuteQkRows(values, shape[0], shape[1] ?? 1, heads);
      expect(firstDifference(new Float32Array((await g.read(t.name)).slice().buffer), want), hf).toBe(-1);
    }
    if (config.ropeScaling?.type === "llama3") {
      const freqs = new Float32Array((await g.read("rope_freqs.weight")).slice().buffer);
      const base = inverseFrequencies(config.headDim, config.ropeTheta, null);
      const scaled = inverseFrequencies(config.headDim, config.ropeTheta, config.ropeScaling);
      for (const [i, f] of freqs.entries()) expect(f).toBeCloseTo(base[i] / scaled[i], 4);
      expect(new Set(freqs).size).toBeGreaterThan(2); // kept, smoothed and divided bands all present
    } else expect(names).not.toContain("rope_freqs.weight");
    await g.close();
  });
});

describe("F16, BF16 and Q8_0 exports", () => {
  it("2-D weights in the requested type (Q8_0 rows not a multiple of 32 fall back to F16), 1-D in F32, values within the type's rounding", async () => {
    const spec = TINY_MODELS.find((s) => s.name === "qwen3")!;
    // head_dim 32, hidden 48: q/k/v/o rows of 48 are not Q8_0 blocks
    const { dir } = await writeTinyModelWithTokenizer(join(tmp.path, "types"), spec, {
      dtype: "bfloat16",
      configOverrides: { hidden_size: 48 },
    });
    const ckpt = await checkpoint(dir);
    for (const outType of ["F16", "BF16", "Q8_0"] as const) {
      const out = join(dir, `${outType}.gguf`);
      const res = await exportGguf(dir, out, { outType });
      const g = await openGguf(out);
      expect(g.get("general.file_type")).toBe({ F16: 1, BF16: 32, Q8_0: 7 }[outType]);
      for (const [hf, { shape, values }] of ckpt) {
        const t = g.info(ggufTensorName(hf));
        const raw = (await g.read(t.name)).slice().buffer;
        if (shape.length === 1) {
          expect(t.type).toBe(GgmlType.F32);
          expect(firstDifference(new Float32Array(raw), values), hf).toBe(-1);
          continue;
        }
        const q8 = outType === "Q8_0" && shape[1] % 32 === 0;
        const type = outType === "Q8_0" ? (q8 ? GgmlType.Q8_0 : GgmlType.F16) : GgmlType[outType];
        expect(t.type, hf).toBe(type);
        const got =
          type === GgmlType.F16
            ? f16ArrayToFloat32(new Uint16Array(raw))
            : type === GgmlType.BF16
              ? bf16ArrayToFloat32(new Uint16Array(raw))
              : dequantizeQ8_0(new Uint8Array(raw), values.length);
        if (type === GgmlType.BF16)
          expect(firstDifference(got, values), hf).toBe(-1); // bf16 source → bf16: exact
        else {
          // Q8_0: half a step of amax/127 per block (plus the fp16 scale's rounding); F16: half an ulp
          let worst = 0;
          for (let b = 0; b < values.length; b += 32) {
            let amax = 0;
            for (let i = b; i < Math.min(b + 32, values.length); i++) amax = Math.max(amax, Math.abs(values[i]));
            for (let i = b; i < Math.min(b + 32, values.length); i++) {
              const tol = type === GgmlType.Q8_0 ? amax / 127 / 2 + amax * 1e-3 : Math.abs(values[i]) * 2 ** -11 + 6e-8;
              worst = Math.max(worst, Math.abs(got[i] - values[i]) / tol);
            }
          }
          expect(worst, hf).toBeLessThanOrEqual(1);
        }
      }
      expect(res.tensors.some((t) => t.type === (outType === "Q8_0" ? "Q8_0" : outType))).toBe(true);
      await g.close();
    }
  });

  it("pads the vocabulary up to config vocab_size with unused [PAD] tokens", async () => {
    const spec = TINY_MODELS.find((s) => s.name === "llama3")!;
    const { dir, info } = await writeTinyModelWithTokenizer(join(tmp.path, "pad"), spec, { extraVocab: 6 });
    await exportGguf(dir, join(dir, "p.gguf"), { outType: "F32" });
    const g = await openGguf(join(dir, "p.gguf"));
    const tokens = g.get("tokenizer.ggml.tokens") as string[];
    const types = g.get("tokenizer.ggml.token_type") as Int32Array;
    expect(tokens).toHaveLength(info.vocabSize + 6);
    expect(tokens.at(-1)).toBe(`[PAD${info.vocabSize + 5}]`);
    expect(types.at(-1)).toBe(5);
    expect(types[info.bosTokenId!]).toBe(3);
    await g.close();
  });
});

describe("bad input", () => {
  async function errorOf(p: Promise<unknown>): Promise<ModelError> {
    const e = await p.then(
      () => undefined,
      (x) => x,
    );
    expect(e).toBeInstanceOf(ModelError);
    return e as ModelError;
  }

  it("an unmapped checkpoint tensor names it, and no file (or temporary file) is left behind", async () => {
    const spec = TINY_MODELS.find((s) => s.name === "llama")!;
    const { dir } = await writeTinyModelWithTokenizer(join(tmp.path, "extra"), spec);
    const ckpt = await checkpoint(dir);
    const tensors = [...ckpt].map(([name, { shape, values }]) => ({
      name,
      dtype: "F32" as const,
      shape,
      data: values,
    }));
    tensors.push({ name: "model.vision_tower.w", dtype: "F32", shape: [2], data: new Float32Array(2) });
    await writeSafetensors(join(dir, "model.safetensors"), tensors, { format: "pt" });
    const before = await readdir(dir);
    const e = await errorOf(exportGguf(dir, join(dir, "out.gguf"), { outType: "F32" }));
    expect(e.code).toBe("gguf_unmapped_tensor");
    expect(e.message).toContain("model.vision_tower.w");
    expect(await readdir(dir)).toEqual(before);
  });

  it("a pre-quantized checkpoint, an unknown outType and a tokenizer larger than vocab_size are typed errors", async () => {
    const spec = TINY_MODELS.find((s) => s.name === "qwen2")!;
    const { dir } = await writeTinyModelWithTokenizer(join(tmp.path, "bad"), spec);
    expect((await errorOf(exportGguf(dir, join(dir, "x.gguf"), { outType: "Q4_K" as never }))).key).toBe("outType");
    const cfgPath = join(dir, "config.json");
    const cfg = JSON.parse(await readFile(cfgPath, "utf8"));
    await writeFile(cfgPath, JSON.stringify({ ...cfg, vocab_size: 300 }));
    expect((await errorOf(exportGguf(dir, join(dir, "x.gguf")))).code).toBe("gguf_unsupported");
    await writeFile(cfgPath, JSON.stringify({ ...cfg, quantization_config: { load_in_4bit: true } }));
    const q = await errorOf(exportGguf(dir, join(dir, "x.gguf")));
    expect(q.code).toBe("gguf_unsupported");
    expect(q.key).toBe("quantization_config");
  });
});
