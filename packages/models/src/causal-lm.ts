/**
 * The Llama family (Llama 2/3.x, Mistral, Qwen2, Qwen3) as one decoder-only transformer whose differences are
 * config flags (q/k/v bias, q/k RMSNorm, rope scaling, tied embeddings). The module tree is named exactly as
 * Hugging Face names it, so `stateDict()` keys are checkpoint keys and LoRA can target modules by name.
 * Every forward reads its children through `child()`, so `setSubmodule` replacements take effect.
 */
import {
  attention,
  checkpoint,
  crossEntropy,
  type Embedding,
  isGradEnabled,
  Linear,
  linearCrossEntropy,
  matmul,
  Module,
  ModuleList,
  noGrad,
  type RMSNorm,
  swiglu,
  type Tensor,
  tensor,
  tidy,
} from "@qlora/tensor";
import type { Architecture, ModelConfig } from "./config";
import { ModelError } from "./errors";
import { KVCache } from "./kv-cache";
import type { LayerSource, LinearLike } from "./layers";
import { RotaryEmbedding } from "./rope";

interface LayerCache {
  cache: KVCache;
  layer: number;
}

interface LayerContext {
  positions: Tensor;
  segmentIds?: Tensor;
  cache?: LayerCache;
}

export class Attention extends Module {
  constructor(
    readonly config: ModelConfig,
    readonly rotary: RotaryEmbedding,
    path: string,
    src: LayerSource,
    /** Sliding window of this layer (Mistral, Qwen2/3 `use_sliding_window`); 0 = full causal attention. */
    readonly window = 0,
  ) {
    super();
    const { hiddenSize: hid, numHeads: h, numKvHeads: kvh, headDim: d, qkvBias, oBias } = config;
    this.registerModule("q_proj", src.linear(`${path}.q_proj`, hid, h * d, qkvBias));
    this.registerModule("k_proj", src.linear(`${path}.k_proj`, hid, kvh * d, qkvBias));
    this.registerModule("v_proj", src.linear(`${path}.v_proj`, hid, kvh * d, qkvBias));
    this.registerModule("o_proj", src.linear(`${path}.o_proj`, h * d, hid, oBias));
    if (config.qkNorm) {
      this.registerModule("q_norm", src.norm(`${path}.q_norm`, d, config.rmsNormEps));
      this.registerModule("k_norm", src.norm(`${path}.k_norm`, d, config.rmsNormEps));
    }
  }

  forward(x: Tensor, ctx: LayerContext): Tensor {
    return tidy(() => {
      const { numHeads: h, numKvHeads: kvh, headDim: d } = this.config;
      const [b, s] = x.shape;
      let q = this.child<LinearLike>("q_proj").forward(x).reshape([b, s, h, d]);
      let k = this.child<LinearLike>("k_proj").forward(x).reshape([b, s, kvh, d]);
      const v = this.child<LinearLike>("v_proj").forward(x).reshape([b, s, kvh, d]);
      if (this.config.qkNorm) {
        q = this.child<RMSNorm>("q_norm").forward(q);
        k = this.child<RMSNorm>("k_norm").forward(k);
      }
      const qr = this.rotary.apply(q, ctx.positions).transpose(1, 2);
      const kr = this.rotary.apply(k, ctx.positions);
      const out = ctx.cache
        ? cachedAttention(qr, kr, v, ctx.cache, this.window)
        : attention(qr, kr.transpose(1, 2), v.transpose(1, 2), {
            ...windowOption(this.window, s),
            segmentIds: ctx.segmentIds,
          });
      return this.child<LinearLike>("o_proj").forward(out.transpose(1, 2).reshape([b, s, h * d]));
    });
  }
}

/**
 * The window only masks when there are more keys than it spans; otherwise plain causal attention is the same
 * thing, and backends without a windowed kernel (cuda) still run it.
 */
function windowOption(window: number, keys: number): { window?: number } {
  return window > 0 && keys > window ? { window } : {};
}

/**
 * Attention of n new queries over the cached keys plus the n new ones (the fused op's causal offset:
 * query i attends keys j ≤ keys − n + i, and > keys − n + i − window with a sliding window). kNew/vNew are
 * [b, n, kvh, d]; the cache appends them in place and returns the keys the queries can see (a sliding-window
 * layer's cache holds about the last window of them, so a one-token decode step needs no mask at all).
 */
function cachedAttention(q: Tensor, kNew: Tensor, vNew: Tensor, cache: LayerCache, window: number): Tensor {
  const { k, v } = cache.cache.append(cache.layer, kNew, vNew);
  const out = attention(q, k, v, windowOption(window, k.shape[2]));
  k.dispose();
  v.dispose();
  return out;
}

