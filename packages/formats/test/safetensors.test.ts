import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { readFile, writeFile, readdir, stat, truncate } from "node:fs/promises";
import { join } from "node:path";
import {
  MemorySource,
  SafetensorsError,
  SafetensorsFile,
  SafetensorsWriter,
  SAFETENSORS_DTYPES,
  dtypeSize,
  openSafetensors,
  serializeSafetensors,
  viewAs,
  toFloat32Array,
  writeSafetensors,
  float32ToF16Bits,
  float32ToBf16Bits,
  type SafetensorsDtype,
} from "../src/index";
import { ascii, concat, expectCode, hex, tempDir, u64le, rng } from "./helpers";

// A 2-tensor safetensors file, byte by byte: u64 header length (144), the JSON header padded with
// 6 spaces to a multiple of 8, then a: F32 [1, -2] and b: I8 [1, -1, 127].
const FIXTURE = concat(
  hex("90 00 00 00 00 00 00 00"),
  ascii(
    '{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I8","shape":[3],"data_offsets":[8,11]}}      ',
  ),
  hex("00 00 80 3f  00 00 00 c0  01 ff 7f"),
);

/** Builds a file from header JSON text and data bytes (no padding), for malformed-header tests. */
function raw(header: string, data: Uint8Array = new Uint8Array(0), lengthOverride?: bigint): Uint8Array {
  const h = ascii(header);
  return concat(u64le(lengthOverride ?? BigInt(h.byteLength)), h, data);
}
const open = (bytes: Uint8Array) => SafetensorsFile.open(new MemorySource(bytes, "mem.safetensors"));

/** An independent parse written for the test: DataView + JSON.parse, no code shared with the reader. */
function independentParse(bytes: Uint8Array) {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  const out: Record<string, { dtype: string; shape: number[]; bytes: Uint8Array }> = {};
  for (const [k, v] of Object.entries<{ dtype: string; shape: number[]; data_offsets: [number, number] }>(header)) {
    if (k === "__metadata__") continue;
    out[k] = {
      dtype: v.dtype,
      shape: v.shape,
      bytes: bytes.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]),
    };
  }
  return { n, metadata: header.__metadata__, tensors: out };
}

let tmp: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  tmp = await tempDir();
});
afterAll(async () => {
  await tmp.cleanup();
});

describe("safetensors hand-built fixture", () => {
  it("writer output equals the fixture byte for byte", async () => {
    const tensors = [
      { name: "a", dtype: "F32" as const, shape: [2], data: new Float32Array([1, -2]) },
      { name: "b", dtype: "I8" as const, shape: [3], data: new Int8Array([1, -1, 127]) },
    ];
    expect(serializeSafetensors(tensors, { format: "pt" })).toEqual(FIXTURE);
    const p = join(tmp.dir, "fixture.safetensors");
    await writeSafetensors(p, tensors, { format: "pt" });
    expect(new Uint8Array(await readFile(p))).toEqual(FIXTURE);
  });

  it("reader returns the fixture's values", async () => {
    const f = await open(FIXTURE);
    expect(f.metadata).toEqual({ format: "pt" });
    expect(f.names).toEqual(["a", "b"]);
    expect(f.dataStart).toBe(152);
    expect(f.info("a")).toEqual({
      name: "a",
      dtype: "F32",
      shape: [2],
      dataOffsets: [0, 8],
      byteOffset: 152,
      byteLength: 8,
    });
    expect(Array.from(await f.readTyped("a", "F32"))).toEqual([1, -2]);
    expect(Array.from(await f.readTyped("b", "I8"))).toEqual([1, -1, 127]);
    expect(await f.read("b")).toEqual(hex("01 ff 7f"));
    await expectCode(f.read("c"), SafetensorsError, "tensor_not_found");
    await expectCode(f.readTyped("a", "F16"), SafetensorsError, "invalid_argument");
    await f.close();
  });
});

