// Fuzzing the checkpoint parser (unpackQuantState and its Python-JSON reader): whatever the bytes,
// the result is a state that dequantizes, or an Nf4Error — never a TypeError/RangeError from inside,
// never a hang.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  dequantize4bit,
  Nf4Error,
  packQuantState,
  quantize4bit,
  type TensorRecords,
  unpackQuantState,
} from "../src/index";
import { pythonJsonLoads } from "../src/pyjson";

const PREFIX = "model.layers.0.mlp.down_proj.";
const QS_NF4 = `${PREFIX}weight.quant_state.bitsandbytes__nf4`;

function validRecords(doubleQuant: boolean): TensorRecords {
  const x = new Float32Array(6 * 70).map((_, i) => Math.sin(i * 0.37) * 0.1);
  return packQuantState(quantize4bit(x, { doubleQuant, shape: [6, 70] }), { prefix: PREFIX });
}

/** Runs the parser and, when it accepts, the dequantizer; any throw must be an Nf4Error. */
function parseOrTypedError(records: TensorRecords): "ok" | "rejected" {
  try {
    const state = unpackQuantState(records, { prefix: PREFIX });
    dequantize4bit(state, "float32");
    return "ok";
  } catch (err) {
    if (!(err instanceof Nf4Error)) throw err;
    expect(err.message.length).toBeGreaterThan(0);
    return "rejected";
  }
}