export class MLP extends Module {
  constructor(config: ModelConfig, path: string, src: LayerSource) {
    super();
    const { hiddenSize: hid, intermediateSize: ffn, mlpBias } = config;
    this.registerModule("gate_proj", src.linear(`${path}.gate_proj`, hid, ffn, mlpBias));
    this.registerModule("up_proj", src.linear(`${path}.up_proj`, hid, ffn, mlpBias));
    this.registerModule("down_proj", src.linear(`${path}.down_proj`, ffn, hid, mlpBias));
  }
  forward(x: Tensor): Tensor {
    return tidy(() => {
      const gate = this.child<LinearLike>("gate_proj").forward(x);
      const up = this.child<LinearLike>("up_proj").forward(x);
      return this.child<LinearLike>("down_proj").forward(swiglu(gate, up));
    });
  }
}

export class DecoderLayer extends Module {
  constructor(config: ModelConfig, rotary: RotaryEmbedding, path: string, src: LayerSource, window = 0) {
    super();
    this.registerModule("self_attn", new Attention(config, rotary, `${path}.self_attn`, src, window));
    this.registerModule("mlp", new MLP(config, `${path}.mlp`, src));
    this.registerModule("input_layernorm", src.norm(`${path}.input_layernorm`, config.hiddenSize, config.rmsNormEps));
    this.registerModule(
      "post_attention_layernorm",
      src.norm(`${path}.post_attention_layernorm`, config.hiddenSize, config.rmsNormEps),
    );
  }
  forward(h: Tensor, ctx: LayerContext): Tensor {
    return tidy(() => {
      const a = this.child<Attention>("self_attn").forward(this.child<RMSNorm>("input_layernorm").forward(h), ctx);
      const h2 = h.add(a);
      const m = this.child<MLP>("mlp").forward(this.child<RMSNorm>("post_attention_layernorm").forward(h2));
      return h2.add(m);
    });
  }
}

/** `model.*` of a causal LM: embed_tokens, layers.{i}, norm. */
export class DecoderModel extends Module {
  constructor(config: ModelConfig, rotary: RotaryEmbedding, src: LayerSource) {
    super();
    this.registerModule("embed_tokens", src.embedding("model.embed_tokens", config.vocabSize, config.hiddenSize));
    const layers = new ModuleList<DecoderLayer>();
    for (let i = 0; i < config.numLayers; i++)
      layers.append(new DecoderLayer(config, rotary, `model.layers.${i}`, src, config.layerWindows[i]));
    this.registerModule("layers", layers);
    this.registerModule("norm", src.norm("model.norm", config.hiddenSize, config.rmsNormEps));
  }
  get layers(): ModuleList<DecoderLayer> {
    return this.child("layers");
  }
}

/** The output projection when `tie_word_embeddings`: logits = h · embed_tokensᵀ (no parameter of its own). */
export class TiedLmHead extends Module {
  constructor(private readonly embedding: () => Embedding) {
    super();
  }
  get weight(): Tensor {
    return this.embedding().weight;
  }
  forward(x: Tensor): Tensor {
    const wt = this.weight.transpose(0, 1);
    const y = matmul(x, wt);
    wt.dispose();
    return y;
  }
}

export interface ForwardArgs {
  /** i32 [batch, seq]. */
  inputIds: Tensor;
  /** i32 [batch, seq]; default 0 … seq−1 per row (or continuing after the cache). */
  positionIds?: Tensor;
  /** i32 [batch, seq]: packed sequences attend only within equal ids (training forward only). */
  segmentIds?: Tensor;
  /**
   * i32 [batch, seq], -100 = no loss. Shifted inside as transformers does (position t predicts labels[t+1]).
   * With labels the logits are never materialised whole: the loss is computed chunk by chunk.
   */
  labels?: Tensor;
  /** Generation: see KVCache. Returns logits of the last position only. */
  cache?: KVCache;
}

export interface ForwardOutput {
  /** [batch, seq, vocab] f32 without labels or cache; [batch, vocab] (last position) with a cache. */
  logits?: Tensor;
  /** Mean loss over the tokenCount non-ignored tokens (= lossSum / tokenCount); 0-D. */
  loss?: Tensor;
  /** Sum of per-token losses (for token-normalised gradient accumulation); 0-D. */
  lossSum?: Tensor;
  tokenCount?: number;
}

export interface CausalLMOptions {
  /** Recompute each decoder layer in backward instead of keeping its activations. */
  gradientCheckpointing?: boolean;
  /**
   * Rows of hidden state per lm_head + cross-entropy chunk (tensor's fused `linearCrossEntropy` for a plain
   * head; chunked checkpointed cross-entropy for any other head module); default: ≈ 8 Mi logits per chunk.
   */
  lossChunkRows?: number;
}

export class CausalLM extends Module {
  readonly rotary: RotaryEmbedding;
  gradientCheckpointing: boolean;
  lossChunkRows: number | undefined;

