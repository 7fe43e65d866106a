/**
 * Interop with independent readers: files written by our GGUF writer are parsed by
 * @huggingface/gguf (its own parser), and a tiny random-weight Llama written by us loads,
 * tokenizes and generates in node-llama-cpp (llama.cpp's C++ loader, CPU prebuilt binary).
 */
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { join } from "node:path";
import { gguf } from "@huggingface/gguf";
import { GgmlType, GgufValueType, gv, openGguf, quantizeQ8_0, writeGguf } from "../src/index";
import { tempDir } from "./helpers";
import { CFG, writeTinyLlama } from "./tiny-llama";

let tmp: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  tmp = await tempDir();
});
afterAll(async () => {
  await tmp.cleanup();
});

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
      {
        name: "d",
        type: GgmlType.Q8_0,
        shape: [2, 64],
        data: quantizeQ8_0(new Float32Array(128).map((_, i) => i / 100)),
      },
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
    const norm = (v: unknown): unknown =>
      ArrayBuffer.isView(v) ? Array.from(v as unknown as ArrayLike<unknown>) : Array.isArray(v) ? v.map(norm) : v;
    for (const [k, v] of ours.metadata) {
      expect(norm(hfMeta[k]), k).toEqual(norm(ours.get(k)));
      expect(typed[k].type, k).toBe(v.type);
      if (v.type === GgufValueType.ARRAY && typed[k].subType !== undefined)
        expect(typed[k].subType, k).toBe(v.elementType);
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
    expect(hf.tensorInfos.map((t) => [t.name, t.shape.map(Number), t.dtype])).toEqual(
      written.tensors.map((t) => [t.name, t.ne, t.type]),
    );
  });
});

describe("node-llama-cpp loads a Llama written by us", () => {
  type Llama = Awaited<ReturnType<typeof import("node-llama-cpp")["getLlama"]>>;
  let llama: Llama | undefined;
  beforeAll(async () => {
    const { getLlama } = await import("node-llama-cpp");
    llama = await getLlama({ gpu: false, build: "never", logLevel: "error" as never });
  }, 120_000);
  afterAll(async () => {
    await llama?.dispose();
  });

  for (const weight of ["F32", "F16", "Q8_0"] as const) {
    it(`${weight} weights: load, tokenize/detokenize, generate`, { timeout: 120_000 }, async () => {
      const p = join(tmp.dir, `tiny-${weight}.gguf`);
      await writeTinyLlama(p, weight);
      const { LlamaCompletion } = await import("node-llama-cpp");
      let model: Awaited<ReturnType<Llama["loadModel"]>> | undefined;
      let context: Awaited<ReturnType<NonNullable<typeof model>["createContext"]>> | undefined;
      try {
        model = await llama!.loadModel({ modelPath: p });
        expect(model.trainContextSize).toBe(CFG.nCtx);
        expect(model.tokens.bos).toBe(1);
        expect(model.tokens.eos).toBe(2);
        const text = "hello world! é";
        const toks = model.tokenize(text);
        const piece = (s: string) => 3 + 256 + CFG.pieces.indexOf(s);
        // our merged pieces, then "!" as byte token <0x21> (id 3 + 0x21)
        expect(Array.from(toks.slice(0, 3))).toEqual([piece("▁hello"), piece("▁world"), 3 + 0x21]);
        expect(model.detokenize(toks)).toBe(text); // "é" goes through the <0xC3><0xA9> byte tokens
        // one thread: llama.cpp's spinning thread pool crawls on an oversubscribed 2-core machine
        context = await model.createContext({ contextSize: 64, threads: 1 });
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
      }
    });
  }
});
