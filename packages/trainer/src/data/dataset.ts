/**
 * From files to a BatchSource of TokenBatches: records stream in (readRecords), are tokenized one at a time and
 * appended to a compact token store (two growing Int32Arrays), so the raw text is never held whole. Then a seeded
 * validation split, packing or length grouping, and a seeded shuffle per epoch.
 */
import { Generator } from "@qlora/tensor";
import { TrainerError } from "../errors";
import type { BatchSource } from "../trainer";
import { type ExampleView, type TokenBatch, collate } from "./collate";
import { type ChatFields, type DataFormat, toExample } from "./formats";
import { packBestFitDecreasing } from "./pack";
import { type FileFormat, readRecords } from "./read";
import type { DataTokenizer } from "./tokenizer";

/** One file with its own row format (and chat fields): datasets of several types load side by side. */
export interface DataFile {
  readonly path: string;
  /** Default: DatasetOptions.format. */
  readonly format?: DataFormat;
  /** Default: DatasetOptions.chat. */
  readonly chat?: ChatFields;
}

export interface DatasetOptions {
  readonly files: string | DataFile | readonly (string | DataFile)[];
  /** File format; default by extension (.jsonl, .json, .txt, .parquet). */
  readonly fileFormat?: FileFormat;
  /** Row format of files that name none; default "auto" (by the keys of each row). */
  readonly format?: DataFormat;
  /** format "messages": where the turns are, for files that name none (default `messages: [{role, content}]`). */
  readonly chat?: ChatFields;
  readonly tokenizer?: DataTokenizer;
  readonly trainOnInputs?: boolean;
  /**
   * Sequence length: rows longer are truncated (default), dropped (overflow "drop") or an error naming the row
   * (overflow "raise"); packed rows are this long. Rows with no loss token left are dropped and counted.
   */
  readonly maxLength: number;
  readonly overflow?: "truncate" | "drop" | "raise";
  readonly packing?: boolean;
  /** Pad every batch to maxLength (Axolotl's pad_to_sequence_len), not to its longest row: one shape throughout. */
  readonly padToMaxLength?: boolean;
  readonly microBatchSize: number;
  /** Unpacked only: batches of similar lengths (less padding), as transformers' group_by_length. */
  readonly groupByLength?: boolean;
  readonly shuffle?: boolean;
  readonly seed?: number;
  /**
   * Fraction (0 < x < 1: ceil(x · examples), as datasets' train_test_split) or count (an integer ≥ 1) of examples
   * held out for evaluation.
   */
  readonly validationSplit?: number;
  readonly padId?: number;
  /** Data parallelism: this rank gets every worldSize-th batch. */
  readonly rank?: number;
  readonly worldSize?: number;
}

export interface DatasetStats {
  rows: number;
  examples: number;
  truncated: number;
  /** Rows left out: too long (overflow "drop") or with no loss token (counted again in noLossTokens). */
  dropped: number;
  /** Rows dropped because no token carries loss (e.g. the completion was truncated away). */
  noLossTokens: number;
  /** Chat rows with no assistant turn: dropped, or trained on every token under trainOnInputs. */
  noAssistantTurn: number;
  tokens: number;
  /** Tokens of the longest example (after truncation): what the model's positions must cover. */
  longest: number;
  evalExamples: number;
}

/** A BatchSource whose epochs are plain (synchronous) iterables. */
export interface TokenBatchSource extends BatchSource<TokenBatch> {
  batches(epoch: number, skip: number): Iterable<TokenBatch>;
}

export interface TokenDataset {
  readonly train: TokenBatchSource;
  readonly eval?: TokenBatchSource;
  readonly stats: DatasetStats;
  /** The examples (views into the store). */
  example(i: number): ExampleView;
}

