/**
 * Fuzzing: thousands of mutated, truncated and spliced files per format, parsed through the same
 * code as real files (over an in-memory ByteSource). Every outcome must be a valid parse whose
 * tensors can all be read, or a typed error of the format's class; never another exception,
 * a hang, or a read/allocation larger than the file.
 */
import { describe, it, expect } from "vitest";
import fc from "fast-check";
import {
  GgmlType,
  GgufError,
  GgufFile,
  GgufValueType,
  MemorySource,
  SafetensorsError,
  SafetensorsFile,
  SAFETENSORS_DTYPES,
  dtypeSize,
  serializeGguf,
  serializeSafetensors,
  gv,
  type SafetensorsDtype,
  type GgufWriteValue,
} from "../src/index";

const BIG_U64 = [
  0n,
  1n,
  7n,
  8n,
  100_000_001n,
  (1n << 31n) - 1n,
  1n << 32n,
  (1n << 53n) + 1n,
  1n << 62n,
  1n << 63n,
  (1n << 64n) - 1n,
];

/** A MemorySource that records the largest single read, to check nothing larger than the file is requested. */
class TracingSource extends MemorySource {
  maxRead = 0;
  override async read(offset: number, length: number): Promise<Uint8Array> {
    this.maxRead = Math.max(this.maxRead, length);
    return super.read(offset, length);
  }
  override async readInto(target: Uint8Array, offset: number): Promise<void> {
    this.maxRead = Math.max(this.maxRead, target.byteLength);
    return super.readInto(target, offset);
  }
}

type Outcome = "ok" | string;

async function checkSafetensors(bytes: Uint8Array): Promise<Outcome> {
  const src = new TracingSource(bytes, "fuzz.safetensors");
  try {
    const f = await SafetensorsFile.open(src);
    let total = 0;
    for await (const { info, data } of f.iterate()) {
      expect(data.byteLength).toBe(info.byteLength);
      total += data.byteLength;
    }
    expect(total + f.dataStart).toBe(bytes.byteLength);
    return "ok";
  } catch (e) {
    if (!(e instanceof SafetensorsError)) throw e;
    return e.code;
  } finally {
    expect(src.maxRead).toBeLessThanOrEqual(bytes.byteLength);
  }
}

async function checkGguf(bytes: Uint8Array): Promise<Outcome> {
  const src = new TracingSource(bytes, "fuzz.gguf");
  try {
    const f = await GgufFile.open(src);
    for await (const { info, data } of f.iterate()) expect(data.byteLength).toBe(info.byteLength);
    return "ok";
  } catch (e) {
    if (!(e instanceof GgufError)) throw e;
    return e.code;
  } finally {
    expect(src.maxRead).toBeLessThanOrEqual(bytes.byteLength);
  }
}

// ---------- generators of valid files ----------

const stTensor = fc.record({
  dtype: fc.constantFrom(...SAFETENSORS_DTYPES),
  shape: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 }),
});
const validSafetensors = fc
  .record({
    tensors: fc.uniqueArray(fc.tuple(fc.string({ minLength: 1, maxLength: 6 }), stTensor), {
      maxLength: 5,
      selector: ([n]) => n,
    }),
    metadata: fc.option(fc.dictionary(fc.string({ maxLength: 5 }), fc.string({ maxLength: 5 }), { maxKeys: 3 }), {
      nil: undefined,
    }),
  })
  .map(({ tensors, metadata }) =>
    serializeSafetensors(
      tensors
        .filter(([n]) => n !== "__metadata__")
        .map(([name, t]) => {
          const n = t.shape.reduce((a, b) => a * b, 1);
          const data = new Uint8Array(n * dtypeSize(t.dtype as SafetensorsDtype)).map((_, i) => (i * 37) & 0xff);
          return { name, dtype: t.dtype as SafetensorsDtype, shape: t.shape, data };
        }),
      metadata,
    ),
  );

