import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ModelError } from "./errors";
import { type TinyTokenizerFamily, writeTinyTokenizer } from "./tiny-tokenizer";
import { HfTokenizer, loadTokenizer } from "./tokenizer";

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "qlora-tok-"));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const families: TinyTokenizerFamily[] = ["llama3", "qwen2", "llama2", "mistral"];

async function load(family: TinyTokenizerFamily) {
  const dir = join(root, family);
  const info = await writeTinyTokenizer(dir, family);
  return { dir, info, tok: await loadTokenizer(dir) };
}

describe.each(families)("tiny %s tokenizer", (family) => {
  it("loads from the directory with its special tokens and vocab size", async () => {
    const { tok, info } = await load(family);
    expect(tok.vocabSize).toBe(info.vocabSize);
    expect(tok.bosTokenId).toBe(info.bosTokenId);
    expect(tok.eosTokenId).toBe(info.eosTokenId);
    expect(tok.padTokenId).toBe(info.padTokenId);
    for (const id of info.eosTokenIds) expect(tok.isSpecial(id)).toBe(true);
  });

  it("merges known words into single tokens and round-trips text through decode", async () => {
    const { tok } = await load(family);
    const text = "Hello world, the quick brown fox jumps over the lazy dog! é 123456\n\nwhat";
    const ids = tok.encode(text, { addSpecialTokens: false });
    const pieces = ids.map((i) => tok.idToToken(i));
    const space = family === "llama3" || family === "qwen2" ? "Ġ" : "▁";
    expect(pieces).toContain(`${space}quick`);
    expect(pieces).toContain(`${space}world`);
    expect(tok.decode(ids)).toBe(text);
  });

  it("decode(encode(s)) = s for arbitrary Unicode text", async () => {
    const { tok } = await load(family);
    // SentencePiece-style tokenizers write spaces as "▁" (U+2581), so a "▁" in the text is a space to them and
    // decodes as one; and they drop one leading space on decode (Strip decoder). Both as in transformers.
    const sp = family === "llama2" || family === "mistral";
    const expectedOf = (s: string): string => {
      // Qwen's normalizer is NFC, so text comes back NFC-normalized.
      const norm = family === "qwen2" ? s.normalize("NFC") : sp ? s.replaceAll("\u2581", " ") : s;
      return sp && norm.startsWith(" ") ? norm.slice(1) : norm;
    };
    const roundTrip = (s: string) => tok.decode(tok.encode(s, { addSpecialTokens: false }));
    for (const s of ["\u2581", "a\u2581b", " \u2581x"]) expect(roundTrip(s)).toBe(expectedOf(s));
    fc.assert(
      fc.property(fc.string({ unit: "grapheme", maxLength: 40 }), (s) => {
        expect(roundTrip(s)).toBe(expectedOf(s));
      }),
      { numRuns: 200 },
    );
  });
});

describe("BOS/EOS per family", () => {
  it("Llama 3 adds <|begin_of_text|>, Llama 2 and Mistral add <s>, Qwen adds nothing; no EOS is appended", async () => {
    const expectations: Record<TinyTokenizerFamily, string | null> = {
      llama3: "<|begin_of_text|>",
      llama2: "<s>",
      mistral: "<s>",
      qwen2: null,
    };
    for (const family of families) {
      const { tok } = await load(family);
      const plain = tok.encode("hello world", { addSpecialTokens: false });
      const withSpecial = tok.encode("hello world");
      const bos = expectations[family];
      if (bos === null) expect(withSpecial).toEqual(plain);
      else expect(withSpecial).toEqual([tok.tokenToId(bos), ...plain]);
      expect(withSpecial.at(-1)).not.toBe(tok.eosTokenId);
    }
  });

  it("add_bos_token / add_eos_token in tokenizer_config.json rebuild a LlamaTokenizer's post-processor", async () => {
    const { dir } = await load("llama2");
    const cfgPath = join(dir, "tokenizer_config.json");
    const cfg = JSON.parse(await readFile(cfgPath, "utf8"));
    await writeFile(cfgPath, JSON.stringify({ ...cfg, add_bos_token: false, add_eos_token: true }));
    const tok = await loadTokenizer(dir);
    const plain = tok.encode("hello", { addSpecialTokens: false });
    expect(tok.encode("hello")).toEqual([...plain, 2]);
  });

  it("special tokens written in text are single ids; skipSpecialTokens drops them on decode", async () => {
    const { tok } = await load("qwen2");
    const ids = tok.encode("<|im_start|>user\nhello<|im_end|>");
    expect(ids[0]).toBe(tok.tokenToId("<|im_start|>"));
    expect(ids.at(-1)).toBe(tok.tokenToId("<|im_end|>"));
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe("user\nhello");
  });
});

