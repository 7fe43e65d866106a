/**
 * Autoregressive generation over a KV-cached model (CausalLM's `createCache()` / `forward({inputIds, cache})`,
 * see kv-cache.ts): prefill the prompt in one forward, then one token per forward.
 *
 * Several prompts: prompts of equal length share one batched cache (one forward per step for the group); prompts
 * of different lengths get caches of their own (per-sequence caches, no padding, so no attention mask is needed
 * and every sequence sees exactly its own tokens). A finished sequence in a group is fed its last token until the
 * whole group is done; its extra outputs are ignored. Groups advance in lock step, so streamed events interleave.
 *
 * Randomness: sequence i draws its uniforms from tensor's Philox generator at (seed, offset i·2³²), so a prompt's
 * continuation does not depend on which other prompts were generated with it.
 *
 * Stop conditions: a stop token id (included in `tokens`, not in `text`), a stop string (`text` is cut before it;
 * needs a tokenizer), `maxNewTokens`, or an aborted signal. Streamed text holds back a trailing incomplete UTF-8
 * character and any suffix that may still become a stop string, so no stop string is ever streamed.
 */
import { Generator, type Tensor, tensor } from "@qlora/tensor";
import { ModelError } from "./errors";
import { checkSamplingOptions, isSampling, type SamplingOptions, selectToken } from "./sampling";

export interface GenerationCache {
  readonly length: number;
  dispose(): void;
}

/** What generation needs of a model; CausalLM has it. */
export interface GenerationModel<C extends GenerationCache = GenerationCache> {
  createCache(): C;
  /** `inputIds` i32 [batch, n] continuing after the cache; returns the last position's logits [batch, vocab]. */
  forward(args: { inputIds: Tensor; cache: NoInfer<C> }): { logits?: Tensor };
}

/** The part of HfTokenizer generation uses (for text and stop strings). */
export interface GenerationTokenizer {
  decode(ids: readonly number[]): string;
  readonly eosTokenId?: number | null;
}

/**
 * The token ids generation stops at, as transformers picks them: generation_config.json's eos_token_id (a list in
 * Llama 3.1 and Qwen2.5 Instruct: <|eot_id|>, <|eom_id|>, <|end_of_text|>), else config.json's, plus the tokenizer's
 * EOS. loadModel returns the first two (`generationConfig`, `config.eosTokenId`).
 */
export function eosTokenIds(from: {
  generationConfig?: Record<string, unknown> | null;
  config?: { readonly eosTokenId: number | readonly number[] | null };
  tokenizer?: GenerationTokenizer;
}): number[] {
  const list = (v: unknown): number[] =>
    (Array.isArray(v) ? v : [v]).filter((t): t is number => Number.isInteger(t) && (t as number) >= 0);
  const generation = list(from.generationConfig?.eos_token_id);
  const ids = generation.length > 0 ? generation : list(from.config?.eosTokenId);
  return [...new Set([...ids, ...list(from.tokenizer?.eosTokenId)])];
}

export type FinishReason = "stop_token" | "stop_string" | "max_new_tokens" | "aborted";

export interface GenerateOptions extends SamplingOptions {
  /** Upper bound on generated tokens per sequence (default 256). */
  maxNewTokens?: number;
  /** Token ids that end a sequence. Default: the tokenizer's eos_token id, if a tokenizer is given. */
  stopTokenIds?: readonly number[];
  /** Strings that end a sequence once they appear in its generated text (needs `tokenizer`). */
  stopStrings?: readonly string[];
  /** Decodes text for events, results and stop strings. */
  tokenizer?: GenerationTokenizer;
  /** Seed of the Philox generator (default: a random one). */
  seed?: number;
  /** Called for every generated token, in order (also when iterating with generateStream). */
  onToken?: (event: TokenEvent) => void;
  signal?: AbortSignal;
}

export interface TokenEvent {
  /** Index of the prompt this token continues. */
  sequence: number;
  tokenId: number;
  /** 0 for the first generated token of the sequence. */
  step: number;
  /**
   * Text that became final with this token ("" without a tokenizer, or while held back). A sequence that ends
   * without a new token (aborted) gets one last event with tokenId -1.
   */
  text: string;
  /** Set on the sequence's last event. */
  finishReason?: FinishReason;
}

export interface GenerationResult {
  /** Generated ids (a stop token included, as transformers returns it). */
  tokens: number[];
  /** Generated text without the stop token / stop string (only with a tokenizer). */
  text?: string;
  finishReason: FinishReason;
}

