/**
 * Rotary position embedding with transformers' frequency rules. Plain rope goes through tensor's fused `rope`
 * op; scaled rope (`linear`, `llama3`) changes the frequencies, which that op cannot express, so it is applied
 * as x·cos + rotate_half(x)·sin from cos/sin tables computed here (in float32, as transformers does).
 */
import { cat, rope, type Tensor, tensor } from "@qlora/tensor";
import type { ModelConfig, RopeScaling } from "./config";

/** inv_freq[i] = 1 / theta^(2i/d), rescaled as transformers' `ROPE_INIT_FUNCTIONS` do (float32). */
export function inverseFrequencies(headDim: number, theta: number, scaling: RopeScaling | null): Float32Array {
  const half = headDim / 2;
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / theta ** Math.fround((2 * i) / headDim);
  if (!scaling) return inv;
  if (scaling.type === "linear") return inv.map((f) => f / scaling.factor);
  const { factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings: oldLen } = scaling;
  const lowFreqWavelen = oldLen / lowFreqFactor;
  const highFreqWavelen = oldLen / highFreqFactor;
  return inv.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highFreqWavelen) return f;
    if (wavelen > lowFreqWavelen) return f / factor;
    const smooth = (oldLen / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
    return (1 - smooth) * (f / factor) + smooth * f;
  });
}

/** cos/sin tables [batch, seq, 1, headDim] for i32 positions [batch, seq] (host-computed, no gradient). */
function cosSin(positions: Int32Array, batch: number, seq: number, inv: Float32Array, like: Tensor) {
  const half = inv.length;
  const d = 2 * half;
  const cos = new Float32Array(batch * seq * d);
  const sin = new Float32Array(batch * seq * d);
  for (let t = 0; t < batch * seq; t++) {
    const p = positions[t];
    for (let i = 0; i < half; i++) {
      const a = Math.fround(p * inv[i]);
      const c = Math.fround(Math.cos(a));
      const s = Math.fround(Math.sin(a));
      cos[t * d + i] = c;
      cos[t * d + half + i] = c;
      sin[t * d + i] = s;
      sin[t * d + half + i] = s;
    }
  }
  const opts = { shape: [batch, seq, 1, d], backend: like.backend };
  return { cos: tensor(cos, opts), sin: tensor(sin, opts) };
}

/** The rotary embedding of one model: applies to x [batch, seq, heads, headDim] at positions [batch, seq]. */
export class RotaryEmbedding {
  private readonly inv: Float32Array;
  constructor(private readonly config: Pick<ModelConfig, "headDim" | "ropeTheta" | "ropeScaling">) {
    this.inv = inverseFrequencies(config.headDim, config.ropeTheta, config.ropeScaling);
  }

  apply(x: Tensor, positions: Tensor): Tensor {
    if (!this.config.ropeScaling) return rope(x, positions, this.config.ropeTheta);
    const [batch, seq, , d] = x.shape;
    const { cos, sin } = cosSin(positions.toTypedArray() as Int32Array, batch, seq, this.inv, x);
    const half = d / 2;
    const x1 = x.narrow(-1, 0, half);
    const x2 = x.narrow(-1, half, half);
    const neg = x2.neg();
    const rotated = cat([neg, x1], -1);
    const a = x.mul(cos);
    const b = rotated.mul(sin);
    const out = a.add(b);
    for (const t of [cos, sin, x1, x2, neg, rotated, a, b]) t.dispose();
    return out;
  }
}
