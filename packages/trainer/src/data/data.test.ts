import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { open } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { parquetWriteFile } from "hyparquet-writer";
import { afterAll, describe, expect, it } from "vitest";
import { charTokenizer } from "../../test/helpers/char-tokenizer";
import { TrainerError } from "../errors";
import { collate } from "./collate";
import { type DatasetOptions, loadTokenDataset, seededPermutation } from "./dataset";
import { toExample } from "./formats";
import { packBestFitDecreasing } from "./pack";
import { readRecords } from "./read";

const REPO = new URL("../../../../", import.meta.url).pathname;
const STREAM_SCRIPT = new URL("../../test/stream-script.ts", import.meta.url).pathname;
const root = mkdtempSync(join(tmpdir(), "qlora-data-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let fileNo = 0;
function jsonl(rows: unknown[], ext = "jsonl"): string {
  const p = join(root, `d${fileNo++}.${ext}`);
  writeFileSync(
    p,
    ext === "json" ? JSON.stringify(rows) : rows.map((r) => (typeof r === "string" ? r : JSON.stringify(r))).join("\n"),
  );
  return p;
}
const base = (files: DatasetOptions["files"], extra: Partial<DatasetOptions> = {}): DatasetOptions => ({
  files,
  tokenizer: charTokenizer,
  maxLength: 64,
  microBatchSize: 2,
  ...extra,
});
const rec = (value: unknown, line = 1) => ({ value, file: "f.jsonl", line });
const stats = () => ({ truncated: 0, dropped: 0, noLossTokens: 0, noAssistantTurn: 0 });
const enc = (s: string) => charTokenizer.encode(s, { addSpecialTokens: false });

describe("formats", () => {
  it("prompt/completion: loss only on the completion and the appended EOS (train_on_inputs false)", () => {
    const ex = toExample(
      rec({ prompt: "ab", completion: "cd" }),
      { format: "auto", tokenizer: charTokenizer },
      stats(),
    );
    expect([...ex!.inputIds]).toEqual([1, ...enc("ab"), ...enc("cd"), 2]);
    expect([...ex!.labels]).toEqual([-100, -100, -100, ...enc("cd"), 2]);
    const all = toExample(
      rec({ prompt: "ab", completion: "cd" }),
      { format: "auto", tokenizer: charTokenizer, trainOnInputs: true },
      stats(),
    );
    expect([...all!.labels]).toEqual([-100, ...enc("ab"), ...enc("cd"), 2]);
  });

  it("text trains on everything; alpaca renders the Stanford template", () => {
    const t = toExample(rec({ text: "hi" }), { format: "text", tokenizer: charTokenizer }, stats());
    expect([...t!.labels]).toEqual([-100, ...enc("hi"), 2]);
    const a = toExample(
      rec({ instruction: "Add", input: "1+1", output: "2" }),
      { format: "auto", tokenizer: charTokenizer },
      stats(),
    );
    const prompt =
      "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\nAdd\n\n### Input:\n1+1\n\n### Response:\n";
    expect([...a!.inputIds]).toEqual([1, ...enc(prompt), ...enc("2"), 2]);
    expect(a!.labels.filter((l) => l !== -100).length).toBe(2);
  });

  it("messages: loss on assistant turns only (their end-of-turn included)", () => {
    const msgs = [
      { role: "user", content: "q1" },
      { role: "assistant", content: "a1" },
      { role: "user", content: "q2" },
      { role: "assistant", content: "a2" },
    ];
    const ex = toExample(rec({ messages: msgs }), { format: "auto", tokenizer: charTokenizer }, stats())!;
    const text = String.fromCharCode(...[...ex.inputIds].map((i) => i - 3));
    const trained = String.fromCharCode(...[...ex.labels].filter((l) => l !== -100).map((i) => i - 3));
    expect(text).toBe("<user>q1</><assistant>a1</><user>q2</><assistant>a2</>");
    expect(trained).toBe("a1</>a2</>");
  });

  it("pretokenized rows keep their labels", () => {
    const ex = toExample(rec({ input_ids: [5, 6, 7], labels: [-100, -100, 7] }), { format: "auto" }, stats())!;
    expect([...ex.inputIds]).toEqual([5, 6, 7]);
    expect([...ex.labels]).toEqual([-100, -100, 7]);
  });

  it("bad rows name file:line and the fields expected", () => {
    const o = { format: "auto" as const, tokenizer: charTokenizer };
    expect(() => toExample(rec({ prompt: "x" }, 7), o, stats())).toThrow(
      /f\.jsonl:7: field "completion" is missing; format "prompt_completion" expects \{"prompt": string, "completion": string\}/,
    );
    expect(() => toExample(rec({ text: 3 }, 2), o, stats())).toThrow(/f\.jsonl:2: field "text" is number/);
    expect(() => toExample(rec({ text: "  " }, 2), o, stats())).toThrow(/field "text" is empty/);
    expect(() => toExample(rec({ foo: 1 }, 4), o, stats())).toThrow(/f\.jsonl:4: cannot tell the format/);
    expect(() => toExample(rec({ conversations: [] }, 4), o, stats())).toThrow(
      /cannot tell the format .* \(a ShareGPT "conversations" row: give the dataset its format, e\.g\. type: sharegpt\)/,
    );
    expect(() => toExample(rec({ prompt: ["a"], completion: "b" }, 6), o, stats())).toThrow(
      /field "prompt" is an array/,
    );
  });

  it("truncation counts rows; overflow drop skips them", async () => {
    const f = jsonl([{ text: "a".repeat(100) }, { text: "short" }]);
    const t = await loadTokenDataset(base(f, { maxLength: 16, microBatchSize: 1 }));
    expect(t.stats).toMatchObject({ rows: 2, examples: 2, truncated: 1, dropped: 0 });
    expect(t.example(0).inputIds.length).toBe(16);
    const d = await loadTokenDataset(base(f, { maxLength: 16, microBatchSize: 1, overflow: "drop" }));
    expect(d.stats).toMatchObject({ examples: 1, dropped: 1 });
  });

  it("overflow raise is an error naming the file, line and both lengths", async () => {
    const f = jsonl([{ text: "short" }, { text: "a".repeat(40) }]);
    await expect(loadTokenDataset(base(f, { maxLength: 16, overflow: "raise" }))).rejects.toMatchObject({
      code: "DATA_TOO_LONG",
      message: expect.stringMatching(/d\d+\.jsonl:2: the example is 42 tokens, longer than the maximum length 16/),
    });
    expect((await loadTokenDataset(base(f, { maxLength: 64, overflow: "raise" }))).stats.examples).toBe(2);
  });

  it("examples whose loss tokens are all truncated away are dropped and counted; none left is an error", async () => {
    const long = { prompt: "p".repeat(30), completion: "c" };
    const f = jsonl([long, { prompt: "q", completion: "answer" }, long]);
    const d = await loadTokenDataset(base(f, { maxLength: 16, microBatchSize: 1 }));
    expect(d.stats).toMatchObject({ rows: 3, examples: 1, truncated: 2, dropped: 2, noLossTokens: 2 });
    expect(d.example(0).labels.filter((l) => l !== -100).length).toBe(7); // "answer" + EOS
    const all = jsonl([long, long]);
    await expect(loadTokenDataset(base(all, { maxLength: 16 }))).rejects.toMatchObject({
      code: "EMPTY_DATASET",
      message: expect.stringMatching(
        /no examples \(2 rows, 2 dropped with no token that carries loss \(2 truncated to 16/,
      ),
    });
  });

  it("each file is parsed with its own format, not guessed from the keys of its rows", async () => {
    const both = jsonl([{ prompt: "ab", completion: "cd", text: "ab cd" }]);
    const share = jsonl([
      {
        conversations: [
          { from: "human", value: "q" },
          { from: "gpt", value: "a" },
        ],
      },
    ]);
    const chat = { field: "conversations", role: "from", content: "value", roles: { human: "user", gpt: "assistant" } };
    const d = await loadTokenDataset(
      base([both, { path: share, format: "messages", chat }], { format: "text", shuffle: false, microBatchSize: 1 }),
    );
    expect(d.stats.examples).toBe(2);
    // as text: every token after the first carries loss (auto would pick prompt_completion and mask the prompt)
    expect([...d.example(0).labels]).toEqual([-100, ...enc("ab cd"), 2]);
    const trained = String.fromCharCode(...[...d.example(1).labels].filter((l) => l !== -100).map((i) => i - 3));
    expect(trained).toBe("a</>");
    // a text row declared alpaca is an error naming the file, not a silent fallback
    const text = jsonl([{ text: "plain" }]);
    await expect(loadTokenDataset(base([{ path: text, format: "alpaca" }, both]))).rejects.toThrow(
      /d\d+\.jsonl:1: field "instruction" is missing; format "alpaca" expects/,
    );
  });

  it("chat rows with no assistant turn are dropped and counted (trained on every token under trainOnInputs)", async () => {
    const o = { format: "messages" as const, tokenizer: charTokenizer };
    const s = stats();
    expect(toExample(rec({ messages: [{ role: "user", content: "x" }] }, 5), o, s)).toBeNull();
    expect(s).toEqual({ truncated: 0, dropped: 1, noLossTokens: 1, noAssistantTurn: 1 });
    const all = toExample(rec({ messages: [{ role: "user", content: "x" }] }), { ...o, trainOnInputs: true }, stats());
    expect(all!.labels.slice(1).every((l) => l !== -100)).toBe(true);
    // ShareGPT rows read without a roles map have no "assistant": the empty-dataset error says what to check
    const f = jsonl([
      {
        conversations: [
          { from: "human", value: "q" },
          { from: "gpt", value: "a" },
        ],
      },
    ]);
    const chat = { field: "conversations", role: "from", content: "value" };
    await expect(loadTokenDataset(base(f, { format: "messages", chat, microBatchSize: 1 }))).rejects.toThrow(
      /no examples \(1 rows, 1 dropped with no token that carries loss, 1 chat with no "assistant" turn: does the roles mapping name the reply role \(ShareGPT's "gpt"\)\?\)/,
    );
  });

  it("chat fields: errors name the mapped fields", () => {
    const o = { format: "messages" as const, tokenizer: charTokenizer };
    expect(() =>
      toExample(
        rec({ conversations: [{ from: "gpt" }] }, 3),
        { ...o, chat: { field: "conversations", role: "from", content: "value" } },
        stats(),
      ),
    ).toThrow(/f\.jsonl:3: conversations\[0\] lacks a string "from" and "value"/);
    // a roles map the config spells out is the whole list: another name is named, not passed through
    const strict = {
      field: "conversations",
      role: "from",
      content: "value",
      roles: { human: "user", gpt: "assistant" },
      strictRoles: true,
    };
    const robot = {
      conversations: [
        { from: "human", value: "q" },
        { from: "robot", value: "beep" },
      ],
    };
    expect(() => toExample(rec(robot), { ...o, chat: strict }, stats())).toThrow(
      /conversations\[1\] has role "robot", which the roles mapping does not list \(human, gpt\)/,
    );
  });

  it("padToMaxLength pads every batch to maxLength; without it a batch is as long as its longest row", async () => {
    const f = jsonl([{ text: "ab" }, { text: "abcd" }]);
    const lens = async (pad: boolean) =>
      [...(await loadTokenDataset(base(f, { maxLength: 32, padToMaxLength: pad }))).train.batches(0, 0)].map(
        (b) => b.seqLen,
      );
    expect(await lens(true)).toEqual([32]);
    expect(await lens(false)).toEqual([6]);
  });

  it("JSON arrays and plain text files are read too; invalid JSON names the line", async () => {
    const j = await loadTokenDataset(base(jsonl([{ text: "one" }, { text: "two" }], "json")));
    expect(j.stats.examples).toBe(2);
    const txt = join(root, "plain.txt");
    writeFileSync(txt, "line one\n\nline two\n");
    expect((await loadTokenDataset(base(txt))).stats.examples).toBe(2);
    const broken = jsonl(['{"text": "ok"}', "{not json"]);
    await expect(loadTokenDataset(base(broken))).rejects.toThrow(/d\d+\.jsonl:2: not valid JSON/);
  });

  it("Parquet rows read one row group at a time give the same examples as JSONL", async () => {
    const rows = Array.from({ length: 7 }, (_, i) => ({ prompt: `p${i}`, completion: `c${i}`.repeat(i + 1) }));
    const pq = join(root, "rows.parquet");
    parquetWriteFile({
      filename: pq,
      columnData: [
        { name: "prompt", data: rows.map((r) => r.prompt), type: "STRING" },
        { name: "completion", data: rows.map((r) => r.completion), type: "STRING" },
      ],
      rowGroupSize: 3,
    });
    const a = await loadTokenDataset(base(pq, { shuffle: false }));
    const b = await loadTokenDataset(base(jsonl(rows), { shuffle: false }));
    expect(a.stats.examples).toBe(7);
    for (let i = 0; i < 7; i++) expect([...a.example(i).labels]).toEqual([...b.example(i).labels]);
    writeFileSync(join(root, "bad.parquet"), "PAR1 not really");
    await expect(loadTokenDataset(base(join(root, "bad.parquet")))).rejects.toThrow(
      /bad\.parquet: not a readable Parquet file/,
    );
  });

  it("an empty dataset is an error", async () => {
    await expect(loadTokenDataset(base(jsonl([])))).rejects.toMatchObject({ code: "EMPTY_DATASET" });
  });

  it("fuzz: any JSONL line gives examples or a TrainerError, never another throw", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.oneof(fc.json(), fc.string()), { minLength: 1, maxLength: 5 }), async (lines) => {
        const f = jsonl(lines.map((l) => l.replace(/\n/g, " ")));
        try {
          const d = await loadTokenDataset(base(f));
          expect(d.stats.examples).toBeGreaterThan(0);
        } catch (e) {
          expect(e).toBeInstanceOf(TrainerError);
        }
      }),
      { numRuns: 150 },
    );
  });
});

describe("packing", () => {
  it("best-fit-decreasing: every example once, no bin over capacity, near-optimal bin count", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 32 }), { minLength: 1, maxLength: 200 }), (lengths) => {
        const bins = packBestFitDecreasing(lengths, 32);
        expect(bins.flat().sort((a, b) => a - b)).toEqual(lengths.map((_, i) => i));
        for (const b of bins) expect(b.reduce((s, i) => s + lengths[i], 0)).toBeLessThanOrEqual(32);
        const lower = Math.ceil(lengths.reduce((a, b) => a + b, 0) / 32);
        expect(bins.length).toBeLessThanOrEqual(Math.ceil((11 / 9) * lower) + 1); // BFD's bound
      }),
    );
    expect(packBestFitDecreasing([5, 3, 4, 4], 8)).toEqual([
      [0, 1],
      [2, 3],
    ]);
  });

  it("collate restarts position ids and gives each example its own segment; first token of each example unlabelled", () => {
    const a = { inputIds: Int32Array.of(10, 11, 12), labels: Int32Array.of(-100, 11, 12) };
    const b = { inputIds: Int32Array.of(20, 21), labels: Int32Array.of(20, 21) };
    const t = collate([[a, b], [b]], 6, 0);
    expect([...t.positionIds]).toEqual([0, 1, 2, 0, 1, 0, 0, 1, 0, 1, 2, 3]);
    expect([...t.segmentIds]).toEqual([1, 1, 1, 2, 2, 0, 1, 1, 0, 0, 0, 0]);
    expect([...t.labels]).toEqual([-100, 11, 12, -100, 21, -100, -100, 21, -100, -100, -100, -100]);
    expect(t.numLossTokens).toBe(4);
    expect(t.numInputTokens).toBe(7);
  });
});

