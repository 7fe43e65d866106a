import { memoryStats, noGrad, type Tensor, tensor } from "@qlora/tensor";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { describe, expect, it } from "vitest";
import { createModel } from "./causal-lm";
import { parseConfig } from "./config";
import { ModelError } from "./errors";
import {
  eosTokenIds,
  type GenerationCache,
  type GenerationModel,
  generate,
  generateStream,
  type TokenEvent,
} from "./generate";
import { randomLayers } from "./layers";
import { tinyTokenizerFiles } from "./tiny-tokenizer";
import { HfTokenizer } from "./tokenizer";

/**
 * A toy cached LM over a vocabulary of V tokens: the logits at a position are a fixed pseudo-random function of
 * the whole token history, so a cache that lost or reordered a token changes the output. Counts forwards and
 * live caches.
 */
class ToyCache implements GenerationCache {
  rows: number[][] = [];
  disposed = false;
  constructor(private readonly live: Set<ToyCache>) {
    live.add(this);
  }
  get length(): number {
    return this.rows[0]?.length ?? 0;
  }
  dispose(): void {
    this.disposed = true;
    this.live.delete(this);
  }
}

class ToyLM implements GenerationModel<ToyCache> {
  readonly live = new Set<ToyCache>();
  forwards: number[][] = []; // [batch, n] of each call
  constructor(
    readonly vocab = 50,
    /** Sharpness of the distribution. */
    readonly scale = 3,
  ) {}
  createCache(): ToyCache {
    return new ToyCache(this.live);
  }
  logitsFor(history: readonly number[]): Float32Array {
    let h = 2166136261;
    for (const t of history) h = Math.imul(h ^ (t + 1), 16777619) >>> 0;
    const out = new Float32Array(this.vocab);
    for (let i = 0; i < this.vocab; i++) {
      const x = Math.imul(h ^ Math.imul(i + 1, 2654435761), 2246822519) >>> 0;
      out[i] = ((x / 2 ** 32) * 2 - 1) * this.scale;
    }
    return out;
  }
  forward({ inputIds, cache }: { inputIds: Tensor; cache: ToyCache }): { logits: Tensor } {
    expect(cache.disposed).toBe(false);
    const [b, n] = inputIds.shape;
    this.forwards.push([b, n]);
    const ids = Array.from(inputIds.toTypedArray() as Int32Array);
    if (cache.rows.length === 0) cache.rows = Array.from({ length: b }, () => []);
    const out = new Float32Array(b * this.vocab);
    for (let r = 0; r < b; r++) {
      cache.rows[r].push(...ids.slice(r * n, (r + 1) * n));
      out.set(this.logitsFor(cache.rows[r]), r * this.vocab);
    }
    return { logits: tensor(out, { shape: [b, this.vocab] }) };
  }
}

/** Greedy by full recomputation from the toy's definition. */
function toyGreedy(m: ToyLM, prompt: number[], n: number, stop: number[] = []): number[] {
  const seq = [...prompt];
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const l = m.logitsFor(seq);
    const t = l.indexOf(Math.max(...l));
    out.push(t);
    seq.push(t);
    if (stop.includes(t)) break;
  }
  return out;
}

