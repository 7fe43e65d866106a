import { describe, expect, it } from "vitest";
import { randn } from "../test/helpers";
import { Nf4Error } from "./errors";
import { pythonFloatRepr, pythonJsonDumps, PyFloat, pythonJsonLoads } from "./pyjson";
import { quantize4bit } from "./quantize";
import { packQuantState, type TensorRecords, unpackQuantState } from "./serialize";
import { FP4_CODE, NF4_CODE } from "./tables";
import type { NestedAbsmax } from "./types";
import { dequantize4bit } from "./dequantize";

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(Nf4Error);
    return `${(e as Nf4Error).code}: ${(e as Error).message}`;
  }
  throw new Error("expected an Nf4Error");
}

describe("pythonFloatRepr", () => {
  it.each([
    [2.5, "2.5"],
    [3, "3.0"],
    [-0, "-0.0"],
    [0, "0.0"],
    [0.03125041723251343, "0.03125041723251343"],
    [1e-5, "1e-05"],
    [1.5e-7, "1.5e-07"],
    [0.0001, "0.0001"],
    [0.00012, "0.00012"],
    [1e16, "1e+16"],
    [1e15, "1000000000000000.0"],
    [9999999999999998, "9999999999999998.0"],
    [1.2345e16, "1.2345e+16"],
    [1e21, "1e+21"],
    [1e22, "1e+22"],
    [1e100, "1e+100"],
    [5e-324, "5e-324"],
    [-1.7976931348623157e308, "-1.7976931348623157e+308"],
    [0.1 + 0.2, "0.30000000000000004"],
    [123456.789, "123456.789"],
    [NaN, "NaN"],
    [Infinity, "Infinity"],
    [-Infinity, "-Infinity"],
  ])("%s -> %s", (x, s) => expect(pythonFloatRepr(x)).toBe(s));
});

describe("pythonJsonDumps / Loads", () => {
  it("uses Python's separators and keeps integers integral", () => {
    expect(pythonJsonDumps({ a: 1, b: [2, 3], c: new PyFloat(4), d: 'x"y', e: null, f: true })).toBe(
      '{"a": 1, "b": [2, 3], "c": 4.0, "d": "x\\"y", "e": null, "f": true}',
    );
  });
  it("reads Python's NaN/Infinity literals", () => {
    expect(pythonJsonLoads('{"a": NaN, "b": -Infinity, "c": "NaN"}')).toEqual({ a: NaN, b: -Infinity, c: "NaN" });
    expect(() => pythonJsonLoads("{bad")).toThrow(SyntaxError);
  });
});

