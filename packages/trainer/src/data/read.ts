/**
 * Streaming record readers. JSONL and plain text are read line by line through one small buffer, and Parquet
 * (hyparquet) one row group at a time, so a large file is never held whole; a JSON file (one array) is parsed whole,
 * so use JSONL or Parquet for large data.
 */
import { createReadStream } from "node:fs";
import { readFile } from "node:fs/promises";
import { createInterface } from "node:readline";
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
    `${path}: cannot tell the file format from its extension; expected .jsonl, .json, .txt or .parquet (or pass fileFormat)`,
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
  const lines = createInterface({
    input: createReadStream(file, { encoding: "utf8" }),
    crlfDelay: Number.POSITIVE_INFINITY,
  });
  let line = 0;
  try {
    for await (const text of lines) {
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
  } finally {
    lines.close();
  }
}

async function* readJsonArray(file: string): AsyncGenerator<SourceRecord> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(file, "utf8"));
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
