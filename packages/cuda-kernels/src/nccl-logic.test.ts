// The NCCL communicator's own logic (src/nccl.ts), without a GPU: the addon is replaced by a simulated world of two
// ranks (this rank + a peer whose data is twice ours), so what runs is the real class — output sizing, "avg" on the
// host, argument checks, polling until completion, several calls in flight, timeouts that abort the communicator and
// fail every pending call, asynchronous NCCL errors, close semantics.
import { describe, expect, it } from "vitest";
import { CudaKernelsError } from "./errors";
import { NcclCommunicator } from "./nccl";
import type { NativeCuda } from "./native";

type Arr = Float32Array | Float64Array | Int32Array;
interface Slot {
  kind: number;
  op: number;
  root: number;
  input: number[];
  polls: number;
}

/** A fake addon: collectives complete after `pollsToComplete` ncclTest calls (never when Infinity). */
function fakeNative(pollsToComplete: number, rank = 0) {
  const slots = new Map<number, Slot>();
  const calls = { abort: 0, destroy: 0, starts: [] as Slot[] };
  let next = 1;
  let failWith: string | undefined;
  const native = {
    ncclStart(_comm: number, kind: number, op: number, root: number, input: Arr) {
      const s = { kind, op, root, input: Array.from(input), polls: 0 };
      calls.starts.push(s);
      slots.set(next, s);
      return next++;
    },
    ncclTest(slot: number) {
      const s = slots.get(slot);
      if (!s) throw new RangeError(`nccl: unknown or finished collective slot ${slot}`);
      if (failWith) throw new Error(failWith);
      return ++s.polls >= pollsToComplete;
    },
    ncclFinish(slot: number, out: Arr) {
      const s = slots.get(slot)!;
      slots.delete(slot);
      const mine = s.input;
      const peer = mine.map((v) => 2 * v);
      const reduce = (a: number, b: number) => (s.op === 2 ? Math.max(a, b) : s.op === 3 ? Math.min(a, b) : a + b);
      let result: number[];
      if (s.kind === 0) result = mine.map((v, i) => reduce(v, peer[i]));
      else if (s.kind === 1) result = rank === 0 ? [...mine, ...peer] : [...peer, ...mine];
      else if (s.kind === 2) {
        const all = mine.map((v, i) => reduce(v, peer[i]));
        const n = all.length / 2;
        result = all.slice(rank * n, rank * n + n);
      } else result = s.root === rank ? mine : peer;
      if (out.length !== result.length) throw new RangeError("ncclFinish: size mismatch");
      out.set(result);
    },
    ncclAbort() {
      calls.abort++;
      slots.clear();
    },
    ncclDestroy() {
      calls.destroy++;
    },
  };
  const comm = new NcclCommunicator(native as unknown as NativeCuda, 1, rank, 2, 200, "fake", 22703);
  return { comm, calls, fail: (m: string) => (failWith = m) };
}

