// The native 4-bit quantizer (csrc/quantize_nf4.cc, Backend.quantize4bit of the cpu backend) against
// @qlora/nf4's quantize4bit + doubleQuantize, the TypeScript codec that is byte-exact with bitsandbytes:
// packed codes, absmax, nested absmax, offset must be identical bytes on every ISA path, for odd sizes,
// every input dtype, and the edge values where a rounding slip would show (exact thresholds and their
// neighbouring floats, midpoints between NF4 levels, zeros, ±absmax, NaN, ±Inf, subnormals).
import fc from "fast-check";
import { f32ToBf16, f32ToF16, type QuantState4bit, quantize4bit, type QuantType } from "@qlora/nf4";
import { type HostBuffer, type QuantizedWeightBuffers, referenceBackend, TensorError } from "@qlora/tensor";
import { describe, expect, it } from "vitest";
import { cpuBackend } from "../src/backend";
import { loadNative } from "../src/load";
import { createQuantizeOp, quantizeNative } from "../src/quantize";
import { getThreads, setThreads } from "../src/threads";

const maybeNat = quantizeNative(loadNative());
if (!maybeNat) throw new Error("the loaded cpu-kernels addon has no quantize4bit: rebuild it (build:native)");
const nat = maybeNat;
const hasAvx2 = (loadNative() as unknown as { isaInfo(): { avx2: boolean } }).isaInfo().avx2;
const paths = { scalar: createQuantizeOp(nat, referenceBackend, 0), auto: createQuantizeOp(nat, referenceBackend, -1) };
const avx2 = hasAvx2 ? createQuantizeOp(nat, referenceBackend, 1) : undefined;

type InDtype = "f32" | "bf16" | "f16";
const NF4_DTYPE = { f32: "float32", bf16: "bfloat16", f16: "float16" } as const;

function bytesOf(b: unknown): Uint8Array {
  const d = (b as HostBuffer).data;
  return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
}
function f32Bytes(x: Float32Array): Uint8Array {
  return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
}

/** Asserts the native buffers hold exactly the bytes of nf4's state. */
function expectSame(got: QuantizedWeightBuffers, want: QuantState4bit, what: string): void {
  expect(bytesOf(got.codes), `${what}: packed codes`).toEqual(want.packed);
  const a = want.absmax;
  if (a instanceof Float32Array) {
    expect(got.absmax.kind).toBe("f32");
    if (got.absmax.kind === "f32") expect(bytesOf(got.absmax.values), `${what}: absmax`).toEqual(f32Bytes(a));
    return;
  }
  expect(got.absmax.kind).toBe("nested");
  if (got.absmax.kind !== "nested") return;
  expect(bytesOf(got.absmax.qabsmax), `${what}: qabsmax`).toEqual(a.qabsmax);
  expect(bytesOf(got.absmax.nestedAbsmax), `${what}: nested absmax`).toEqual(f32Bytes(a.nestedAbsmax));
  expect(bytesOf(got.absmax.code), `${what}: nested code`).toEqual(f32Bytes(a.code));
  expect(Object.is(Math.fround(got.absmax.offset), Math.fround(a.offset)), `${what}: offset`).toBe(true);
  expect(got.absmax.nestedBlocksize).toBe(a.nestedBlocksize);
}

function free(w: QuantizedWeightBuffers): void {
  referenceBackend.free(w.codes);
  if (w.absmax.kind === "f32") referenceBackend.free(w.absmax.values);
  else for (const b of [w.absmax.qabsmax, w.absmax.code, w.absmax.nestedAbsmax]) referenceBackend.free(b);
}

interface Case {
  quantType: QuantType;
  blocksize: number;
  doubleQuant: boolean;
  dtype: InDtype;
}

