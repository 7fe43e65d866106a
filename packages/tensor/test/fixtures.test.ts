import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import * as ops from "../src/ops";
import { tensor, type Tensor } from "../src/tensor";

// Golden fixture written by scripts/make_fixtures.py (PyTorch 1.13, float64 truth stored as f32).
// Tolerance per tensor: |ours − torch| ≤ 1e-5 · max|torch| (our f32 reference backend vs the rounded truth).

interface Entry {
  name: string;
  dtype: "f32" | "i32";
  shape: number[];
  offset: number;
  nbytes: number;
}

function readFixture(path: string) {
  const buf = readFileSync(path);
  expect(buf.subarray(0, 4).toString("latin1")).toBe("QLTF");
  const version = buf.readUInt32LE(4);
  expect(version).toBe(1);
  const len = buf.readUInt32LE(8);
  const header = JSON.parse(buf.subarray(12, 12 + len).toString("utf8")) as { generator: string; torch: string; config: Record<string, number>; tensors: Entry[] };
  const base = 12 + len;
  const get = (name: string): { data: Float32Array | Int32Array; shape: number[] } => {
    const e = header.tensors.find((t) => t.name === name);
    if (!e) throw new Error(`fixture has no tensor ${name}`);
    const bytes = new Uint8Array(buf.subarray(base + e.offset, base + e.offset + e.nbytes)).slice().buffer;
    return { data: e.dtype === "f32" ? new Float32Array(bytes) : new Int32Array(bytes), shape: e.shape };
  };
  return { header, get };
}

const fixture = readFixture(new URL("./fixtures/decoder_block.bin", import.meta.url).pathname);

function expectClose(name: string, ours: Tensor, want: { data: ArrayLike<number>; shape: number[] }): number {
  expect(ours.shape, name).toEqual(want.shape);
  const a = ours.toArray();
  let maxAbs = 0;
  for (let i = 0; i < want.data.length; i++) maxAbs = Math.max(maxAbs, Math.abs(want.data[i]));
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - want.data[i]));
  expect(worst / maxAbs, `${name}: max |diff| ${worst} vs max |torch| ${maxAbs}`).toBeLessThanOrEqual(1e-5);
  if (process.env.FIXTURE_REPORT) console.log(`${name}: ${(worst / maxAbs).toExponential(2)}`);
  return worst / maxAbs;
}

describe("golden fixture: Llama-style decoder block + LM head + cross-entropy vs PyTorch", () => {
  it("header names the generator", () => {
    expect(fixture.header.generator).toMatch(/make_fixtures\.py/);
    expect(fixture.header.torch).toMatch(/^1\.13/);
  });

  it("forward and backward match within 1e-5 · max|ref|", () => {
    const c = fixture.header.config;
    const { batch: B, seq: S, heads: H, kvHeads: KVH, headDim: D, hidden: HID, vocab: V, eps, theta } = c;
    const load = (name: string, requiresGrad = false) => {
      const f = fixture.get(name);
      return tensor(f.data, { shape: f.shape, dtype: f.data instanceof Int32Array ? "i32" : "f32", requiresGrad });
    };
    const x = load("x", true);
    const names = ["input_layernorm", "q_proj", "k_proj", "v_proj", "o_proj", "post_attention_layernorm", "gate_proj", "up_proj", "down_proj", "norm", "lm_head"];
    const p: Record<string, Tensor> = {};
    for (const n of names) p[n] = load(`param.${n}.weight`, true);
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
    const mlp = linear(ops.swiglu(linear(hn2, p.gate_proj), linear(hn2, p.up_proj)), p.down_proj);
    const out = h.add(mlp);
    const logits = linear(ops.rmsNorm(out, p.norm, eps), p.lm_head);
    const loss = ops.crossEntropy(logits.reshape([-1, V]), labels.reshape([-1]), { ignoreIndex: -100 });

    expectClose("out", out, fixture.get("out"));
    expectClose("logits", logits, fixture.get("logits"));
    expectClose("loss", loss.reshape([1]), fixture.get("loss"));

    loss.backward();
    expectClose("grad.x", x.grad!, fixture.get("grad.x"));
    for (const n of names) expectClose(`grad.${n}`, p[n].grad!, fixture.get(`grad.param.${n}.weight`));
  });
});
