import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

/** mulberry32: small seeded PRNG, uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Seeded standard normal samples (Box-Muller) as float32. */
export function randn(n: number, seed: number): Float32Array {
  const u = mulberry32(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u1 = 1 - u();
    const u2 = u();
    const r = Math.sqrt(-2 * Math.log(u1));
    out[i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

export function f32Bits(x: number): number {
  const b = new Float32Array([x]);
  return new Uint32Array(b.buffer)[0];
}

export function fromBits(bits: number): number {
  return new Float32Array(new Uint32Array([bits]).buffer)[0];
}

export function hexBytes(u: Uint8Array): string {
  return Array.from(u, (b) => b.toString(16).padStart(2, "0")).join(" ");
}

// ---- golden fixtures written by scripts/make_fixtures.py ----
export const FIXTURE_VERSION = 1;
const MAGIC = "QLNF4FX\0";

export interface FixtureArrayRef {
  dtype: "f32" | "u8" | "u16" | "f64";
  offset: number;
  length: number;
}
export interface FixtureCase {
  name: string;
  kind: string;
  arrays: Record<string, FixtureArrayRef>;
  [k: string]: unknown;
}
export interface Fixtures {
  generator: string;
  version: number;
  cases: FixtureCase[];
  get(c: FixtureCase, name: string): Float32Array | Uint8Array | Uint16Array | Float64Array;
}

export function loadFixtures(): Fixtures {
  const path = fileURLToPath(new URL("./fixtures/nf4-golden.bin", import.meta.url));
  const buf = readFileSync(path);
  const regen = "regenerate with: /usr/bin/python3 packages/nf4/scripts/make_fixtures.py";
  if (buf.subarray(0, 8).toString("latin1") !== MAGIC) throw new Error(`${path}: bad magic; ${regen}`);
  const version = buf.readUInt32LE(8);
  if (version !== FIXTURE_VERSION)
    throw new Error(`${path}: fixture version ${version}, expected ${FIXTURE_VERSION}; ${regen}`);
  const hlen = buf.readUInt32LE(12);
  const header = JSON.parse(buf.subarray(16, 16 + hlen).toString("utf8"));
  const data = new Uint8Array(buf.subarray(16 + hlen)); // copy: aligned ArrayBuffer
  const get = (c: FixtureCase, name: string) => {
    const r = c.arrays[name];
    if (r === undefined) throw new Error(`fixture ${c.name}: no array ${name}`);
    const ctor = { f32: Float32Array, u8: Uint8Array, u16: Uint16Array, f64: Float64Array }[r.dtype];
    return new ctor(data.buffer, data.byteOffset + r.offset, r.length);
  };
  return { generator: header.generator, version: header.version, cases: header.cases, get };
}
