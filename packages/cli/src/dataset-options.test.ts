/**
 * The config → data pipeline / scheduler wiring of `qlora train` (train.ts), with the tiny Llama 3 tokenizer: each
 * dataset keeps its type, ShareGPT rows train through the roles map, special_tokens re-points the tokenizer, and the
 * per-epoch eval/save schedules become step intervals.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadTokenizer, writeTinyTokenizer } from "@qlora/models";
import { loadTokenDataset } from "@qlora/trainer";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseTrainConfig } from "./config";
import { CliError } from "./errors";
import {
  chatFields,
  chatmlMarkersWarning,
  dataSummary,
  dataTokenizer,
  datasetOptions,
  positionsWarning,
  schedulerOptions,
  stepIntervals,
  withSpecialTokens,
} from "./train";

const root = mkdtempSync(join(tmpdir(), "qlora-dataset-options-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let tokenizerDir = "";
beforeAll(async () => {
  tokenizerDir = join(root, "tok");
  await writeTinyTokenizer(tokenizerDir, "llama3");
});

function file(name: string, rows: unknown[]): string {
  const p = join(root, name);
  writeFileSync(p, rows.map((r) => JSON.stringify(r)).join("\n"));
  return p;
}
const config = (yaml: string) => parseTrainConfig(`base_model: ${tokenizerDir}\n${yaml}`, "run.yaml");
const share = {
  conversations: [
    { from: "human", value: "What colour is the sky?" },
    { from: "gpt", value: "blue" },
  ],
};

describe("datasetOptions", () => {
  it("parses each dataset with its own type; a text file declared alpaca is an error, not completion data", async () => {
    const text = file("text.jsonl", [{ text: "plain text" }]);
    const msgs = file("msgs.jsonl", [
      {
        messages: [
          { role: "user", content: "hi" },
          { role: "assistant", content: "hello" },
        ],
      },
    ]);
    const tok = await loadTokenizer(tokenizerDir);
    const mixed = config(`datasets: [{path: ${text}, type: alpaca}, {path: ${msgs}, type: chat_template}]\n`);
    await expect(loadTokenDataset(datasetOptions(mixed, tok))).rejects.toThrow(
      new RegExp(`${text}:1: field "instruction" is missing; format "alpaca" expects`),
    );
    const ok = config(`datasets: [{path: ${text}, type: completion}, {path: ${msgs}, type: chat_template}]\n`);
    const d = await loadTokenDataset({ ...datasetOptions(ok, tok), shuffle: false });
    expect(d.stats.examples).toBe(2);
  });

  it("ShareGPT rows train as chat: type sharegpt, or chat_template with field_messages and property mappings", async () => {
    const tok = await loadTokenizer(tokenizerDir);
    const path = file("sharegpt.jsonl", [share]);
    const trained = async (yaml: string) => {
      const d = await loadTokenDataset(datasetOptions(config(yaml), tok));
      const labels = [...d.example(0).labels].filter((l) => l !== -100);
      return tok.decode(labels);
    };
    const expected = "blue<|eot_id|>";
    expect(await trained(`datasets: [{path: ${path}, type: sharegpt}]\n`)).toBe(expected);
    expect(
      await trained(`datasets:
  - path: ${path}
    type: chat_template
    field_messages: conversations
    message_property_mappings: {role: from, content: value}
`),
    ).toBe(expected);
    // a roles map that leaves gpt out: the unlisted role is named (it used to pass through as no assistant turn)
    await expect(
      loadTokenDataset(
        datasetOptions(config(`datasets: [{path: ${path}, type: sharegpt, roles: {user: [human]}}]\n`), tok),
      ),
    ).rejects.toThrow(
      /sharegpt\.jsonl:1: conversations\[1\] has role "gpt", which the roles mapping does not list \(human\)/,
    );
    expect(chatFields(config(`datasets: [{path: ${path}, type: alpaca}]\n`).datasets[0])).toBeUndefined();
  });

  it("a dataset without type is read by each row's keys (prompt/completion rows train on the completion)", async () => {
    const tok = await loadTokenizer(tokenizerDir);
    const path = file("untyped.jsonl", [{ prompt: "What colour?", completion: " blue" }]);
    const d = await loadTokenDataset(datasetOptions(config(`datasets: [{path: ${path}}]\n`), tok));
    expect(tok.decode([...d.example(0).labels].filter((l) => l !== -100))).toBe(" blue<|eot_id|>");
  });

  it("a ShareGPT row with only a human turn is dropped and summarised, or trained on with train_on_inputs", async () => {
    const tok = await loadTokenizer(tokenizerDir);
    const path = file("question-only.jsonl", [share, { conversations: [{ from: "human", value: "only a question" }] }]);
    const c = config(`datasets: [{path: ${path}, type: sharegpt}]\n`);
    const d = await loadTokenDataset(datasetOptions(c, tok));
    expect(d.stats).toMatchObject({ rows: 2, examples: 1, noLossTokens: 1, noAssistantTurn: 1 });
    expect(dataSummary(d.stats, c)).toBe(
      "datasets: 2 rows → 1 examples; dropped 1 with no trainable token (1 chat with no assistant turn)",
    );
    const all = await loadTokenDataset(
      datasetOptions(config(`datasets: [{path: ${path}, type: sharegpt}]\ntrain_on_inputs: true\n`), tok),
    );
    expect(all.stats).toMatchObject({ rows: 2, examples: 2, dropped: 0, noAssistantTurn: 1 });
  });

  it("excess_length_strategy raise names the dataset file and line; pad_to_sequence_len pads every batch", async () => {
    const tok = await loadTokenizer(tokenizerDir);
    const path = file("long.jsonl", [
      { prompt: "short", completion: " answer" },
      { prompt: "a long prompt ".repeat(20), completion: " answer" },
    ]);
    const base = `datasets: [{path: ${path}, type: prompt_completion}]\nsequence_len: 32\n`;
    await expect(
      loadTokenDataset(datasetOptions(config(`${base}excess_length_strategy: raise\n`), tok)),
    ).rejects.toThrow(new RegExp(`${path}:2: the example is \\d+ tokens, longer than the maximum length 32`));
    const padded = await loadTokenDataset(datasetOptions(config(`${base}pad_to_sequence_len: true\n`), tok));
    for (const b of padded.train.batches(0, 0)) expect(b.seqLen).toBe(32);
  });

  it("examples truncated to no trainable token are dropped and summarised; none left is an error", async () => {
    const tok = await loadTokenizer(tokenizerDir);
    const long = { prompt: "a long prompt ".repeat(20), completion: " answer" };
    const path = file("trunc.jsonl", [long, { prompt: "q", completion: " a" }]);
    const c = config(`datasets: [{path: ${path}, type: prompt_completion}]\nsequence_len: 16\n`);
    const d = await loadTokenDataset(datasetOptions(c, tok));
    expect(d.stats).toMatchObject({ rows: 2, examples: 1, truncated: 1, noLossTokens: 1 });
    expect(dataSummary(d.stats, c)).toBe(
      "datasets: 2 rows → 1 examples; dropped 1 with no trainable token left after truncation to sequence_len 16",
    );
    const none = file("none.jsonl", [long]);
    await expect(
      loadTokenDataset(
        datasetOptions(config(`datasets: [{path: ${none}, type: prompt_completion}]\nsequence_len: 16\n`), tok),
      ),
    ).rejects.toMatchObject({ code: "EMPTY_DATASET", message: expect.stringMatching(/no token that carries loss/) });
  });
});

describe("special_tokens", () => {
  it("sets the pad token the batches are padded with; a token outside the vocabulary is a config error", async () => {
    const tok = await loadTokenizer(tokenizerDir);
    expect(tok.padTokenId).toBeNull();
    const c = config(`datasets: [{path: x.jsonl}]\nspecial_tokens:\n  pad_token: "<|end_of_text|>"\n`);
    const padded = withSpecialTokens(tok, c);
    expect(padded.padTokenId).toBe(tok.tokenToId("<|end_of_text|>"));
    expect(padded.eosTokenId).toBe(tok.eosTokenId);
    const path = file("pad.jsonl", [
      { prompt: "q", completion: " a" },
      { prompt: "a longer question", completion: " a" },
    ]);
    const opts = datasetOptions(config(`datasets: [{path: ${path}, type: prompt_completion}]\n`), padded);
    const [batch] = [...(await loadTokenDataset({ ...opts, microBatchSize: 2 })).train.batches(0, 0)];
    const padIds = [...batch.inputIds].filter((_, i) => batch.segmentIds[i] === 0);
    expect(padIds.length).toBeGreaterThan(0);
    expect(new Set(padIds)).toEqual(new Set([padded.padTokenId]));
    const eos = withSpecialTokens(
      tok,
      config(`datasets: [{path: x.jsonl}]\nspecial_tokens: {eos_token: "<|eot_id|>"}\n`),
    );
    expect(eos.eosTokenId).toBe(tok.tokenToId("<|eot_id|>"));
    const bad = config(`datasets: [{path: x.jsonl}]\nspecial_tokens: {pad_token: "<|pad|>"}\n`);
    expect(() => withSpecialTokens(tok, bad)).toThrow(CliError);
    expect(() => withSpecialTokens(tok, bad)).toThrow(
      /^special_tokens\.pad_token: "<\|pad\|>" is not a token of .*tokenizer\.json; qlora does not add tokens .*\(closest: "<\|/,
    );
    expect(withSpecialTokens(tok, config("datasets: [{path: x.jsonl}]\n"))).toBe(tok);
  });
});

describe("chat_template: chatml / jinja", () => {
  it("the assistant header is prompt, not target: the generation prompt is rendered as for tokenizer_default", async () => {
    const tok = await loadTokenizer(tokenizerDir);
    const path = file("chat.jsonl", [
      {
        messages: share.conversations.map((m) => ({
          role: m.from === "human" ? "user" : "assistant",
          content: m.value,
        })),
      },
    ]);
    const chatml = config(`datasets: [{path: ${path}, type: chat_template}]\nchat_template: chatml\n`);
    const rendered = dataTokenizer(tok, chatml).applyChatTemplate!([{ role: "user", content: "hi" }], {
      addGenerationPrompt: true,
    });
    expect(rendered).toBe("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    const data = await loadTokenDataset({ ...datasetOptions(chatml, dataTokenizer(tok, chatml)), microBatchSize: 1 });
    const ex = data.example(0);
    const target = [...ex.inputIds].filter((_, i) => ex.labels[i] !== -100);
    expect(tok.decode(target)).toBe("blue<|im_end|>\n");
    // the tiny Llama-3 vocabulary has no ChatML markers: said once, before training
    expect(chatmlMarkersWarning(chatml, tok)).toMatch(
      /^chat_template: chatml: <\|im_start\|> and <\|im_end\|> are not tokens of this tokenizer/,
    );
    expect(chatmlMarkersWarning(config(`datasets: [{path: ${path}, type: chat_template}]\n`), tok)).toBeNull();
  });
});

describe("positionsWarning", () => {
  it("warns when the longest example passes max_position_embeddings, not before", async () => {
    const path = file("long.jsonl", [{ text: "a b c d e f g h i j k l m n o p" }, { text: "short" }]);
    const c = config(`datasets: [{path: ${path}, type: completion}]\nsequence_len: 64\n`);
    const tok = await loadTokenizer(tokenizerDir);
    const { stats } = await loadTokenDataset(datasetOptions(c, tok));
    expect(stats.longest).toBeGreaterThan(8);
    expect(positionsWarning(stats, 8)).toBe(
      `the longest example has ${stats.longest} tokens, more than the model's max_position_embeddings 8: positions past it were never trained; sequence_len: 8 truncates there`,
    );
    expect(positionsWarning(stats, stats.longest)).toBeNull();
  });
});

describe("schedules", () => {
  it("evals_per_epoch / saves_per_epoch: max(1, floor(steps per epoch / N)) optimizer steps", () => {
    const c = config(
      "datasets: [{path: x.jsonl}]\nval_set_size: 0.1\nevals_per_epoch: 4\nsaves_per_epoch: 1\ngradient_accumulation_steps: 2\n",
    );
    // 41 micro-batches / 2 = 21 steps per epoch
    expect(stepIntervals(c, 41)).toEqual({ evalSteps: 5, saveSteps: 21 });
    expect(stepIntervals(c, 3)).toEqual({ evalSteps: 1, saveSteps: 2 });
    const steps = config("datasets: [{path: x.jsonl}]\nval_set_size: 3\neval_steps: 7\nsave_steps: 9\n");
    expect(stepIntervals(steps, 100)).toEqual({ evalSteps: 7, saveSteps: 9 });
    expect(stepIntervals(config("datasets: [{path: x.jsonl}]\n"), 100)).toEqual({
      evalSteps: undefined,
      saveSteps: undefined,
    });
  });

  it("cosine_min_lr_ratio reaches the cosine scheduler as its floor", () => {
    const c = config("datasets: [{path: x.jsonl}]\nlr_scheduler: cosine\ncosine_min_lr_ratio: 0.1\nwarmup_steps: 2\n");
    expect(schedulerOptions(c)).toEqual({ name: "cosine", warmupSteps: 2, warmupRatio: undefined, minLrRate: 0.1 });
  });
});
