/** Exact-match accuracy of greedy answers, for the demo's before/after comparison. */
import { type CausalLM, type HfTokenizer, generate } from "@qlora/models";
import { ATTRIBUTES, type Creature, type QaExample } from "./world";

export interface AccuracyResult {
  accuracy: number;
  correct: number;
  total: number;
  answers: { prompt: string; expected: string; got: string }[];
}

/** The answer as the first word of the greedy continuation (stopping at EOS, a newline or a period). */
async function greedyAnswers(model: CausalLM, tokenizer: HfTokenizer, prompts: string[]): Promise<string[]> {
  const ids = prompts.map((p) => tokenizer.encode(p));
  const results = await generate(model, ids, {
    tokenizer,
    maxNewTokens: 4,
    temperature: 0,
    stopStrings: ["\n", "."],
  });
  return results.map((r) => (r.text ?? "").trim().split(/\s+/)[0] ?? "");
}

export async function accuracy(
  model: CausalLM,
  tokenizer: HfTokenizer,
  examples: readonly Pick<QaExample, "prompt" | "completion">[],
): Promise<AccuracyResult> {
  const got = await greedyAnswers(
    model,
    tokenizer,
    examples.map((e) => e.prompt),
  );
  const answers = examples.map((e, i) => ({ prompt: e.prompt, expected: e.completion.trim(), got: got[i] }));
  const correct = answers.filter((a) => a.got === a.expected).length;
  return { accuracy: correct / Math.max(answers.length, 1), correct, total: answers.length, answers };
}

const PROBES = {
  color: "The color of the {n} is",
  food: "The favorite food of the {n} is",
  home: "The home of the {n} is the",
} as const;

/** Does the base model know the facts in the phrasing it was pretrained on? (fraction of facts completed right) */
export async function probeKnowledge(model: CausalLM, tokenizer: HfTokenizer, creatures: readonly Creature[]) {
  const examples = creatures.flatMap((c) =>
    ATTRIBUTES.map((a) => ({ prompt: PROBES[a].replace("{n}", c.name), completion: c[a] })),
  );
  return (await accuracy(model, tokenizer, examples)).accuracy;
}
