import { cpSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openGguf } from "@qlora/formats";
import { beforeAll, describe, expect, it } from "vitest";
import { normalizeOut } from "../src/commands/convert";
import { chatLoop } from "../src/commands/generate";
import { runCli } from "./helpers";
import { writeRandomAdapter, writeTinyBase } from "./tiny";

const root = mkdtempSync(join(tmpdir(), "qlora-convert-"));
let base = "";
let adapter = "";
let data = "";

beforeAll(async () => {
  base = await writeTinyBase(join(root, "base"));
  adapter = await writeRandomAdapter(base, join(root, "adapter"));
  data = join(root, "eval.jsonl");
  writeFileSync(
    data,
    ["the cat sat on the mat", "a dog ran to the park", "red green blue"]
      .map((t) => JSON.stringify({ text: t }))
      .join("\n"),
  );
}, 120_000);

const evalLoss = async (args: string[]) => {
  const r = await runCli(["--json", "eval", "--data", data, ...args]);
  expect(r.err).toBe("");
  return JSON.parse(r.out) as { loss: number; perplexity: number; tokens: number };
};

describe("qlora eval / merge / quantize / export / generate", () => {
  it("eval reports loss and perplexity; the adapter changes them; merging reproduces base + adapter", async () => {
    const dense = await evalLoss(["--model", base, "--quantize", "none"]);
    expect(dense.perplexity).toBeCloseTo(Math.exp(dense.loss), 6);
    expect(dense.tokens).toBeGreaterThan(10);
    const withAdapter = await evalLoss(["--model", base, "--adapter", adapter, "--quantize", "none"]);
    expect(Math.abs(withAdapter.loss - dense.loss)).toBeGreaterThan(1e-3);
    const merged = join(root, "merged");
    const m = await runCli(["merge", "--model", base, "--adapter", adapter, "--out", merged, "--dtype", "f32"]);
    expect(m.code).toBe(0);
    const afterMerge = await evalLoss(["--model", merged, "--quantize", "none"]);
    const nf4 = join(root, "merged-nf4");
    expect((await runCli(["merge", "--model", base, "--adapter", adapter, "--out", nf4, "--dtype", "nf4"])).code).toBe(
      0,
    );
    expect(existsSync(join(nf4, ".merged-f32"))).toBe(false);
    expect(JSON.parse(readFileSync(join(nf4, "config.json"), "utf8")).quantization_config).toBeDefined();
    expect(Math.abs(afterMerge.loss - withAdapter.loss) / withAdapter.loss).toBeLessThan(1e-5);
  });

  it("quantize writes a bitsandbytes checkpoint that loads and evaluates like NF4-on-load", async () => {
    const out = join(root, "nf4");
    const q = await runCli(["quantize", base, "--out", out]);
    expect(q.code).toBe(0);
    const config = JSON.parse(readFileSync(join(out, "config.json"), "utf8"));
    expect(config.quantization_config).toMatchObject({ load_in_4bit: true, bnb_4bit_quant_type: "nf4" });
    expect(existsSync(join(out, "tokenizer.json"))).toBe(true);
    const fromFile = await evalLoss(["--model", out]);
    const onLoad = await evalLoss(["--model", base]);
    expect(fromFile.loss).toBe(onLoad.loss);
  });

  it("export writes a base GGUF and a LoRA adapter GGUF llama.cpp reads", async () => {
    const r = await runCli([
      "export",
      "--model",
      base,
      "--format",
      "gguf",
      "--gguf-type",
      "f32",
      "--out",
      join(root, "b.gguf"),
    ]);
    expect(r.code).toBe(0);
    expect((await openGguf(join(root, "b.gguf"))).get("general.architecture")).toBe("llama");
    const a = await runCli([
      "export",
      "--model",
      base,
      "--adapter",
      adapter,
      "--format",
      "gguf",
      "--out",
      join(root, "a.gguf"),
    ]);
    expect(a.code).toBe(0);
    const g = await openGguf(join(root, "a.gguf"));
    expect(g.get("general.type")).toBe("adapter");
    expect(g.tensors.some((t) => t.name === "blk.0.attn_q.weight.lora_a")).toBe(true);
    const p = await runCli([
      "export",
      "--model",
      base,
      "--adapter",
      adapter,
      "--format",
      "peft",
      "--out",
      join(root, "peft"),
    ]);
    expect(p.code).toBe(0);
    expect(existsSync(join(root, "peft", "adapter_model.safetensors"))).toBe(true);
  });

  it("--out with a trailing slash is normalised; a GGUF --out that is a directory is refused by name", async () => {
    const exportTo = (out: string) =>
      runCli(["--json", "export", "--model", base, "--format", "gguf", "--gguf-type", "f32", "--out", out]);
    const slashed = await exportTo(`${join(root, "slashed.gguf")}/`);
    expect(slashed.err).toBe("");
    expect(slashed.code).toBe(0);
    expect(JSON.parse(slashed.out).out).toBe(join(root, "slashed.gguf"));
    expect((await openGguf(join(root, "slashed.gguf"))).get("general.architecture")).toBe("llama");
    const intoDir = await exportTo(`${root}/`);
    expect(intoDir.code).toBe(2);
    expect(intoDir.err).toBe(
      `qlora: --out: ${root} is a directory; --format gguf writes one file (e.g. ${join(root, "model.gguf")})`,
    );
    const peft = await runCli([
      "export",
      "--model",
      base,
      "--adapter",
      adapter,
      "--format",
      "peft",
      "--out",
      `${join(root, "peft2")}//`,
    ]);
    expect(peft.code).toBe(0);
    expect(peft.out).toBe(`wrote PEFT adapter to ${join(root, "peft2")}`);
    expect(normalizeOut("out/")).toBe("out");
    expect(normalizeOut("./a//b/")).toBe("a/b");
    expect(normalizeOut("/")).toBe("/");
  });

  it("quantize --help names the block size default once", async () => {
    const r = await runCli(["quantize", "--help"]);
    expect(r.code).toBe(0);
    expect(r.out.match(/default/g)).toHaveLength(2); // --quant-type and --blocksize, once each
    expect(r.out).toMatch(/--blocksize <n>\s+block size: 64, 128, 256 …\s+\(default:\s+64\)/);
  });

  it("quantize refuses a block size bitsandbytes has no kernel for, and an --out that is its own input", async () => {
    const bs = await runCli(["quantize", base, "--out", join(root, "q7"), "--blocksize", "7"]);
    expect(bs.code).toBe(2);
    expect(bs.err).toBe('qlora: --blocksize: expected one of 32, 64, 128, 256, 512, 1024, 2048, 4096, got "7"');
    const self = await runCli(["quantize", base, "--out", base]);
    expect(self.code).toBe(2);
    expect(self.err).toBe(`qlora: --out: ${base} is model_dir itself; write the output to another directory`);
  });

  it("generate is greedy-deterministic, with or without the chat template", async () => {
    const args = [
      "--json",
      "generate",
      "--model",
      base,
      "--prompt",
      "the cat",
      "--max-new-tokens",
      "8",
      "--quantize",
      "none",
    ];
    const a = JSON.parse((await runCli(args)).out);
    const b = JSON.parse((await runCli(args)).out);
    expect(a.completion).toBe(b.completion);
    expect(a.completion.length).toBeGreaterThan(0);
    const chat = await runCli([...args, "--chat", "--adapter", adapter]);
    expect(chat.code).toBe(0);
    expect(typeof JSON.parse(chat.out).completion).toBe("string");
    // --top-k alone samples (the library's rule: temperature 1 unless given), so seeds give different texts; each
    // seed repeats
    const sampled = async (seed: string) =>
      JSON.parse((await runCli([...args, "--top-k", "50", "--seed", seed, "--max-new-tokens", "12"])).out).completion;
    const s1 = await sampled("1");
    expect(await sampled("1")).toBe(s1);
    const others = await Promise.all(["2", "3", "4"].map(sampled));
    expect(others.some((t) => t !== s1)).toBe(true);
    // generation_config.json's eos_token_id list stops generation (Llama 3.1's <|eom_id|>): here every id is in it
    const stops = join(root, "base-stops");
    cpSync(base, stops, { recursive: true });
    const vocab = JSON.parse(readFileSync(join(base, "config.json"), "utf8")).vocab_size as number;
    writeFileSync(join(stops, "generation_config.json"), JSON.stringify({ eos_token_id: [...Array(vocab).keys()] }));
    const stopped = await runCli(args.map((a) => (a === base ? stops : a)));
    expect(JSON.parse(stopped.out).completion).toBe("");
  });

  it("bad paths and values are one-line errors with exit code 2", async () => {
    const cases: [string[], string][] = [
      [
        ["eval", "--model", join(root, "nope"), "--data", data],
        `qlora: --model: ${join(root, "nope")} is not a model directory (no config.json)`,
      ],
      [
        ["eval", "--model", base, "--data", join(root, "x.jsonl")],
        `qlora: --data: ${join(root, "x.jsonl")} does not exist`,
      ],
      [
        ["merge", "--model", base, "--adapter", base, "--out", root],
        `qlora: --adapter: ${base} is not a PEFT adapter directory (no adapter_config.json)`,
      ],
      [
        ["merge", "--model", base, "--adapter", adapter, "--out", root, "--dtype", "int8"],
        'qlora: --dtype: expected one of f32, bf16, f16, nf4, got "int8"',
      ],
      [
        ["export", "--model", base, "--format", "onnx", "--out", root],
        'qlora: --format: expected one of peft, gguf, got "onnx"',
      ],
      [
        ["quantize", base, "--out", root, "--quant-type", "int4"],
        'qlora: --quant-type: expected one of nf4, fp4, got "int4"',
      ],
    ];
    for (const [argv, message] of cases) {
      const r = await runCli(argv);
      expect(r.err).toBe(message);
      expect(r.code).toBe(2);
    }
  });
});

