import { createInterface } from "node:readline/promises";
import type { Command } from "commander";
import { type ChatMessage, generate } from "@qlora/models";
import type { GlobalOptions, Io } from "../main";
import { positiveInt } from "../main";
import { loadForInference, type LoadedForInference } from "../infer";
import { CliError } from "../errors";

interface SampleFlags {
  maxNewTokens: number;
  temperature: number;
  topP?: number;
  topK?: number;
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
    .option("--temperature <t>", "0 = greedy", (v) => number(v, "--temperature"), 0)
    .option("--top-p <p>", "nucleus sampling", (v) => number(v, "--top-p"))
    .option("--top-k <k>", "top-k sampling", (v) => positiveInt(v, "--top-k"))
    .option("--seed <s>", "sampling seed", (v) => number(v, "--seed"))
    .option("--quantize <q>", "nf4 (default) or none: how the base weights are held", "nf4");
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
    maxNewTokens: flags.maxNewTokens,
    temperature: flags.temperature,
    topP: flags.topP,
    topK: flags.topK,
    seed: flags.seed,
    onToken: (e) => {
      if (e.text) write(e.text);
    },
  });
  return result.text ?? "";
}

function checkQuantize(q: string): "nf4" | "none" {
  if (q !== "nf4" && q !== "none") throw new CliError("BAD_ARGUMENT", `--quantize: expected nf4 or none, got "${q}"`);
  return q;
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
  ).action(async (o) => {
    const loaded = await loadForInference(o.model, { adapter: o.adapter, quantize: checkQuantize(o.quantize) });
    if (!loaded.tokenizer.chatTemplate)
      throw new CliError("UNSUPPORTED", `${o.model}: the tokenizer has no chat_template; use qlora generate`);
    const messages: ChatMessage[] = o.system ? [{ role: "system", content: o.system }] : [];
    // Lines are read through the async iterator, which buffers them: a piped stdin delivers every line at once, and
    // rl.question() would drop the ones that arrive while a reply is being generated.
    const rl = createInterface({ input: process.stdin, terminal: false });
    const lines = rl[Symbol.asyncIterator]();
    try {
      for (;;) {
        process.stdout.write("> ");
        const next = await lines.next();
        const line = next.done ? "" : next.value;
        if (line.trim() === "") break;
        messages.push({ role: "user", content: line });
        const ids = loaded.tokenizer.encodeChat(messages, { addGenerationPrompt: true });
        const reply = await streamCompletion(loaded, ids, o, (t) => process.stdout.write(t));
        process.stdout.write("\n");
        messages.push({ role: "assistant", content: reply });
      }
    } finally {
      rl.close();
    }
    io.out("");
  });
}
