import { describe, expect, it } from "vitest";
import { type CommArray, DistributedError, LocalCommunicator } from "./index";

describe("Communicator argument checks (LocalCommunicator: a world of one)", () => {
  const comm = new LocalCommunicator();
  it("data must be f32/f64/i32 typed arrays; the message names the call and what was given", () => {
    const bad = new Uint8Array(4) as unknown as CommArray;
    expect(() => comm.allReduce(bad, "sum")).toThrow(DistributedError);
    expect(() => comm.allReduce(bad, "sum")).toThrow(
      /allReduce: data must be a Float32Array, Float64Array or Int32Array, got \[object Uint8Array\]/,
    );
    expect(() => comm.allGather([1, 2] as unknown as CommArray)).toThrow(/allGather: data must be/);
    expect(() => comm.allGatherBlocking([1, 2] as unknown as CommArray)).toThrow(/allGatherBlocking: data must be/);
  });
  it("reduce ops are checked, and avg needs floats", () => {
    expect(() => comm.allReduce(new Float32Array(2), "prod" as "sum")).toThrow(
      /op must be "sum", "avg", "max" or "min", got prod/,
    );
    expect(() => comm.reduceScatter(new Int32Array(2), "avg")).toThrow(/op "avg" needs a float array/);
  });
  it("broadcast's root must be a rank", () => {
    expect(() => comm.broadcast(new Float64Array(1), 1)).toThrow(/root must be a rank in \[0, 1\), got 1/);
  });
  it("a world of one: collectives are identities", async () => {
    const x = Float32Array.of(1, 2, 3);
    await comm.allReduce(x, "avg").done;
    expect([...x]).toEqual([1, 2, 3]);
    expect([...comm.allGatherBlocking(Int32Array.of(6, 7))]).toEqual([6, 7]);
    expect([...(await comm.allGather(Int32Array.of(4, 5)).done)]).toEqual([4, 5]);
    expect([...(await comm.reduceScatter(Float64Array.of(6), "max").done)]).toEqual([6]);
  });
});
