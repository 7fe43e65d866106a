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
 * copy); the capacity doubles when full.
 */
import { keep, type Tensor, zeros } from "@qlora/tensor";

interface LayerStore {
  k: Tensor | null;
  v: Tensor | null;
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
  private len = 0;

  constructor(numLayers: number) {
    this.store = Array.from({ length: numLayers }, () => ({ k: null, v: null }));
  }

  /** Cached positions (0 when empty). */
  get length(): number {
    return this.len;
  }

  /**
   * @internal Append layer `layer`'s new keys/values k, v [batch, n, kvHeads, headDim] and return views of all
   * cached ones as [batch, kvHeads, length + n, headDim]. The last layer's call advances `length`.
   */
  append(layer: number, k: Tensor, v: Tensor): { k: Tensor; v: Tensor } {
    const s = this.store[layer];
    const [, n] = k.shape;
    const total = this.len + n;
    s.k = this.reserve(s.k, k, total);
    s.v = this.reserve(s.v, v, total);
    writeSlot(s.k, k, this.len);
    writeSlot(s.v, v, this.len);
    if (layer === this.store.length - 1) this.len = total;
    const view = (t: Tensor) => {
      const used = t.narrow(1, 0, total);
      const out = used.transpose(1, 2);
      used.dispose();
      return out;
    };
    return { k: view(s.k), v: view(s.v) };
  }

  /** A zero-filled buffer with room for `total` positions, keeping the cached ones (doubling capacity). */
  private reserve(buf: Tensor | null, like: Tensor, total: number): Tensor {
    if (buf && buf.shape[1] >= total) return buf;
    const [b, , h, d] = like.shape;
    const capacity = Math.max(total, 2 * (buf?.shape[1] ?? 0), 64);
    const grown = keep(zeros([b, capacity, h, d], { backend: like.backend }));
    if (buf) {
      const head = grown.narrow(1, 0, this.len);
      const old = buf.narrow(1, 0, this.len);
      head.add_(old);
      head.dispose();
      old.dispose();
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
    }
    this.len = 0;
  }
}