describe("bitsandbytes key set", () => {
  const x = randn(4096 + 64 * 3 + 7, 3);
  const prefix = "model.layers.0.mlp.down_proj.";
  it("no double quant: keys, dtypes, shapes and bytes", () => {
    const s = quantize4bit(x, { quantType: "fp4", shape: [x.length], dtype: "float16" });
    const rec = packQuantState(s, { prefix });
    expect(Object.keys(rec)).toEqual([
      `${prefix}weight`,
      `${prefix}weight.absmax`,
      `${prefix}weight.quant_map`,
      `${prefix}weight.quant_state.bitsandbytes__fp4`,
    ]);
    const n = x.length;
    expect(rec[`${prefix}weight`]).toMatchObject({ dtype: "U8", shape: [(n + 1) >> 1, 1] });
    expect(rec[`${prefix}weight.absmax`]).toMatchObject({ dtype: "F32", shape: [Math.ceil(n / 64)] });
    const qm = rec[`${prefix}weight.quant_map`];
    expect(qm.dtype).toBe("F32");
    expect(Array.from(new Float32Array(qm.bytes.slice().buffer))).toEqual(Array.from(FP4_CODE));
    expect(new TextDecoder().decode(rec[`${prefix}weight.quant_state.bitsandbytes__fp4`].bytes)).toBe(
      `{"quant_type": "fp4", "blocksize": 64, "dtype": "float16", "shape": [${n}]}`,
    );
  });
  it("double quant: nested keys; the spec's 4096x4096 example shapes", () => {
    const big = new Float32Array(4096 * 4096);
    for (let i = 0; i < big.length; i += 4097) big[i] = (i % 13) - 6;
    const s = quantize4bit(big, { doubleQuant: true, shape: [4096, 4096], dtype: "bfloat16" });
    const rec = packQuantState(s);
    expect(Object.fromEntries(Object.entries(rec).map(([k, v]) => [k, [v.dtype, v.shape]]))).toEqual({
      weight: ["U8", [8388608, 1]],
      "weight.absmax": ["U8", [262144]],
      "weight.quant_map": ["F32", [16]],
      "weight.nested_absmax": ["F32", [1024]],
      "weight.nested_quant_map": ["F32", [256]],
      "weight.quant_state.bitsandbytes__nf4": ["U8", [rec["weight.quant_state.bitsandbytes__nf4"].bytes.length]],
    });
    const json = new TextDecoder().decode(rec["weight.quant_state.bitsandbytes__nf4"].bytes);
    const off = (s.absmax as NestedAbsmax).offset;
    expect(json).toBe(
      `{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4096, 4096], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": ${pythonFloatRepr(off)}}`,
    );
    expect(Array.from(new Float32Array(rec["weight.quant_map"].bytes.slice().buffer))).toEqual(Array.from(NF4_CODE));
  });
  it("reads bf16/fp16/fp32 quant_storage containers by reinterpreting the bytes", () => {
    const y = randn(64 * 10, 5); // 320 packed bytes: divisible by 2 and 4
    const s = quantize4bit(y, { doubleQuant: true });
    for (const qs of ["bfloat16", "float16", "float32"] as const) {
      const rec = packQuantState(s, { quantStorage: qs });
      const item = qs === "float32" ? 4 : 2;
      expect(rec.weight.shape).toEqual([Math.floor((y.length + 1) / (2 * item)), 1]);
      const back = unpackQuantState(rec);
      expect(Array.from(back.packed)).toEqual(Array.from(s.packed));
      expect(dequantize4bit(back)).toEqual(dequantize4bit(s));
    }
    expect(code(() => packQuantState(quantize4bit(new Float32Array(6)), { quantStorage: "float32" }))).toMatch(
      /^INVALID_ARGUMENT: options.quantStorage/,
    );
  });
  it("accepts a JSON with dotted keys (bnb strips to the last component) and integer nested_offset", () => {
    const s = quantize4bit(randn(128, 9), { doubleQuant: true });
    const rec = packQuantState(s);
    const k = "weight.quant_state.bitsandbytes__nf4";
    const js = JSON.parse(new TextDecoder().decode(rec[k].bytes));
    js.nested_offset = 1;
    const dotted = Object.fromEntries(Object.entries(js).map(([key, v]) => [`weight.${key}`, v]));
    const bytes = new TextEncoder().encode(JSON.stringify(dotted));
    const back = unpackQuantState({ ...rec, [k]: { dtype: "U8", shape: [bytes.length], bytes } });
    expect((back.absmax as NestedAbsmax).offset).toBe(1);
  });
});

