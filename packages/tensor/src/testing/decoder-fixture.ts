import { readFileSync } from "node:fs";
import type { Backend } from "../backend/types";
import { swiglu } from "../fused/swiglu";
import * as ops from "../ops";
import { type Tensor, tensor } from "../tensor";

/**
 * The PyTorch golden fixture of a Llama-style decoder block (RMSNorm, RoPE, grouped-query attention with
 * packed segments, SwiGLU MLP, residuals) + LM head + cross-entropy, written by scripts/make_fixtures.py.
 * `runDecoderBlockFixture(backend)` runs the same block with our ops on any backend, forward and
 * backward, and returns max|ours − torch| / max|torch| per tensor, so every backend's test can hold it
 * to the same bound (1e-5 in f32).
 */
export const DECODER_BLOCK_FIXTURE = new URL("../../test/fixtures/decoder_block.bin", import.meta.url).pathname;

interface Entry {
  name: string;
  dtype: "f32" | "i32";
  shape: number[];
  offset: number;
  nbytes: number;
}

export interface FixtureFile {
  header: { generator: string; torch: string; config: Record<string, number>; tensors: Entry[] };
  get(name: string): { data: Float32Array | Int32Array; shape: number[] };
}

export function readDecoderBlockFixture(path: string = DECODER_BLOCK_FIXTURE): FixtureFile {
  const buf = readFileSync(path);
  const magic = buf.subarray(0, 4).toString("latin1");
  const version = buf.readUInt32LE(4);
  if (magic !== "QLTF" || version !== 1) {
    throw new Error(
      `${path}: expected a QLTF v1 fixture (got "${magic}" v${version}); regenerate with /usr/bin/python3 packages/tensor/scripts/make_fixtures.py`,
    );
  }
  const len = buf.readUInt32LE(8);
  const header = JSON.parse(buf.subarray(12, 12 + len).toString("utf8")) as FixtureFile["header"];
  const base = 12 + len;
  const get = (name: string) => {
    const e = header.tensors.find((t) => t.name === name);
    if (!e) throw new Error(`${path}: fixture has no tensor ${name}`);
    const bytes = new Uint8Array(buf.subarray(base + e.offset, base + e.offset + e.nbytes)).slice().buffer;
    return { data: e.dtype === "f32" ? new Float32Array(bytes) : new Int32Array(bytes), shape: e.shape };
  };
  return { header, get };
}

function relativeError(ours: Tensor, want: { data: ArrayLike<number>; shape: number[] }, name: string): number {
  if (ours.shape.join() !== want.shape.join())
    throw new Error(`${name}: shape [${ours.shape}] vs fixture [${want.shape}]`);
  const a = ours.toArray();
  let maxAbs = 0;
  let worst = 0;
  for (let i = 0; i < want.data.length; i++) {
    maxAbs = Math.max(maxAbs, Math.abs(want.data[i]));
    worst = Math.max(worst, Math.abs(a[i] - want.data[i]));
  }
  return worst / maxAbs;
}

const WEIGHTS = [
  "input_layernorm",
  "q_proj",
  "k_proj",
  "v_proj",
  "o_proj",
  "post_attention_layernorm",
  "gate_proj",
  "up_proj",
  "down_proj",
  "norm",
  "lm_head",
];

/** Forward + backward of the fixture's block on `backend`; name → max|diff| / max|torch|. */
export function runDecoderBlockFixture(
  backend: Backend,
  fixture: FixtureFile = readDecoderBlockFixture(),
): Map<string, number> {
  const {
    batch: B,
    seq: S,
    heads: H,
    kvHeads: KVH,
    headDim: D,
    hidden: HID,
    vocab: V,
    eps,
    theta,
  } = fixture.header.config;
  const load = (name: string, requiresGrad = false) => {
    const f = fixture.get(name);
    return tensor(f.data, {
      shape: f.shape,
      dtype: f.data instanceof Int32Array ? "i32" : "f32",
      requiresGrad,
      backend,
    });
  };
  const x = load("x", true);
  const p: Record<string, Tensor> = {};
  for (const n of WEIGHTS) p[n] = load(`param.${n}.weight`, true);
  const pos = load("position_ids");
  const seg = load("segment_ids");
  const labels = load("labels");

  const linear = (h: Tensor, w: Tensor) => ops.matmul(h, w.transpose(0, 1));
  const hn = ops.rmsNorm(x, p.input_layernorm, eps);
  const q = ops.rope(linear(hn, p.q_proj).reshape([B, S, H, D]), pos, theta).transpose(1, 2);
  const k = ops.rope(linear(hn, p.k_proj).reshape([B, S, KVH, D]), pos, theta).transpose(1, 2);
  const v = linear(hn, p.v_proj).reshape([B, S, KVH, D]).transpose(1, 2);
  const attn = ops.attention(q, k, v, { segmentIds: seg }).transpose(1, 2).reshape([B, S, HID]);
  const h = x.add(linear(attn, p.o_proj));
  const hn2 = ops.rmsNorm(h, p.post_attention_layernorm, eps);
  const mlp = linear(swiglu(linear(hn2, p.gate_proj), linear(hn2, p.up_proj)), p.down_proj);
  const out = h.add(mlp);
  const logits = linear(ops.rmsNorm(out, p.norm, eps), p.lm_head);
  const loss = ops.crossEntropy(logits.reshape([-1, V]), labels.reshape([-1]), { ignoreIndex: -100 });

  const errors = new Map<string, number>();
  errors.set("out", relativeError(out, fixture.get("out"), "out"));
  errors.set("logits", relativeError(logits, fixture.get("logits"), "logits"));
  errors.set("loss", relativeError(loss.reshape([1]), fixture.get("loss"), "loss"));
  loss.backward();
  errors.set("grad.x", relativeError(x.grad!, fixture.get("grad.x"), "grad.x"));
  for (const n of WEIGHTS)
    errors.set(`grad.${n}`, relativeError(p[n].grad!, fixture.get(`grad.param.${n}.weight`), `grad.${n}`));
  return errors;
}
