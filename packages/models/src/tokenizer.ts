/**
 * A model's own tokenizer, loaded from a Hugging Face directory (tokenizer.json + tokenizer_config.json) through
 * @huggingface/tokenizers; chat templates through @huggingface/jinja (chat-template.ts). No BPE or template
 * engine is written here: this module only reads the files, resolves the special tokens and applies the
 * BOS/EOS rules transformers applies.
 *
 * BOS/EOS per family come from the files, as in transformers: the tokenizer.json post-processor adds them
 * (Llama 3: `<|begin_of_text|>`; Llama 2 / Mistral: `<s>`; Qwen: nothing). For the slow-tokenizer classes whose
 * fast version rebuilds the post-processor from `add_bos_token` / `add_eos_token` (LlamaTokenizer(Fast),
 * CodeLlamaTokenizer(Fast), GemmaTokenizer(Fast)), explicit booleans in tokenizer_config.json win.
 *
 * Error codes (ModelError): `tokenizer_missing`, `tokenizer_json`, `tokenizer_invalid`, `tokenizer_config_json`,
 * `tokenizer_config_invalid`, `bad_token_id`.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import {
  type ChatMessage,
  type ChatTemplateOptions,
  compileChatTemplate,
  type CompiledChatTemplate,
} from "./chat-template";
import { ModelError } from "./errors";

export interface EncodeOptions {
  /** Add the family's BOS/EOS as the post-processor says (default true). Chat text already carries them. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  skipSpecialTokens?: boolean;
}

/** Parsed JSON of tokenizer.json / tokenizer_config.json, kept for GGUF export. */
export type JsonObject = Record<string, unknown>;

const POST_PROCESSOR_FROM_FLAGS = /^(Llama|CodeLlama|Gemma)Tokenizer(Fast)?$/;

export class HfTokenizer {
  /** The files this tokenizer came from, for error messages. */
  readonly tokenizerFile: string;
  readonly configFile: string;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly padToken: string | null;
  readonly unkToken: string | null;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly padTokenId: number | null;
  /** Number of ids the tokenizer knows (model vocab plus added tokens); ids are 0 … vocabSize-1. */
  readonly vocabSize: number;
  private readonly inner: Tokenizer;
  private readonly template: CompiledChatTemplate | null;
  private readonly specialIds: Set<number>;

  constructor(
    /** tokenizer.json as parsed */
    readonly tokenizerJson: JsonObject,
    /** tokenizer_config.json as parsed ({} when the directory has none) */
    readonly config: JsonObject,
    files: { tokenizerFile?: string; configFile?: string } = {},
  ) {
    this.tokenizerFile = files.tokenizerFile ?? "tokenizer.json";
    this.configFile = files.configFile ?? "tokenizer_config.json";
    checkShape(tokenizerJson, config, this.tokenizerFile, this.configFile);
    const effective = withPostProcessorFromFlags(tokenizerJson, config);
    try {
      // clean_up_tokenization_spaces rewrites " ." to "." on decode; streaming text must be byte exact, and
      // tokenizers without the key are decoded verbatim by transformers' fast tokenizers too.
      this.inner = new Tokenizer(effective, { clean_up_tokenization_spaces: false, ...config });
    } catch (e) {
      throw new ModelError(
        "tokenizer_invalid",
        `${this.tokenizerFile}: not a tokenizer @huggingface/tokenizers can build (${(e as Error).message})`,
        { file: this.tokenizerFile },
      );
    }
    this.bosToken = tokenString(config, "bos_token", this.configFile);
    this.eosToken = tokenString(config, "eos_token", this.configFile);
    this.padToken = tokenString(config, "pad_token", this.configFile);
    this.unkToken = tokenString(config, "unk_token", this.configFile);
    this.bosTokenId = this.idOfConfigToken("bos_token", this.bosToken);
    this.eosTokenId = this.idOfConfigToken("eos_token", this.eosToken);
    this.padTokenId = this.idOfConfigToken("pad_token", this.padToken);
    this.vocabSize = this.inner.model?.vocab.length ?? 0;
    this.specialIds = new Set(
      [...this.inner.get_added_tokens_decoder()].filter(([, t]) => t.special).map(([id]) => id),
    );
    const source = templateSource(config, this.configFile);
    this.template = source === null ? null : compileChatTemplate(source, this.configFile);
  }

