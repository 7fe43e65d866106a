import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { readFile, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  GgmlType,
  GgufError,
  GgufFile,
  GgufValueType,
  GgufWriter,
  MemorySource,
  dequantizeQ8_0,
  f16BitsToFloat32,
  float32ArrayToF16,
  float32ToF16Bits,
  gv,
  openGguf,
  quantizeQ8_0,
  serializeGguf,
  writeGguf,
  type GgufArrayValue,
} from "../src/index";
import { ascii, concat, expectCode, hex, rng, tempDir, u32le, u64le } from "./helpers";

const str = (s: string) => concat(u64le(ascii(s).byteLength), ascii(s));

// A 2-tensor GGUF v3 file, byte by byte (256 bytes).
const FIXTURE = concat(
  ascii("GGUF"),
  u32le(3),
  u64le(2),
  u64le(2), //                   magic, version, tensor count, kv count   (24)
  str("general.architecture"),
  u32le(8),
  str("llama"), //            STRING kv                                 (+45 = 69)
  str("test.arr"),
  u32le(9),
  u32le(4),
  u64le(2),
  u32le(1),
  u32le(2), // ARRAY of UINT32 [1, 2]                 (+40 = 109)
  str("w"),
  u32le(2),
  u64le(2),
  u64le(1),
  u32le(0),
  u64le(0), //     F32, ne [2, 1], offset 0                  (+41 = 150)
  str("h"),
  u32le(1),
  u64le(3),
  u32le(1),
  u64le(32), //              F16, ne [3], offset 32                    (+33 = 183)
  new Uint8Array(9), //                                             pad to 192 (alignment 32)
  hex("00 00 c0 3f  00 00 80 bf"),
  new Uint8Array(24), //           w = [1.5, -1], pad to 32
  hex("00 3c  00 c0  00 38"),
  new Uint8Array(26), //                 h = [1, -2, 0.5] as fp16, pad to 32
);

const open = (bytes: Uint8Array) => GgufFile.open(new MemorySource(bytes, "mem.gguf"));

let tmp: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  tmp = await tempDir();
});
afterAll(async () => {
  await tmp.cleanup();
});

describe("GGUF hand-built fixture", () => {
  const spec = {
    metadata: { "general.architecture": gv.str("llama"), "test.arr": gv.arr(GgufValueType.UINT32, [1, 2]) },
    tensors: [
      { name: "w", type: GgmlType.F32, shape: [1, 2], data: new Float32Array([1.5, -1]) },
      { name: "h", type: GgmlType.F16, ne: [3], data: float32ArrayToF16([1, -2, 0.5]) },
    ],
  };
  it("writer output equals the fixture byte for byte", async () => {
    expect(FIXTURE.byteLength).toBe(256);
    expect(serializeGguf(spec)).toEqual(FIXTURE);
    const p = join(tmp.dir, "fixture.gguf");
    await writeGguf(p, spec);
    expect(new Uint8Array(await readFile(p))).toEqual(FIXTURE);
  });
  it("reader returns the fixture's values", async () => {
    const f = await open(FIXTURE);
    expect(f.version).toBe(3);
    expect(f.alignment).toBe(32);
    expect(f.dataStart).toBe(192);
    expect(f.get("general.architecture")).toBe("llama");
    expect(f.metadata.get("test.arr")).toEqual({
      type: GgufValueType.ARRAY,
      elementType: GgufValueType.UINT32,
      value: new Uint32Array([1, 2]),
    });
    expect(f.tensors.map((t) => [t.name, t.type, t.ne, t.shape, t.offset, t.byteOffset, t.byteLength])).toEqual([
      ["w", 0, [2, 1], [1, 2], 0, 192, 8],
      ["h", 1, [3], [3], 32, 224, 6],
    ]);
    expect(Array.from(new Float32Array((await f.read("w")).buffer))).toEqual([1.5, -1]);
    expect(Array.from(new Uint16Array((await f.read("h")).buffer), f16BitsToFloat32)).toEqual([1, -2, 0.5]);
    await expectCode(f.read("nope"), GgufError, "tensor_not_found");
  });
});

