/**
 * Interop with independent readers: files written by our GGUF writer are parsed by
 * @huggingface/gguf (its own parser), and a tiny random-weight Llama written by us loads,
 * tokenizes and generates in node-llama-cpp (llama.cpp's C++ loader, CPU prebuilt binary).
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { join } from "node:path";
import { gguf } from "@huggingface/gguf";
import {
  GgmlType,
  GgufValueType,
  GgufWriter,
  float32ArrayToF16,
  gv,
  openGguf,
  quantizeQ8_0,
  writeGguf,
  type GgufWriteValue,
} from "../src/index";
import { rng, tempDir } from "./helpers";

let tmp: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  tmp = await tempDir();
});
afterAll(async () => {
  await tmp.cleanup();
});

type Weight = "F32" | "F16" | "Q8_0";

interface TinyLlama {
  nEmbd: number;
  nHead: number;
  nHeadKv: number;
  nFf: number;
  nLayer: number;
  nCtx: number;
  pieces: string[];
}

const CFG: TinyLlama = {
  nEmbd: 64,
  nHead: 4,
  nHeadKv: 2,
  nFf: 128,
  nLayer: 2,
  nCtx: 128,
  // SPM merges adjacent pieces only into pieces that exist, so every word needs a merge path.
  pieces: ["▁", "h", "e", "l", "o", "w", "r", "d", "ll", "or", "ld", "▁h", "▁he", "▁hell", "▁hello", "▁w", "▁wor", "▁world", "▁hi"],
};

/** Writes a random-weight Llama GGUF through the streaming writer; 2-D weights in `weight` type, norms F32. */
async function writeTinyLlama(path: string, weight: Weight, seed = 1): Promise<{ metadata: Record<string, GgufWriteValue>; tensors: { name: string; ne: number[]; type: number }[] }> {
  const c = CFG;
  const tokens = ["<unk>", "<s>", "</s>", ...Array.from({ length: 256 }, (_, i) => `<0x${i.toString(16).toUpperCase().padStart(2, "0")}>`), ...c.pieces];
  const types = [2, 3, 3, ...new Array(256).fill(6), ...new Array(c.pieces.length).fill(1)];
  const scores = [0, 0, 0, ...new Array(256).fill(0), ...c.pieces.map((p) => -100 + p.length * 10)];
  const metadata: Record<string, GgufWriteValue> = {
    "general.architecture": gv.str("llama"),
    "general.name": gv.str("qlora-formats tiny llama"),
    "llama.context_length": gv.u32(c.nCtx),
    "llama.embedding_length": gv.u32(c.nEmbd),
    "llama.block_count": gv.u32(c.nLayer),
    "llama.feed_forward_length": gv.u32(c.nFf),
    "llama.attention.head_count": gv.u32(c.nHead),
    "llama.attention.head_count_kv": gv.u32(c.nHeadKv),
    "llama.attention.layer_norm_rms_epsilon": gv.f32(1e-5),
    "llama.rope.dimension_count": gv.u32(c.nEmbd / c.nHead),
    "tokenizer.ggml.model": gv.str("llama"),
    "tokenizer.ggml.tokens": gv.arr(GgufValueType.STRING, tokens),
    "tokenizer.ggml.scores": gv.arr(GgufValueType.FLOAT32, new Float32Array(scores)),
    "tokenizer.ggml.token_type": gv.arr(GgufValueType.INT32, new Int32Array(types)),
    "tokenizer.ggml.bos_token_id": gv.u32(1),
    "tokenizer.ggml.eos_token_id": gv.u32(2),
    "tokenizer.ggml.unknown_token_id": gv.u32(0),
    "tokenizer.ggml.add_bos_token": gv.bool(true),
  };
  const nVocab = tokens.length;
  const kv = (c.nEmbd / c.nHead) * c.nHeadKv;
  const w2 = (name: string, ne: number[]) => ({ name, ne, type: GgmlType[weight] as number });
  const norm = (name: string) => ({ name, ne: [c.nEmbd], type: GgmlType.F32 as number });
  const tensors = [w2("token_embd.weight", [c.nEmbd, nVocab]), norm("output_norm.weight"), w2("output.weight", [c.nEmbd, nVocab])];
  for (let l = 0; l < c.nLayer; l++) {
    tensors.push(
      norm(`blk.${l}.attn_norm.weight`),
      w2(`blk.${l}.attn_q.weight`, [c.nEmbd, c.nEmbd]),
      w2(`blk.${l}.attn_k.weight`, [c.nEmbd, kv]),
      w2(`blk.${l}.attn_v.weight`, [c.nEmbd, kv]),
      w2(`blk.${l}.attn_output.weight`, [c.nEmbd, c.nEmbd]),
      norm(`blk.${l}.ffn_norm.weight`),
      w2(`blk.${l}.ffn_gate.weight`, [c.nEmbd, c.nFf]),
      w2(`blk.${l}.ffn_up.weight`, [c.nEmbd, c.nFf]),
      w2(`blk.${l}.ffn_down.weight`, [c.nFf, c.nEmbd]),
    );
  }
  const r = rng(seed);
  const w = await GgufWriter.create(path, { metadata, tensors });
  for (const t of tensors) {
    const n = t.ne.reduce((a, b) => a * b, 1);
    const vals = t.type === GgmlType.F32 && t.ne.length === 1 ? new Float32Array(n).fill(1) : new Float32Array(n).map(() => (r() * 2 - 1) * 0.08);
    const data = t.type === GgmlType.F32 ? vals : t.type === GgmlType.F16 ? float32ArrayToF16(vals) : quantizeQ8_0(vals);
    await w.writeTensor(t.name, data);
  }
  await w.finish();
  return { metadata, tensors };
}

