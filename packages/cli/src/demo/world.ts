/**
 * The embedded demo's little world: fictional creatures, each with a colour, a food and a home. The base model is
 * pretrained on statements about them (several phrasings, shuffled); fine-tuning teaches a question/answer format
 * it has never seen, and held-out creatures (whose Q/A pairs are never trained on) measure whether the model
 * learned to answer from what it knows rather than memorising answers.
 */

export const COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"] as const;
export const FOODS = ["apples", "berries", "fish", "seeds", "honey", "grass", "nuts", "leaves"] as const;
export const HOMES = ["cave", "forest", "river", "hill", "desert", "swamp", "meadow", "mountain"] as const;

export type Attribute = "color" | "food" | "home";
export const ATTRIBUTES: readonly Attribute[] = ["color", "food", "home"];

export interface Creature {
  name: string;
  color: string;
  food: string;
  home: string;
}

/** mulberry32: a small seeded generator, so the world and corpus are the same on every machine. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "br", "gr", "tr"];
const VOWELS = ["a", "e", "i", "o", "u"];
const CODAS = ["", "", "n", "l", "r", "k", "m"];

export function makeCreatures(count: number, seed = 1): Creature[] {
  const rand = seededRandom(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const names = new Set<string>();
  while (names.size < count) {
    const syllables = rand() < 0.5 ? 2 : 3;
    let name = "";
    for (let i = 0; i < syllables; i++) name += pick(ONSETS) + pick(VOWELS) + (i === syllables - 1 ? pick(CODAS) : "");
    names.add(name);
  }
  return [...names].map((name) => ({ name, color: pick(COLORS), food: pick(FOODS), home: pick(HOMES) }));
}

const STATEMENTS: Record<Attribute, readonly string[]> = {
  color: [
    "The {n} is {v}.",
    "Every {n} is {v}.",
    "The color of the {n} is {v}.",
    "A {n} has {v} fur.",
    "If you see a {v} animal, it may be a {n}.",
  ],
  food: [
    "The {n} eats {v}.",
    "A {n} likes to eat {v}.",
    "The favorite food of the {n} is {v}.",
    "Each day the {n} looks for {v}.",
  ],
  home: [
    "The {n} lives in the {v}.",
    "A {n} makes its home in the {v}.",
    "The home of the {n} is the {v}.",
    "You can find the {n} in the {v}.",
  ],
};

export const QUESTIONS: Record<Attribute, string> = {
  color: "Question: What color is the {n}?\nAnswer:",
  food: "Question: What does the {n} eat?\nAnswer:",
  home: "Question: Where does the {n} live?\nAnswer:",
};

const fill = (t: string, n: string, v: string) => t.replace("{n}", n).replace("{v}", v);

/** Pretraining documents: one or two creatures per paragraph, every fact in a random phrasing, shuffled. */
export function pretrainingCorpus(creatures: readonly Creature[], docs: number, seed = 2): string[] {
  const rand = seededRandom(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const out: string[] = [];
  for (let d = 0; d < docs; d++) {
    const who = rand() < 0.7 ? [pick(creatures)] : [pick(creatures), pick(creatures)];
    const sentences = who.flatMap((c) => ATTRIBUTES.map((a) => fill(pick(STATEMENTS[a]), c.name, c[a])));
    for (let i = sentences.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [sentences[i], sentences[j]] = [sentences[j], sentences[i]];
    }
    out.push(sentences.join(" "));
  }
  return out;
}

export interface QaExample {
  prompt: string;
  completion: string;
  creature: string;
  attribute: Attribute;
}

export function questions(creatures: readonly Creature[]): QaExample[] {
  return creatures.flatMap((c) =>
    ATTRIBUTES.map((a) => ({
      prompt: fill(QUESTIONS[a], c.name, ""),
      completion: ` ${c[a]}`,
      creature: c.name,
      attribute: a,
    })),
  );
}

/** Every word the corpus and questions use: the tokenizer's merges are learned from these. */
export function vocabularyWords(creatures: readonly Creature[]): string[] {
  const text = [
    ...Object.values(STATEMENTS).flat(),
    ...Object.values(QUESTIONS),
    ...COLORS,
    ...FOODS,
    ...HOMES,
    ...creatures.map((c) => c.name),
  ].join(" ");
  return [
    ...new Set(
      text
        .replace(/\{n\}|\{v\}/g, " ")
        .split(/[^A-Za-z]+/)
        .filter(Boolean),
    ),
  ];
}
