import { describe, expect, it } from "vitest";
import { Generator, philox4x32 } from "./random";

const hex = (w: Uint32Array) => [...w].map((v) => v.toString(16).padStart(8, "0")).join(" ");

describe("Philox-4x32-10 known-answer tests (Random123 kat_vectors)", () => {
  it("counter 0, key 0", () => {
    expect(hex(philox4x32([0, 0, 0, 0], [0, 0]))).toBe("6627e8d5 e169c58d bc57ac4c 9b00dbd8");
  });
  it("counter ffffffff×4, key ffffffff×2", () => {
    const f = 0xffffffff;
    expect(hex(philox4x32([f, f, f, f], [f, f]))).toBe("408f276d 41c83b0e a20bc7c6 6d5451fd");
  });
  it("pi digits", () => {
    expect(hex(philox4x32([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]))).toBe(
      "d16cfe09 94fdcceb 5001e420 24126ea1",
    );
  });
});

describe("Generator mapping", () => {
  it("uniform(e) = (word >>> 8)·2^-24 of block floor(e/4) with key (seed lo, seed hi)", () => {
    const seed = 2 ** 32 * 3 + 17;
    const g = new Generator(seed);
    const u = g.uniform(6);
    const w0 = philox4x32([0, 0, 0, 0], [17, 3]);
    const w1 = philox4x32([1, 0, 0, 0], [17, 3]);
    expect([...u]).toEqual([...w0, ...w1.slice(0, 2)].map((w) => (w >>> 8) * 2 ** -24));
    expect(g.offset).toBe(8);
  });
  it("same (seed, offset) gives the same numbers; offsets continue the stream", () => {
    const a = new Generator(42).uniform(12);
    const g = new Generator(42);
    const b1 = g.uniform(5); // advances to offset 8 (block aligned)
    const b2 = g.uniform(4);
    expect([...b1]).toEqual([...a.slice(0, 5)]);
    expect([...b2]).toEqual([...a.slice(8, 12)]);
    expect([...new Generator(42, 8).uniform(4)]).toEqual([...a.slice(8, 12)]);
  });
  it("normals follow Box-Muller on word pairs and have mean≈0, var≈1", () => {
    const w = philox4x32([0, 0, 0, 0], [7, 0]);
    const z = new Generator(7).normal(2);
    const u1 = ((w[0] >>> 8) + 1) * 2 ** -24;
    const u2 = (w[1] >>> 8) * 2 ** -24;
    expect(z[0]).toBeCloseTo(Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2), 6);
    expect(z[1]).toBeCloseTo(Math.sqrt(-2 * Math.log(u1)) * Math.sin(2 * Math.PI * u2), 6);
    const big = new Generator(1).normal(20000);
    const mean = big.reduce((a, b) => a + b, 0) / big.length;
    const v = big.reduce((a, b) => a + (b - mean) ** 2, 0) / big.length;
    expect(Math.abs(mean)).toBeLessThan(0.03);
    expect(Math.abs(v - 1)).toBeLessThan(0.05);
    const u = new Generator(1).uniform(20000);
    expect(Math.min(...u)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...u)).toBeLessThan(1);
  });
});

describe("the unrolled stream equals philox4x32 block by block", () => {
  /** The readable reference: one philox4x32 call per block, as the module comment defines the stream. */
  const reference = (seed: number, offset: number, n: number) => {
    const key = [seed % 2 ** 32, Math.floor(seed / 2 ** 32)];
    const out: number[] = [];
    for (let b = Math.floor(offset / 4); out.length < n; b++)
      out.push(...philox4x32([b % 2 ** 32, Math.floor(b / 2 ** 32), 0, 0], key));
    return out.slice(0, n);
  };
  it("for large seeds, odd lengths and a counter that carries into its high word", () => {
    const cases: [number, number, number][] = [
      [0, 0, 1],
      [42, 0, 4097],
      [2 ** 53 - 1, 12, 33],
      [7, 4 * (2 ** 32 - 3), 29], // blocks 2^32 − 3 … 2^32 + 4: the low counter word wraps
      [0xdeadbeef, 4 * 1e9, 10],
    ];
    for (const [seed, offset, n] of cases) {
      const u = new Generator(seed, offset).uniform(n);
      expect([...u], `seed ${seed} offset ${offset}`).toEqual(
        reference(seed, offset, n).map((w) => (w >>> 8) * 2 ** -24),
      );
      const z = new Generator(seed, offset).normal(n);
      const w = reference(seed, offset, n + 1);
      for (let i = 0; i + 1 < n; i += 2) {
        const r = Math.sqrt(-2 * Math.log(((w[i] >>> 8) + 1) * 2 ** -24));
        expect(z[i]).toBe(Math.fround(r * Math.cos(2 * Math.PI * (w[i + 1] >>> 8) * 2 ** -24)));
        expect(z[i + 1]).toBe(Math.fround(r * Math.sin(2 * Math.PI * (w[i + 1] >>> 8) * 2 ** -24)));
      }
    }
  });
});
