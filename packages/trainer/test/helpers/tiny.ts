/**
 * Test fixtures built only from @qlora/tensor: a tiny causal "language model" (Embedding → RMSNorm → Linear head),
 * its summed cross-entropy loss, an AdamW with a state dict, and an in-memory batch source.
 */
import { AdamW, Embedding, Linear, Module, RMSNorm, type Tensor, crossEntropy, dropout, tensor } from "@qlora/tensor";
import type { TokenBatch } from "../../src/index";
import type { BatchSource, TrainerOptimizer } from "../../src/index";

export interface Batch {
  readonly ids: number[][];
  readonly labels: number[][];
}

export class TinyLM extends Module {
  readonly embed: Embedding;
  readonly norm: RMSNorm;
  readonly head: Linear;
  constructor(
    readonly vocab = 11,
    readonly dim = 8,
    /** Dropout on the embeddings: draws from the global generator, so resume must restore it. */
    readonly dropoutP = 0,
  ) {
    super();
    this.embed = this.registerModule("embed", new Embedding(vocab, dim));
    this.norm = this.registerModule("norm", new RMSNorm(dim));
    this.head = this.registerModule("head", new Linear(dim, vocab, { bias: false }));
    this.norm.weight.requiresGrad = false;
  }
  forward(ids: Tensor): Tensor {
    const e = this.embed.forward(ids);
    const h = this.dropoutP > 0 ? dropout(e, this.dropoutP, this.training) : e;
    if (h !== e) e.dispose();
    const n = this.norm.forward(h);
    h.dispose();
    const out = this.head.forward(n);
    n.dispose();
    return out;
  }
}

/** Sum of token losses (labels -100 ignored). */
export function tinyLoss(model: Module, b: Batch): Tensor {
  const ids = tensor(b.ids.flat(), { dtype: "i32", shape: [b.ids.length, b.ids[0].length] });
  const labels = tensor(b.labels.flat(), { dtype: "i32", shape: [b.ids.length, b.ids[0].length] });
  const logits = (model as TinyLM).forward(ids);
  const loss = crossEntropy(logits, labels, { reduction: "sum" });
  for (const t of [ids, labels, logits]) t.dispose();
  return loss;
}

export function countTokens(b: Batch): number {
  return b.labels.flat().filter((l) => l !== -100).length;
}

export function memorySource(batches: Batch[]): BatchSource<Batch> {
  return {
    length: batches.length,
    *batches(_epoch, skip) {
      yield* batches.slice(skip);
    },
    lossTokens: countTokens,
  };
}

/** Random batches with a deterministic LCG (uneven loss-token counts per batch). */
export function randomBatches(n: number, rows: number, seq: number, vocab: number, seed = 1): Batch[] {
  let s = seed;
  const next = () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s / 2147483648;
  };
  return Array.from({ length: n }, () => {
    const ids = Array.from({ length: rows }, () => Array.from({ length: seq }, () => Math.floor(next() * vocab)));
    const labels = ids.map((r) => r.map((t, j) => (next() < 0.3 ? -100 : (t + j) % vocab)));
    return { ids, labels };
  });
}

/** tensor's AdamW with the stateDict/loadStateDict the trainer needs (state keyed by parameter index). */
export class StatefulAdamW extends AdamW implements TrainerOptimizer {
  private get moments(): Map<Tensor, { m: Tensor; v: Tensor }> {
    return (this as unknown as { state: Map<Tensor, { m: Tensor; v: Tensor }> }).state;
  }
  stateDict(): unknown {
    const state: Record<string, { m: Tensor; v: Tensor }> = {};
    this.params.forEach((p, i) => {
      const s = this.moments.get(p);
      if (s) state[i] = s;
    });
    return { stepCount: this.stepCount, state };
  }
  loadStateDict(sd: unknown): void {
    const { stepCount, state } = sd as { stepCount: number; state: Record<string, { m: Tensor; v: Tensor }> };
    this.stepCount = stepCount;
    for (const [i, s] of Object.entries(state)) this.moments.set(this.params[Number(i)], s);
  }
}

/** Shifted (causal LM) summed loss of a TokenBatch: position t predicts labels[t+1]. */
export function tokenBatchLoss(model: Module, b: TokenBatch): Tensor {
  const shifted = new Int32Array(b.labels.length).fill(-100);
  for (let r = 0; r < b.rows; r++)
    for (let t = 0; t + 1 < b.seqLen; t++) shifted[r * b.seqLen + t] = b.labels[r * b.seqLen + t + 1];
  const ids = tensor(b.inputIds, { dtype: "i32", shape: [b.rows, b.seqLen] });
  const labels = tensor(shifted, { dtype: "i32", shape: [b.rows, b.seqLen] });
  const logits = (model as TinyLM).forward(ids);
  const loss = crossEntropy(logits, labels, { reduction: "sum" });
  for (const t of [ids, labels, logits]) t.dispose();
  return loss;
}