describe("safetensors round trip", () => {
  it("every dtype, empty tensors and scalars, against an independent parse", async () => {
    const r = rng(1);
    const tensors = SAFETENSORS_DTYPES.map((dtype, i) => {
      const shape = [(i % 3) + 1, 3];
      const bytes = new Uint8Array(((6 * dtypeSize(dtype)) / 2) * ((i % 3) + 1));
      for (let j = 0; j < bytes.length; j++) bytes[j] = Math.floor(r() * 256);
      if (dtype === "BOOL") for (let j = 0; j < bytes.length; j++) bytes[j] &= 1;
      return { name: `t.${dtype}`, dtype, shape, data: bytes };
    });
    tensors.push({ name: "empty", dtype: "F32", shape: [0, 4], data: new Uint8Array(0) });
    tensors.push({ name: "scalar", dtype: "F64", shape: [], data: new Uint8Array(new Float64Array([Math.PI]).buffer) });
    const p = join(tmp.dir, "all.safetensors");
    await writeSafetensors(p, tensors, { note: 'ünïcødé "quoted"' });
    const bytes = new Uint8Array(await readFile(p));
    const ind = independentParse(bytes);
    expect(ind.n % 8).toBe(0);
    expect(ind.metadata).toEqual({ note: 'ünïcødé "quoted"' });
    const f = await openSafetensors(p);
    for (const t of tensors) {
      expect(ind.tensors[t.name].dtype).toBe(t.dtype);
      expect(ind.tensors[t.name].shape).toEqual(t.shape);
      expect(ind.tensors[t.name].bytes).toEqual(t.data);
      expect(await f.read(t.name)).toEqual(t.data);
      expect(f.info(t.name).shape).toEqual(t.shape);
    }
    expect(Array.from(await f.readTyped("scalar", "F64"))).toEqual([Math.PI]);
    await f.close();
  });

  it("typed views: zero-copy when aligned, copied when not; float decoding", () => {
    const buf = new Uint8Array(13);
    new DataView(buf.buffer).setFloat32(1, 1.5, true);
    new DataView(buf.buffer).setFloat32(5, -0.25, true);
    const unaligned = buf.subarray(1, 9);
    const v = viewAs(unaligned, "F32");
    expect(Array.from(v)).toEqual([1.5, -0.25]);
    expect(v.buffer).not.toBe(buf.buffer);
    const aligned = new Uint8Array(new Float32Array([3, 4]).buffer);
    expect(viewAs(aligned, "F32").buffer).toBe(aligned.buffer);
    const f16 = new Uint16Array([float32ToF16Bits(0.5), float32ToF16Bits(-3)]);
    expect(Array.from(toFloat32Array(new Uint8Array(f16.buffer), "F16"))).toEqual([0.5, -3]);
    const bf = new Uint16Array([float32ToBf16Bits(1.25), float32ToBf16Bits(-1024)]);
    expect(Array.from(toFloat32Array(new Uint8Array(bf.buffer), "BF16"))).toEqual([1.25, -1024]);
    // E4M3: 0x38 = 1.0, 0x7e = 448, 0xff = NaN; E5M2: 0x3c = 1.0, 0x7c = inf
    expect(Array.from(toFloat32Array(hex("38 7e b8 ff"), "F8_E4M3"))).toEqual([1, 448, -1, NaN]);
    expect(Array.from(toFloat32Array(hex("3c 7c c0"), "F8_E5M2"))).toEqual([1, Infinity, -2]);
    expect(() => viewAs(new Uint8Array(3), "F16")).toThrow(/whole number/);
  });

  it("iterate visits tensors in file order, optionally into one reused buffer", async () => {
    // header order differs from data order
    const hdr =
      '{"late":{"dtype":"U8","shape":[2],"data_offsets":[3,5]},"early":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}';
    const f = await open(raw(hdr, hex("01 02 03 04 05")));
    expect(f.names).toEqual(["late", "early"]);
    const seen: [string, number[]][] = [];
    for await (const { info, data } of f.iterate()) seen.push([info.name, Array.from(data)]);
    expect(seen).toEqual([
      ["early", [1, 2, 3]],
      ["late", [4, 5]],
    ]);
    const reused: string[] = [];
    for await (const { info, data } of f.iterate({ reuseBuffer: true, names: ["late"] }))
      reused.push(`${info.name}:${Array.from(data)}`);
    expect(reused).toEqual(["late:4,5"]);
  });
});