describe("generate over a toy cached model", () => {
  it("greedy equals recomputation; prefill is one forward of the whole prompt, then one token per forward", async () => {
    const m = new ToyLM();
    const prompt = [3, 1, 4, 1, 5];
    const [r] = await generate(m, [prompt], { maxNewTokens: 20 });
    expect(r.tokens).toEqual(toyGreedy(m, prompt, 20));
    expect(r.finishReason).toBe("max_new_tokens");
    expect(m.forwards[0]).toEqual([1, 5]);
    expect(m.forwards.slice(1).every(([b, n]) => b === 1 && n === 1)).toBe(true);
    expect(m.forwards).toHaveLength(20);
    expect(m.live.size).toBe(0);
  });

  it("several prompts: equal lengths share a batched cache, others get their own; results as if alone", async () => {
    const m = new ToyLM();
    const prompts = [[1, 2, 3], [4, 5], [6, 7, 8], [9]];
    const results = await generate(m, prompts, { maxNewTokens: 12 });
    for (const [i, r] of results.entries()) expect(r.tokens).toEqual(toyGreedy(m, prompts[i], 12));
    // prefills: prompts 0 and 2 together, 1 and 3 alone; then one decode forward per group and step
    expect(m.forwards.slice(0, 3)).toEqual([
      [2, 3],
      [1, 2],
      [1, 1],
    ]);
    expect(m.live.size).toBe(0);
  });

  it("stop tokens end a sequence (the token is returned); the rest of a group continues", async () => {
    const m = new ToyLM();
    const prompts = [
      [1, 2, 3],
      [3, 2, 1],
    ];
    const free = prompts.map((p) => toyGreedy(m, p, 10));
    const stop = free[0][3];
    const results = await generate(m, prompts, { maxNewTokens: 10, stopTokenIds: [stop] });
    expect(results[0].tokens).toEqual(toyGreedy(m, prompts[0], 10, [stop]));
    expect(results[0].tokens.at(-1)).toBe(stop);
    expect(results[0].finishReason).toBe("stop_token");
    expect(results[1].tokens).toEqual(toyGreedy(m, prompts[1], 10, [stop]));
  });

  it("a seed makes sampling reproducible and independent of the other prompts in the call", async () => {
    const m = new ToyLM(50, 1);
    const opts = { maxNewTokens: 16, temperature: 0.9, topK: 20, topP: 0.95, seed: 1234 };
    const a = await generate(
      m,
      [
        [1, 2],
        [5, 6, 7],
      ],
      opts,
    );
    const b = await generate(
      m,
      [
        [1, 2],
        [5, 6, 7],
      ],
      opts,
    );
    expect(b).toEqual(a);
    const alone = await generate(m, [[1, 2]], opts);
    expect(alone[0].tokens).toEqual(a[0].tokens);
    const other = await generate(m, [[1, 2]], { ...opts, seed: 99 });
    expect(other[0].tokens).not.toEqual(a[0].tokens);
    // sampling actually departs from greedy here
    expect(a[0].tokens).not.toEqual(toyGreedy(m, [1, 2], 16));
  });

  it("streaming: the callback and the async iterator see the same events, in order, as the results", async () => {
    const m = new ToyLM();
    const prompts = [[1, 2], [7]];
    const seen: TokenEvent[] = [];
    const results = await generate(m, prompts, { maxNewTokens: 5, onToken: (e) => seen.push(e) });
    const it = generateStream(m, prompts, { maxNewTokens: 5 });
    const iterated: TokenEvent[] = [];
    let next = await it.next();
    while (!next.done) {
      iterated.push(next.value);
      next = await it.next();
    }
    expect(iterated).toEqual(seen);
    expect(next.value).toEqual(results);
    for (let s = 0; s < 2; s++) {
      const mine = seen.filter((e) => e.sequence === s);
      expect(mine.map((e) => e.tokenId)).toEqual(results[s].tokens);
      expect(mine.map((e) => e.step)).toEqual([0, 1, 2, 3, 4]);
      expect(mine.at(-1)?.finishReason).toBe("max_new_tokens");
    }
  });

  it("breaking out of the async iterator frees the caches", async () => {
    const m = new ToyLM();
    for await (const e of generateStream(m, [[1, 2, 3]], { maxNewTokens: 50 })) if (e.step === 2) break;
    expect(m.live.size).toBe(0);
  });

  it("an aborted signal ends every sequence with finishReason 'aborted'", async () => {
    const m = new ToyLM();
    const ac = new AbortController();
    const results = await generate(m, [[1], [2, 3]], {
      maxNewTokens: 100,
      signal: ac.signal,
      onToken: (e) => {
        if (e.step === 3) ac.abort();
      },
    });
    for (const r of results) {
      expect(r.finishReason).toBe("aborted");
      expect(r.tokens.length).toBeLessThan(100);
    }
    expect(m.live.size).toBe(0);
  });

  it("NaN logits (a model with NaN weights) end generation with a typed error, not NUL tokens", async () => {
    class NanAfter extends ToyLM {
      override logitsFor(history: readonly number[]): Float32Array {
        const out = super.logitsFor(history);
        if (history.length > 3) out[7] = Number.NaN;
        return out;
      }
    }
    const m = new NanAfter();
    await expect(generate(m, [[1, 2, 3]], { maxNewTokens: 5 })).rejects.toMatchObject({
      name: "ModelError",
      code: "non_finite_logits",
      message: /NaN logits for prompt 0 at generated token 1; its weights \(or the inputs\) hold NaN\/Inf/,
    });
    expect(m.live.size).toBe(0);
  });

  it("bad options are typed errors naming the option", async () => {
    const m = new ToyLM();
    const cases: [unknown[], object, string][] = [
      [[], {}, "prompts"],
      [[[]], {}, "prompts[0]"],
      [[[1.5]], {}, "prompts[0]"],
      [[[1]], { maxNewTokens: -1 }, "maxNewTokens"],
      [[[1]], { topP: 0 }, "topP"],
      [[[1]], { temperature: -1 }, "temperature"],
      [[[1]], { stopStrings: ["x"] }, "stopStrings"],
      [[[1]], { seed: -3 }, "seed"],
    ];
    for (const [prompts, opts, key] of cases) {
      const e = await generate(m, prompts as number[][], opts).catch((x) => x);
      expect(e, key).toBeInstanceOf(ModelError);
      expect(e.key).toBe(key);
    }
  });
});

