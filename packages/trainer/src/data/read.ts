/**
 * Streaming record readers. JSONL and plain text are read line by line through one small buffer, and Parquet
 * (hyparquet) one row group at a time, so a large file is never held whole; a JSON file (one array) is parsed whole,
 * so use JSONL or Parquet for large data.
 */
import { createReadStream } from "node:fs";
import { readFile } from "node:fs/promises";
import { TrainerError } from "../errors";

export type FileFormat = "jsonl" | "json" | "text" | "parquet";

export interface SourceRecord {
  readonly value: unknown;
  readonly file: string;
  /** 1-based line (JSONL, text), array index + 1 (JSON) or row number (Parquet). */
  readonly line: number;
}

export function fileFormatOf(path: string): FileFormat {
  if (/\.jsonl$/i.test(path)) return "jsonl";
  if (/\.json$/i.test(path)) return "json";
  if (/\.txt$/i.test(path)) return "text";
  if (/\.parquet$/i.test(path)) return "parquet";
  throw new TrainerError(
    "DATA_FORMAT",
    `${path}: cannot tell the file format from its extension; expected .jsonl, .json, .txt or .parquet (or set DatasetOptions.fileFormat)`,
    { file: path },
  );
}

/** Records of a file: JSONL objects, JSON array elements, or `{ text }` per non-empty text line. */
export async function* readRecords(
  file: string,
  format: FileFormat = fileFormatOf(file),
): AsyncGenerator<SourceRecord> {
  if (format === "json") {
    yield* readJsonArray(file);
    return;
  }
  if (format === "parquet") {
    yield* readParquet(file);
    return;
  }
  let line = 0;
  try {
    for await (const text of utf8Lines(file)) {
      line++;
      if (text.trim() === "") continue;
      if (format === "text") {
        yield { value: { text }, file, line };
        continue;
      }
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch (e) {
        throw new TrainerError("DATA_PARSE", `${file}:${line}: not valid JSON (${(e as Error).message})`, {
          file,
          line,
        });
      }
      yield { value, file, line };
    }
  } catch (e) {
    if (e instanceof TrainerError) throw e;
    throw new TrainerError("DATA_READ", `${file}: ${(e as Error).message}`, { file });
  }
}

/**
 * The file's lines (LF or CRLF), decoded as strict UTF-8: a byte sequence that is not UTF-8 (a Latin-1 "é") is an
 * error naming the line, not a silent U+FFFD in the training text. A leading byte-order mark is dropped.
 */
async function* utf8Lines(file: string): AsyncGenerator<string> {
  const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  let line = 0;
  const decode = (bytes: Uint8Array) => {
    line++;
    const end = bytes.length > 0 && bytes[bytes.length - 1] === 0x0d ? bytes.length - 1 : bytes.length;
    let text: string;
    try {
      text = decoder.decode(bytes.subarray(0, end));
    } catch {
      throw new TrainerError("DATA_ENCODING", `${file}:${line}: not valid UTF-8 (save the file as UTF-8)`, {
        file,
        line,
      });
    }
    return line === 1 && text.startsWith("\uFEFF") ? text.slice(1) : text;
  };
  let parts: Buffer[] = []; // the current line's bytes so far, when it spans chunks
  for await (const chunk of createReadStream(file) as AsyncIterable<Buffer>) {
    let from = 0;
    for (let nl = chunk.indexOf(0x0a); nl >= 0; nl = chunk.indexOf(0x0a, from)) {
      const piece = chunk.subarray(from, nl);
      yield decode(parts.length > 0 ? Buffer.concat([...parts, piece]) : piece);
      parts = [];
      from = nl + 1;
    }
    if (from < chunk.length) parts.push(chunk.subarray(from));
  }
  if (parts.length > 0) yield decode(Buffer.concat(parts));
}

async function* readJsonArray(file: string): AsyncGenerator<SourceRecord> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(await readFile(file))); // drops a BOM
  } catch (e) {
    throw new TrainerError("DATA_PARSE", `${file}: not a readable JSON file (${(e as Error).message})`, { file });
  }
  const rows = Array.isArray(parsed) ? parsed : (parsed as { data?: unknown })?.data;
  if (!Array.isArray(rows))
    throw new TrainerError("DATA_PARSE", `${file}: expected a JSON array of records (or { "data": [...] })`, { file });
  for (let i = 0; i < rows.length; i++) yield { value: rows[i], file, line: i + 1 };
}

/** Parquet rows as objects, one row group in memory at a time; int64 values become numbers. */
async function* readParquet(file: string): AsyncGenerator<SourceRecord> {
  const { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects } = await import("hyparquet");
  let row = 0;
  try {
    const buffer = await asyncBufferFromFile(file);
    const metadata = await parquetMetadataAsync(buffer);
    for (const group of metadata.row_groups) {
      const n = Number(group.num_rows);
      const rows = await parquetReadObjects({ file: buffer, metadata, rowStart: row, rowEnd: row + n });
      for (const value of rows) yield { value: fromBigInt(value), file, line: ++row };
    }
  } catch (e) {
    if (e instanceof TrainerError) throw e;
    throw new TrainerError("DATA_PARSE", `${file}: not a readable Parquet file (${(e as Error).message})`, { file });
  }
}

function fromBigInt(x: unknown): unknown {
  if (typeof x === "bigint") return Number(x);
  if (Array.isArray(x)) return x.map(fromBigInt);
  if (x !== null && typeof x === "object" && !ArrayBuffer.isView(x))
    return Object.fromEntries(Object.entries(x).map(([k, v]) => [k, fromBigInt(v)]));
  return x;
}
