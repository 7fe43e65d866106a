/**
 * Turns one record into token ids and labels (labels aligned with ids, -100 = no loss; the model shifts them).
 * Formats: text, prompt_completion, alpaca, messages (chat template), pretokenized; "auto" picks by the keys.
 * By default only completions / assistant turns carry loss (trainOnInputs false) and EOS is appended and learned.
 */
import { TrainerError } from "../errors";
import type { SourceRecord } from "./read";
import type { ChatTurn, DataTokenizer } from "./tokenizer";

export type DataFormat = "auto" | "text" | "prompt_completion" | "alpaca" | "messages" | "pretokenized";

export interface Example {
  readonly inputIds: Int32Array;
  readonly labels: Int32Array;
}

/**
 * Where a "messages" row keeps its turns (Axolotl's chat_template options): the list's field, each turn's role and
 * content keys, and a map from the data's role names to the template's. ShareGPT data is
 * `{ field: "conversations", role: "from", content: "value" }` with human → user, gpt → assistant.
 */
export interface ChatFields {
  /** Default "messages". */
  readonly field?: string;
  /** Default "role". */
  readonly role?: string;
  /** Default "content". */
  readonly content?: string;
  /** Data role → template role; roles not listed pass through unchanged (unless strictRoles). */
  readonly roles?: Readonly<Record<string, string>>;
  /** A role the `roles` map does not list is an error naming it (a config that spells out its roles). */
  readonly strictRoles?: boolean;
}

export interface FormatOptions {
  readonly format: DataFormat;
  readonly tokenizer?: DataTokenizer;
  readonly trainOnInputs?: boolean;
  readonly maxLength?: number;
  /**
   * Longer than maxLength: "truncate" (default) keeps the first maxLength tokens, "drop" skips the row (both are
   * counted), "raise" is an error naming the row.
   */
  readonly overflow?: "truncate" | "drop" | "raise";
  /** format "messages": where the turns are (default `messages: [{role, content}]`). */
  readonly chat?: ChatFields;
}

/** Counters toExample updates: rows truncated, and rows left out (too long, or no token carries loss). */
export interface ExampleCounts {
  truncated: number;
  dropped: number;
  /** Of `dropped`: rows with no loss token (e.g. the completion was truncated away); they would train nothing. */
  noLossTokens: number;
  /**
   * Chat rows with no assistant turn (after the roles mapping). They carry no loss, so they are dropped (and counted in
   * noLossTokens too), unless trainOnInputs trains on every token, as Axolotl does with such rows.
   */
  noAssistantTurn: number;
}

const EXPECTED: Record<Exclude<DataFormat, "auto">, string> = {
  text: '{"text": string}',
  prompt_completion: '{"prompt": string, "completion": string}',
  alpaca: '{"instruction": string, "input"?: string, "output": string}',
  messages: '{"messages": [{"role": string, "content": string}, ...]} with at least one "assistant" turn',
  pretokenized: '{"input_ids": int[], "labels"?: int[] of the same length}',
};

const ALPACA_WITH_INPUT =
  "Below is an instruction that describes a task, paired with an input that provides further context. " +
  "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
const ALPACA_NO_INPUT =
  "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n" +
  "### Instruction:\n{instruction}\n\n### Response:\n";

function bad(rec: SourceRecord, format: Exclude<DataFormat, "auto">, what: string): TrainerError {
  return new TrainerError(
    "DATA_ROW",
    `${rec.file}:${rec.line}: ${what}; format "${format}" expects ${EXPECTED[format]}`,
    { file: rec.file, line: rec.line },
  );
}

export function detectFormat(value: unknown): Exclude<DataFormat, "auto"> | undefined {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return undefined;
  const k = value as Record<string, unknown>;
  if ("messages" in k) return "messages";
  if ("input_ids" in k) return "pretokenized";
  if ("instruction" in k) return "alpaca";
  if ("prompt" in k || "completion" in k) return "prompt_completion";
  if ("text" in k) return "text";
  return undefined;
}

function text(rec: SourceRecord, format: Exclude<DataFormat, "auto">, key: string, optional = false): string {
  const v = (rec.value as Record<string, unknown>)[key];
  if (v === undefined && optional) return "";
  if (typeof v !== "string")
    throw bad(
      rec,
      format,
      `field "${key}" is ${v === undefined ? "missing" : v === null ? "null" : Array.isArray(v) ? "an array" : typeof v}`,
    );
  if (!optional && v.trim() === "") throw bad(rec, format, `field "${key}" is empty`);
  return v;
}

