import { describe, expect, it } from "vitest";
import { perRankMemory } from "./index";

const m = {
  baseWeightBytes: 8_000,
  replicatedBytes: 500,
  adapterBytes: 400,
  optimizerBytes: 800,
  activationBytes: 1_000,
  layers: 4,
};

describe("perRankMemory", () => {
  it("world size 1: DDP and FSDP are the one-process figure (no buckets, nothing gathered)", () => {
    const one = 8_000 + 500 + 400 + 400 + 800 + 1_000;
    expect(perRankMemory(m, 1, "ddp").totalBytes).toBe(one);
    expect(perRankMemory(m, 1, "fsdp").totalBytes).toBe(one);
  });

  it("DDP replicates and adds the buckets; FSDP keeps 1/N plus one gathered layer", () => {
    expect(perRankMemory(m, 4, "ddp").totalBytes).toBe(8_000 + 500 + 400 * 3 + 800 + 1_000);
    const f = perRankMemory(m, 4, "fsdp");
    expect(f.totalBytes).toBe(2_000 + 2_000 + 500 + 100 + 100 + 100 + 200 + 1_000);
    expect(f.rows.find((r) => r.item.startsWith("optimizer"))?.bytes).toBe(200);
  });

  it("bad arguments name what was expected", () => {
    expect(() => perRankMemory(m, 0, "ddp")).toThrow(/worldSize must be a positive integer, got 0/);
    expect(() => perRankMemory(m, 2, "zero" as "ddp")).toThrow(/strategy must be "ddp" or "fsdp"/);
    expect(() => perRankMemory({ ...m, adapterBytes: -1 }, 2, "ddp")).toThrow(/adapterBytes must be a non-negative/);
  });
});