const bytesEdit = fc.oneof(
  fc.record({ kind: fc.constant("set" as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ kind: fc.constant("cut" as const), at: fc.nat() }),
  fc.record({
    kind: fc.constant("insert" as const),
    at: fc.nat(),
    bytes: fc.uint8Array({ minLength: 1, maxLength: 6 }),
  }),
);
type BytesEdit = typeof bytesEdit extends fc.Arbitrary<infer T> ? T : never;

function applyEdits(bytes: Uint8Array, edits: BytesEdit[]): Uint8Array {
  let b = bytes.slice();
  for (const e of edits) {
    const at = b.length === 0 ? 0 : e.at % (b.length + 1);
    if (e.kind === "set" && at < b.length) b[at] = e.byte;
    else if (e.kind === "cut") b = b.slice(0, at);
    else if (e.kind === "insert") b = new Uint8Array([...b.subarray(0, at), ...e.bytes, ...b.subarray(at)]);
  }
  return b;
}

describe("fuzz: unpackQuantState", () => {
  it("mutated quant_state JSON bytes: a valid state or an Nf4Error", () => {
    fc.assert(
      fc.property(fc.boolean(), fc.array(bytesEdit, { minLength: 1, maxLength: 4 }), (dq, edits) => {
        const rec = validRecords(dq);
        const bytes = applyEdits(rec[QS_NF4].bytes, edits);
        rec[QS_NF4] = { dtype: "U8", shape: [bytes.length], bytes };
        parseOrTypedError(rec);
      }),
      { numRuns: 1500 },
    );
  });

  it("arbitrary JSON values as the quant_state: rejected unless they describe the tensors", () => {
    const keyish = fc.constantFrom(
      "quant_type",
      "blocksize",
      "dtype",
      "shape",
      "nested_blocksize",
      "nested_dtype",
      "nested_offset",
      "x.blocksize",
      "__proto__",
      "",
    );
    const json = fc.oneof(
      fc.jsonValue(),
      fc.dictionary(keyish, fc.jsonValue(), { maxKeys: 8 }),
      fc.record({
        quant_type: fc.constantFrom("nf4", "fp4", "NF4", 4),
        blocksize: fc.oneof(fc.constantFrom(64, 32, 4096, 63, -64, 0, 1e300), fc.double()),
        dtype: fc.constantFrom("float32", "bfloat16", "float16", "int8", null),
        shape: fc.oneof(
          fc.constant([6, 70]),
          fc.array(fc.oneof(fc.integer({ min: -5, max: 1e6 }), fc.double()), { maxLength: 4 }),
        ),
      }),
    );
    fc.assert(
      fc.property(json, fc.boolean(), (value, dq) => {
        const rec = validRecords(dq);
        const bytes = new TextEncoder().encode(JSON.stringify(value) ?? "null");
        rec[QS_NF4] = { dtype: "U8", shape: [bytes.length], bytes };
        parseOrTypedError(rec);
      }),
      { numRuns: 1500 },
    );
  });

  it("tensors with wrong dtypes, shapes, lengths, misaligned bytes or missing: a valid state or an Nf4Error", () => {
    const keys = ["weight", "weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map"];
    const edit = fc.record({
      key: fc.constantFrom(...keys),
      op: fc.constantFrom("dtype", "shape", "bytes", "misalign", "delete", "notATensor"),
      dtype: fc.constantFrom("U8", "F16", "BF16", "F32", "I64", "F64", "x"),
      shape: fc.array(fc.oneof(fc.integer({ min: -3, max: 5000 }), fc.constant(1.5)), { maxLength: 3 }),
      cut: fc.integer({ min: -8, max: 8 }),
    });
    fc.assert(
      fc.property(fc.boolean(), fc.array(edit, { minLength: 1, maxLength: 3 }), (dq, edits) => {
        const rec = validRecords(dq) as Record<string, unknown>;
        for (const e of edits) {
          const k = PREFIX + e.key;
          const t = rec[k] as { dtype: string; shape: unknown; bytes: Uint8Array } | undefined;
          if (e.op === "delete") delete rec[k];
          else if (e.op === "notATensor") rec[k] = e.cut > 0 ? null : { dtype: "U8", shape: [1], bytes: [1] };
          else if (t === undefined || t === null || !(t.bytes instanceof Uint8Array)) continue;
          else if (e.op === "dtype") rec[k] = { ...t, dtype: e.dtype };
          else if (e.op === "shape") rec[k] = { ...t, shape: e.shape };
          else if (e.op === "bytes") {
            const n = Math.max(0, t.bytes.length + e.cut);
            const b = new Uint8Array(n);
            b.set(t.bytes.subarray(0, n));
            rec[k] = { ...t, bytes: b };
          } else {
            // same bytes at an odd offset of a larger buffer (float views need an aligned copy)
            const big = new Uint8Array(t.bytes.length + 1);
            big.set(t.bytes, 1);
            rec[k] = { ...t, bytes: big.subarray(1) };
          }
        }
        parseOrTypedError(rec as TensorRecords);
      }),
      { numRuns: 1500 },
    );
  });

  it("the misaligned-but-valid records still decode to the same values", () => {
    for (const dq of [false, true]) {
      const rec = validRecords(dq);
      const want = dequantize4bit(unpackQuantState(rec, { prefix: PREFIX }), "float32");
      for (const [k, t] of Object.entries(rec)) {
        const big = new Uint8Array(t.bytes.length + 1);
        big.set(t.bytes, 1);
        rec[k] = { ...t, bytes: big.subarray(1) };
      }
      expect(dequantize4bit(unpackQuantState(rec, { prefix: PREFIX }), "float32")).toEqual(want);
    }
  });
});

describe("fuzz: pythonJsonLoads", () => {
  it("equals JSON.parse on JSON text; otherwise parses or throws SyntaxError", () => {
    fc.assert(
      fc.property(fc.json(), (text) => {
        expect(pythonJsonLoads(text)).toEqual(JSON.parse(text));
      }),
      { numRuns: 1000 },
    );
    const tokens = fc.constantFrom(
      "NaN",
      "Infinity",
      "-Infinity",
      '"',
      "\\",
      "{",
      "}",
      "[",
      "]",
      ",",
      ":",
      "1",
      "-",
      "e",
      " ",
      "nul",
      '"NaN"',
    );
    fc.assert(
      fc.property(fc.array(fc.oneof(tokens, fc.string({ maxLength: 3 })), { maxLength: 20 }), (parts) => {
        try {
          pythonJsonLoads(parts.join(""));
        } catch (err) {
          expect(err).toBeInstanceOf(SyntaxError);
        }
      }),
      { numRuns: 3000 },
    );
  });
  it("reads Python's special literals only outside strings", () => {
    expect(pythonJsonLoads('[NaN, -Infinity, "NaN", {"a": Infinity}]')).toEqual([
      NaN,
      -Infinity,
      "NaN",
      { a: Infinity },
    ]);
    expect(pythonJsonLoads('"a\\"NaN"')).toBe('a"NaN');
  });
});