function needTokenizer(o: FormatOptions, rec: SourceRecord): DataTokenizer {
  if (!o.tokenizer)
    throw new TrainerError("DATA_TOKENIZER", `${rec.file}:${rec.line}: this format needs a tokenizer`, {
      file: rec.file,
    });
  return o.tokenizer;
}

/**
 * The example of one record, or null when it is dropped: too long under overflow "drop", or no token left that
 * carries loss (Axolotl drops these too: they add nothing but compute). `stats` counts truncations and drops.
 */
export function toExample(rec: SourceRecord, o: FormatOptions, stats: ExampleCounts): Example | null {
  const format = o.format === "auto" ? detectFormat(rec.value) : o.format;
  if (!format) {
    // ShareGPT's "conversations" needs its field names said (a roles map, from/value): detection does not guess them
    const shareGpt = rec.value !== null && typeof rec.value === "object" && "conversations" in rec.value;
    throw new TrainerError(
      "DATA_ROW",
      `${rec.file}:${rec.line}: cannot tell the format of this row; expected one of ${Object.values(EXPECTED).join(" | ")}${shareGpt ? ' (a ShareGPT "conversations" row: give the dataset its format, e.g. type: sharegpt)' : ""}`,
      { file: rec.file, line: rec.line },
    );
  }
  if (rec.value === null || typeof rec.value !== "object" || Array.isArray(rec.value))
    throw bad(rec, format, "the row is not a JSON object");
  const { ids, mask, noAssistantTurn } = tokenize(rec, format, o);
  if (noAssistantTurn) stats.noAssistantTurn++;
  if (ids.length === 0) throw bad(rec, format, "it has no tokens");
  let n = ids.length;
  if (o.maxLength !== undefined && n > o.maxLength) {
    if (o.overflow === "raise")
      throw new TrainerError(
        "DATA_TOO_LONG",
        `${rec.file}:${rec.line}: the example is ${n} tokens, longer than the maximum length ${o.maxLength}; raise the maximum length, or truncate or drop such examples`,
        { file: rec.file, line: rec.line },
      );
    if (o.overflow === "drop") {
      stats.dropped++;
      return null;
    }
    stats.truncated++;
    n = o.maxLength;
  }
  const inputIds = Int32Array.from(ids.slice(0, n));
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) labels[i] = mask[i] || o.trainOnInputs ? ids[i] : -100;
  if (format === "pretokenized" && (rec.value as { labels?: unknown }).labels)
    for (let i = 0; i < n; i++) labels[i] = (rec.value as { labels: number[] }).labels[i];
  labels[0] = -100; // position 0 is never a target of the shifted loss; this keeps token counts exact
  if (!labels.some((l) => l !== -100)) {
    stats.dropped++;
    stats.noLossTokens++;
    return null;
  }
  return { inputIds, labels };
}

/** ids and a per-token "carries loss" mask (before trainOnInputs). */
function tokenize(
  rec: SourceRecord,
  format: Exclude<DataFormat, "auto">,
  o: FormatOptions,
): { ids: number[]; mask: boolean[]; noAssistantTurn?: boolean } {
  switch (format) {
    case "text": {
      const tok = needTokenizer(o, rec);
      const ids = [...tok.encode(text(rec, format, "text")), ...eos(tok, rec)];
      return { ids, mask: ids.map(() => true) };
    }
    case "prompt_completion":
      return promptCompletion(rec, o, text(rec, format, "prompt"), text(rec, format, "completion"));
    case "alpaca": {
      const instruction = text(rec, format, "instruction");
      const input = text(rec, format, "input", true);
      const prompt = (input ? ALPACA_WITH_INPUT : ALPACA_NO_INPUT)
        .replace("{instruction}", instruction)
        .replace("{input}", input);
      return promptCompletion(rec, o, prompt, text(rec, format, "output"));
    }
    case "messages":
      return chat(rec, o);
    case "pretokenized":
      return pretokenized(rec);
  }
}

function eos(tok: DataTokenizer, rec: SourceRecord): number[] {
  if (tok.eosTokenId === null || tok.eosTokenId === undefined)
    throw new TrainerError("DATA_TOKENIZER", `${rec.file}: the tokenizer has no EOS token to append`, {
      file: rec.file,
    });
  return [tok.eosTokenId];
}