  constructor(
    readonly config: ModelConfig,
    src: LayerSource,
    options: CausalLMOptions = {},
  ) {
    super();
    this.rotary = new RotaryEmbedding(config);
    this.gradientCheckpointing = options.gradientCheckpointing ?? false;
    this.lossChunkRows = options.lossChunkRows;
    const model = this.registerModule("model", new DecoderModel(config, this.rotary, src));
    this.registerModule(
      "lm_head",
      config.tieWordEmbeddings
        ? new TiedLmHead(() => model.child<Embedding>("embed_tokens"))
        : src.linear("lm_head", config.hiddenSize, config.vocabSize, false),
    );
  }

  get architecture(): Architecture {
    return this.config.architecture;
  }

  createCache(): KVCache {
    return new KVCache(this.config.numLayers, this.config.layerWindows);
  }

  /** With a cache: the last position's logits. With labels: the loss (mean, sum, token count). Otherwise: logits. */
  forward(args: ForwardArgs & { cache: KVCache }): ForwardOutput & { logits: Tensor };
  forward(
    args: ForwardArgs & { labels: Tensor; cache?: undefined },
  ): ForwardOutput & Required<Omit<ForwardOutput, "logits">>;
  forward(args: ForwardArgs & { labels?: undefined }): ForwardOutput & { logits: Tensor };
  forward(args: ForwardArgs): ForwardOutput;
  forward(args: ForwardArgs): ForwardOutput {
    if (args.cache) {
      const cache = args.cache;
      return noGrad(() => tidy(() => ({ logits: this.forwardCached(args, cache) })));
    }
    return tidy(() => {
      const h = this.hiddenStates(args);
      if (args.labels) return this.loss(h, args.labels);
      return { logits: this.child<LinearLike>("lm_head").forward(h) };
    });
  }

  /** Final-norm hidden states [batch, seq, hidden] f32. */
  private hiddenStates(args: ForwardArgs, cache?: KVCache): Tensor {
    const ids = checkVocabulary(checkIds("inputIds", args.inputIds), this.config.vocabSize);
    const [b, s] = ids.shape;
    const start = cache?.length ?? 0;
    const positions = args.positionIds
      ? checkIds("positionIds", args.positionIds, ids.shape)
      : defaultPositions(b, s, start, ids);
    if (args.segmentIds) checkIds("segmentIds", args.segmentIds, ids.shape);
    const model = this.child<DecoderModel>("model");
    const emb = model.child<Embedding>("embed_tokens").forward(ids);
    let h = emb.dtype === "f32" ? emb : emb.cast("f32");
    let i = 0;
    for (const layer of model.layers) {
      const li = i++;
      if (cache) h = layer.forward(h, { positions, cache: { cache, layer: li } });
      else if (this.gradientCheckpointing && isGradEnabled()) {
        const seg = args.segmentIds;
        h = seg
          ? checkpoint((x, p, sg) => layer.forward(x, { positions: p, segmentIds: sg }), h, positions, seg)
          : checkpoint((x, p) => layer.forward(x, { positions: p }), h, positions);
      } else h = layer.forward(h, { positions, segmentIds: args.segmentIds });
    }
    return model.child<RMSNorm>("norm").forward(h);
  }

  private forwardCached(args: ForwardArgs, cache: KVCache): Tensor {
    if (args.labels) throw new ModelError("bad_argument", "forward: labels cannot be combined with a KV cache");
    if (args.segmentIds) throw new ModelError("bad_argument", "forward: segmentIds cannot be combined with a KV cache");
    const h = this.hiddenStates(args, cache);
    const [b, s, hid] = h.shape;
    const last = h.narrow(1, s - 1, 1).reshape([b, hid]);
    return this.child<LinearLike>("lm_head").forward(last);
  }

  /** Shifted cross-entropy through lm_head, chunk by chunk; each chunk's logits are recomputed in backward. */
  private loss(h: Tensor, labels: Tensor): ForwardOutput {
    const [b, s, hid] = h.shape;
    checkIds("labels", labels, [b, s]);
    const raw = labels.toTypedArray() as Int32Array;
    const vocab = this.config.vocabSize;
    const shifted = new Int32Array(b * s).fill(-100);
    let tokenCount = 0;
    for (let r = 0; r < b; r++)
      for (let t = 0; t + 1 < s; t++) {
        const l = raw[r * s + t + 1];
        if (l !== -100 && !(l >= 0 && l < vocab))
          throw new ModelError(
            "bad_token_id",
            `forward: label ${l} (row ${r}, position ${t + 1}) is outside the model's vocabulary [0, ${vocab}) and is not -100 (ignored): a pretokenized dataset's labels do not fit config.json's vocab_size`,
            { key: "labels" },
          );
        shifted[r * s + t] = l;
        if (l !== -100) tokenCount++;
      }
    const rows = b * s;
    const flat = h.reshape([rows, hid]);
    const target = tensor(shifted, { dtype: "i32", backend: h.backend });
    const chunk = Math.max(1, this.lossChunkRows ?? Math.floor((8 << 20) / vocab));
    const head = this.child<LinearLike>("lm_head");
    const weight = plainHeadWeight(head);
    const lossSum = weight
      ? linearCrossEntropy(flat, weight, target, { chunkSize: chunk }).loss
      : chunkedLoss(head, flat, target, chunk);
    return { loss: markMean(lossSum.div(Math.max(tokenCount, 1))), lossSum, tokenCount };
  }
}

