import { createInterface } from "node:readline/promises";
import type { Command } from "commander";
import { type ChatMessage, eosTokenIds, generate } from "@qlora/models";
import type { GlobalOptions, Io } from "../main";
import { positiveInt } from "../main";
import { loadForInference, type LoadedForInference } from "../infer";
import { CliError } from "../errors";

interface SampleFlags {
  maxNewTokens: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  repetitionPenalty?: number;
  seed?: number;
}

function number(v: string, flag: string, min = 0): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < min)
    throw new CliError("BAD_ARGUMENT", `${flag}: expected a number ≥ ${min}, got "${v}"`);
  return n;
}

function sampleOptions(program: Command): Command {
  return program
    .option("--max-new-tokens <n>", "tokens to generate", (v) => positiveInt(v, "--max-new-tokens"), 128)
    .option(
      "--temperature <t>",
      "sample at this temperature (0 = greedy); without it, and without --top-k / --top-p, generation is greedy",
      (v) => number(v, "--temperature"),
    )
    .option("--top-p <p>", "nucleus sampling (samples, at temperature 1 unless given)", (v) => number(v, "--top-p"))
    .option("--top-k <k>", "top-k sampling (samples, at temperature 1 unless given)", (v) => positiveInt(v, "--top-k"))
    .option("--repetition-penalty <r>", "CTRL-style penalty on tokens already seen (1 = off)", (v) =>
      number(v, "--repetition-penalty"),
    )
    .option("--seed <s>", "sampling seed", (v) => number(v, "--seed"))
    .option("--quantize <q>", "how the base weights are held: nf4 or none", "nf4")
    .option(
      "--chat-template <name|file>",
      "chat template for --chat / chat: chatml, tokenizer_default (the base's) or a Jinja file; default: the adapter's saved chat_template.jinja, else the base's",
    );
}

/** Generate one continuation, streaming text through `write`; returns the full text. */
export async function streamCompletion(
  loaded: LoadedForInference,
  ids: number[],
  flags: SampleFlags,
  write: (text: string) => void,
): Promise<string> {
  const [result] = await generate(loaded.model, [ids], {
    tokenizer: loaded.tokenizer,
    stopTokenIds: eosTokenIds(loaded),
    maxNewTokens: flags.maxNewTokens,
    temperature: flags.temperature,
    topP: flags.topP,
    topK: flags.topK,
    repetitionPenalty: flags.repetitionPenalty,
    seed: flags.seed,
    onToken: (e) => {
      if (e.text) write(e.text);
    },
  });
  return result.text ?? "";
}

/** How inference commands (generate, chat, eval) may hold the base weights. */
export const INFERENCE_QUANTIZE = ["nf4", "none"] as const;

/** `--quantize`: one of INFERENCE_QUANTIZE, else a BAD_ARGUMENT error naming the flag. */
export function checkQuantize(q: string): (typeof INFERENCE_QUANTIZE)[number] {
  if (!(INFERENCE_QUANTIZE as readonly string[]).includes(q))
    throw new CliError("BAD_ARGUMENT", `--quantize: expected ${INFERENCE_QUANTIZE.join(" or ")}, got "${q}"`);
  return q as (typeof INFERENCE_QUANTIZE)[number];
}

export function registerGenerate(program: Command, io: Io): void {
  sampleOptions(
    program
      .command("generate")
      .description("continue a prompt (streams tokens)")
      .requiredOption("--model <dir>", "base model directory")
      .option("--adapter <dir>", "PEFT adapter directory")
      .requiredOption("--prompt <text>", "the prompt")
      .option("--chat", "wrap the prompt as a user turn with the model's chat template"),
  ).action(async function (this: Command, o) {
    const global = this.optsWithGlobals() as GlobalOptions;
    const loaded = await loadForInference(o.model, {
      adapter: o.adapter,
      quantize: checkQuantize(o.quantize),
      quiet: global.quiet || global.json,
      chatTemplate: o.chatTemplate,
    });
    const ids = o.chat
      ? loaded.tokenizer.encodeChat([{ role: "user", content: o.prompt }], { addGenerationPrompt: true })
      : loaded.tokenizer.encode(o.prompt);
    const stream = !global.json && process.stdout.isTTY;
    const text = await streamCompletion(loaded, ids, o, (t) => {
      if (stream) process.stdout.write(t);
    });
    if (global.json) io.out(JSON.stringify({ prompt: o.prompt, completion: text }));
    else if (stream) process.stdout.write("\n");
    else io.out(text);
  });

  sampleOptions(
    program
      .command("chat")
      .description("interactive multi-turn chat with the model's chat template (streaming; empty line or Ctrl-D quits)")
      .requiredOption("--model <dir>", "base model directory")
      .option("--adapter <dir>", "PEFT adapter directory")
      .option("--system <text>", "system prompt"),
  ).action(async function (this: Command, o) {
    const global = this.optsWithGlobals() as GlobalOptions;
    const quantize = checkQuantize(o.quantize);
    const loaded = await loadForInference(o.model, {
      adapter: o.adapter,
      quantize,
      quiet: global.quiet || global.json,
      chatTemplate: o.chatTemplate,
    });
    if (!loaded.tokenizer.chatTemplate)
      throw new CliError("UNSUPPORTED", `${o.model}: the tokenizer has no chat_template; use qlora generate`);
    // Lines are read through the async iterator, which buffers them: a piped stdin delivers every line at once, and
    // rl.question() would drop the ones that arrive while a reply is being generated.
    const rl = createInterface({ input: process.stdin, terminal: false });
    try {
      await chatLoop({
        lines: rl[Symbol.asyncIterator](),
        system: o.system,
        json: global.json,
        prompt: Boolean(process.stdin.isTTY) && !global.json,
        write: (t) => process.stdout.write(t),
        out: io.out,
        reply: (messages, write) =>
          streamCompletion(loaded, loaded.tokenizer.encodeChat(messages, { addGenerationPrompt: true }), o, write),
      });
    } finally {
      rl.close();
    }
  });
}

export interface ChatLoopOptions {
  /** The user's lines (an empty line or the end of input quits). */
  lines: AsyncIterator<string>;
  system?: string;
  /** One JSON object per reply (JSON Lines) through `out`, nothing streamed. */
  json?: boolean;
  /** Print "> " before each line is read: only for a person at a terminal. */
  prompt: boolean;
  /** Raw text (prompts, streamed tokens). */
  write: (text: string) => void;
  /** A whole line. */
  out: (line: string) => void;
  /** Generate the assistant's reply to the conversation so far, streaming its text through `write`. */
  reply: (messages: ChatMessage[], write: (text: string) => void) => Promise<string>;
}

/** The read–reply loop of `qlora chat`; resolves to the conversation. */
export async function chatLoop(o: ChatLoopOptions): Promise<ChatMessage[]> {
  const messages: ChatMessage[] = o.system ? [{ role: "system", content: o.system }] : [];
  for (let turn = 1; ; turn++) {
    if (o.prompt) o.write("> ");
    const next = await o.lines.next();
    const line = next.done ? "" : next.value;
    if (line.trim() === "") break;
    messages.push({ role: "user", content: line });
    const reply = await o.reply(messages, o.json ? () => {} : o.write);
    if (o.json) o.out(JSON.stringify({ turn, user: line, assistant: reply }));
    else o.write("\n");
    messages.push({ role: "assistant", content: reply });
  }
  // End the prompt line a person left open (Ctrl-D or an empty line).
  if (o.prompt) o.out("");
  return messages;
}