describe("GGUF round trip", () => {
  it("every metadata value type, nested arrays, custom alignment, every common tensor type", async () => {
    const r = rng(7);
    const nested: GgufArrayValue[] = [
      { type: GgufValueType.ARRAY, elementType: GgufValueType.STRING, value: ["a", "bé"] },
      { type: GgufValueType.ARRAY, elementType: GgufValueType.INT8, value: new Int8Array([-1, 2]) },
    ];
    const metadata = {
      u8: gv.u8(255),
      i8: gv.i8(-128),
      u16: gv.u16(65535),
      i16: gv.i16(-32768),
      u32: gv.u32(4294967295),
      i32: gv.i32(-2147483648),
      f32: gv.f32(0.1),
      f64: gv.f64(0.1),
      u64: gv.u64(18446744073709551615n),
      i64: gv.i64(-9223372036854775808n),
      bool: gv.bool(true),
      str: gv.str("ünïcødé ✓"),
      empty: gv.arr(GgufValueType.FLOAT32, []),
      floats: gv.arr(GgufValueType.FLOAT32, [0.5, -1]),
      bools: gv.arr(GgufValueType.BOOL, [true, false]),
      strings: gv.arr(GgufValueType.STRING, ["x", "", "<0x0A>"]),
      i64s: gv.arr(GgufValueType.INT64, [1n, -2n]),
      nested: { type: GgufValueType.ARRAY, elementType: GgufValueType.ARRAY, value: nested },
    } as const;
    const q = new Float32Array(64).map(() => r() * 2 - 1);
    const tensors = [
      { name: "f32", type: GgmlType.F32, shape: [3, 5], data: new Float32Array(15).map(() => r()) },
      { name: "f16", type: GgmlType.F16, shape: [7], data: float32ArrayToF16([1, 2, 3, 4, 5, 6, 7]) },
      { name: "bf16", type: GgmlType.BF16, shape: [2, 2, 2, 2], data: new Uint16Array(16).map((_, i) => i) },
      { name: "q8", type: GgmlType.Q8_0, shape: [2, 32], data: quantizeQ8_0(q) },
      { name: "i32", type: GgmlType.I32, shape: [1], data: new Int32Array([-5]) },
    ];
    const p = join(tmp.dir, "all.gguf");
    await writeGguf(p, { metadata, tensors, alignment: 64 });
    const f = await openGguf(p);
    expect(f.alignment).toBe(64);
    expect(f.get("general.alignment")).toBe(64);
    for (const [k, v] of Object.entries(metadata)) {
      const got = f.metadata.get(k)!;
      expect(got.type).toBe(v.type);
      if (k === "f32") expect(got.value).toBe(Math.fround(0.1));
      else if (v.type === GgufValueType.ARRAY && k !== "nested" && k !== "bools" && k !== "strings")
        expect(Array.from(got.value as ArrayLike<unknown>)).toEqual(Array.from(v.value as ArrayLike<unknown>));
      else expect(got.value).toEqual(v.value);
    }
    expect(f.get("nested")).toEqual([["a", "bé"], new Int8Array([-1, 2])]);
    for (const t of tensors) {
      const info = f.info(t.name);
      expect(info.shape).toEqual(t.shape);
      expect(info.offset % 64).toBe(0);
      expect(await f.read(t.name)).toEqual(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    }
    const order: string[] = [];
    for await (const { info } of f.iterate({ reuseBuffer: true })) order.push(info.name);
    expect(order).toEqual(tensors.map((t) => t.name));
    const pieces = new Map<string, number[]>();
    for await (const { info, data } of f.iterateChunks({ chunkSize: 16 }))
      pieces.set(info.name, [...(pieces.get(info.name) ?? []), ...data]);
    for (const t of tensors)
      expect(pieces.get(t.name)).toEqual(
        Array.from(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)),
      );
    await f.close();
  });

  it("streaming writer: chunks, order enforced, atomic", async () => {
    const { dir, cleanup } = await tempDir();
    const p = join(dir, "s.gguf");
    const spec = {
      metadata: { a: gv.u32(1) },
      tensors: [
        { name: "x", type: GgmlType.F32, ne: [100] },
        { name: "y", type: GgmlType.F16, ne: [10] },
      ],
    };
    const w = await GgufWriter.create(p, spec);
    const x = new Uint8Array(new Float32Array(100).map((_, i) => i).buffer);
    await expectCode(w.writeChunk("y", new Uint8Array(20)), GgufError, "write_order");
    for (let o = 0; o < 400; o += 64) await w.writeChunk("x", x.subarray(o, o + 64));
    await expectCode(w.writeTensor("y", new Uint8Array(21)), GgufError, "size_mismatch");
    expect(await readdir(dir)).toHaveLength(1); // only the temp file
    await w.writeTensor("y", new Uint8Array(20));
    await w.finish();
    expect(await readdir(dir)).toEqual(["s.gguf"]);
    const f = await openGguf(p);
    expect(Array.from(new Float32Array((await f.read("x")).buffer)).slice(0, 3)).toEqual([0, 1, 2]);
    await f.close();
    const w2 = await GgufWriter.create(join(dir, "t.gguf"), spec);
    await expectCode(w2.finish(), GgufError, "write_incomplete");
    expect(await readdir(dir)).toEqual(["s.gguf"]);
    await cleanup();
  });

  it("writer rejects invalid specs", () => {
    const t = (o: object) => ({ name: "t", type: GgmlType.F32, ne: [1], data: new Float32Array(1), ...o });
    const cases: [object, string][] = [
      [{ tensors: [t({ name: "n".repeat(64) })] }, "name_too_long"],
      [{ tensors: [t({}), t({})] }, "duplicate_name"],
      [{ tensors: [t({ ne: [1, 1, 1, 1, 1], data: new Float32Array(1) })] }, "too_many_dims"],
      [{ tensors: [t({ ne: [0] })] }, "bad_dim"],
      [{ tensors: [t({ type: 4 })] }, "unknown_type"],
      [{ tensors: [t({ type: GgmlType.Q8_0, ne: [16] })] }, "block_size"],
      [{ tensors: [t({ shape: [1] })] }, "invalid_argument"],
      [{ tensors: [t({ data: new Float32Array(2) })] }, "size_mismatch"],
      [{ tensors: [], alignment: 24 }, "bad_alignment"],
      [{ tensors: [], metadata: { "general.alignment": gv.u64(32) } }, "bad_alignment"],
      [{ tensors: [], metadata: { x: gv.u8(256) } }, "bad_value"],
      [{ tensors: [], metadata: { x: gv.i32(1.5) } }, "bad_value"],
      [{ tensors: [], metadata: { x: gv.u64(-1n) } }, "bad_value"],
      [{ tensors: [], metadata: { x: { type: 13, value: 1 } } }, "unknown_value_type"],
    ];
    for (const [spec, code] of cases) {
      let caught: unknown;
      try {
        serializeGguf(spec as never);
      } catch (e) {
        caught = e;
      }
      expect(caught, code).toBeInstanceOf(GgufError);
      expect((caught as GgufError).code, code).toBe(code);
    }
  });
});