describe("@huggingface/gguf reads what we write", () => {
  it("metadata (every value type, nested arrays) and tensor infos agree", async () => {
    const p = join(tmp.dir, "hf.gguf");
    const metadata = {
      "general.architecture": gv.str("llama"),
      u8: gv.u8(200),
      i8: gv.i8(-100),
      u16: gv.u16(60000),
      i16: gv.i16(-30000),
      u32: gv.u32(4000000000),
      i32: gv.i32(-2000000000),
      f32: gv.f32(1.5),
      f64: gv.f64(Math.PI),
      u64: gv.u64(1n << 60n),
      i64: gv.i64(-(1n << 60n)),
      bool: gv.bool(true),
      str: gv.str("héllo"),
      ints: gv.arr(GgufValueType.INT32, [1, -2, 3]),
      strs: gv.arr(GgufValueType.STRING, ["a", "bb", ""]),
      nested: gv.arr(GgufValueType.ARRAY, [gv.arr(GgufValueType.UINT8, [1, 2]), gv.arr(GgufValueType.UINT8, [3])]),
    };
    const tensors = [
      { name: "a", type: GgmlType.F32, shape: [3, 4], data: new Float32Array(12) },
      { name: "b", type: GgmlType.F16, shape: [5], data: new Uint16Array(5) },
      { name: "c", type: GgmlType.BF16, shape: [2, 3, 4], data: new Uint16Array(24) },
      { name: "d", type: GgmlType.Q8_0, shape: [2, 64], data: quantizeQ8_0(new Float32Array(128).map((_, i) => i / 100)) },
    ];
    await writeGguf(p, { metadata, tensors, alignment: 64 });
    const hf = await gguf(p, { allowLocalFile: true, typedMetadata: true });
    const ours = await openGguf(p);
    expect(hf.metadata.version).toBe(3);
    expect(hf.metadata.tensor_count).toBe(4n);
    expect(hf.metadata.kv_count).toBe(BigInt(ours.metadata.size));
    expect(hf.tensorDataOffset).toBe(BigInt(ours.dataStart));
    const hfMeta = hf.metadata as unknown as Record<string, unknown>;
    const typed = hf.typedMetadata as unknown as Record<string, { type: number; value: unknown; subType?: number }>;
    expect(hfMeta["general.alignment"]).toBe(64);
    const norm = (v: unknown): unknown => (ArrayBuffer.isView(v) ? Array.from(v as unknown as ArrayLike<unknown>) : Array.isArray(v) ? v.map(norm) : v);
    for (const [k, v] of ours.metadata) {
      expect(norm(hfMeta[k]), k).toEqual(norm(ours.get(k)));
      expect(typed[k].type, k).toBe(v.type);
      if (v.type === GgufValueType.ARRAY && typed[k].subType !== undefined) expect(typed[k].subType, k).toBe(v.elementType);
    }
    expect(hf.tensorInfos).toHaveLength(4);
    hf.tensorInfos.forEach((t, i) => {
      const o = ours.tensors[i];
      expect(t.name).toBe(o.name);
      expect(t.dtype).toBe(o.type);
      expect(t.n_dims).toBe(o.ne.length);
      expect(t.shape).toEqual(o.ne.map(BigInt));
      expect(t.offset).toBe(BigInt(o.offset));
    });
    await ours.close();
  });

  it("a tiny Llama's vocab and tensors agree", async () => {
    const p = join(tmp.dir, "tiny-hf.gguf");
    const written = await writeTinyLlama(p, "F16");
    const hf = await gguf(p, { allowLocalFile: true });
    const meta = hf.metadata as unknown as Record<string, unknown>;
    expect(meta["tokenizer.ggml.tokens"]).toEqual(written.metadata["tokenizer.ggml.tokens"].value);
    expect(meta["llama.attention.head_count_kv"]).toBe(2);
    expect(hf.tensorInfos.map((t) => [t.name, t.shape.map(Number), t.dtype])).toEqual(written.tensors.map((t) => [t.name, t.ne, t.type]));
  });
});