  /** Loads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json`. */
  static async fromDirectory(dir: string): Promise<HfTokenizer> {
    const tokenizerFile = join(dir, "tokenizer.json");
    const configFile = join(dir, "tokenizer_config.json");
    const tokenizerJson = await readJsonObject(tokenizerFile, "tokenizer_json", true);
    const config = (await readJsonObject(configFile, "tokenizer_config_json", false)) ?? {};
    // transformers (≥ 4.43) saves the chat template as chat_template.jinja, which wins over tokenizer_config.json's
    const templateFile = join(dir, "chat_template.jinja");
    const template = await readFile(templateFile, "utf8").catch((e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return null;
      throw new ModelError("tokenizer_missing", `${templateFile}: cannot read (${e.message})`, { file: templateFile });
    });
    if (template !== null)
      return new HfTokenizer(
        tokenizerJson as JsonObject,
        { ...config, chat_template: template },
        {
          tokenizerFile,
          configFile: templateFile,
        },
      );
    return new HfTokenizer(tokenizerJson as JsonObject, config, { tokenizerFile, configFile });
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    return this.guard(
      "encode",
      () => this.inner.encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).ids,
    );
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    if (ids.length === 0) return "";
    for (const id of ids)
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize)
        throw new ModelError(
          "bad_token_id",
          `decode: token id ${id} is outside the vocabulary of ${this.tokenizerFile} (0 … ${this.vocabSize - 1})`,
          { file: this.tokenizerFile, key: "ids" },
        );
    return this.guard("decode", () =>
      this.inner.decode(ids as number[], { skip_special_tokens: options.skipSpecialTokens ?? false }),
    );
  }

  /** A library failure while running (a component built from a malformed file) becomes a ModelError. */
  private guard<T>(what: string, run: () => T): T {
    try {
      return run();
    } catch (e) {
      if (e instanceof ModelError) throw e;
      throw new ModelError(
        "tokenizer_invalid",
        `${this.tokenizerFile}: ${what} failed inside @huggingface/tokenizers (${(e as Error).message}); the file is malformed`,
        { file: this.tokenizerFile },
      );
    }
  }

  /** The token string of an id (as stored in the vocabulary, e.g. "Ġworld" or "▁world"). */
  idToToken(id: number): string | undefined {
    return this.inner.id_to_token(id);
  }

  tokenToId(token: string): number | undefined {
    return this.inner.token_to_id(token);
  }

  /** True for added tokens marked special (BOS, EOS, chat markers): skipped by `skipSpecialTokens`. */
  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  /** Added tokens (id → content, special flag) in id order. */
  addedTokens(): { id: number; content: string; special: boolean }[] {
    return [...this.inner.get_added_tokens_decoder()]
      .map(([id, t]) => ({ id, content: t.content, special: t.special }))
      .sort((a, b) => a.id - b.id);
  }

  get chatTemplate(): string | null {
    return this.template?.source ?? null;
  }

  /**
   * Renders the chat template with the tokenizer's special tokens (bos_token, eos_token, …) as transformers
   * does. The text already holds every special token the template writes (Llama 3's BOS included), so encode
   * it with `addSpecialTokens: false` (what `encodeChat` does).
   */
  applyChatTemplate(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    if (this.template === null)
      throw new ModelError(
        "no_chat_template",
        `${this.configFile} has no "chat_template": this tokenizer cannot format chat messages`,
        { file: this.configFile, key: "chat_template" },
      );
    return this.template.render(messages, {
      bos_token: this.bosToken ?? "",
      eos_token: this.eosToken ?? "",
      pad_token: this.padToken ?? "",
      unk_token: this.unkToken ?? "",
      ...options,
    });
  }

  /** Token ids of the rendered chat (no BOS/EOS added on top of the template's own). */
  encodeChat(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): number[] {
    return this.encode(this.applyChatTemplate(messages, options), { addSpecialTokens: false });
  }

  private idOfConfigToken(key: string, token: string | null): number | null {
    if (token === null) return null;
    const id = this.inner.token_to_id(token);
    if (id === undefined)
      throw new ModelError(
        "tokenizer_config_invalid",
        `${this.configFile}: "${key}" is ${JSON.stringify(token)}, which is not a token of ${this.tokenizerFile}`,
        { file: this.configFile, key },
      );
    return id;
  }
}

/** Loads the tokenizer of a Hugging Face model directory. */
export function loadTokenizer(dir: string): Promise<HfTokenizer> {
  return HfTokenizer.fromDirectory(dir);
}

async function readJsonObject(
  file: string,
  code: "tokenizer_json" | "tokenizer_config_json",
  required: boolean,
): Promise<JsonObject | null> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT" && !required) return null;
    throw new ModelError("tokenizer_missing", `${file}: cannot read (${(e as Error).message})`, { file });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new ModelError(code, `${file}: not valid JSON (${(e as Error).message})`, { file });
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed))
    throw new ModelError(code, `${file}: expected a JSON object at the top level`, { file });
  return parsed as JsonObject;
}

