/**
 * Python-compatible formatting for the bitsandbytes quant_state JSON (`json.dumps` defaults:
 * separators ", " and ": ", insertion order, floats as `float.__repr__`).
 */

/**
 * Python's `repr(float)`: the shortest decimal that round-trips the double, in fixed notation when
 * the decimal exponent e satisfies -4 <= e < 16, otherwise d[.ddd]e±XX (at least two exponent digits);
 * fixed notation always has a fractional part ("3.0"). NaN/±Infinity are written as `json.dumps`
 * writes them: "NaN", "Infinity", "-Infinity".
 */
export function pythonFloatRepr(x: number): string {
  if (Number.isNaN(x)) return "NaN";
  if (x === Infinity) return "Infinity";
  if (x === -Infinity) return "-Infinity";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  // toExponential() without an argument gives the shortest round-trip digits.
  const s = Math.abs(x).toExponential();
  const ePos = s.indexOf("e");
  const digits = s.slice(0, ePos).replace(".", "");
  const exp = Number(s.slice(ePos + 1));
  const sign = x < 0 ? "-" : "";
  if (exp < -4 || exp >= 16) {
    const mant = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    const ae = Math.abs(exp);
    return `${sign}${mant}e${exp < 0 ? "-" : "+"}${ae < 10 ? "0" : ""}${ae}`;
  }
  if (exp < 0) return `${sign}0.${"0".repeat(-exp - 1)}${digits}`;
  const intLen = exp + 1;
  if (digits.length <= intLen) return `${sign}${digits}${"0".repeat(intLen - digits.length)}.0`;
  return `${sign}${digits.slice(0, intLen)}.${digits.slice(intLen)}`;
}

/** A value json.dumps would write; `PyFloat` marks a number that Python holds as a float. */
export type PyJson = string | number | boolean | null | PyFloat | PyJson[] | { [key: string]: PyJson };

/** Wrapper marking a number as a Python float (so 3 is written "3.0"). */
export class PyFloat {
  constructor(readonly value: number) {}
}

/** `json.dumps(value)` with Python's default separators; plain numbers must be integers. */
export function pythonJsonDumps(value: PyJson): string {
  if (value === null) return "null";
  if (value instanceof PyFloat) return pythonFloatRepr(value.value);
  switch (typeof value) {
    case "string":
      return jsonString(value);
    case "boolean":
      return value ? "true" : "false";
    case "number":
      if (!Number.isInteger(value)) return pythonFloatRepr(value);
      return Object.is(value, -0) ? "0" : String(BigInt(value));
    default:
      break;
  }
  if (Array.isArray(value)) return `[${value.map(pythonJsonDumps).join(", ")}]`;
  return `{${Object.entries(value)
    .map(([k, v]) => `${jsonString(k)}: ${pythonJsonDumps(v)}`)
    .join(", ")}}`;
}

/** json.dumps(str) with ensure_ascii=True. */
function jsonString(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const ch = s[i];
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\b") out += "\\b";
    else if (ch === "\f") out += "\\f";
    else if (c < 0x20 || c > 0x7e) out += `\\u${c.toString(16).padStart(4, "0")}`;
    else out += ch;
  }
  return `${out}"`;
}

const SPECIALS: Record<string, number> = { NaN: NaN, Infinity: Infinity, "-Infinity": -Infinity };

/**
 * Parses JSON as Python's json.loads does for our purposes: standard JSON plus the NaN, Infinity and
 * -Infinity literals Python writes. Throws SyntaxError on malformed input.
 */
export function pythonJsonLoads(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    // Replace bare NaN/Infinity tokens that sit outside strings, then retry.
    let out = "";
    let inStr = false;
    let found = false;
    for (let i = 0; i < text.length; i++) {
      const ch = text[i];
      if (inStr) {
        out += ch;
        if (ch === "\\") out += text[++i] ?? "";
        else if (ch === '"') inStr = false;
        continue;
      }
      if (ch === '"') {
        inStr = true;
        out += ch;
        continue;
      }
      const m = /^(-Infinity|Infinity|NaN)/.exec(text.slice(i, i + 9));
      if (m !== null) {
        out += `{"__pyspecial__": "${m[1]}"}`;
        i += m[1].length - 1;
        found = true;
        continue;
      }
      out += ch;
    }
    if (!found) throw err;
    return JSON.parse(out, (_k, v: unknown) => {
      if (v !== null && typeof v === "object" && !Array.isArray(v)) {
        const keys = Object.keys(v);
        const s = (v as Record<string, unknown>).__pyspecial__;
        if (keys.length === 1 && typeof s === "string" && s in SPECIALS) return SPECIALS[s];
      }
      return v;
    });
  }
}
