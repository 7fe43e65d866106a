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
const base = (files: string, extra: Partial<DatasetOptions> = {}): DatasetOptions => ({
  files,
  tokenizer: charTokenizer,
  maxLength: 64,
  microBatchSize: 2,
  ...extra,
});
const rec = (value: unknown, line = 1) => ({ value, file: "f.jsonl", line });
const stats = () => ({ truncated: 0, dropped: 0 });
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
    expect(() => toExample(rec({ messages: [{ role: "user", content: "x" }] }, 5), o, stats())).toThrow(
      /no assistant turn/,
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