describe("typed errors for bad records", () => {
  const s = quantize4bit(randn(300, 2), { doubleQuant: true, quantType: "nf4" });
  const good = packQuantState(s, { prefix: "p." });
  const k = "p.weight.quant_state.bitsandbytes__nf4";
  const withJson = (obj: unknown, raw?: string): TensorRecords => {
    const bytes = new TextEncoder().encode(raw ?? JSON.stringify(obj));
    return { ...good, [k]: { dtype: "U8", shape: [bytes.length], bytes } };
  };
  const js = JSON.parse(new TextDecoder().decode(good[k].bytes));
  const without = (key: string): TensorRecords => Object.fromEntries(Object.entries(good).filter(([kk]) => kk !== key));
  const opts = { prefix: "p." };

  it.each([
    [
      "missing quant_state",
      () => unpackQuantState(without(k), opts),
      /^MISSING_TENSOR: p\.weight\.quant_state\.bitsandbytes__nf4/,
    ],
    ["missing weight", () => unpackQuantState(without("p.weight"), opts), /^MISSING_TENSOR: p\.weight: /],
    ["missing absmax", () => unpackQuantState(without("p.weight.absmax"), opts), /^MISSING_TENSOR: p\.weight\.absmax/],
    [
      "missing quant_map",
      () => unpackQuantState(without("p.weight.quant_map"), opts),
      /^MISSING_TENSOR: p\.weight\.quant_map/,
    ],
    [
      "missing nested_quant_map",
      () => unpackQuantState(without("p.weight.nested_quant_map"), opts),
      /^MISSING_TENSOR: p\.weight\.nested_quant_map/,
    ],
    ["wrong prefix", () => unpackQuantState(good, { prefix: "q." }), /^MISSING_TENSOR: q\.weight/],
    [
      "malformed JSON",
      () => unpackQuantState(withJson(null, '{"quant_type": '), opts),
      /^INVALID_QUANT_STATE: p\.weight\.quant_state\.bitsandbytes__nf4: expected UTF-8 JSON/,
    ],
    [
      "JSON not an object",
      () => unpackQuantState(withJson([1]), opts),
      /^INVALID_QUANT_STATE: .*expected a JSON object/,
    ],
    [
      "unknown key",
      () => unpackQuantState(withJson({ ...js, foo: 1 }), opts),
      /^INVALID_QUANT_STATE: .*unknown key "foo"/,
    ],
    [
      "missing key",
      () => unpackQuantState(withJson({ ...js, blocksize: undefined }), opts),
      /^INVALID_QUANT_STATE: .*"blocksize" missing/,
    ],
    [
      "quant_type mismatch",
      () => unpackQuantState(withJson({ ...js, quant_type: "fp4" }), opts),
      /^INVALID_QUANT_STATE: .*"quant_type" must be "nf4"/,
    ],
    [
      "unknown quant_type",
      () => unpackQuantState(withJson({ ...js, quant_type: "int4" }), opts),
      /^INVALID_QUANT_STATE: .*got "int4"/,
    ],
    [
      "bad blocksize",
      () => unpackQuantState(withJson({ ...js, blocksize: 48 }), opts),
      /^INVALID_QUANT_STATE: .*"blocksize": expected one of 32, 64/,
    ],
    [
      "bad dtype",
      () => unpackQuantState(withJson({ ...js, dtype: "float64" }), opts),
      /^INVALID_QUANT_STATE: .*"dtype": expected "float32"/,
    ],
    [
      "bad shape",
      () => unpackQuantState(withJson({ ...js, shape: [300.5] }), opts),
      /^INVALID_QUANT_STATE: .*"shape"\[0\]: expected a non-negative integer/,
    ],
    [
      "negative shape",
      () => unpackQuantState(withJson({ ...js, shape: [-300] }), opts),
      /^INVALID_QUANT_STATE: .*non-negative integer/,
    ],
    [
      "shape/n mismatch",
      () => unpackQuantState(withJson({ ...js, shape: [302] }), opts),
      /^TENSOR_SHAPE_MISMATCH: p\.weight: expected 151 packed bytes/,
    ],
    [
      "nested keys partial",
      () => unpackQuantState(withJson({ ...js, nested_dtype: undefined }), opts),
      /^INVALID_QUANT_STATE: .*nested_blocksize, nested_dtype and nested_offset/,
    ],
    [
      "nested offset string",
      () => unpackQuantState(withJson({ ...js, nested_offset: "2" }), opts),
      /^INVALID_QUANT_STATE: .*"nested_offset": expected a number/,
    ],
    [
      "nested_dtype",
      () => unpackQuantState(withJson({ ...js, nested_dtype: "float16" }), opts),
      /^INVALID_QUANT_STATE: .*"nested_dtype": expected "float32"/,
    ],
    [
      "absmax wrong dtype",
      () =>
        unpackQuantState({ ...good, "p.weight.absmax": { dtype: "F32", shape: [5], bytes: new Uint8Array(20) } }, opts),
      /^TENSOR_DTYPE_MISMATCH: p\.weight\.absmax: expected dtype U8, got "F32"/,
    ],
    [
      "quant_map wrong dtype",
      () =>
        unpackQuantState(
          { ...good, "p.weight.quant_map": { dtype: "F16", shape: [16], bytes: new Uint8Array(32) } },
          opts,
        ),
      /^TENSOR_DTYPE_MISMATCH: p\.weight\.quant_map/,
    ],
    [
      "bytes vs shape",
      () =>
        unpackQuantState(
          { ...good, "p.weight.nested_absmax": { dtype: "F32", shape: [1], bytes: new Uint8Array(3) } },
          opts,
        ),
      /^TENSOR_SHAPE_MISMATCH: p\.weight\.nested_absmax: shape \[1\] of F32 needs 4 bytes, got 3/,
    ],
    [
      "both quant_state keys",
      () => unpackQuantState({ ...good, "p.weight.quant_state.bitsandbytes__fp4": good[k] }, opts),
      /^INVALID_QUANT_STATE: .*exactly one/,
    ],
  ])("%s", (_name, fn, re) => {
    expect(code(fn)).toMatch(re);
  });
});