/** Quantizes `values` (f32, converted to the case's dtype) on every runnable path and compares with nf4. */
function check(values: Float32Array, c: Case, shape: [number, number] = [1, values.length]): void {
  const input = c.dtype === "f32" ? values : c.dtype === "bf16" ? f32ToBf16(values) : f32ToF16(values);
  const want = quantize4bit(input, {
    quantType: c.quantType,
    blocksize: c.blocksize,
    doubleQuant: c.doubleQuant,
    shape,
    dtype: NF4_DTYPE[c.dtype],
  });
  const options = { ...c, shape };
  for (const [name, op] of Object.entries({ ...paths, ...(avx2 ? { avx2 } : {}) })) {
    const got = op(input, options);
    expectSame(got, want, `${name} ${JSON.stringify(c)} n=${values.length}`);
    free(got);
  }
}

/** xorshift32 uniform in (-scale, scale). */
function random(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = ((s >>> 0) / 2 ** 32 - 0.5) * 2 * scale;
  }
  return out;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
/** The float32 `steps` ulps away from x (towards +Inf for steps > 0 on positives). */
function ulps(x: number, steps: number): number {
  f32[0] = x;
  u32[0] += steps * (x < 0 ? -1 : 1);
  return f32[0];
}

// bitsandbytes' decision literals (nf4 tables.ts) and the NF4 levels.
const NF4_THRESHOLDS = [
  0xbf591cd8, 0xbf1c5270, 0xbeeb8480, 0xbeadea76, 0xbe703cec, 0xbe0d38bc, 0xbd3a7871, 0x3d22faff, 0x3df64862,
  0x3e5067e0, 0x3e9582d4, 0x3ec753f9, 0x3f006d04, 0x3f248daf, 0x3f5c89da,
].map((b) => new Float32Array(new Uint32Array([b]).buffer)[0]);
const FP4_THRESHOLDS = [0x3b2aaab9, 0x3db00000, 0x3e555555, 0x3e955555, 0x3ed55556, 0x3f155550, 0x3f555555].map(
  (b) => new Float32Array(new Uint32Array([b]).buffer)[0],
);
const NF4_LEVELS = [
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
  -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
  0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
];

/**
 * Blocks of 64 built so that the scaled values x·r land on and next to every decision threshold: each block
 * holds its absmax m (so r = fl32(1/m)), then fl32(T·m) ± 0..2 ulps for every threshold T (both signs for
 * FP4), exact midpoints between neighbouring NF4 levels, zeros and -0.
 */
function edgeValues(quantType: QuantType, absmaxes: number[]): Float32Array {
  const out: number[] = [];
  const thresholds = quantType === "nf4" ? NF4_THRESHOLDS : [...FP4_THRESHOLDS, ...FP4_THRESHOLDS.map((t) => -t)];
  const mids = NF4_LEVELS.slice(1).map((v, i) => Math.fround((v + NF4_LEVELS[i]) / 2));
  for (const m of absmaxes) {
    const cand: number[] = [];
    for (const t of [...thresholds, ...mids]) {
      const x = Math.fround(t * m);
      for (let d = -2; d <= 2; d++) cand.push(ulps(x, d));
    }
    cand.push(0, -0, m, -m);
    for (let i = 0; i < cand.length; i += 62) {
      const chunk = cand.slice(i, i + 62);
      while (chunk.length < 62) chunk.push(0);
      out.push(m, ...chunk, i % 2 === 0 ? -m : 0); // ±absmax in every block: r is exactly fl32(1/m)
    }
  }
  return Float32Array.from(out);
}

const ALL_CASES: Case[] = [];
for (const quantType of ["nf4", "fp4"] as const)
  for (const dtype of ["f32", "bf16", "f16"] as const)
    for (const doubleQuant of [false, true]) ALL_CASES.push({ quantType, blocksize: 64, doubleQuant, dtype });