describe("safetensors chunked iteration", () => {
  it("iterateChunks covers every tensor in file order, in pieces, through one buffer", async () => {
    const tensors = [
      { name: "b", dtype: "U8" as const, shape: [7], data: new Uint8Array([1, 2, 3, 4, 5, 6, 7]) },
      { name: "e", dtype: "F32" as const, shape: [0], data: new Uint8Array(0) },
      { name: "a", dtype: "I16" as const, shape: [4], data: new Int16Array([-1, 2, -3, 4]) },
    ];
    const f = await open(serializeSafetensors(tensors));
    const got = new Map<string, number[]>();
    const buffers = new Set<ArrayBufferLike>();
    for await (const { info, offset, data } of f.iterateChunks({ chunkSize: 3 })) {
      const prev = got.get(info.name) ?? [];
      expect(offset).toBe(prev.length);
      expect(data.byteLength).toBeLessThanOrEqual(3);
      got.set(info.name, [...prev, ...data]);
      buffers.add(data.buffer);
    }
    expect([...got.keys()]).toEqual(["b", "e", "a"]);
    expect(got.get("b")).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(got.get("e")).toEqual([]);
    expect(got.get("a")).toEqual(Array.from(new Uint8Array(new Int16Array([-1, 2, -3, 4]).buffer)));
    expect(buffers.size).toBe(1);
    const only: string[] = [];
    for await (const { info } of f.iterateChunks({ names: ["a"] })) only.push(info.name);
    expect(only).toEqual(["a"]);
    await expectCode(
      (async () => {
        for await (const _ of f.iterateChunks({ chunkSize: 0 })) void _;
      })(),
      SafetensorsError,
      "invalid_argument",
    );
    await expectCode(
      (async () => {
        for await (const _ of f.iterateChunks({ names: ["zz"] })) void _;
      })(),
      SafetensorsError,
      "tensor_not_found",
    );
  });
});

describe("safetensors streaming writer", () => {
  it("writes chunks in order and produces the same bytes as the one-shot writer", async () => {
    const a = new Float32Array(1000).map((_, i) => i * 0.5);
    const b = new Uint16Array(77).map((_, i) => i);
    const decls = [
      { name: "a", dtype: "F32" as const, shape: [10, 100] },
      { name: "z", dtype: "F32" as const, shape: [0] },
      { name: "b", dtype: "BF16" as const, shape: [77] },
    ];
    const p = join(tmp.dir, "stream.safetensors");
    const w = await SafetensorsWriter.create(p, decls, { k: "v" });
    expect(w.next).toBe("a");
    const ab = new Uint8Array(a.buffer);
    for (let o = 0; o < ab.length; o += 333) await w.writeChunk("a", ab.subarray(o, Math.min(o + 333, ab.length)));
    expect(w.next).toBe("b");
    await w.writeTensor("z", new Uint8Array(0));
    await expectCode(w.writeChunk("a", new Uint8Array(4)), SafetensorsError, "write_order");
    await expectCode(w.writeChunk("nope", new Uint8Array(4)), SafetensorsError, "write_order");
    await expectCode(w.writeChunk("b", new Uint8Array(1000)), SafetensorsError, "size_mismatch");
    await w.writeTensor("b", b);
    await w.finish();
    const expected = serializeSafetensors(
      [
        { ...decls[0], data: a },
        { ...decls[1], data: new Uint8Array(0) },
        { ...decls[2], data: b },
      ],
      { k: "v" },
    );
    expect(new Uint8Array(await readFile(p))).toEqual(expected);
  });

  it("is atomic: an unfinished or aborted write leaves nothing under the final name and no temp file", async () => {
    const { dir, cleanup } = await tempDir();
    const p = join(dir, "x.safetensors");
    await writeFile(p, "old contents");
    const w = await SafetensorsWriter.create(p, [{ name: "a", dtype: "U8", shape: [4] }]);
    await w.writeChunk("a", new Uint8Array(2));
    expect((await readdir(dir)).length).toBe(2); // final + temp
    expect(await readFile(p, "utf8")).toBe("old contents");
    await expectCode(w.finish(), SafetensorsError, "write_incomplete");
    expect(await readdir(dir)).toEqual(["x.safetensors"]);
    expect(await readFile(p, "utf8")).toBe("old contents");
    const w2 = await SafetensorsWriter.create(p, [{ name: "a", dtype: "U8", shape: [1] }]);
    await w2.abort();
    expect(await readdir(dir)).toEqual(["x.safetensors"]);
    await expectCode(
      writeSafetensors(p, [{ name: "a", dtype: "F32", shape: [2], data: new Uint8Array(7) }]),
      SafetensorsError,
      "size_mismatch",
    );
    expect(await readdir(dir)).toEqual(["x.safetensors"]);
    await cleanup();
  });

  it("rejects bad declarations", async () => {
    const p = join(tmp.dir, "bad.safetensors");
    await expectCode(
      SafetensorsWriter.create(p, [
        { name: "a", dtype: "F32", shape: [1] },
        { name: "a", dtype: "F32", shape: [1] },
      ]),
      SafetensorsError,
      "duplicate_name",
    );
    await expectCode(
      SafetensorsWriter.create(p, [{ name: "a", dtype: "F12" as SafetensorsDtype, shape: [1] }]),
      SafetensorsError,
      "unknown_dtype",
    );
    await expectCode(
      SafetensorsWriter.create(p, [{ name: "a", dtype: "F32", shape: [-1] }]),
      SafetensorsError,
      "bad_shape",
    );
    await expectCode(
      SafetensorsWriter.create(p, [{ name: "a", dtype: "F32", shape: [1.5] }]),
      SafetensorsError,
      "bad_shape",
    );
    await expectCode(
      SafetensorsWriter.create(p, [{ name: "__metadata__", dtype: "F32", shape: [1] }]),
      SafetensorsError,
      "invalid_argument",
    );
    await expect(stat(p)).rejects.toThrow();
  });
});