/** Generates a continuation of each prompt (token ids) and returns them in prompt order; `text` with a tokenizer. */
export async function generate<C extends GenerationCache>(
  model: GenerationModel<C>,
  prompts: readonly (readonly number[])[],
  options: GenerateOptions & { tokenizer: GenerationTokenizer },
): Promise<(GenerationResult & { text: string })[]>;
export async function generate<C extends GenerationCache>(
  model: GenerationModel<C>,
  prompts: readonly (readonly number[])[],
  options?: GenerateOptions,
): Promise<GenerationResult[]>;
export async function generate<C extends GenerationCache>(
  model: GenerationModel<C>,
  prompts: readonly (readonly number[])[],
  options: GenerateOptions = {},
): Promise<GenerationResult[]> {
  const run = new Run(model, prompts, options);
  while (run.step()) await yieldToEventLoop();
  return run.results();
}

/**
 * The same as `generate`, as an async iterator of token events; its return value (the iterator's final
 * `value`) is the results array.
 */
export async function* generateStream<C extends GenerationCache>(
  model: GenerationModel<C>,
  prompts: readonly (readonly number[])[],
  options: GenerateOptions = {},
): AsyncGenerator<TokenEvent, GenerationResult[]> {
  const events: TokenEvent[] = [];
  const onToken = (e: TokenEvent) => {
    options.onToken?.(e);
    events.push(e);
  };
  const run = new Run(model, prompts, { ...options, onToken });
  try {
    for (;;) {
      const more = run.step();
      yield* events.splice(0);
      if (!more) return run.results();
    }
  } finally {
    run.dispose();
  }
}

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

const STREAM_STRIDE = 2 ** 32;

class Sequence {
  readonly generated: number[] = [];
  readonly seen: number[];
  finish: FinishReason | undefined;
  text = "";
  emitted = 0;
  constructor(
    readonly index: number,
    readonly prompt: readonly number[],
    readonly random: Generator,
  ) {
    this.seen = [...prompt];
  }
}

class Group<C extends GenerationCache> {
  cache: C | undefined;
  constructor(readonly members: Sequence[]) {}
  get done(): boolean {
    return this.members.every((s) => s.finish !== undefined);
  }
}

class Run<C extends GenerationCache> {
  private readonly sequences: Sequence[];
  private readonly groups: Group<C>[];
  private readonly stopIds: Set<number>;
  private readonly stopStrings: readonly string[];
  private readonly maxNewTokens: number;
  private readonly sampling: boolean;

  constructor(
    private readonly model: GenerationModel<C>,
    prompts: readonly (readonly number[])[],
    private readonly o: GenerateOptions,
  ) {
    checkOptions(prompts, o);
    checkSamplingOptions(o);
    const seed = o.seed ?? Math.floor(Math.random() * 2 ** 32);
    this.sampling = isSampling(o);
    this.maxNewTokens = o.maxNewTokens ?? 256;
    const eos = o.tokenizer?.eosTokenId;
    this.stopIds = new Set(o.stopTokenIds ?? (eos === undefined || eos === null ? [] : [eos]));
    this.stopStrings = o.stopStrings ?? [];
    this.sequences = prompts.map((p, i) => new Sequence(i, p, new Generator(seed, i * STREAM_STRIDE)));
    const byLength = new Map<number, Sequence[]>();
    for (const s of this.sequences) byLength.set(s.prompt.length, [...(byLength.get(s.prompt.length) ?? []), s]);
    this.groups = [...byLength.values()].map((members) => new Group<C>(members));
    if (this.maxNewTokens === 0) for (const s of this.sequences) s.finish = "max_new_tokens";
  }

  /** Advances every unfinished group by one token; false once all sequences are finished. */
  step(): boolean {
    try {
      for (const g of this.groups) {
        if (g.done) continue;
        if (this.o.signal?.aborted) {
          for (const s of g.members) if (s.finish === undefined) this.finish(s, "aborted");
        } else this.advance(g);
        if (g.done) this.release(g);
      }
    } catch (e) {
      this.dispose();
      throw e;
    }
    return this.groups.some((g) => !g.done);
  }

  results(): GenerationResult[] {
    return this.sequences.map((s) => ({
      tokens: s.generated,
      ...(this.o.tokenizer ? { text: s.text } : {}),
      finishReason: s.finish ?? "max_new_tokens",
    }));
  }

  dispose(): void {
    for (const g of this.groups) this.release(g);
  }

  private release(g: Group<C>): void {
    g.cache?.dispose();
    g.cache = undefined;
  }