describe("native quantize4bit = @qlora/nf4 quantize4bit, byte for byte", () => {
  it.skipIf(!hasAvx2)(
    hasAvx2 ? "runs the AVX2 path (forced) besides scalar and auto" : "AVX2 path skipped: this CPU lacks AVX2",
    () => expect(avx2).toBeDefined(),
  );

  it("odd sizes, every blocksize, NF4/FP4, f32/bf16/f16, with and without double quant", () => {
    const sizes = [1, 3, 63, 64, 65, 1001, 64 * 40 + 17];
    for (const c of ALL_CASES) for (const n of sizes) check(random(n, n * 7 + 1, 0.05), c);
    for (const blocksize of [32, 128, 256, 1024, 4096])
      for (const quantType of ["nf4", "fp4"] as const)
        for (const n of [blocksize - 1, blocksize * 3 + 5])
          check(random(n, blocksize + n, 3), { quantType, blocksize, doubleQuant: true, dtype: "bf16" });
  });

  it("a 2-D weight [n, k] with k not a multiple of the blocksize (blocks straddle rows)", () => {
    check(random(37 * 100, 5), { quantType: "nf4", blocksize: 64, doubleQuant: true, dtype: "f32" }, [37, 100]);
  });

  it("values exactly on, and one or two ulps around, every decision threshold and NF4 midpoint", () => {
    // absmax 1 (r = 1: the products are the values), and absmaxes whose reciprocal rounds
    const absmaxes = [1, 3, 0.05, 7.123456789, 1e-20, 1e30, 2 ** -126, 0.3];
    for (const quantType of ["nf4", "fp4"] as const)
      for (const doubleQuant of [false, true])
        check(edgeValues(quantType, absmaxes), { quantType, blocksize: 64, doubleQuant, dtype: "f32" });
  });

  it("NaN, ±Inf, zero blocks, subnormal and ±FLT_MAX absmax, all-NaN full and partial blocks", () => {
    const blocks: number[][] = [];
    const block = (f: (i: number) => number) => blocks.push(Array.from({ length: 64 }, (_, i) => f(i)));
    block(() => 0); // all-zero block: r = +Inf
    block((i) => (i % 2 ? -0 : 0));
    block(() => Number.NaN); // all-NaN full block: absmax -FLT_MAX
    block((i) => (i === 5 ? Number.NaN : (i - 32) / 40)); // NaN ignored by absmax, code 0
    block((i) => (i === 9 ? Number.POSITIVE_INFINITY : i / 64)); // Inf absmax: r = 0
    block((i) => (i === 9 ? Number.NEGATIVE_INFINITY : -i / 64));
    block((i) => (i % 3 ? 1e-45 * i : -1e-44)); // subnormal absmax: r overflows to Inf
    block((i) => (i % 2 ? 3.4028234663852886e38 : -3.4028234663852886e38 * (i / 64))); // ±FLT_MAX
    block((i) => (i % 7 === 0 ? Number.NaN : 1e-39 * i)); // subnormal values with NaN
    const flat = Float32Array.from(blocks.flat());
    for (const quantType of ["nf4", "fp4"] as const)
      for (const doubleQuant of [false, true]) {
        check(flat, { quantType, blocksize: 64, doubleQuant, dtype: "f32" });
        // an all-NaN partial last block (absmax 0, not -FLT_MAX) and an odd length
        check(Float32Array.from([...flat, Number.NaN, Number.NaN, Number.NaN]), {
          quantType,
          blocksize: 64,
          doubleQuant,
          dtype: "f32",
        });
      }
    // the same specials through bf16 and f16 (f16: overflow to ±Inf, subnormals, NaN)
    for (const dtype of ["bf16", "f16"] as const)
      check(flat, { quantType: "nf4", blocksize: 64, doubleQuant: true, dtype });
  });

  it("random lengths, scales and sparse specials (fast-check)", () => {
    const special = fc.constantFrom(0, -0, Number.NaN, Number.POSITIVE_INFINITY, 1e-40, -1, 1);
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 700 }),
        fc.integer({ min: 1, max: 2 ** 31 }),
        fc.double({ min: 1e-6, max: 1e6, noNaN: true }),
        fc.array(fc.tuple(fc.nat(), special), { maxLength: 6 }),
        fc.constantFrom<QuantType>("nf4", "fp4"),
        fc.constantFrom<InDtype>("f32", "bf16", "f16"),
        fc.constantFrom(32, 64, 128),
        (n, seed, scale, specials, quantType, dtype, blocksize) => {
          const v = random(n, seed, scale);
          for (const [i, x] of specials) v[i % n] = x;
          check(v, { quantType, blocksize, doubleQuant: true, dtype });
        },
      ),
      { numRuns: 60 },
    );
  });

  it("the result does not depend on the thread count", () => {
    const v = f32ToBf16(random(64 * 1024 + 33, 99, 0.1));
    const before = getThreads();
    const run = (t: number) => {
      setThreads(t);
      const w = paths.auto(v, {
        quantType: "nf4",
        blocksize: 64,
        doubleQuant: true,
        dtype: "bf16",
        shape: [1, v.length],
      });
      const out = [bytesOf(w.codes).slice(), w.absmax.kind === "nested" ? bytesOf(w.absmax.qabsmax).slice() : null];
      free(w);
      return out;
    };
    try {
      expect(run(3)).toEqual(run(1));
    } finally {
      setThreads(before);
    }
  });

  it("reads input that lives on a SharedArrayBuffer (the model loader's read buffers)", () => {
    const values = f32ToBf16(random(64 * 33 + 3, 11, 0.2));
    const shared = new Uint16Array(new SharedArrayBuffer(values.byteLength));
    shared.set(values);
    const options = {
      quantType: "nf4",
      blocksize: 64,
      doubleQuant: true,
      dtype: "bf16",
      shape: [1, values.length],
    } as const;
    const want = quantize4bit(values, { ...options, shape: [1, values.length], dtype: "bfloat16" });
    const got = paths.auto(shared, options);
    expectSame(got, want, "shared input");
    free(got);
  });

  it("is the cpu backend's quantize4bit, with buffers counted by the shared allocator", () => {
    expect(typeof cpuBackend.quantize4bit).toBe("function");
    const before = cpuBackend.memoryStats().currentBytes;
    const v = random(4096, 3);
    const w = cpuBackend.quantize4bit!(v, {
      quantType: "nf4",
      blocksize: 64,
      doubleQuant: true,
      dtype: "f32",
      shape: [64, 64],
    });
    // codes 2048 B + qabsmax 64 B + nested absmax 4 B + code map 1024 B (the f32 absmax was freed)
    expect(cpuBackend.memoryStats().currentBytes - before).toBe(2048 + 64 + 4 + 1024);
    free(w);
    expect(cpuBackend.memoryStats().currentBytes).toBe(before);
  });

  it("bad arguments are TensorErrors naming the argument; the raw binding throws RangeError/TypeError", () => {
    const q = cpuBackend.quantize4bit!;
    const o = { quantType: "nf4", blocksize: 64, doubleQuant: false, dtype: "f32", shape: [2, 2] } as const;
    const bad = (input: unknown, patch: object, re: RegExp) => {
      expect(() => q(input as Float32Array, { ...o, ...patch } as typeof o)).toThrowError(TensorError);
      expect(() => q(input as Float32Array, { ...o, ...patch } as typeof o)).toThrowError(re);
    };
    bad(new Float32Array(4), { blocksize: 48 }, /options\.blocksize/);
    bad(new Float32Array(4), { quantType: "int4" }, /options\.quantType/);
    bad(new Float32Array(4), { dtype: "bf16" }, /input must be a Uint16Array/);
    bad(new Uint16Array(4), { dtype: "f32" }, /input must be a Float32Array/);
    bad(new Float32Array(5), {}, /options\.shape \[2, 2\] holds 4 elements, the input has 5/);
    bad(new Float32Array(4), { shape: [4] }, /options\.shape/);
    bad(new Float32Array(4), { doubleQuant: 1 }, /options\.doubleQuant/);
    expect(() => nat.quantize4bit(new Float32Array(8), 0, 0, 64, new Uint8Array(3), new Float32Array(1))).toThrowError(
      /quantize4bit: argument packed must be at least 4 elements/,
    );
    expect(() => nat.quantize4bit(new Float32Array(8), 0, 0, 48, new Uint8Array(4), new Float32Array(1))).toThrowError(
      RangeError,
    );
    expect(() => nat.quantize4bit(new Uint16Array(8), 0, 0, 64, new Uint8Array(4), new Float32Array(1))).toThrowError(
      /argument input must be/,
    );
  });
});