function promptCompletion(rec: SourceRecord, o: FormatOptions, prompt: string, completion: string) {
  const tok = needTokenizer(o, rec);
  const p = [...tok.encode(prompt)];
  const c = [...tok.encode(completion, { addSpecialTokens: false }), ...eos(tok, rec)];
  return { ids: [...p, ...c], mask: [...p.map(() => false), ...c.map(() => true)] };
}

/**
 * Chat: the assistant turn i carries loss on the tokens between the rendering of turns [0, i) with the generation
 * prompt and the rendering of turns [0, i]; the template's own end-of-turn token is inside that span, so it is learned.
 */
function chat(rec: SourceRecord, o: FormatOptions) {
  const tok = needTokenizer(o, rec);
  if (!tok.applyChatTemplate)
    throw new TrainerError("DATA_TOKENIZER", `${rec.file}:${rec.line}: the tokenizer has no chat template`, {
      file: rec.file,
      line: rec.line,
    });
  const turns = chatTurns(rec, o.chat ?? {});
  const enc = (m: readonly ChatTurn[], gen: boolean) =>
    tok.encode(tok.applyChatTemplate?.(m, { addGenerationPrompt: gen }) ?? "", { addSpecialTokens: false });
  const ids = [...enc(turns, false)];
  const mask = ids.map(() => false);
  turns.forEach((t, i) => {
    if (t.role !== "assistant") return;
    const start = enc(turns.slice(0, i), true).length;
    const end = enc(turns.slice(0, i + 1), false);
    for (let j = 0; j < end.length; j++)
      if (end[j] !== ids[j])
        throw bad(rec, "messages", `the chat template does not render turn ${i} as a prefix of the whole chat`);
    for (let j = start; j < end.length; j++) mask[j] = true;
  });
  return { ids, mask, noAssistantTurn: !turns.some((t) => t.role === "assistant") };
}

/** The turns of a chat row, read through the ChatFields mapping and renamed to the template's roles. */
function chatTurns(rec: SourceRecord, f: ChatFields): ChatTurn[] {
  const field = f.field ?? "messages";
  const [roleKey, contentKey] = [f.role ?? "role", f.content ?? "content"];
  const msgs = (rec.value as Record<string, unknown>)[field];
  if (!Array.isArray(msgs) || msgs.length === 0) throw badChat(rec, f, `"${field}" is not a non-empty array`);
  return msgs.map((m, i) => {
    const t = (m ?? {}) as Record<string, unknown>;
    const role = t[roleKey];
    const content = t[contentKey];
    if (typeof role !== "string" || typeof content !== "string")
      throw badChat(rec, f, `${field}[${i}] lacks a string "${roleKey}" and "${contentKey}"`);
    const mapped = f.roles?.[role];
    if (mapped === undefined && f.strictRoles)
      throw badChat(
        rec,
        f,
        `${field}[${i}] has role "${role}", which the roles mapping does not list (${Object.keys(f.roles ?? {}).join(", ")})`,
      );
    return { role: mapped ?? role, content };
  });
}

/** A chat row error that states the fields this dataset maps, not only the default ones. */
function badChat(rec: SourceRecord, f: ChatFields, what: string): TrainerError {
  const field = f.field ?? "messages";
  const [role, content] = [f.role ?? "role", f.content ?? "content"];
  return new TrainerError(
    "DATA_ROW",
    `${rec.file}:${rec.line}: ${what}; format "messages" expects {"${field}": [{"${role}": string, "${content}": string}, ...]}`,
    { file: rec.file, line: rec.line },
  );
}

function pretokenized(rec: SourceRecord) {
  const v = rec.value as { input_ids?: unknown; labels?: unknown };
  const isInts = (a: unknown): a is number[] =>
    Array.isArray(a) && a.every((x) => Number.isInteger(x) && x >= -100 && x < 2 ** 31);
  if (!isInts(v.input_ids) || v.input_ids.some((x) => x < 0))
    throw bad(rec, "pretokenized", `"input_ids" is not an array of non-negative ints`);
  if (v.labels !== undefined && (!isInts(v.labels) || v.labels.length !== v.input_ids.length))
    throw bad(rec, "pretokenized", `"labels" is not an int array as long as "input_ids"`);
  return { ids: v.input_ids, mask: v.input_ids.map(() => true) };
}
