/** A tiny random-weight Llama GGUF (SPM vocab with byte fallback) for loader tests. */
import {
  GgmlType,
  GgufValueType,
  GgufWriter,
  float32ArrayToF16,
  gv,
  quantizeQ8_0,
  type GgufWriteValue,
} from "../src/index";
import { rng } from "./helpers";

export type Weight = "F32" | "F16" | "Q8_0";

export interface TinyLlama {
  nEmbd: number;
  nHead: number;
  nHeadKv: number;
  nFf: number;
  nLayer: number;
  nCtx: number;
  pieces: string[];
}

export const CFG: TinyLlama = {
  nEmbd: 64,
  nHead: 4,
  nHeadKv: 2,
  nFf: 128,
  nLayer: 2,
  nCtx: 128,
  // SPM merges adjacent pieces only into pieces that exist, so every word needs a merge path.
  pieces: [
    "▁",
    "h",
    "e",
    "l",
    "o",
    "w",
    "r",
    "d",
    "ll",
    "or",
    "ld",
    "▁h",
    "▁he",
    "▁hell",
    "▁hello",
    "▁w",
    "▁wor",
    "▁world",
    "▁hi",
  ],
};

/** Writes a random-weight Llama GGUF through the streaming writer; 2-D weights in `weight` type, norms F32. */
export async function writeTinyLlama(
  path: string,
  weight: Weight,
  seed = 1,
): Promise<{ metadata: Record<string, GgufWriteValue>; tensors: { name: string; ne: number[]; type: number }[] }> {
  const c = CFG;
  const tokens = [
    "<unk>",
    "<s>",
    "</s>",
    ...Array.from({ length: 256 }, (_, i) => `<0x${i.toString(16).toUpperCase().padStart(2, "0")}>`),
    ...c.pieces,
  ];
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
  const tensors = [
    w2("token_embd.weight", [c.nEmbd, nVocab]),
    norm("output_norm.weight"),
    w2("output.weight", [c.nEmbd, nVocab]),
  ];
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
    const vals =
      t.type === GgmlType.F32 && t.ne.length === 1
        ? new Float32Array(n).fill(1)
        : new Float32Array(n).map(() => (r() * 2 - 1) * 0.08);
    const data =
      t.type === GgmlType.F32 ? vals : t.type === GgmlType.F16 ? float32ArrayToF16(vals) : quantizeQ8_0(vals);
    await w.writeTensor(t.name, data);
  }
  await w.finish();
  return { metadata, tensors };
}