/** Append-only store of examples in two growing Int32Arrays. */
export class ExampleStore {
  private ids = new Int32Array(1 << 12);
  private labels = new Int32Array(1 << 12);
  private starts: number[] = [0];
  get size(): number {
    return this.starts.length - 1;
  }
  get tokens(): number {
    return this.starts[this.starts.length - 1];
  }
  push(ex: ExampleView): void {
    const at = this.tokens;
    const need = at + ex.inputIds.length;
    if (need > this.ids.length) {
      const cap = Math.max(need, this.ids.length * 2);
      const grow = (a: Int32Array) => {
        const b = new Int32Array(cap);
        b.set(a.subarray(0, at));
        return b;
      };
      this.ids = grow(this.ids);
      this.labels = grow(this.labels);
    }
    this.ids.set(ex.inputIds, at);
    this.labels.set(ex.labels, at);
    this.starts.push(need);
  }
  length(i: number): number {
    return this.starts[i + 1] - this.starts[i];
  }
  get(i: number): ExampleView {
    const a = this.starts[i];
    const b = this.starts[i + 1];
    return { inputIds: this.ids.subarray(a, b), labels: this.labels.subarray(a, b) };
  }
}

/** Fisher-Yates with Philox uniforms: the same permutation for the same (seed, salt) on every machine. */
export function seededPermutation(n: number, seed: number, salt: number): number[] {
  const g = new Generator((seed * 1_000_003 + salt) % Number.MAX_SAFE_INTEGER);
  const u = g.uniform(n);
  const p = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(u[i] * (i + 1));
    [p[i], p[j]] = [p[j], p[i]];
  }
  return p;
}

export async function loadTokenDataset(o: DatasetOptions): Promise<TokenDataset> {
  if (!(Number.isInteger(o.maxLength) && o.maxLength > 1))
    throw new TrainerError("BAD_ARGUMENT", `dataset: maxLength must be an integer > 1, got ${o.maxLength}`);
  if (!(Number.isInteger(o.microBatchSize) && o.microBatchSize > 0))
    throw new TrainerError(
      "BAD_ARGUMENT",
      `dataset: microBatchSize must be a positive integer, got ${o.microBatchSize}`,
    );
  const files = (Array.isArray(o.files) ? o.files : [o.files]) as readonly (string | DataFile)[];
  const store = new ExampleStore();
  const stats: DatasetStats = {
    rows: 0,
    examples: 0,
    truncated: 0,
    dropped: 0,
    noLossTokens: 0,
    noAssistantTurn: 0,
    tokens: 0,
    longest: 0,
    evalExamples: 0,
  };
  for (const entry of files) {
    const file: DataFile = typeof entry === "string" ? { path: entry } : entry;
    // Each file is parsed with its own format: a mixed list must not fall back to guessing by keys.
    const fo = {
      format: file.format ?? o.format ?? "auto",
      chat: file.chat ?? o.chat,
      tokenizer: o.tokenizer,
      trainOnInputs: o.trainOnInputs,
      maxLength: o.maxLength,
      overflow: o.overflow,
    } as const;
    for await (const rec of readRecords(file.path, o.fileFormat)) {
      stats.rows++;
      const ex = toExample(rec, fo, stats);
      if (ex) {
        store.push(ex);
        stats.longest = Math.max(stats.longest, ex.inputIds.length);
      }
    }
  }
  stats.examples = store.size;
  stats.tokens = store.tokens;
  const paths = files.map((f) => (typeof f === "string" ? f : f.path)).join(", ");
  if (store.size === 0)
    throw new TrainerError("EMPTY_DATASET", `dataset ${paths}: no examples (${whyEmpty(o, stats)})`);
  const seed = o.seed ?? 42;
  const { train, evalIdx } = split(store.size, o.validationSplit, seed);
  stats.evalExamples = evalIdx.length;
  if (train.length === 0)
    throw new TrainerError("EMPTY_DATASET", `dataset: the validation split leaves no training examples`);
  const padId = o.padId ?? o.tokenizer?.padTokenId ?? o.tokenizer?.eosTokenId ?? 0;
  const source = (idx: number[], shuffle: boolean) =>
    batchSource(store, idx, { ...o, padId, seed, shuffle: shuffle && (o.shuffle ?? true) });
  return {
    train: source(train, true),
    eval: evalIdx.length ? source(evalIdx, false) : undefined,
    stats,
    example: (i) => store.get(i),
  };
}