describe("safetensors validation", () => {
  const ok = '{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}';
  const cases: [string, Uint8Array, string, string?][] = [
    ["file shorter than 8 bytes", hex("01 02 03"), "header_length"],
    ["header length beyond the file", raw(ok, hex("01 02"), 1000n), "header_length"],
    ["header length near 2^64", raw(ok, hex("01 02"), 0xffffffffffffffffn), "header_length"],
    ["non-UTF-8 header", concat(u64le(4), hex("7b ff fe 7d")), "header_utf8"],
    ["non-JSON header", raw('{"a":'), "header_json"],
    ["trailing garbage after JSON", raw("{} x"), "header_json"],
    ["header is an array", raw("[1,2]"), "header_not_object"],
    ["header is a string", raw('"hi"'), "header_not_object"],
    [
      "duplicate tensor names",
      raw(
        '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}',
        hex("01 02"),
      ),
      "duplicate_name",
      "a",
    ],
    ["unknown dtype", raw('{"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}', hex("01")), "unknown_dtype", "a"],
    ["missing dtype", raw('{"a":{"shape":[2],"data_offsets":[0,2]}}', hex("01 02")), "bad_tensor_entry", "a"],
    ["entry not an object", raw('{"a":[1]}'), "bad_tensor_entry", "a"],
    ["negative dim", raw('{"a":{"dtype":"U8","shape":[-2],"data_offsets":[0,2]}}', hex("01 02")), "bad_shape", "a"],
    ["fractional dim", raw('{"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,2]}}', hex("01 02")), "bad_shape", "a"],
    ["string dim", raw('{"a":{"dtype":"U8","shape":["2"],"data_offsets":[0,2]}}', hex("01 02")), "bad_shape", "a"],
    [
      "shape product overflows 2^53",
      raw('{"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,2]}}', hex("01 02")),
      "bad_shape",
      "a",
    ],
    [
      "shape × dtype ≠ byte range",
      raw('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,2]}}', hex("01 02")),
      "size_mismatch",
      "a",
    ],
    [
      "offsets not integers",
      raw('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,"2"]}}', hex("01 02")),
      "bad_tensor_entry",
      "a",
    ],
    [
      "offsets reversed",
      raw('{"a":{"dtype":"U8","shape":[0],"data_offsets":[2,0]}}', hex("01 02")),
      "bad_tensor_entry",
      "a",
    ],
    [
      "offsets out of bounds",
      raw('{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}', hex("01 02")),
      "out_of_bounds",
      "a",
    ],
    [
      "huge offsets",
      raw('{"a":{"dtype":"U8","shape":[2],"data_offsets":[18446744073709551614,18446744073709551616]}}', hex("01 02")),
      "bad_tensor_entry",
      "a",
    ],
    [
      "overlapping offsets",
      raw(
        '{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}',
        hex("01 02 03"),
      ),
      "overlap",
      "b",
    ],
    [
      "gap between tensors",
      raw(
        '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}',
        hex("01 02 03"),
      ),
      "gap",
      "b",
    ],
    ["gap at the start", raw('{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', hex("01 02")), "gap", "a"],
    ["trailing bytes", raw(ok, hex("01 02 03")), "gap"],
    ["__metadata__ not an object", raw('{"__metadata__":[1]}'), "bad_metadata"],
    ["__metadata__ with non-string value", raw('{"__metadata__":{"n":1}}'), "bad_metadata"],
    ["nesting bomb", raw(`{"__metadata__":${"[".repeat(5000)}${"]".repeat(5000)}}`), "header_json"],
  ];
  for (const [what, bytes, code, tensor] of cases) {
    it(what, async () => {
      const e = await expectCode(open(bytes), SafetensorsError, code);
      expect(e.file).toBe("mem.safetensors");
      expect(e.message).toContain("mem.safetensors");
      if (tensor !== undefined) {
        expect(e.tensor).toBe(tensor);
        expect(e.message).toContain(`tensor "${tensor}"`);
      }
    });
  }

  it("header larger than 100 MB is refused before it is read", async () => {
    const src = new MemorySource(concat(u64le(100_000_001n), new Uint8Array(16)), "big");
    Object.defineProperty(src, "size", { value: 200_000_000 }); // pretend the file is that large
    let reads = 0;
    const orig = src.read.bind(src);
    src.read = async (o, n) => {
      reads++;
      return orig(o, n);
    };
    await expectCode(SafetensorsFile.open(src), SafetensorsError, "header_too_large");
    expect(reads).toBe(1); // only the 8-byte prefix
  });

  it("__proto__ keys are data, not prototype changes", async () => {
    const f = await open(
      raw('{"__metadata__":{"__proto__":"x"},"__proto__":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', hex("07")),
    );
    expect(f.names).toEqual(["__proto__"]);
    expect(Array.from(await f.read("__proto__"))).toEqual([7]);
    expect(Object.getPrototypeOf(f.metadata)).toBe(Object.prototype);
    // biome-ignore lint/suspicious/noProto lint/complexity/useLiteralKeys: the test reads the own "__proto__" data key (not the prototype) that the hostile header put in the metadata
    expect(f.metadata["__proto__"]).toBe("x");
  });

  it("large reads (split into pieces) are exact; a file truncated while open gives short_read", async () => {
    const p = join(tmp.dir, "large.safetensors");
    const big = new Uint32Array((20 << 20) / 4 + 3).map((_, i) => i * 2654435761);
    await writeSafetensors(p, [
      { name: "x", dtype: "U8", shape: [5], data: new Uint8Array(5) },
      { name: "big", dtype: "U32", shape: [big.length], data: big },
    ]);
    const f = await openSafetensors(p);
    expect(Buffer.compare(await f.read("big"), new Uint8Array(big.buffer))).toBe(0);
    await truncate(p, 10 << 20);
    const e = await expectCode(f.read("big"), SafetensorsError, "short_read");
    expect(e.file).toBe(p);
    await f.close();
  });

  it("a missing file is a typed error", async () => {
    await expectCode(openSafetensors(join(tmp.dir, "nope.safetensors")), SafetensorsError, "io");
  });
});