describe("chat templates", () => {
  const messages = [
    { role: "user", content: "hello" },
    { role: "assistant", content: "world" },
    { role: "user", content: "What is the answer?" },
  ];

  it("render each family's template as transformers does", async () => {
    const expected: Record<TinyTokenizerFamily, string> = {
      llama3:
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nworld<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is the answer?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
      qwen2:
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nworld<|im_end|>\n<|im_start|>user\nWhat is the answer?<|im_end|>\n<|im_start|>assistant\n",
      llama2: "<s>[INST] hello [/INST] world </s><s>[INST] What is the answer? [/INST]",
      mistral: "<s>[INST] hello [/INST]world</s>[INST] What is the answer? [/INST]",
    };
    for (const family of families) {
      const { tok } = await load(family);
      expect(tok.applyChatTemplate(messages, { addGenerationPrompt: true }), family).toBe(expected[family]);
    }
  });

  it("addGenerationPrompt adds only the assistant header", async () => {
    const { tok } = await load("llama3");
    const without = tok.applyChatTemplate(messages);
    const withPrompt = tok.applyChatTemplate(messages, { addGenerationPrompt: true });
    expect(withPrompt).toBe(`${without}<|start_header_id|>assistant<|end_header_id|>\n\n`);
  });

  it("encodeChat keeps exactly one BOS (the template's)", async () => {
    for (const family of ["llama3", "mistral"] as const) {
      const { tok } = await load(family);
      const ids = tok.encodeChat(messages.slice(0, 1), { addGenerationPrompt: true });
      expect(ids[0]).toBe(tok.bosTokenId);
      expect(ids.filter((i) => i === tok.bosTokenId)).toHaveLength(1);
    }
  });

  it("a template that raises (roles not alternating) is a ModelError naming the file", async () => {
    const { tok, dir } = await load("mistral");
    const bad = [
      { role: "user", content: "a" },
      { role: "user", content: "b" },
    ];
    const err = (() => {
      try {
        tok.applyChatTemplate(bad);
      } catch (e) {
        return e;
      }
    })() as ModelError;
    expect(err).toBeInstanceOf(ModelError);
    expect(err.code).toBe("chat_template_render");
    expect(err.message).toContain(join(dir, "tokenizer_config.json"));
    expect(err.message).toContain("alternate");
  });

  it("messages of the wrong shape are a ModelError naming the index", async () => {
    const { tok } = await load("qwen2");
    expect(() => tok.applyChatTemplate([{ role: "user" } as never])).toThrow(/messages\[0\]/);
  });
});

