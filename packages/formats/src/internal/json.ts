/**
 * A small strict JSON parser for untrusted headers. Unlike JSON.parse it rejects duplicate
 * object keys (JSON.parse silently keeps the last one), bounds nesting depth (no stack
 * overflow on `[[[[…`), and returns objects as Maps (no `__proto__` surprises).
 * Errors are thrown as `JsonSyntaxError` with a byte-ish position; callers wrap them.
 */
export type JsonValue = null | boolean | number | string | JsonValue[] | Map<string, JsonValue>;

export class JsonSyntaxError extends Error {
  readonly position: number;
  readonly duplicateKey: string | undefined;
  constructor(message: string, position: number, duplicateKey?: string) {
    super(`${message} at position ${position}`);
    this.position = position;
    this.duplicateKey = duplicateKey;
  }
}

const NUMBER_RE = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
const MAX_DEPTH = 64;

export function parseStrictJson(text: string): JsonValue {
  let i = 0;
  const n = text.length;

  const ws = (): void => {
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) i++;
      else break;
    }
  };

  const str = (): string => {
    const start = i;
    i++; // opening quote
    let escaped = false;
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 0x5c) {
        escaped = true;
        i += 2;
        continue;
      }
      if (c === 0x22) break;
      if (c < 0x20) throw new JsonSyntaxError("control character in string", i);
      i++;
    }
    if (i >= n) throw new JsonSyntaxError("unterminated string", start);
    i++; // closing quote
    if (!escaped) return text.slice(start + 1, i - 1);
    try {
      return JSON.parse(text.slice(start, i)) as string;
    } catch {
      throw new JsonSyntaxError("bad escape in string", start);
    }
  };

  const value = (depth: number): JsonValue => {
    if (depth > MAX_DEPTH) throw new JsonSyntaxError(`nesting deeper than ${MAX_DEPTH}`, i);
    ws();
    if (i >= n) throw new JsonSyntaxError("unexpected end of input", i);
    const c = text.charCodeAt(i);
    if (c === 0x7b) {
      i++;
      const obj = new Map<string, JsonValue>();
      ws();
      if (text.charCodeAt(i) === 0x7d) {
        i++;
        return obj;
      }
      for (;;) {
        ws();
        if (text.charCodeAt(i) !== 0x22) throw new JsonSyntaxError("expected a string key", i);
        const keyPos = i;
        const key = str();
        if (obj.has(key)) throw new JsonSyntaxError(`duplicate key ${JSON.stringify(key)}`, keyPos, key);
        ws();
        if (text.charCodeAt(i) !== 0x3a) throw new JsonSyntaxError("expected ':'", i);
        i++;
        obj.set(key, value(depth + 1));
        ws();
        const d = text.charCodeAt(i);
        if (d === 0x2c) {
          i++;
          continue;
        }
        if (d === 0x7d) {
          i++;
          return obj;
        }
        throw new JsonSyntaxError("expected ',' or '}'", i);
      }
    }
    if (c === 0x5b) {
      i++;
      const arr: JsonValue[] = [];
      ws();
      if (text.charCodeAt(i) === 0x5d) {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(value(depth + 1));
        ws();
        const d = text.charCodeAt(i);
        if (d === 0x2c) {
          i++;
          continue;
        }
        if (d === 0x5d) {
          i++;
          return arr;
        }
        throw new JsonSyntaxError("expected ',' or ']'", i);
      }
    }
    if (c === 0x22) return str();
    if (text.startsWith("true", i)) {
      i += 4;
      return true;
    }
    if (text.startsWith("false", i)) {
      i += 5;
      return false;
    }
    if (text.startsWith("null", i)) {
      i += 4;
      return null;
    }
    NUMBER_RE.lastIndex = i;
    const m = NUMBER_RE.exec(text);
    if (m === null) throw new JsonSyntaxError("unexpected character", i);
    i += m[0].length;
    return Number(m[0]);
  };

  const v = value(0);
  ws();
  if (i !== n) throw new JsonSyntaxError("trailing characters after the JSON value", i);
  return v;
}
