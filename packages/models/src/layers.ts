/**
 * Where a model's leaf layers come from. Model classes ask a `LayerSource` for each leaf by its Hugging Face
 * path ("model.layers.0.self_attn.q_proj"); the checkpoint loader answers with layers built from the file
 * (quantized or not), `randomLayers` with freshly drawn ones (tests, benchmarks).
 */
import type { QuantType } from "@qlora/nf4";
import {
  type DType,
  Embedding,
  Generator,
  Linear,
  Linear4bit,
  type Module,
  RMSNorm,
  type Tensor,
  ones,
  randn,
} from "@qlora/tensor";

/** A module with a one-tensor forward (Linear, Linear4bit, a LoRA wrapper…). */
export type LinearLike = Module & { forward(x: Tensor): Tensor };

export interface LayerSource {
  linear(path: string, inFeatures: number, outFeatures: number, bias: boolean): LinearLike;
  norm(path: string, dim: number, eps: number): RMSNorm;
  embedding(path: string, vocab: number, dim: number): Embedding;
}

/** 4-bit options of quantize-on-load (bitsandbytes' `BitsAndBytesConfig` in our terms). */
export interface QuantizeOptions {
  /** Default "nf4". */
  quantType?: QuantType;
  /** Default 64. */
  blocksize?: number;
  /** Default true (QLoRA's double quantization). */
  doubleQuant?: boolean;
  /**
   * Module names kept unquantized (transformers' `llm_int8_skip_modules`): a module is skipped when its path
   * equals an entry or ends with "." + entry. Default ["lm_head"]; embeddings and norms are never quantized.
   */
  skipModules?: string[];
}

export function isSkipped(path: string, skip: readonly string[]): boolean {
  return skip.some((s) => path === s || path.endsWith(`.${s}`));
}

export interface RandomLayerOptions {
  seed?: number;
  /** Storage dtype of the non-quantized weights; default "f32". */
  dtype?: DType;
  /** Quantize every linear layer not skipped (default: keep all dense). */
  quantize?: QuantizeOptions | null;
  /** Standard deviation of weights; default 0.02 (transformers' initializer_range). */
  std?: number;
}

/** Random layers (normal(0, std) weights, norms at 1 + small noise), e.g. for a benchmark layer. */
export function randomLayers(options: RandomLayerOptions = {}): LayerSource {
  const gen = new Generator(options.seed ?? 0);
  const std = options.std ?? 0.02;
  const draw = (shape: number[], scale = std) => {
    const z = randn(shape, { generator: gen });
    const s = z.mul(scale);
    z.dispose();
    if (!options.dtype || options.dtype === "f32") return s;
    const c = s.cast(options.dtype);
    s.dispose();
    return c;
  };
  const frozen = <T extends Module>(m: T): T => {
    for (const p of m.parameters()) p.requiresGrad = false;
    return m;
  };
  return {
    linear(path, inFeatures, outFeatures, bias) {
      const q = options.quantize;
      const b = bias ? draw([outFeatures]) : null;
      if (q && !isSkipped(path, q.skipModules ?? ["lm_head"])) {
        const w = randn([outFeatures, inFeatures], { generator: gen });
        const values = (w.toTypedArray() as Float32Array).map((v) => v * std);
        w.dispose();
        return Linear4bit.fromWeight(
          { values, shape: [outFeatures, inFeatures] },
          { quantType: q.quantType, blocksize: q.blocksize, doubleQuant: q.doubleQuant ?? true, bias: b },
        );
      }
      return frozen(
        new Linear(inFeatures, outFeatures, { init: { weight: draw([outFeatures, inFeatures]), bias: b } }),
      );
    },
    norm(_path, dim, eps) {
      const n = draw([dim], 0.1);
      const w = n.add(ones([dim], { dtype: n.dtype }));
      n.dispose();
      return frozen(new RMSNorm(dim, eps, { init: w }));
    },
    embedding(_path, vocab, dim) {
      return frozen(new Embedding(vocab, dim, { init: draw([vocab, dim], 1) }));
    },
  };
}
