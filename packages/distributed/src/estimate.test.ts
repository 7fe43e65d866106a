import { describe, expect, it } from "vitest";
import { commVolume, perRankMemory } from "./index";

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

  it("DDP replicates and adds the buckets; FSDP keeps 1/N of base and optimizer plus one gathered layer", () => {
    expect(perRankMemory(m, 4, "ddp").totalBytes).toBe(8_000 + 500 + 400 * 3 + 800 + 1_000);
    const f = perRankMemory(m, 4, "fsdp");
    // shard + (layer + receive buffer) + replicated + adapter, its gradients, the reduce-scatter buffer + optimizer/4
    expect(f.totalBytes).toBe(2_000 + 2 * 2_000 + 500 + 400 * 3 + 200 + 1_000);
    expect(f.rows.find((r) => r.item.startsWith("optimizer"))?.bytes).toBe(200);
  });

  it("bad arguments name what was expected", () => {
    expect(() => perRankMemory(m, 0, "ddp")).toThrow(/worldSize must be a positive integer, got 0/);
    expect(() => perRankMemory(m, 2, "zero" as "ddp")).toThrow(/strategy must be "ddp" or "fsdp"/);
    expect(() => perRankMemory({ ...m, adapterBytes: -1 }, 2, "ddp")).toThrow(/adapterBytes must be a non-negative/);
  });

  it("commVolume: DDP all-reduces 2(N-1)/N of the gradients; FSDP gathers the base twice per micro-batch", () => {
    const v = { baseWeightBytes: 1_000, adapterBytes: 100, microBatches: 2 };
    expect(commVolume(v, 4, "ddp")).toMatchObject({ allReduceBytes: 150, allGatherBytes: 0, reduceScatterBytes: 0 });
    expect(commVolume(v, 4, "fsdp")).toMatchObject({
      allReduceBytes: 0,
      allGatherBytes: 3_075,
      reduceScatterBytes: 75,
    });
    expect(commVolume(v, 1, "fsdp").allGatherBytes).toBe(0);
    expect(() => commVolume(v, 0, "ddp")).toThrow(/worldSize must be a positive integer, got 0/);
    expect(() => commVolume({ ...v, microBatches: -1 }, 2, "fsdp")).toThrow(/microBatches must be a non-negative/);
  });
});
