/** The data pipeline with @qlora/models' real tokenizer and chat template (tiny generated Llama 3 tokenizer). */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { HfTokenizer, writeTinyTokenizer } from "@qlora/models";
import { afterAll, describe, expect, it } from "vitest";
import { loadTokenDataset } from "../src/index";

const dir = mkdtempSync(join(tmpdir(), "qlora-tok-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("with HfTokenizer", () => {
  it("messages: only assistant turns (with their end-of-turn token) carry loss; prompt/completion appends EOS", async () => {
    const info = await writeTinyTokenizer(join(dir, "tok"), "llama3");
    const tok = await HfTokenizer.fromDirectory(join(dir, "tok"));
    const file = join(dir, "chat.jsonl");
    const messages = [
      { role: "system", content: "be brief" },
      { role: "user", content: "hello" },
      { role: "assistant", content: "hi there" },
      { role: "user", content: "bye" },
      { role: "assistant", content: "see you" },
    ];
    writeFileSync(
      file,
      `${JSON.stringify({ messages })}\n${JSON.stringify({ prompt: "hello", completion: " world" })}\n`,
    );
    const d = await loadTokenDataset({
      files: file,
      tokenizer: tok,
      maxLength: 256,
      microBatchSize: 1,
      shuffle: false,
    });
    const chat = d.example(0);
    expect([...chat.inputIds]).toEqual(tok.encodeChat(messages));
    const trained = [...chat.labels].filter((l) => l !== -100);
    const text = tok.decode(trained, { skipSpecialTokens: false });
    expect(text).toContain("hi there");
    expect(text).toContain("see you");
    expect(text).not.toContain("hello");
    expect(text).not.toContain("be brief");
    expect(trained.some((t) => info.eosTokenIds.includes(t))).toBe(true); // end of turn is learned
    const pc = d.example(1);
    expect(pc.inputIds[pc.inputIds.length - 1]).toBe(tok.eosTokenId);
    expect(pc.labels[pc.labels.length - 1]).toBe(tok.eosTokenId);
    expect(tok.decode([...pc.labels].filter((l) => l !== -100 && l !== tok.eosTokenId))).toBe(" world");
  });
});
