/**
 * Next-token selection over one row of logits: pure functions, each returning a new array, applied in
 * transformers' order: repetition penalty, then (when sampling) temperature → top-k → top-p → min-p, then a
 * categorical draw with one uniform number from the caller (tensor's Philox generator in generate.ts).
 * Filtered-out tokens get -Infinity; every filter keeps at least one token.
 *
 * Error code (ModelError): `bad_generation_option`.
 */
import { ModelError } from "./errors";

export interface SamplingOptions {
  /**
   * Draw from the distribution instead of taking the argmax. Default: true when temperature, topK, topP or minP
   * is given, false otherwise (greedy). temperature 0 always means greedy.
   */
  doSample?: boolean;
  /** Divides the logits (default 1). */
  temperature?: number;
  /** Keep the k most likely tokens (ties with the k-th kept, as in transformers); 0 or undefined: off. */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches p (0 < p ≤ 1). */
  topP?: number;
  /** Drop tokens whose probability is below minP × the largest probability (0 ≤ minP ≤ 1). */
  minP?: number;
  /** CTRL-style penalty > 0 over tokens already in the sequence (prompt included): 1 = off. */
  repetitionPenalty?: number;
}

/** Checks option ranges once, so a bad value is a typed error before any work. */
export function checkSamplingOptions(o: SamplingOptions): void {
  const bad = (key: string, expected: string, got: unknown) =>
    new ModelError("bad_generation_option", `generate: ${key} must be ${expected}, got ${String(got)}`, { key });
  if (o.temperature !== undefined && !(Number.isFinite(o.temperature) && o.temperature >= 0))
    throw bad("temperature", "a finite number ≥ 0", o.temperature);
  if (o.topK !== undefined && !(Number.isInteger(o.topK) && o.topK >= 0)) throw bad("topK", "an integer ≥ 0", o.topK);
  if (o.topP !== undefined && !(o.topP > 0 && o.topP <= 1)) throw bad("topP", "in (0, 1]", o.topP);
  if (o.minP !== undefined && !(o.minP >= 0 && o.minP <= 1)) throw bad("minP", "in [0, 1]", o.minP);
  if (o.repetitionPenalty !== undefined && !(Number.isFinite(o.repetitionPenalty) && o.repetitionPenalty > 0))
    throw bad("repetitionPenalty", "a finite number > 0", o.repetitionPenalty);
}

/** Whether these options sample (see SamplingOptions.doSample). */
export function isSampling(o: SamplingOptions): boolean {
  if (o.temperature === 0) return false;
  return (
    o.doSample ?? (o.temperature !== undefined || o.topK !== undefined || o.topP !== undefined || o.minP !== undefined)
  );
}

/** Index of the largest logit (the first one on ties, like torch.argmax). */
export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/** transformers' RepetitionPenaltyLogitsProcessor: seen tokens' logits divided by p when > 0, times p when < 0. */
export function applyRepetitionPenalty(logits: Float32Array, seen: Iterable<number>, penalty: number): Float32Array {
  const out = logits.slice();
  if (penalty === 1) return out;
  for (const id of new Set(seen)) {
    if (id < 0 || id >= out.length) continue;
    const v = logits[id];
    out[id] = v < 0 ? v * penalty : v / penalty;
  }
  return out;
}

export function applyTemperature(logits: Float32Array, temperature: number): Float32Array {
  if (temperature === 1) return logits.slice();
  return logits.map((v) => v / temperature);
}

/** Keeps the k largest logits and every logit equal to the k-th largest (transformers' TopKLogitsWarper). */
export function topKFilter(logits: Float32Array, k: number): Float32Array {
  if (k <= 0 || k >= logits.length) return logits.slice();
  const kth = Float32Array.from(logits)
    .sort()
    .at(logits.length - k)!;
  return logits.map((v) => (v < kth ? Number.NEGATIVE_INFINITY : v));
}

/** Probabilities of the logits (softmax in f64; -Infinity gives 0). */
export function softmax(logits: ArrayLike<number>): Float64Array {
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  const p = new Float64Array(logits.length);
  if (max === Number.NEGATIVE_INFINITY) return p;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) {
    p[i] = Math.exp(logits[i] - max);
    sum += p[i];
  }
  for (let i = 0; i < p.length; i++) p[i] /= sum;
  return p;
}

/**
 * transformers' TopPLogitsWarper: sort ascending, drop the tokens whose cumulative probability is ≤ 1 − p,
 * always keeping the most likely one.
 */
export function topPFilter(logits: Float32Array, p: number): Float32Array {
  if (p >= 1) return logits.slice();
  const probs = softmax(logits);
  // Ascending by logit (ties: higher index first), so the argmax is last and always kept.
  const order = Array.from(probs.keys()).sort((a, b) => logits[a] - logits[b] || b - a);
  const out = logits.slice();
  let cumulative = 0;
  for (let r = 0; r < order.length - 1; r++) {
    cumulative += probs[order[r]];
    if (cumulative > 1 - p) break;
    out[order[r]] = Number.NEGATIVE_INFINITY;
  }
  return out;
}

/** transformers' MinPLogitsWarper: drop tokens with probability < minP · max probability. */
export function minPFilter(logits: Float32Array, minP: number): Float32Array {
  if (minP <= 0) return logits.slice();
  const probs = softmax(logits);
  let top = 0;
  for (const q of probs) if (q > top) top = q;
  const threshold = minP * top;
  return logits.map((v, i) => (probs[i] < threshold ? Number.NEGATIVE_INFINITY : v));
}

/** Inverse-CDF draw: the first token whose cumulative probability exceeds u·total (u in [0, 1)). */
export function sampleCategorical(probs: ArrayLike<number>, u: number): number {
  let total = 0;
  for (let i = 0; i < probs.length; i++) total += probs[i];
  const target = u * total;
  let cumulative = 0;
  let last = 0;
  for (let i = 0; i < probs.length; i++) {
    if (probs[i] <= 0) continue;
    cumulative += probs[i];
    last = i;
    if (cumulative > target) return i;
  }
  return last; // rounding left target ≥ total: the last token with mass
}

/** The logits after every processor the options ask for (what is sampled from, or argmax'ed when greedy). */
export function processLogits(logits: Float32Array, seen: Iterable<number>, o: SamplingOptions): Float32Array {
  let x = applyRepetitionPenalty(logits, seen, o.repetitionPenalty ?? 1);
  if (!isSampling(o)) return x;
  x = applyTemperature(x, o.temperature ?? 1);
  if (o.topK) x = topKFilter(x, o.topK);
  if (o.topP !== undefined) x = topPFilter(x, o.topP);
  if (o.minP !== undefined) x = minPFilter(x, o.minP);
  return x;
}

/** One next token: greedy argmax, or a draw with the uniform number `u` when the options sample. */
export function selectToken(logits: Float32Array, seen: Iterable<number>, o: SamplingOptions, u: number): number {
  const x = processLogits(logits, seen, o);
  return isSampling(o) ? sampleCategorical(softmax(x), u) : argmax(x);
}
