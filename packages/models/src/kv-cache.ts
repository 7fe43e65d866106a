/**
 * KV cache for generation. Contract (what the generate loop relies on):
 * - `model.createCache()` gives an empty cache; `cache.length` is the number of positions already cached
 *   (the same for every sequence of the batch).
 * - `model.forward({ inputIds [batch, n], cache })` runs the n new tokens at positions length … length+n−1
 *   (or the given `positionIds`), attends to every cached position plus causally within the n new ones,
 *   appends their keys/values (after rope) to the cache, and returns `logits` of the last new position
 *   [batch, vocab] (f32). Prefill is the first call with the whole prompt; decode calls pass n = 1.
 * - Gradients are never recorded through the cache (call it under `noGrad`, or it is done for you).
 * - `cache.dispose()` frees its tensors; a cache belongs to one model and one batch size.
 * Keys/values are stored per layer as [batch, kvHeads, length, headDim] f32.
 */
import { keep, type Tensor } from "@qlora/tensor";

export interface LayerKV {
  k: Tensor | null;
  v: Tensor | null;
}

export class KVCache {
  readonly layers: LayerKV[];
  constructor(numLayers: number) {
    this.layers = Array.from({ length: numLayers }, () => ({ k: null, v: null }));
  }

  /** Cached positions (0 when empty). */
  get length(): number {
    return this.layers[0]?.k?.shape[2] ?? 0;
  }

  /** @internal store a layer's new full keys/values, freeing the previous ones. */
  set(layer: number, k: Tensor, v: Tensor): void {
    const l = this.layers[layer];
    l.k?.dispose();
    l.v?.dispose();
    l.k = keep(k);
    l.v = keep(v);
  }

  dispose(): void {
    for (const l of this.layers) {
      l.k?.dispose();
      l.v?.dispose();
      l.k = null;
      l.v = null;
    }
  }
}