describe("bad input", () => {
  async function dirWith(name: string, tokenizerJson: string, config?: string): Promise<string> {
    const dir = join(root, name);
    await writeTinyTokenizer(dir, "llama3");
    await writeFile(join(dir, "tokenizer.json"), tokenizerJson);
    if (config !== undefined) await writeFile(join(dir, "tokenizer_config.json"), config);
    return dir;
  }

  async function errorOf(p: Promise<unknown>): Promise<ModelError> {
    try {
      await p;
    } catch (e) {
      expect(e).toBeInstanceOf(ModelError);
      return e as ModelError;
    }
    throw new Error("expected a ModelError");
  }

  it("unparseable tokenizer.json names the file", async () => {
    const dir = await dirWith("badjson", '{"model": {"type": "BPE",');
    const e = await errorOf(loadTokenizer(dir));
    expect(e.code).toBe("tokenizer_json");
    expect(e.file).toBe(join(dir, "tokenizer.json"));
    expect(e.message).toContain(join(dir, "tokenizer.json"));
  });

  it("missing tokenizer.json names the file", async () => {
    const e = await errorOf(loadTokenizer(join(root, "nowhere")));
    expect(e.code).toBe("tokenizer_missing");
    expect(e.message).toContain("tokenizer.json");
  });

  it("JSON that is not a tokenizer names the key", async () => {
    const dir = await dirWith("notatok", JSON.stringify({ model: { type: "BPE", vocab: {}, merges: 3 } }));
    const e = await errorOf(loadTokenizer(dir));
    expect(e.code).toBe("tokenizer_invalid");
    expect(e.key).toBe("model.merges");
  });

  it("unparseable tokenizer_config.json and a bos_token not in the vocabulary", async () => {
    const { tokenizer } = JSON.parse(JSON.stringify({ tokenizer: await readTiny() }));
    const d1 = await dirWith("badcfg", JSON.stringify(tokenizer), "{nope");
    expect((await errorOf(loadTokenizer(d1))).code).toBe("tokenizer_config_json");
    const d2 = await dirWith("badbos", JSON.stringify(tokenizer), JSON.stringify({ bos_token: "<nope>" }));
    const e = await errorOf(loadTokenizer(d2));
    expect(e.code).toBe("tokenizer_config_invalid");
    expect(e.key).toBe("bos_token");
  });

  it("a chat template with a syntax error names the key", async () => {
    const d = await dirWith("badtpl", JSON.stringify(await readTiny()), JSON.stringify({ chat_template: "{% for %}" }));
    const e = await errorOf(loadTokenizer(d));
    expect(e.code).toBe("chat_template_syntax");
    expect(e.key).toBe("chat_template");
  });

  it("decode refuses ids outside the vocabulary", async () => {
    const { tok } = await load("qwen2");
    expect(() => tok.decode([tok.vocabSize])).toThrow(ModelError);
    expect(tok.decode([])).toBe("");
  });

  async function readTiny(): Promise<unknown> {
    return JSON.parse(await readFile(join((await load("llama3")).dir, "tokenizer.json"), "utf8"));
  }

  it("fuzz: mutated tokenizer.json either loads and encodes or throws ModelError", async () => {
    const { dir } = await load("qwen2");
    const json = JSON.parse(await readFile(join(dir, "tokenizer.json"), "utf8"));
    const config = JSON.parse(await readFile(join(dir, "tokenizer_config.json"), "utf8"));
    // Replace one value somewhere in the structure by an arbitrary JSON value.
    const paths: (string | number)[][] = [];
    const walk = (v: unknown, p: (string | number)[], depth: number) => {
      paths.push(p);
      if (depth > 3 || typeof v !== "object" || v === null) return;
      const entries = Array.isArray(v) ? v.slice(0, 4).map((x, i) => [i, x] as const) : Object.entries(v).slice(0, 12);
      for (const [k, x] of entries) walk(x, [...p, k], depth + 1);
    };
    walk(json, [], 0);
    fc.assert(
      fc.property(fc.constantFrom(...paths.slice(1)), fc.jsonValue({ maxDepth: 2 }), (path, value) => {
        const copy = structuredClone(json);
        let o = copy;
        for (const k of path.slice(0, -1)) o = o[k];
        o[path.at(-1)!] = value;
        try {
          const tok = new HfTokenizer(copy, config);
          tok.encode("hello world <|im_end|>");
        } catch (e) {
          if (!(e instanceof ModelError)) throw new Error(`${path.join(".")} = ${JSON.stringify(value)}: ${e}`);
        }
      }),
      { numRuns: 400 },
    );
  });
});