describe("NcclCommunicator logic over a simulated world of two", () => {
  it("each collective: sizes, in-place results, avg on the host, ops passed through", async () => {
    const { comm, calls } = fakeNative(3);
    const x = Float32Array.of(1, 2, 3);
    await comm.allReduce(x, "sum").done;
    expect(Array.from(x)).toEqual([3, 6, 9]);
    const a = Float64Array.of(1, -4);
    await comm.allReduce(a, "avg").done;
    expect(Array.from(a)).toEqual([1.5, -6]);
    const m = Int32Array.of(5, -5);
    await comm.allReduce(m, "max").done;
    expect(Array.from(m)).toEqual([10, -5]);
    expect(Array.from(await comm.allGather(Int32Array.of(7, 8)).done)).toEqual([7, 8, 14, 16]);
    const rs = await comm.reduceScatter(Float32Array.of(1, 2, 3, 4), "avg").done;
    expect(rs).toBeInstanceOf(Float32Array);
    expect(Array.from(rs)).toEqual([1.5, 3]);
    const b = Float32Array.of(4, 5);
    await comm.broadcast(b, 1).done;
    expect(Array.from(b)).toEqual([8, 10]);
    await comm.barrier().done;
    const last = calls.starts.at(-1)!;
    expect([last.kind, last.input]).toEqual([0, [0]]); // barrier: a one-element all-reduce
    expect(calls.starts.map((s) => s.op)).toEqual([0, 0, 2, 0, 0, 0, 0]); // sum, avg→sum, max, -, avg→sum, -, sum
    await comm.close();
    expect(calls.destroy).toBe(1);
  });

  it("several in flight complete independently; close refuses while any is pending", async () => {
    const { comm } = fakeNative(5);
    const xs = [0, 1, 2, 3].map((k) => Float32Array.of(k));
    const hs = xs.map((x) => comm.allReduce(x, "sum"));
    await expect(comm.close()).rejects.toThrow(
      /4 collectives still pending \(allReduce, allReduce, allReduce, allReduce\)/,
    );
    await Promise.all(hs.map((h) => h.done));
    expect(xs.map((x) => x[0])).toEqual([0, 3, 6, 9]);
    await comm.close();
    expect(() => comm.allReduce(Float32Array.of(1), "sum")).toThrow(/the communicator is closed/);
  });

  it("a peer that never arrives: TIMEOUT after timeoutMs, ncclCommAbort once, every pending call fails, then unusable", async () => {
    const { comm, calls } = fakeNative(Number.POSITIVE_INFINITY, 1);
    const started = Date.now();
    const h1 = comm.allReduce(Float32Array.of(1), "sum").done.catch((e: unknown) => e);
    const h2 = comm.allGather(Float32Array.of(1)).done.catch((e: unknown) => e);
    const [e1, e2] = await Promise.all([h1, h2]);
    expect(Date.now() - started).toBeGreaterThanOrEqual(190);
    for (const e of [e1, e2]) {
      expect(e).toBeInstanceOf(CudaKernelsError);
      expect((e as CudaKernelsError).code).toBe("TIMEOUT");
    }
    expect((e1 as Error).message).toMatch(/allReduce on rank 1 of 2: peers did not arrive within 200 ms.*aborted/);
    expect(calls.abort).toBe(1);
    expect(() => comm.barrier()).toThrow(/aborted \(after a timeout or an NCCL error\)/);
    await comm.close(); // nothing pending: closes without ncclCommDestroy (the communicator was aborted)
    expect(calls.destroy).toBe(0);
  });

  it("an asynchronous NCCL error fails the call with NCCL_ERROR and aborts", async () => {
    const { comm, calls, fail } = fakeNative(Number.POSITIVE_INFINITY);
    fail(
      "collective (asynchronous NCCL error) failed: NCCL error 6 (remote process exited or there was a network error)",
    );
    const e = await comm.broadcast(Float64Array.of(1), 0).done.catch((x: unknown) => x);
    expect((e as CudaKernelsError).code).toBe("NCCL_ERROR");
    expect((e as Error).message).toMatch(/nccl.broadcast on rank 0: .*NCCL error 6/);
    expect(calls.abort).toBe(1);
  });

  it("bad arguments are BAD_ARGUMENT naming the call and argument", () => {
    const { comm } = fakeNative(1);
    const bad: [() => unknown, RegExp][] = [
      [
        () => comm.allReduce([1, 2] as unknown as Float32Array, "sum"),
        /allReduce: data must be a Float32Array, Float64Array or Int32Array, got \[object Array\]/,
      ],
      [
        () => comm.allReduce(Float32Array.of(1), "prod" as "sum"),
        /allReduce: op must be "sum", "avg", "max" or "min", got prod/,
      ],
      [() => comm.reduceScatter(Int32Array.of(1, 2), "avg"), /reduceScatter: op "avg" needs a float array/],
      [() => comm.reduceScatter(Float32Array.of(1, 2, 3), "sum"), /data.length 3 is not divisible by the world size 2/],
      [() => comm.broadcast(Float32Array.of(1), 2), /broadcast: root must be a rank in \[0, 2\), got 2/],
      [() => comm.allGather(new Uint8Array(2) as unknown as Int32Array), /allGather: data must be/],
    ];
    for (const [call, message] of bad) {
      let caught: unknown;
      try {
        call();
      } catch (e) {
        caught = e;
      }
      expect(caught).toBeInstanceOf(CudaKernelsError);
      expect((caught as CudaKernelsError).code).toBe("BAD_ARGUMENT");
      expect((caught as Error).message).toMatch(message);
    }
  });
});