const ggufValue: fc.Arbitrary<GgufWriteValue> = fc.oneof(
  fc.integer({ min: 0, max: 255 }).map(gv.u8),
  fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }).map(gv.i32),
  fc.integer({ min: 0, max: 2 ** 32 - 1 }).map(gv.u32),
  fc.float().map(gv.f32),
  fc.double().map(gv.f64),
  fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }).map(gv.u64),
  fc.boolean().map(gv.bool),
  fc.string({ maxLength: 8 }).map(gv.str),
  fc.array(fc.string({ maxLength: 4 }), { maxLength: 4 }).map((a) => gv.arr(GgufValueType.STRING, a)),
  fc.array(fc.integer({ min: -100, max: 100 }), { maxLength: 6 }).map((a) => gv.arr(GgufValueType.INT16, a)),
  fc.array(fc.array(fc.integer({ min: 0, max: 9 }), { maxLength: 3 }), { maxLength: 3 }).map((a) =>
    gv.arr(
      GgufValueType.ARRAY,
      a.map((x) => gv.arr(GgufValueType.UINT8, x)),
    ),
  ),
);
const ggufTensor = fc.record({
  type: fc.constantFrom(GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.I8),
  ne: fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 1, maxLength: 4 }),
});
const validGguf = fc
  .record({
    kvs: fc.uniqueArray(fc.tuple(fc.string({ minLength: 1, maxLength: 8 }), ggufValue), {
      maxLength: 5,
      selector: ([k]) => k,
    }),
    tensors: fc.uniqueArray(fc.tuple(fc.string({ minLength: 1, maxLength: 8 }), ggufTensor), {
      maxLength: 4,
      selector: ([n]) => n,
    }),
    alignment: fc.constantFrom(undefined, 8, 32, 64),
  })
  .map(({ kvs, tensors, alignment }) => {
    const metadata = Object.fromEntries(kvs.filter(([k]) => k !== "general.alignment"));
    return serializeGguf({
      metadata,
      alignment,
      tensors: tensors.map(([name, t]) => {
        const ne = t.type === GgmlType.Q8_0 ? [32 * t.ne[0], ...t.ne.slice(1)] : t.ne;
        const n = ne.reduce((a, b) => a * b, 1);
        const bytes =
          t.type === GgmlType.Q8_0
            ? (n / 32) * 34
            : n * ({ 0: 4, 1: 2, 30: 2, 24: 1 } as Record<number, number>)[t.type];
        return { name, type: t.type, ne, data: new Uint8Array(bytes).map((_, i) => (i * 13) & 0xff) };
      }),
    });
  });

// ---------- mutations ----------

const flips = (base: fc.Arbitrary<Uint8Array>) =>
  base.chain((b) =>
    fc
      .array(fc.tuple(fc.nat({ max: Math.max(0, b.byteLength - 1) }), fc.integer({ min: 0, max: 255 })), {
        minLength: 1,
        maxLength: 6,
      })
      .map((edits) => {
        const out = b.slice();
        for (const [i, v] of edits) if (i < out.length) out[i] = v;
        return out;
      }),
  );
const truncations = (base: fc.Arbitrary<Uint8Array>) =>
  base.chain((b) => fc.nat({ max: b.byteLength }).map((n) => b.slice(0, n)));
const splices = (base: fc.Arbitrary<Uint8Array>, width: 4 | 8) =>
  base.chain((b) =>
    fc
      .tuple(
        fc.nat({ max: Math.max(0, b.byteLength - width) }),
        fc.oneof(fc.constantFrom(...BIG_U64), fc.bigInt({ min: 0n, max: BigInt(b.byteLength) + 64n })),
      )
      .map(([pos, v]) => {
        const out = b.slice();
        if (pos + width <= out.length) {
          const dv = new DataView(out.buffer);
          if (width === 8) dv.setBigUint64(pos, BigInt.asUintN(64, v), true);
          else dv.setUint32(pos, Number(BigInt.asUintN(32, v)), true);
        }
        return out;
      }),
  );