describe("text, stop strings and streaming with a tokenizer", () => {
  const { tokenizer, config } = tinyTokenizerFiles("llama3");
  const tok = new HfTokenizer(tokenizer, config);

  /** A model that, after a one-token prompt, emits `script` token by token (then repeats its last token). */
  function scripted(script: number[]): GenerationModel<ToyCache> {
    const toy = new ToyLM(tok.vocabSize);
    return {
      createCache: () => toy.createCache(),
      forward({ inputIds, cache }) {
        const { logits } = toy.forward({ inputIds, cache });
        const step = cache.length - 1; // tokens generated so far
        const [b] = inputIds.shape;
        const out = new Float32Array(b * tok.vocabSize);
        for (let r = 0; r < b; r++) out[r * tok.vocabSize + script[Math.min(step, script.length - 1)]] = 1;
        logits.dispose();
        return { logits: tensor(out, { shape: [b, tok.vocabSize] }) };
      },
    };
  }

  const ids = (text: string) => tok.encode(text, { addSpecialTokens: false });

  it("a stop string ends generation; text is cut before it and never streamed", async () => {
    const script = ids(" the quick brown fox jumps over the lazy dog");
    const model = scripted(script);
    let streamed = "";
    const [r] = await generate(model, [[0]], {
      tokenizer: tok,
      maxNewTokens: 40,
      stopStrings: ["fox jumps"],
      onToken: (e) => {
        streamed += e.text;
      },
    });
    expect(r.finishReason).toBe("stop_string");
    expect(r.text).toBe(" the quick brown ");
    expect(streamed).toBe(r.text);
    expect(tok.decode(r.tokens)).toBe(" the quick brown fox jumps");
  });

  it("the eos token stops by default; the text excludes it", async () => {
    const model = scripted([...ids(" hello world"), tok.eosTokenId!, ...ids(" more")]);
    const [r] = await generate(model, [[0]], { tokenizer: tok, maxNewTokens: 40 });
    expect(r.finishReason).toBe("stop_token");
    expect(r.text).toBe(" hello world");
    expect(r.tokens.at(-1)).toBe(tok.eosTokenId);
  });

  it("eosTokenIds: generation_config's list (else config.json's) plus the tokenizer's EOS, as transformers stops", async () => {
    const eos = tok.eosTokenId!;
    const [eom, other] = ids(" x").concat(ids(" y"));
    expect(
      eosTokenIds({ generationConfig: { eos_token_id: [eos, eom] }, config: { eosTokenId: other }, tokenizer: tok }),
    ).toEqual([eos, eom]);
    expect(
      eosTokenIds({ generationConfig: { do_sample: false }, config: { eosTokenId: [other] }, tokenizer: tok }),
    ).toEqual([other, eos]);
    expect(eosTokenIds({ generationConfig: null, config: { eosTokenId: null } })).toEqual([]);
    // a Llama 3.1-style <|eom_id|> in the list ends generation as the tokenizer's eos would
    const model = scripted([...ids(" hello"), eom, ...ids(" more")]);
    const stopTokenIds = eosTokenIds({ generationConfig: { eos_token_id: [eos, eom] }, tokenizer: tok });
    const [r] = await generate(model, [[0]], { tokenizer: tok, maxNewTokens: 40, stopTokenIds });
    expect(r.finishReason).toBe("stop_token");
    expect(r.text).toBe(" hello");
  });

  it("a multi-byte character split over byte tokens is streamed only once complete", async () => {
    // "é" is two byte-level tokens (Ã ©); the first alone decodes to U+FFFD.
    const e = ids("é");
    expect(e).toHaveLength(2);
    const model = scripted([...ids(" a"), ...e, ...ids(" b")]);
    const texts: string[] = [];
    const [r] = await generate(model, [[0]], { tokenizer: tok, maxNewTokens: 4, onToken: (ev) => texts.push(ev.text) });
    expect(r.text).toBe(" aé b");
    expect(texts).toEqual([" a", "", "é", " b"]);
  });
});

