/**
 * Child process of the streaming test: loads a large JSONL under a small V8 heap (--max-old-space-size), so holding
 * the file's text whole would fail with an out-of-memory crash. With "whole" it reads the file at once first (the
 * control that shows the limit bites). Prints the dataset stats as JSON.
 */
import { readFileSync } from "node:fs";
import { loadTokenDataset } from "../src/index";
import { charTokenizer } from "./helpers/char-tokenizer";

const [file, mode] = process.argv.slice(2);
if (mode === "whole") {
  const rows = readFileSync(file, "utf8").split("\n");
  process.stdout.write(`${rows.length}\n`);
}
const tok = { ...charTokenizer, encode: (t: string) => charTokenizer.encode(t).slice(0, 40) };
const d = await loadTokenDataset({ files: file, tokenizer: tok, maxLength: 32, microBatchSize: 2 });
process.stdout.write(`${JSON.stringify(d.stats)}\n`);