/** Why no example is left, for the EMPTY_DATASET error. */
function whyEmpty(o: DatasetOptions, s: DatasetStats): string {
  const tooLong = s.dropped - s.noLossTokens;
  const parts = [`${s.rows} rows`];
  if (tooLong > 0) parts.push(`${tooLong} dropped as longer than ${o.maxLength} tokens`);
  if (s.noLossTokens > 0)
    parts.push(
      `${s.noLossTokens} dropped with no token that carries loss${s.truncated > 0 ? ` (${s.truncated} truncated to ${o.maxLength} tokens: is the maximum length too short for the prompts?)` : ""}`,
    );
  if (s.noAssistantTurn > 0)
    parts.push(
      `${s.noAssistantTurn} chat${s.noAssistantTurn === 1 ? "" : "s"} with no "assistant" turn: does the roles mapping name the reply role (ShareGPT's "gpt")?`,
    );
  return parts.join(", ");
}

function split(n: number, validation: number | undefined, seed: number): { train: number[]; evalIdx: number[] } {
  if (!validation) return { train: Array.from({ length: n }, (_, i) => i), evalIdx: [] };
  // ceil, as datasets' train_test_split: a fraction > 0 always holds out at least one example.
  const k = validation < 1 ? Math.ceil(validation * n) : validation;
  if (!(validation > 0 && Number.isInteger(k) && k < n))
    throw new TrainerError(
      "BAD_ARGUMENT",
      `validationSplit ${validation} holds out ${Number.isInteger(k) ? k : validation} of ${n} examples; expected a fraction in (0, 1) or an integer count that leaves at least one example to train on`,
      { key: "validationSplit" },
    );
  const perm = seededPermutation(n, seed, 0x5eed);
  return { train: perm.slice(k).sort((a, b) => a - b), evalIdx: perm.slice(0, k).sort((a, b) => a - b) };
}

/** Rows (lists of example indices) → batches, in an order fixed by (seed, epoch). */
function batchSource(
  store: ExampleStore,
  idx: number[],
  o: DatasetOptions & { padId: number; seed: number; shuffle: boolean },
): TokenBatchSource {
  const rows: number[][] = o.packing
    ? packBestFitDecreasing(
        idx.map((i) => store.length(i)),
        o.maxLength,
      ).map((bin) => bin.map((j) => idx[j]))
    : idx.map((i) => [i]);
  const worldSize = o.worldSize ?? 1;
  const rank = o.rank ?? 0;
  // Every batch is some rank's, every epoch: batch b goes to rank b mod N, and a rank left one short gets an empty
  // batch (no token carries loss), so each rank runs the same number of steps (their collectives pair up) while no
  // example is dropped or repeated. The step's loss is normalised by its loss tokens over all ranks, so a step equals
  // one process accumulating the same batches; an eval pass counts every example once.
  const perRank = Math.ceil(Math.ceil(rows.length / o.microBatchSize) / worldSize);
  const rowLen = (r: number[]) => r.reduce((s, i) => s + store.length(i), 0);
  const epochBatches = (epoch: number): number[][][] => {
    let order = o.shuffle ? seededPermutation(rows.length, o.seed, epoch + 1) : rows.map((_, i) => i);
    if (o.groupByLength && !o.packing) order = groupByLength(order, (i) => rowLen(rows[i]), o.microBatchSize);
    const batches: number[][][] = [];
    for (let b = 0; b < order.length; b += o.microBatchSize)
      batches.push(order.slice(b, b + o.microBatchSize).map((i) => rows[i]));
    return batches.filter((_, b) => b % worldSize === rank);
  };
  return {
    length: perRank,
    *batches(epoch, skip) {
      const all = epochBatches(epoch);
      for (let b = skip; b < perRank; b++) {
        if (b >= all.length) {
          yield collate([[]], 2, o.padId); // this rank's share ran out: a batch that trains nothing
          continue;
        }
        const exRows = all[b].map((r) => r.map((i) => store.get(i)));
        const seqLen = o.packing || o.padToMaxLength ? o.maxLength : Math.max(...all[b].map(rowLen));
        yield collate(exRows, seqLen, o.padId);
      }
    },
    lossTokens: (b) => b.numLossTokens,
    inputTokens: (b) => b.numInputTokens,
  };
}

/** transformers' LengthGroupedSampler: megabatches of 50 batches, each sorted longest first. */
function groupByLength(order: number[], len: (i: number) => number, batch: number): number[] {
  const mega = batch * 50;
  const out: number[] = [];
  for (let m = 0; m < order.length; m += mega)
    out.push(...order.slice(m, m + mega).sort((a, b) => len(b) - len(a) || a - b));
  return out;
}