  private advance(g: Group<C>): void {
    const prefill = g.cache === undefined;
    g.cache ??= this.model.createCache();
    const rows = g.members.map((s) => (prefill ? s.prompt : [s.generated.at(-1)!]));
    const ids = tensor(Int32Array.from(rows.flat()), { dtype: "i32", shape: [rows.length, rows[0].length] });
    let logits: Float32Array;
    try {
      const out = this.model.forward({ inputIds: ids, cache: g.cache }).logits;
      if (!out) throw new ModelError("bad_argument", "generate: the model's cached forward returned no logits");
      logits = out.toTypedArray() as Float32Array;
      out.dispose();
    } finally {
      ids.dispose();
    }
    const vocab = logits.length / g.members.length;
    g.members.forEach((s, r) => {
      if (s.finish !== undefined) return;
      const row = logits.subarray(r * vocab, (r + 1) * vocab);
      if (row.some(Number.isNaN))
        throw new ModelError(
          "non_finite_logits",
          `generate: the model produced NaN logits for prompt ${s.index} at generated token ${s.generated.length}; its weights (or the inputs) hold NaN/Inf, so no token can be chosen`,
        );
      const u = this.sampling ? s.random.uniform(1)[0] : 0;
      this.accept(s, selectToken(row, s.seen, this.o, u));
    });
  }

  private accept(s: Sequence, token: number): void {
    s.generated.push(token);
    s.seen.push(token);
    const step = s.generated.length - 1;
    if (this.stopIds.has(token)) this.finish(s, "stop_token", token, step);
    else if (this.updateText(s)) this.finish(s, "stop_string", token, step);
    else if (s.generated.length >= this.maxNewTokens) this.finish(s, "max_new_tokens", token, step);
    else this.emit(s, token, step, this.safeLength(s));
  }

  /** Re-decodes the generated text; on a stop string cuts `text` before it and returns true. */
  private updateText(s: Sequence): boolean {
    const tk = this.o.tokenizer;
    if (!tk) return false;
    s.text = tk.decode(s.generated);
    const from = Math.max(0, s.emitted - Math.max(0, ...this.stopStrings.map((x) => x.length)));
    let at = -1;
    for (const stop of this.stopStrings) {
      const j = s.text.indexOf(stop, from);
      if (j >= 0 && (at < 0 || j < at)) at = j;
    }
    if (at < 0) return false;
    s.text = s.text.slice(0, at);
    return true;
  }

  /** Length of text that can be streamed: no trailing U+FFFD (incomplete UTF-8), no possible stop-string start. */
  private safeLength(s: Sequence): number {
    let end = s.text.length;
    while (end > s.emitted && s.text.charCodeAt(end - 1) === 0xfffd) end--;
    let hold = 0;
    for (const stop of this.stopStrings)
      for (let k = Math.min(stop.length - 1, end); k > hold; k--)
        if (s.text.endsWith(stop.slice(0, k), end)) {
          hold = k;
          break;
        }
    return Math.max(s.emitted, end - hold);
  }

  private finish(s: Sequence, reason: FinishReason, token?: number, step?: number): void {
    s.finish = reason;
    // A stop token was never decoded into s.text, which therefore already ends before it.
    if (token !== undefined && step !== undefined) this.emit(s, token, step, s.text.length, reason);
    else this.o.onToken?.({ sequence: s.index, tokenId: -1, step: s.generated.length, text: "", finishReason: reason });
  }

  private emit(s: Sequence, tokenId: number, step: number, upTo: number, finishReason?: FinishReason): void {
    const text = s.text.slice(s.emitted, upTo);
    s.emitted = Math.max(s.emitted, upTo);
    this.o.onToken?.({ sequence: s.index, tokenId, step, text, ...(finishReason ? { finishReason } : {}) });
  }
}

function checkOptions(prompts: readonly (readonly number[])[], o: GenerateOptions): void {
  const bad = (key: string, msg: string) => new ModelError("bad_generation_option", `generate: ${key} ${msg}`, { key });
  if (!Array.isArray(prompts) || prompts.length === 0)
    throw bad("prompts", "must be a non-empty array of token-id arrays");
  prompts.forEach((p, i) => {
    if (!Array.isArray(p) || p.length === 0) throw bad(`prompts[${i}]`, "must be a non-empty array of token ids");
    if (!p.every((t) => Number.isInteger(t) && t >= 0 && t < 2 ** 31))
      throw bad(`prompts[${i}]`, "must hold non-negative integer token ids");
  });
  if (o.maxNewTokens !== undefined && !(Number.isInteger(o.maxNewTokens) && o.maxNewTokens >= 0))
    throw bad("maxNewTokens", `must be an integer ≥ 0, got ${o.maxNewTokens}`);
  if (o.seed !== undefined && !(Number.isSafeInteger(o.seed) && o.seed >= 0))
    throw bad("seed", `must be a non-negative safe integer, got ${o.seed}`);
  if (o.stopStrings?.length && !o.tokenizer) throw bad("stopStrings", "need a tokenizer to decode text");
  if (o.stopStrings?.some((s) => typeof s !== "string" || s.length === 0))
    throw bad("stopStrings", "must be non-empty strings");
  if (o.stopTokenIds?.some((t) => !Number.isInteger(t) || t < 0))
    throw bad("stopTokenIds", "must be non-negative integer token ids");
}