describe("generate over a tiny Llama (models-core's CausalLM and KVCache)", () => {
  const config = parseConfig({
    architectures: ["LlamaForCausalLM"],
    vocab_size: 96,
    hidden_size: 64,
    intermediate_size: 128,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: 256,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
  });

  it("generation frees every tensor it creates (inputs, logits, caches)", async () => {
    const model = createModel(config, randomLayers({ seed: 3, std: 0.5 }));
    // Tensors earlier tests dropped without dispose() are released by a FinalizationRegistry whenever the
    // collector runs: collect them now, or one released during generate() makes the count drop (seen in CI).
    await collectGarbage();
    const before = memoryStats("cpu").currentBytes;
    await generate(
      model,
      [
        [1, 2, 3],
        [4, 5],
        [6, 7, 8],
      ],
      { maxNewTokens: 8, temperature: 0.8, seed: 1 },
    );
    expect(memoryStats("cpu").currentBytes).toBe(before);
    model.dispose();
  });

  it("KV-cache greedy decoding equals full recomputation token for token for 64 new tokens", async () => {
    // std 0.5 makes the distribution peaked enough that greedy is not decided by rounding noise.
    const model = createModel(config, randomLayers({ seed: 7, std: 0.5 }));
    const prompts = [
      [5, 17, 42, 8, 9, 33, 2],
      [60, 61, 62],
    ];
    const results = await generate(model, prompts, { maxNewTokens: 64 });
    for (const [i, prompt] of prompts.entries()) {
      const seq = [...prompt];
      const margins: number[] = [];
      for (let step = 0; step < 64; step++) {
        const logits = noGrad(() => {
          const ids = tensor(Int32Array.from(seq), { dtype: "i32", shape: [1, seq.length] });
          const out = model.forward({ inputIds: ids }).logits!;
          const last = (out.toTypedArray() as Float32Array).slice((seq.length - 1) * config.vocabSize);
          out.dispose();
          ids.dispose();
          return last;
        });
        const sorted = Float32Array.from(logits).sort();
        margins.push(sorted[sorted.length - 1] - sorted[sorted.length - 2]);
        seq.push(logits.indexOf(sorted[sorted.length - 1]));
      }
      expect(results[i].tokens).toEqual(seq.slice(prompt.length));
      // the continuation is not degenerate (a constant token would pass trivially)
      expect(new Set(results[i].tokens).size).toBeGreaterThan(3);
    }
  }, 120_000);
});

/** Full collections until the byte count settles: FinalizationRegistry callbacks run some turns after a collection. */
async function collectGarbage(): Promise<void> {
  setFlagsFromString("--expose-gc");
  const gc = runInNewContext("gc") as () => void;
  for (let settled = 0, last = -1; settled < 3; ) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 5));
    const now = memoryStats("cpu").currentBytes;
    settled = now === last ? settled + 1 : 0;
    last = now;
  }
}