describe("batches", () => {
  const rows = Array.from({ length: 40 }, (_, i) => ({ prompt: `p${i}`, completion: "x".repeat(1 + (i % 13)) }));

  it("shuffling is deterministic by seed and differs per epoch; resume skips exactly", async () => {
    const f = jsonl(rows);
    const d1 = await loadTokenDataset(base(f, { seed: 3 }));
    const d2 = await loadTokenDataset(base(f, { seed: 3 }));
    const ids = (d: typeof d1, epoch: number, skip = 0) =>
      [...d.train.batches(epoch, skip)].map((b) => [...b.inputIds].join());
    expect(ids(d1, 0)).toEqual(ids(d2, 0));
    expect(ids(d1, 0)).not.toEqual(ids(d1, 1));
    expect(ids(d1, 1, 5)).toEqual(ids(d1, 1).slice(5));
    const d3 = await loadTokenDataset(base(f, { seed: 4 }));
    expect(ids(d3, 0)).not.toEqual(ids(d1, 0));
    expect(seededPermutation(10, 1, 2)).toEqual(seededPermutation(10, 1, 2));
  });

  it("validation split is seeded and disjoint; packing fills rows; length grouping reduces padding", async () => {
    const f = jsonl(rows);
    const d = await loadTokenDataset(base(f, { validationSplit: 0.25, seed: 1 }));
    expect(d.stats.evalExamples).toBe(10);
    let evalRows = 0;
    for (const b of d.eval!.batches(0, 0)) evalRows += b.rows;
    expect(evalRows).toBe(10);
    // a count of examples (HF's integer test_size); a fraction rounds up, so it holds out at least one
    expect((await loadTokenDataset(base(f, { validationSplit: 3 }))).stats.evalExamples).toBe(3);
    expect((await loadTokenDataset(base(f, { validationSplit: 0.01 }))).stats.evalExamples).toBe(1);
    await expect(loadTokenDataset(base(f, { validationSplit: 40 }))).rejects.toThrow(
      /validationSplit 40 holds out 40 of 40 examples; expected a fraction in \(0, 1\) or an integer count/,
    );
    const packed = await loadTokenDataset(base(f, { packing: true, maxLength: 32 }));
    const plain = await loadTokenDataset(base(f, { maxLength: 32 }));
    const count = (d: typeof plain) => [...d.train.batches(0, 0)].reduce((s, b) => s + b.rows, 0);
    expect(count(packed)).toBeLessThan(count(plain) / 2);
    const tokens = (d: typeof plain) => [...d.train.batches(0, 0)].reduce((s, b) => s + b.numLossTokens, 0);
    expect(tokens(packed)).toBe(tokens(plain));
    const grouped = await loadTokenDataset(base(f, { groupByLength: true, microBatchSize: 4 }));
    const cells = (d: typeof plain) => [...d.train.batches(0, 0)].reduce((s, b) => s + b.inputIds.length, 0);
    expect(cells(grouped)).toBeLessThan(cells(plain));
  });

  it("across ranks every example is trained once per epoch, also when batches do not divide evenly", async () => {
    // 11 distinct rows, micro-batches of 2: 6 batches over 4 ranks (two ranks get an empty batch to match steps)
    const f = jsonl(Array.from({ length: 11 }, (_, i) => ({ prompt: `q${i}`, completion: ` a${"x".repeat(i)}` })));
    for (const worldSize of [1, 2, 3, 4, 7]) {
      const seen: string[] = [];
      let lossTokens = 0;
      const lengths = new Set<number>();
      for (let rank = 0; rank < worldSize; rank++) {
        const d = await loadTokenDataset(base(f, { rank, worldSize, microBatchSize: 2 }));
        lengths.add(d.train.length);
        for (const b of d.train.batches(1, 0)) {
          lossTokens += b.numLossTokens;
          for (let r = 0; r < b.rows; r++) {
            const ids = [...b.inputIds.subarray(r * b.seqLen, (r + 1) * b.seqLen)].filter(
              (_, t) => b.segmentIds[r * b.seqLen + t] > 0,
            );
            if (ids.length) seen.push(ids.join());
          }
        }
      }
      expect(lengths.size, `${worldSize} ranks run one step count`).toBe(1);
      expect(seen.length, `${worldSize} ranks`).toBe(11);
      expect(new Set(seen).size).toBe(11);
      const one = await loadTokenDataset(base(f, { microBatchSize: 2 }));
      expect(lossTokens).toBe([...one.train.batches(1, 0)].reduce((t, b) => t + b.numLossTokens, 0));
    }
  });

  it("ranks get disjoint batches of equal count", async () => {
    const f = jsonl(rows);
    const r0 = await loadTokenDataset(base(f, { rank: 0, worldSize: 2 }));
    const r1 = await loadTokenDataset(base(f, { rank: 1, worldSize: 2 }));
    expect(r0.train.length).toBe(r1.train.length);
    const all = new Set([...r0.train.batches(0, 0), ...r1.train.batches(0, 0)].map((b) => [...b.inputIds].join()));
    expect(all.size).toBe(r0.train.length * 2);
  });
});