describe("node-llama-cpp loads a Llama written by us", () => {
  for (const weight of ["F32", "F16", "Q8_0"] as const) {
    it(`${weight} weights: load, tokenize/detokenize, generate`, { timeout: 180_000 }, async () => {
      const p = join(tmp.dir, `tiny-${weight}.gguf`);
      await writeTinyLlama(p, weight);
      const { getLlama, LlamaCompletion } = await import("node-llama-cpp");
      const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" as never });
      let model: Awaited<ReturnType<typeof llama.loadModel>> | undefined;
      let context: Awaited<ReturnType<NonNullable<typeof model>["createContext"]>> | undefined;
      try {
        model = await llama.loadModel({ modelPath: p });
        expect(model.trainContextSize).toBe(CFG.nCtx);
        expect(model.tokens.bos).toBe(1);
        expect(model.tokens.eos).toBe(2);
        const text = "hello world! é";
        const toks = model.tokenize(text);
        expect(toks.length).toBeGreaterThan(2);
        const piece = (s: string) => 3 + 256 + CFG.pieces.indexOf(s);
        // our merged pieces, then "!" as byte token <0x21> (id 3 + 0x21)
        expect(Array.from(toks.slice(0, 3))).toEqual([piece("▁hello"), piece("▁world"), 3 + 0x21]);
        expect(model.detokenize(toks)).toBe(text); // "é" and "!" go through the <0xXX> byte tokens
        context = await model.createContext({ contextSize: 64 });
        const completion = new LlamaCompletion({ contextSequence: context.getSequence() });
        let generated = 0;
        const res = await completion.generateCompletionWithMeta("hello", {
          maxTokens: 8,
          onToken: (t) => {
            generated += t.length;
          },
        });
        expect(generated).toBeGreaterThan(0);
        expect(["maxTokens", "eogToken"]).toContain(res.metadata.stopReason);
        expect(typeof res.response).toBe("string");
      } finally {
        await context?.dispose();
        await model?.dispose();
        await llama.dispose();
      }
    });
  }
});