describe("GGUF validation", () => {
  const head = (tensors: number | bigint, kvs: number | bigint) =>
    concat(ascii("GGUF"), u32le(3), u64le(tensors), u64le(kvs));
  const tinfo = (name: string, ne: (number | bigint)[], type: number, offset: number | bigint) =>
    concat(str(name), u32le(ne.length), ...ne.map((d) => u64le(d)), u32le(type), u64le(offset));
  const padTo = (b: Uint8Array, n: number) => concat(b, new Uint8Array((n - (b.byteLength % n)) % n));
  const withData = (header: Uint8Array, dataBytes: number) => concat(padTo(header, 32), new Uint8Array(dataBytes));

  const cases: [string, Uint8Array, string, string?][] = [
    ["empty file", new Uint8Array(0), "truncated"],
    ["bad magic", concat(ascii("GGUX"), u32le(3), u64le(0), u64le(0)), "bad_magic"],
    ["version 1", concat(ascii("GGUF"), u32le(1), u64le(0), u64le(0)), "unsupported_version"],
    ["version 4", concat(ascii("GGUF"), u32le(4), u64le(0), u64le(0)), "unsupported_version"],
    ["big-endian", concat(ascii("GGUF"), hex("00 00 00 03"), u64le(0), u64le(0)), "unsupported_version"],
    ["tensor count beyond the file", head(1n << 40n, 0), "count_too_large"],
    ["kv count beyond the file", head(0, 0xffffffffffffffffn), "count_too_large"],
    ["key length beyond the file", concat(head(0, 1), u64le(1n << 50n), new Uint8Array(8)), "length_too_large"],
    [
      "string value length beyond the file",
      concat(head(0, 1), str("k"), u32le(8), u64le(1000), ascii("abc")),
      "length_too_large",
    ],
    [
      "array count beyond the file",
      concat(head(0, 1), str("k"), u32le(9), u32le(6), u64le(1n << 61n), new Uint8Array(16)),
      "length_too_large",
    ],
    [
      "string array count beyond the file",
      concat(head(0, 1), str("k"), u32le(9), u32le(8), u64le(100), new Uint8Array(16 * 8)),
      "length_too_large",
    ],
    ["unknown value type", concat(head(0, 1), str("k"), u32le(13), u32le(0)), "unknown_value_type"],
    ["unknown array element type", concat(head(0, 1), str("k"), u32le(9), u32le(99), u64le(0)), "unknown_value_type"],
    ["bool not 0/1", concat(head(0, 1), str("k"), u32le(7), hex("02")), "bad_value"],
    ["non-UTF-8 string", concat(head(0, 1), str("k"), u32le(8), u64le(2), hex("c3 28")), "bad_string"],
    [
      "non-UTF-8 string inside a string array",
      concat(head(0, 1), str("k"), u32le(9), u32le(8), u64le(2), str("ok"), u64le(2), hex("c3 28")),
      "bad_string",
    ],
    [
      "string array element length beyond the file",
      concat(head(0, 1), str("k"), u32le(9), u32le(8), u64le(2), str("ok"), u64le(1n << 32n), ascii("abcdefgh")),
      "length_too_large",
    ],
    [
      "duplicate key",
      concat(head(0, 2), str("k"), u32le(0), hex("01"), str("k"), u32le(0), hex("01")),
      "duplicate_key",
    ],
    [
      "nested arrays too deep",
      concat(
        head(0, 1),
        str("k"),
        u32le(9),
        ...Array.from({ length: 20 }, () => concat(u32le(9), u64le(1))),
        u32le(0),
        u64le(0),
      ),
      "nesting_too_deep",
    ],
    ["alignment not UINT32", concat(head(0, 1), str("general.alignment"), u32le(5), u32le(32)), "bad_alignment"],
    [
      "alignment not a power of two",
      concat(head(0, 1), str("general.alignment"), u32le(4), u32le(24)),
      "bad_alignment",
    ],
    ["alignment zero", concat(head(0, 1), str("general.alignment"), u32le(4), u32le(0)), "bad_alignment"],
    ["name over 63 bytes", withData(concat(head(1, 0), tinfo("n".repeat(64), [1], 0, 0)), 32), "name_too_long"],
    ["5 dims", withData(concat(head(1, 0), tinfo("t", [1, 1, 1, 1, 1], 0, 0)), 32), "too_many_dims", "t"],
    ["zero dim", withData(concat(head(1, 0), tinfo("t", [0], 0, 0)), 32), "bad_dim", "t"],
    ["negative dim", withData(concat(head(1, 0), tinfo("t", [0xffffffffffffffffn], 0, 0)), 32), "bad_dim", "t"],
    [
      "element count overflow",
      withData(concat(head(1, 0), tinfo("t", [1n << 30n, 1n << 30n, 1n << 30n], 0, 0)), 32),
      "bad_dim",
      "t",
    ],
    ["unknown type", withData(concat(head(1, 0), tinfo("t", [1], 4, 0)), 32), "unknown_type", "t"],
    ["Q8_0 row not a multiple of 32", withData(concat(head(1, 0), tinfo("t", [16], 8, 0)), 64), "block_size", "t"],
    ["misaligned offset", withData(concat(head(1, 0), tinfo("t", [1], 0, 4)), 64), "misaligned_offset", "t"],
    ["offset out of bounds", withData(concat(head(1, 0), tinfo("t", [1], 0, 1n << 40n)), 32), "out_of_bounds", "t"],
    ["tensor data beyond the file", withData(concat(head(1, 0), tinfo("t", [1000], 0, 0)), 32), "out_of_bounds", "t"],
    [
      "overlapping tensors",
      withData(concat(head(2, 0), tinfo("a", [16], 0, 0), tinfo("b", [16], 0, 32)), 128),
      "overlap",
      "b",
    ],
    [
      "duplicate tensor names",
      withData(concat(head(2, 0), tinfo("a", [1], 0, 0), tinfo("a", [1], 0, 32)), 64),
      "duplicate_name",
      "a",
    ],
    ["truncated tensor info", concat(head(1, 0), str("t"), u32le(4), u64le(1), u64le(1)), "truncated", "t"],
  ];
  for (const [what, bytes, code, tensor] of cases) {
    it(what, async () => {
      const e = await expectCode(open(bytes), GgufError, code);
      expect(e.file).toBe("mem.gguf");
      if (tensor !== undefined) expect(e.tensor).toBe(tensor);
    });
  }

  it("string arrays: long, non-ASCII and window-crossing strings decode exactly", async () => {
    const strings = ["a".repeat(300), "ünï", "", "x".repeat(3 << 20), "<0x0A>", "é".repeat(200)];
    const f = await open(serializeGguf({ metadata: { s: gv.arr(GgufValueType.STRING, strings) }, tensors: [] }));
    expect(f.get("s")).toEqual(strings);
  });

  it("reads version 2 files (same layout)", async () => {
    const f = await open(concat(ascii("GGUF"), u32le(2), u64le(0), u64le(1), str("k"), u32le(4), u32le(9)));
    expect(f.version).toBe(2);
    expect(f.get("k")).toBe(9);
  });

  it("never reads or allocates more than the file for huge declared lengths", async () => {
    const bytes = concat(head(0, 1), str("k"), u32le(9), u32le(12), u64le(1n << 59n), new Uint8Array(64));
    const src = new MemorySource(bytes, "mem.gguf");
    let maxRead = 0;
    const orig = src.read.bind(src);
    src.read = async (o, n) => {
      maxRead = Math.max(maxRead, n);
      return orig(o, n);
    };
    await expectCode(GgufFile.open(src), GgufError, "length_too_large");
    expect(maxRead).toBeLessThanOrEqual(bytes.byteLength);
  });

  it("a missing file is a typed error", async () => {
    await expectCode(openGguf(join(tmp.dir, "nope.gguf")), GgufError, "io");
    const p = join(tmp.dir, "text.gguf");
    await writeFile(p, "hello world, not a gguf");
    await expectCode(openGguf(p), GgufError, "bad_magic");
  });
});