describe("streaming", () => {
  it("a 96 MB JSONL is tokenized under a 48 MB V8 heap; reading it whole under the same limit fails", async () => {
    const path = join(root, "big.jsonl");
    const fh = await open(path, "w");
    const chunk = "lorem ipsum dolor sit amet ".repeat(300); // ~8 KB per row
    const lines = Array.from({ length: 100 }, (_, i) => JSON.stringify({ text: `${i} ${chunk}` })).join("\n");
    let bytes = 0;
    while (bytes < 96e6) {
      await fh.write(`${lines}\n`);
      bytes += lines.length + 1;
    }
    await fh.close();
    const run = (mode: string) =>
      spawnSync(
        process.execPath,
        ["--max-old-space-size=48", "--import", "tsx", "--conditions=@qlora/source", STREAM_SCRIPT, path, mode],
        { cwd: REPO, encoding: "utf8" },
      );
    const ok = run("stream");
    expect(ok.status, ok.stderr).toBe(0);
    const stats = JSON.parse(ok.stdout.trim().split("\n").at(-1) as string);
    expect(stats.rows).toBeGreaterThan(11000);
    expect(stats.truncated).toBe(stats.rows);
    const whole = run("whole");
    expect(whole.status).not.toBe(0);
    expect(whole.stderr).toMatch(/heap out of memory|Invalid string length|Cannot create a string/);
  });
});