/** Rewrites the JSON header of a valid safetensors file (keeping a correct length prefix). */
const headerEdits = validSafetensors.chain((b) => {
  const n = Number(new DataView(b.buffer).getBigUint64(0, true));
  const text = new TextDecoder().decode(b.subarray(8, 8 + n)).trimEnd();
  const data = b.subarray(8 + n);
  const jsonish = fc.oneof(
    fc.constantFrom(
      "-1",
      "1.5",
      "1e400",
      "18446744073709551616",
      "9007199254740993",
      '"7"',
      "null",
      "[]",
      "{}",
      "[0]",
      "[1,0]",
      "true",
      '"F32"',
      '"F4"',
      '"I8"',
      '{"a":"b"}',
      '{"a":1}',
    ),
    fc.integer({ min: -5, max: 5000 }).map(String),
  );
  const edit = fc.oneof(
    // replace a number, string or bracketed value somewhere in the header
    fc.tuple(fc.nat({ max: Math.max(0, text.length - 1) }), jsonish).map(([at, v]) => {
      const m = /-?\d+(\.\d+)?|"[^"]*"|\[[^[\]]*\]/g;
      const hits = [...text.matchAll(m)];
      if (hits.length === 0) return text;
      const h = hits.find((x) => x.index! >= at) ?? hits[hits.length - 1];
      return text.slice(0, h.index) + v + text.slice(h.index! + h[0].length);
    }),
    // duplicate the first entry
    fc.constant(
      text.replace(
        /^\{("[^"]*":\{[^{}]*\}),?/,
        (_all, e: string) => `{${e},${e}${text.length > e.length + 2 ? "," : ""}`,
      ),
    ),
    // delete a character, insert garbage
    fc
      .tuple(fc.nat({ max: Math.max(0, text.length - 1) }), fc.string({ maxLength: 3 }))
      .map(([at, s]) => text.slice(0, at) + s + text.slice(at + 1)),
    // deep nesting and odd top-level values
    fc.constantFrom(
      `[${"[".repeat(200)}${"]".repeat(200)}]`,
      '{"__metadata__":{"x":{"y":1}}}',
      '{"__metadata__":null}',
      '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":[[[]]]}}',
    ),
  );
  return edit.map((h) => {
    const hb = new TextEncoder().encode(h);
    const out = new Uint8Array(8 + hb.byteLength + data.byteLength);
    new DataView(out.buffer).setBigUint64(0, BigInt(hb.byteLength), true);
    out.set(hb, 8);
    out.set(data, 8 + hb.byteLength);
    return out;
  });
});

// ---------- properties ----------

async function run(
  arb: fc.Arbitrary<Uint8Array>,
  check: (b: Uint8Array) => Promise<Outcome>,
  numRuns: number,
  outcomes: Map<string, number>,
): Promise<void> {
  await fc.assert(
    fc.asyncProperty(arb, async (bytes) => {
      const o = await check(bytes);
      outcomes.set(o, (outcomes.get(o) ?? 0) + 1);
    }),
    { numRuns, seed: 20261130, endOnFailure: true },
  );
}

describe("fuzz safetensors", () => {
  it("valid files parse; mutated, truncated, spliced and header-edited files give only SafetensorsError", {
    timeout: 60_000,
  }, async () => {
    const outcomes = new Map<string, number>();
    await run(validSafetensors, checkSafetensors, 300, outcomes);
    expect(outcomes.get("ok")).toBe(300);
    await run(flips(validSafetensors), checkSafetensors, 1500, outcomes);
    await run(truncations(validSafetensors), checkSafetensors, 1000, outcomes);
    await run(splices(validSafetensors, 8), checkSafetensors, 1000, outcomes);
    await run(headerEdits, checkSafetensors, 2000, outcomes);
    // the mutations reach deep validation, not just the first check
    for (const code of [
      "header_length",
      "header_json",
      "size_mismatch",
      "gap",
      "duplicate_name",
      "unknown_dtype",
      "bad_shape",
      "bad_tensor_entry",
    ]) {
      expect(outcomes.get(code) ?? 0, `${code} in ${JSON.stringify([...outcomes])}`).toBeGreaterThan(0);
    }
  });
});

describe("fuzz GGUF", () => {
  it("valid files parse; mutated, truncated and spliced files give only GgufError", { timeout: 60_000 }, async () => {
    const outcomes = new Map<string, number>();
    await run(validGguf, checkGguf, 300, outcomes);
    expect(outcomes.get("ok")).toBe(300);
    await run(flips(validGguf), checkGguf, 2000, outcomes);
    await run(truncations(validGguf), checkGguf, 1000, outcomes);
    await run(splices(validGguf, 8), checkGguf, 1500, outcomes);
    await run(splices(validGguf, 4), checkGguf, 1500, outcomes);
    for (const code of [
      "truncated",
      "bad_magic",
      "length_too_large",
      "unknown_value_type",
      "unknown_type",
      "out_of_bounds",
    ]) {
      expect(outcomes.get(code) ?? 0, `${code} in ${JSON.stringify([...outcomes])}`).toBeGreaterThan(0);
    }
  });
});