/** The weight of an lm_head that is a plain bias-free projection (fused loss), or null (e.g. a LoRA-wrapped head). */
function plainHeadWeight(head: LinearLike): Tensor | null {
  if (head instanceof TiedLmHead) return head.weight;
  if (head instanceof Linear && !head.bias) return head.weight;
  return null;
}

/**
 * Fallback for any other head module: cross-entropy chunk by chunk through head.forward, each chunk
 * checkpointed (its logits are recomputed in backward), so the full logits never exist either.
 */
function chunkedLoss(head: LinearLike, flat: Tensor, target: Tensor, chunk: number): Tensor {
  // tidy: each chunk's logits are freed as soon as its loss is computed
  const chunkLoss = (x: Tensor, y: Tensor) => tidy(() => crossEntropy(head.forward(x), y, { reduction: "sum" }));
  const rows = flat.shape[0];
  let lossSum: Tensor | null = null;
  for (let r0 = 0; r0 < rows; r0 += chunk) {
    const n = Math.min(chunk, rows - r0);
    const x = flat.narrow(0, r0, n);
    const y = target.narrow(0, r0, n);
    const part = isGradEnabled() ? checkpoint(chunkLoss, x, y) : chunkLoss(x, y);
    lossSum = lossSum ? lossSum.add(part) : part;
  }
  return lossSum!;
}

function checkIds(name: string, t: Tensor, shape?: readonly number[]): Tensor {
  if (t.dtype !== "i32" || t.ndim !== 2)
    throw new ModelError(
      "bad_argument",
      `forward: ${name} must be i32 [batch, seq], got ${t.dtype} ${JSON.stringify(t.shape)}`,
      {
        key: name,
      },
    );
  if (shape && t.shape.join() !== shape.join())
    throw new ModelError(
      "bad_argument",
      `forward: ${name} ${JSON.stringify(t.shape)} must be ${JSON.stringify(shape)}`,
      {
        key: name,
      },
    );
  return t;
}

/**
 * Tags the mean loss so @qlora/trainer can refuse it (a trainer loss function must return the sum; the mean would
 * train with the gradient divided by the token count once more). A registered symbol: no import either way.
 */
function markMean(t: Tensor): Tensor {
  Object.defineProperty(t, Symbol.for("qlora.meanLoss"), { value: true });
  return t;
}

/** An id past the embedding table means the tokenizer and config.json disagree: say so, not the embedding op. */
function checkVocabulary(ids: Tensor, vocabSize: number): Tensor {
  const values = ids.toTypedArray() as Int32Array;
  const at = values.findIndex((id) => id < 0 || id >= vocabSize);
  if (at >= 0) {
    const seq = ids.shape[1];
    throw new ModelError(
      "bad_token_id",
      `forward: input id ${values[at]} (row ${Math.floor(at / seq)}, position ${at % seq}) is outside the model's vocabulary [0, ${vocabSize}): the tokenizer (or a pretokenized dataset) has ids that config.json's vocab_size does not`,
      { key: "inputIds" },
    );
  }
  return ids;
}

function defaultPositions(b: number, s: number, start: number, like: Tensor): Tensor {
  const p = new Int32Array(b * s);
  for (let r = 0; r < b; r++) for (let t = 0; t < s; t++) p[r * s + t] = start + t;
  return tensor(p, { shape: [b, s], dtype: "i32", backend: like.backend });
}

export class LlamaForCausalLM extends CausalLM {}
export class MistralForCausalLM extends CausalLM {}
export class Qwen2ForCausalLM extends CausalLM {}
export class Qwen3ForCausalLM extends CausalLM {}

const CLASSES: Record<Architecture, typeof CausalLM> = {
  LlamaForCausalLM,
  MistralForCausalLM,
  Qwen2ForCausalLM,
  Qwen3ForCausalLM,
};

/** The model class named by config.architectures, built from `src`. */
export function createModel(config: ModelConfig, src: LayerSource, options: CausalLMOptions = {}): CausalLM {
  return new CLASSES[config.architecture](config, src, options);
}