describe("qlora chat", () => {
  it("runs a multi-turn session over stdin with the chat template and exits 0 on an empty line", async () => {
    const { spawn } = await import("node:child_process");
    const { BIN } = await import("./helpers");
    const child = spawn(
      process.execPath,
      [
        "--conditions=@qlora/source",
        "--import",
        "tsx",
        BIN,
        "chat",
        "--model",
        base,
        "--max-new-tokens",
        "4",
        "--quantize",
        "none",
      ],
      { stdio: ["pipe", "pipe", "pipe"] },
    );
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stdin.write("hello there\nand again\n\n");
    const code = await new Promise<number | null>((r) => child.on("exit", (c) => r(c)));
    expect(code).toBe(0);
    // piped stdin: no "> " prompts, one reply line per turn
    expect(out).not.toContain("> ");
    expect(out.split("\n").filter((l) => l !== "")).toHaveLength(2);
  }, 60_000);

  it("--json prints one JSON object per reply (JSON Lines); --quiet and --json print nothing else", async () => {
    const { spawn } = await import("node:child_process");
    const { BIN } = await import("./helpers");
    const child = spawn(
      process.execPath,
      ["--conditions=@qlora/source", "--import", "tsx", BIN, "--json", "--quiet", "chat", "--model", base].concat([
        "--max-new-tokens",
        "4",
        "--quantize",
        "none",
      ]),
      { stdio: ["pipe", "pipe", "pipe"] },
    );
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.stdin.end("hello there\nand again\n");
    const code = await new Promise<number | null>((r) => child.on("exit", (c) => r(c)));
    expect(err).toBe("");
    expect(code).toBe(0);
    const lines = out.split("\n").filter((l) => l !== "");
    expect(lines).toHaveLength(2);
    const replies = lines.map((l) => JSON.parse(l));
    expect(replies.map((r) => [r.turn, r.user])).toEqual([
      [1, "hello there"],
      [2, "and again"],
    ]);
    for (const r of replies) expect(typeof r.assistant).toBe("string");
  }, 60_000);

  it("the loop prompts only a person at a terminal, streams replies and keeps the conversation", async () => {
    const session = async (prompt: boolean, json: boolean) => {
      const written: string[] = [];
      const lines: string[] = [];
      const seen: number[] = [];
      const input = ["hi", "more", ""][Symbol.iterator]();
      const messages = await chatLoop({
        lines: { next: async () => input.next() },
        system: "be brief",
        json,
        prompt,
        write: (t) => written.push(t),
        out: (l) => lines.push(l),
        reply: async (m, write) => {
          seen.push(m.length);
          write("ok");
          return "ok";
        },
      });
      return { text: written.join(""), lines, seen, messages };
    };
    const tty = await session(true, false);
    expect(tty.text).toBe("> ok\n> ok\n> ");
    expect(tty.seen).toEqual([2, 4]); // system + user, then the whole conversation so far
    expect(tty.messages.map((m) => m.role)).toEqual(["system", "user", "assistant", "user", "assistant"]);
    const piped = await session(false, false);
    expect(piped.text).toBe("ok\nok\n");
    expect(piped.lines).toEqual([]);
    const json = await session(false, true);
    expect(json.text).toBe("");
    expect(json.lines.map((l) => JSON.parse(l))).toEqual([
      { turn: 1, user: "hi", assistant: "ok" },
      { turn: 2, user: "more", assistant: "ok" },
    ]);
  });
});