/** Structural checks the library would otherwise fail on deep inside (or accept and misbehave). */
function checkShape(tok: JsonObject, config: JsonObject, file: string, configFile: string): void {
  const fail = (key: string, what: string) =>
    new ModelError("tokenizer_invalid", `${file}: "${key}" ${what}`, { file, key });
  const model = tok.model as JsonObject | undefined;
  if (typeof model !== "object" || model === null || Array.isArray(model))
    throw fail("model", "must be an object (the tokenizer model: BPE, Unigram, WordPiece)");
  if (typeof model.vocab !== "object" || model.vocab === null) throw fail("model.vocab", "must be present");
  if (model.type === "BPE") {
    if (
      Array.isArray(model.vocab) ||
      !Object.values(model.vocab).every((v) => Number.isInteger(v) && (v as number) >= 0)
    )
      throw fail("model.vocab", "must map token strings to non-negative integer ids");
    if (!Array.isArray(model.merges)) throw fail("model.merges", "must be an array of merges");
    for (const m of model.merges)
      if (
        !(typeof m === "string" && m.includes(" ")) &&
        !(Array.isArray(m) && m.length === 2 && m.every((s) => typeof s === "string"))
      )
        throw fail("model.merges", `must hold "a b" strings or [a, b] pairs, found ${JSON.stringify(m)}`);
  }
  const added = tok.added_tokens;
  if (!Array.isArray(added)) throw fail("added_tokens", "must be an array");
  for (const t of added) {
    const a = t as JsonObject;
    if (
      typeof a !== "object" ||
      a === null ||
      !Number.isInteger(a.id) ||
      (a.id as number) < 0 ||
      typeof a.content !== "string"
    )
      throw fail("added_tokens", `entries need an integer "id" and a string "content", found ${JSON.stringify(t)}`);
  }
  for (const key of ["normalizer", "pre_tokenizer", "post_processor", "decoder"])
    if (!(key in tok)) throw fail(key, "must be present (null when unused)");
  for (const flag of ["add_bos_token", "add_eos_token"])
    if (flag in config && config[flag] !== null && typeof config[flag] !== "boolean")
      throw new ModelError("tokenizer_config_invalid", `${configFile}: "${flag}" must be true or false`, {
        file: configFile,
        key: flag,
      });
}

/** A special-token entry of tokenizer_config.json: a string, an AddedToken object {content}, or null. */
function tokenString(config: JsonObject, key: string, file: string): string | null {
  const v = config[key];
  if (v === undefined || v === null) return null;
  if (typeof v === "string") return v;
  if (typeof v === "object" && typeof (v as JsonObject).content === "string")
    return (v as JsonObject).content as string;
  throw new ModelError("tokenizer_config_invalid", `${file}: "${key}" must be a string, {"content": …} or null`, {
    file,
    key,
  });
}

/** `chat_template` is a string, or a list of {name, template} of which "default" is the chat one. */
function templateSource(config: JsonObject, file: string): string | null {
  const t = config.chat_template;
  if (t === undefined || t === null) return null;
  if (typeof t === "string") return t;
  if (Array.isArray(t)) {
    const named = t.find((e) => (e as JsonObject)?.name === "default") as JsonObject | undefined;
    if (named && typeof named.template === "string") return named.template;
  }
  throw new ModelError(
    "tokenizer_config_invalid",
    `${file}: "chat_template" must be a string or a list of {name, template} with a "default" entry`,
    { file, key: "chat_template" },
  );
}

/**
 * transformers' LlamaTokenizerFast (and CodeLlama/Gemma) rebuild the post-processor from add_bos_token /
 * add_eos_token: `bos? $A eos?`. Other classes use tokenizer.json's post-processor as it is.
 */
function withPostProcessorFromFlags(tok: JsonObject, config: JsonObject): JsonObject {
  const cls = config.tokenizer_class;
  if (typeof cls !== "string" || !POST_PROCESSOR_FROM_FLAGS.test(cls)) return tok;
  if (typeof config.add_bos_token !== "boolean" && typeof config.add_eos_token !== "boolean") return tok;
  const vocab = (tok.model as JsonObject).vocab as JsonObject;
  const added = tok.added_tokens as JsonObject[];
  const idOf = (t: string | null) => (t === null ? undefined : (added.find((a) => a.content === t)?.id ?? vocab[t]));
  const specials: JsonObject = {};
  // A flag set for a token the vocabulary lacks adds nothing (the config check reports unknown tokens).
  const use = (flag: boolean, token: string | null): string | null => {
    const id = flag ? idOf(token) : undefined;
    if (id === undefined || token === null) return null;
    specials[token] = { id: token, ids: [id], tokens: [token] };
    return token;
  };
  const bos = use(
    (config.add_bos_token as boolean | undefined) ?? true,
    tokenString(config, "bos_token", "tokenizer_config.json"),
  );
  const eos = use(
    (config.add_eos_token as boolean | undefined) ?? false,
    tokenString(config, "eos_token", "tokenizer_config.json"),
  );
  const special = (id: string) => ({ SpecialToken: { id, type_id: 0 } });
  const sequence = (id: "A" | "B", typeId: number) => [
    ...(bos ? [special(bos)] : []),
    { Sequence: { id, type_id: typeId } },
    ...(eos ? [special(eos)] : []),
  ];
  const single = sequence("A", 0);
  const pair = [...single, ...sequence("B", 1)];
  return { ...tok, post_processor: { type: "TemplateProcessing", single, pair, special_tokens: specials } };
}
