/**
 * KV cache for generation. Contract (what the generate loop relies on):
 * - `model.createCache()` gives an empty cache; `cache.length` is the number of positions already cached
 *   (the same for every sequence of the batch).
 * - `model.forward({ inputIds [batch, n], cache })` runs the n new tokens at positions length … length+n−1
 *   (or the given `positionIds`), attends to every cached position plus causally within the n new ones,
 *   appends their keys/values (after rope) to the cache, and returns `logits` of the last new position
 *   [batch, vocab] (f32). Prefill is the first call with the whole prompt; decode calls pass n = 1.
 * - Gradients are never recorded through the cache (the cached forward runs under `noGrad`).
 * - `cache.dispose()` frees its tensors; a cache belongs to one model and one batch size.
 * Storage: per layer one preallocated [batch, capacity, kvHeads, headDim] f32 buffer for keys and one for values
 * (rope's layout, so new keys are written in place and, for batch 1, attention reads the cache without a
 * copy); the capacity doubles when full. A sliding-window layer (window W) keeps only the keys its queries can
 * still see: the new queries at positions length … length+n−1 see keys after length − W, so older ones are
 * dropped when the buffer is next reallocated (to twice the W − 1 kept, at least 64 and at least W − 1 + n): memory
 * stays bounded however long the generation runs, like transformers' sliding-window cache.
 */
import { keep, type Tensor, zeros } from "@qlora/tensor";

interface LayerStore {
  k: Tensor | null;
  v: Tensor | null;
  /** Positions dropped from the front of the buffers (sliding-window layers): slot i holds position dropped + i. */
  dropped: number;
}

/**
 * Writes `src` [b, n, h, d] into `buf` [b, capacity, h, d] at positions from…from+n, in place: through the
 * backend's strided copy when it has one (the cpu backend's is native; one call per layer and tensor in a
 * decode step), else as += into the zero-filled slot.
 */
function writeSlot(buf: Tensor, src: Tensor, from: number): void {
  const slot = buf.narrow(1, from, src.shape[1]);
  const be = buf.backend;
  if (be.copyInPlace && src.dtype === buf.dtype)
    be.copyInPlace(buf.buffer, slot.stridedView, src.buffer, src.stridedView);
  else slot.add_(src);
  slot.dispose();
}

export class KVCache {
  private readonly store: LayerStore[];
  private readonly windows: readonly number[];
  private len = 0;

  /** `windows[i]`: layer i's sliding window (0 or absent = full attention; see ModelConfig.layerWindows). */
  constructor(numLayers: number, windows: readonly number[] = []) {
    this.store = Array.from({ length: numLayers }, () => ({ k: null, v: null, dropped: 0 }));
    this.windows = windows;
  }

  /** Cached positions (0 when empty). */
  get length(): number {
    return this.len;
  }

  /** @internal Positions layer `layer`'s buffers have room for (tests: a sliding-window layer's stays bounded). */
  capacity(layer: number): number {
    return this.store[layer].k?.shape[1] ?? 0;
  }

  /**
   * @internal Append layer `layer`'s new keys/values k, v [batch, n, kvHeads, headDim] and return views of the
   * cached ones the new queries can see, as [batch, kvHeads, keys, headDim]: every position for a full-attention
   * layer (keys = length + n); for a sliding-window layer at least the last W − 1 cached ones and the new ones
   * (its earlier positions are gone; the query at cache position length + i sits at keys − n + i either way).
   * The last layer's call advances `length`.
   */
  append(layer: number, k: Tensor, v: Tensor): { k: Tensor; v: Tensor } {
    const s = this.store[layer];
    const [, n] = k.shape;
    const total = this.len + n;
    const window = this.windows[layer] ?? 0;
    const keepFrom = window > 0 ? Math.max(s.dropped, this.len - window + 1) : 0;
    let { k: kBuf, v: vBuf } = s;
    if (!kBuf || !vBuf || kBuf.shape[1] < total - s.dropped) {
      kBuf = s.k = this.realloc(kBuf, k, s.dropped, keepFrom, total);
      vBuf = s.v = this.realloc(vBuf, v, s.dropped, keepFrom, total);
      s.dropped = keepFrom;
    }
    writeSlot(kBuf, k, this.len - s.dropped);
    writeSlot(vBuf, v, this.len - s.dropped);
    if (layer === this.store.length - 1) this.len = total;
    const view = (t: Tensor) => {
      const used = t.narrow(1, keepFrom - s.dropped, total - keepFrom);
      const out = used.transpose(1, 2);
      used.dispose();
      return out;
    };
    return { k: view(kBuf), v: view(vBuf) };
  }

  /**
   * A zero-filled buffer for positions keepFrom … total−1 holding the cached ones from keepFrom on (the old
   * buffer's slot 0 is position `dropped`). Capacity: twice what it keeps (so copies amortise to O(1) a step),
   * at least 64 positions.
   */
  private realloc(buf: Tensor | null, like: Tensor, dropped: number, keepFrom: number, total: number): Tensor {
    const [b, , h, d] = like.shape;
    const kept = this.len - keepFrom;
    const capacity = Math.max(total - keepFrom, 2 * kept, 64);
    const grown = keep(zeros([b, capacity, h, d], { backend: like.backend }));
    if (buf) {
      if (kept > 0) {
        const head = grown.narrow(1, 0, kept);
        const old = buf.narrow(1, keepFrom - dropped, kept);
        head.add_(old);
        head.dispose();
        old.dispose();
      }
      buf.dispose();
    }
    return grown;
  }

  dispose(): void {
    for (const s of this.store) {
      s.k?.dispose();
      s.v?.dispose();
      s.k = null;
      s.v = null;
      s.dropped = 0;
    }
    this.len = 0;
  }
}