describe("Q8_0", () => {
  it("matches the ggml definition on hand-computed blocks", () => {
    // amax 127 → d = 1, id = 1, q = roundf(x): halves round away from zero
    const x = new Float32Array(32);
    x.set([127, -127, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49, 126.6]);
    const b = quantizeQ8_0(x);
    expect(b.byteLength).toBe(34);
    expect(new DataView(b.buffer).getUint16(0, true)).toBe(0x3c00); // fp16 1.0
    expect(Array.from(new Int8Array(b.buffer, 2, 10))).toEqual([127, -127, 1, -1, 2, -2, 3, -3, 0, 127]);
    // all-zero block: d = 0, id = 0, q = 0
    expect(Array.from(quantizeQ8_0(new Float32Array(32)))).toEqual(new Array(34).fill(0));
    // d = amax/127 in float32; q computed with 1/d (not the fp16-rounded d)
    const y = new Float32Array(32).map((_, i) => (i - 16) * 0.01);
    const by = quantizeQ8_0(y);
    const d = Math.fround(Math.fround(0.16) / 127);
    const id = Math.fround(1 / d);
    expect(new DataView(by.buffer).getUint16(0, true)).toBe(float32ToF16Bits(d));
    const expectQ = Array.from(y, (v) => {
      const t = Math.fround(v * id);
      return t < 0 ? -Math.round(-t) : Math.round(t);
    });
    expect(Array.from(new Int8Array(by.buffer, 2, 32))).toEqual(expectQ);
    expect(new Int8Array(by.buffer, 2, 32)[0]).toBe(-127);
  });

  it("dequantize(quantize(x)) is within d/2 per element and exact on the grid", () => {
    const r = rng(3);
    const x = new Float32Array(32 * 50).map(() => (r() * 2 - 1) * (1 + r() * 100));
    const b = quantizeQ8_0(x);
    const y = dequantizeQ8_0(b);
    for (let blk = 0; blk < 50; blk++) {
      const d = f16BitsToFloat32(new DataView(b.buffer).getUint16(blk * 34, true));
      for (let j = 0; j < 32; j++) {
        const i = blk * 32 + j;
        expect(y[i]).toBe(Math.fround(new Int8Array(b.buffer, blk * 34 + 2, 32)[j] * d));
        // fp16 rounding of d adds up to 127·|d - d32| on top of the d/2 rounding error
        expect(Math.abs(y[i] - x[i])).toBeLessThanOrEqual(d / 2 + 127 * d * 2 ** -11 + 1e-7);
      }
    }
    expect(() => quantizeQ8_0(new Float32Array(31))).toThrow(GgufError);
    expect(() => dequantizeQ8_0(new Uint8Array(33))).toThrow(GgufError);
  });
});