describe("reading files", () => {
  const raw = (bytes: Uint8Array | string, ext = "jsonl") => {
    const p = join(root, `raw${fileNo++}.${ext}`);
    writeFileSync(p, bytes);
    return p;
  };
  const collect = async (file: string) => {
    const out: unknown[] = [];
    for await (const r of readRecords(file)) out.push([r.value, r.line]);
    return out;
  };

  it("a UTF-8 byte-order mark is dropped; CRLF and a last line without newline are read", async () => {
    const file = raw('\uFEFF{"text":"a"}\r\n{"text":"é"}\r\n\r\n{"text":"c"}');
    expect(await collect(file)).toEqual([
      [{ text: "a" }, 1],
      [{ text: "é" }, 2],
      [{ text: "c" }, 4],
    ]);
    expect(await collect(raw('\uFEFF[{"text":"a"}]', "json"))).toEqual([[{ text: "a" }, 1]]);
  });

  it("bytes that are not UTF-8 (Latin-1) are an error naming the line, not U+FFFD in the text", async () => {
    const latin1 = Buffer.concat([
      Buffer.from('{"text":"ok"}\n{"text":"caf'),
      Buffer.from([0xe9]),
      Buffer.from('"}\n'),
    ]);
    await expect(collect(raw(latin1))).rejects.toMatchObject({
      code: "DATA_ENCODING",
      message: expect.stringMatching(/raw\d+\.jsonl:2: not valid UTF-8/),
    });
    await expect(collect(raw(latin1, "txt"))).rejects.toThrow(/:2: not valid UTF-8/);
  });

  it("a line split across read chunks (over 64 KiB) decodes whole, multi-byte characters included", async () => {
    const long = "ü".repeat(70_000);
    expect(await collect(raw(`{"text":"${long}"}\n{"text":"b"}`))).toEqual([
      [{ text: long }, 1],
      [{ text: "b" }, 2],
    ]);
  });
});
