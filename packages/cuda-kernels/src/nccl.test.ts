// The NCCL communicator (src/nccl.ts). Without a GPU or NCCL: a missing libnccl is a typed error naming the library
// and what to install, bad arguments are typed errors naming the argument, and the addon's NCCL entries check their
// arguments. With a GPU and libnccl (GPU bundle, scripts/gpu-check.sh): every collective in a world of one on odd
// sizes and all three dtypes, several in flight, close semantics; with several GPUs, one rank per GPU (vitest only).
// NCCL cannot run 2 ranks on one GPU, so a one-GPU machine runs the world-of-one tests only.
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { cudaDeviceStatus } from "./device";
import { CudaKernelsError } from "./errors";
import { createNcclCommunicator, ncclAvailability } from "./nccl";
import { tryLoadNative } from "./native";

const status = cudaDeviceStatus();
const nccl = ncclAvailability();
const gpus = status.available ? (status.device?.count ?? 1) : 0;
const bundled = process.env.QLORA_GPU_BUNDLE === "1";
const gpuSkip = !status.available
  ? `no CUDA device: ${status.reason}`
  : !nccl.ok
    ? `NCCL not loadable: ${nccl.reason}`
    : "";
const missing = "/nonexistent/libnccl.so.2";

async function rejection(p: Promise<unknown>): Promise<CudaKernelsError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(CudaKernelsError);
  return e as CudaKernelsError;
}

describe("NCCL communicator: loading and arguments (no GPU needed)", () => {
  it("a missing libnccl is NCCL_UNAVAILABLE naming the library, the loader's reason and what to install", async () => {
    const e = await rejection(createNcclCommunicator({ library: missing, worldSize: 1 }));
    expect(e.code).toBe("NCCL_UNAVAILABLE");
    expect(e.message).toContain(`tried ${missing}`);
    if (status.addonLoaded) {
      expect(e.message).toContain("No such file or directory");
      expect(e.message).toContain("install NCCL");
      expect(e.message).toContain("QLORA_NCCL_LIBRARY");
    } else expect(e.message).toContain("the native addon is not built");
    const a = ncclAvailability(missing);
    expect(a.ok).toBe(false);
    expect(a.reason).toBe(e.message);
  });

  it("QLORA_NCCL_LIBRARY names the default library", () => {
    const saved = process.env.QLORA_NCCL_LIBRARY;
    process.env.QLORA_NCCL_LIBRARY = "/elsewhere/libnccl.so.2";
    try {
      const a = ncclAvailability();
      expect(a.ok).toBe(false);
      expect(a.reason).toContain("tried /elsewhere/libnccl.so.2");
    } finally {
      if (saved === undefined) delete process.env.QLORA_NCCL_LIBRARY;
      else process.env.QLORA_NCCL_LIBRARY = saved;
    }
  });

  it.skipIf(nccl.ok)("the default names (libnccl.so.2, libnccl.so) are both tried here, and neither loads", () => {
    expect(nccl.reason).toContain("tried libnccl.so.2, libnccl.so");
  });

  it("bad arguments are BAD_ARGUMENT naming the argument, before anything loads", async () => {
    const cases: [Parameters<typeof createNcclCommunicator>[0], RegExp][] = [
      [{ rank: 2, worldSize: 2 }, /rank must be an integer in \[0, 2\), got 2/],
      [{ rank: 0, worldSize: 0 }, /worldSize must be a positive integer, got 0/],
      [{ worldSize: 1, timeoutMs: -5 }, /timeoutMs must be a positive number of milliseconds, got -5/],
      [{ worldSize: 1, rank: 0, device: -1 }, /device must be a non-negative integer, got -1/],
      [{ worldSize: 1, library: "" }, /library must be a non-empty name or path/],
      [{ worldSize: 1, library: [] }, /library must be a non-empty name or path/],
    ];
    for (const [options, message] of cases) {
      const e = await rejection(createNcclCommunicator(options));
      expect(e.code, JSON.stringify(options)).toBe("BAD_ARGUMENT");
      expect(e.message).toMatch(message);
    }
  });

  it.skipIf(!status.addonLoaded)("the addon's NCCL entries check their arguments and handles", () => {
    const n = tryLoadNative().native! as unknown as Record<string, (...a: unknown[]) => unknown>;
    for (const fn of [
      "ncclLoad",
      "ncclUniqueId",
      "ncclInitRank",
      "ncclStart",
      "ncclTest",
      "ncclFinish",
      "ncclAbort",
      "ncclDestroy",
    ])
      expect(typeof n[fn], fn).toBe("function");
    expect(() => n.ncclLoad("libnccl.so.2")).toThrow(/names must be an array/);
    expect(() => n.ncclLoad([])).toThrow(/at least one library name/);
    expect(() => n.ncclLoad([3])).toThrow(/must be a string/);
    expect(() => n.ncclStart(99, 0, 0, 0, new Float32Array(4))).toThrow(/unknown or destroyed communicator handle 99/);
    expect(() => n.ncclTest(77)).toThrow(/unknown or finished collective slot 77/);
    expect(() => n.ncclFinish(77, new Float32Array(1))).toThrow(/unknown or finished collective slot 77/);
    expect(() => n.ncclAbort(5)).toThrow(/unknown communicator handle 5/);
    expect(() => n.ncclDestroy(5)).toThrow(/unknown or destroyed communicator handle 5/);
    expect(() => n.ncclInitRank(new Float32Array(32), 2, 0, 0)).toThrow(/id must be a Uint8Array/);
    expect(() => n.ncclInitRank(new Uint8Array(5), 2, 0, 0)).toThrow(/id must have 128 bytes, got 5/);
    expect(() => n.ncclInitRank(new Uint8Array(128), 2, 2, 0)).toThrow(/rank: expected an integer in \[0, 1\]/);
    if (!nccl.ok) {
      expect(() => n.ncclUniqueId()).toThrow(/NCCL is not loaded/);
      expect(() => n.ncclInitRank(new Uint8Array(128), 2, 0, 0)).toThrow(/NCCL is not loaded/);
    }
  });
});

describe.skipIf(gpuSkip !== "")(`NCCL on the GPU, a world of one${gpuSkip ? ` (skipped: ${gpuSkip})` : ""}`, () => {
  const kinds = [Float32Array, Float64Array, Int32Array] as const;
  const make = (C: (typeof kinds)[number], n: number) => {
    const a = new C(n);
    for (let i = 0; i < n; i++) a[i] = C === Int32Array ? (i % 19) - 9 : Math.cos(i * 0.3) * 2.5;
    return a;
  };

  it("every collective equals its definition (odd sizes, f32/f64/i32), several in flight, close", async () => {
    const comm = await createNcclCommunicator({ rank: 0, worldSize: 1, timeoutMs: 30_000 });
    expect([comm.rank, comm.worldSize]).toEqual([0, 1]);
    expect(comm.ncclVersion).toBeGreaterThan(0);
    for (const C of kinds) {
      for (const n of [1, 7, 1001, 65537]) {
        const x = make(C, n);
        const handles = [
          comm.allReduce(x, "sum"),
          comm.allGather(make(C, n)),
          comm.reduceScatter(make(C, n), "max"),
          comm.broadcast(make(C, n), 0),
        ];
        const [, gathered, scattered] = (await Promise.all(handles.map((h) => h.done))) as unknown[];
        expect(Array.from(x)).toEqual(Array.from(make(C, n)));
        expect(Array.from(gathered as ArrayLike<number>)).toEqual(Array.from(make(C, n)));
        expect(Array.from(scattered as ArrayLike<number>)).toEqual(Array.from(make(C, n)));
        if (C !== Int32Array) {
          const a = make(C, n);
          await comm.allReduce(a, "avg").done;
          expect(Array.from(a)).toEqual(Array.from(make(C, n)));
        }
      }
    }
    await comm.barrier().done;
    const pending = comm.allReduce(new Float32Array(3), "sum");
    await expect(comm.close()).rejects.toThrow(/still pending \(allReduce\)/);
    await pending.done;
    await comm.close();
    expect(() => comm.barrier()).toThrow(/the communicator is closed/);
    expect(() => comm.allReduce(new Int32Array(2), "avg")).toThrow(/"avg" needs a float array/);
  });

  const multi =
    gpus < 2
      ? `needs 2+ GPUs, this machine has ${gpus}`
      : bundled
        ? "multi-process ranks run from vitest (tsx), not from the bundle"
        : "";
  it.skipIf(multi !== "")(
    `one rank per GPU: every collective against its definition${multi ? ` (skipped: ${multi})` : ""}`,
    async () => {
      const script = join(dirname(fileURLToPath(import.meta.url)), "..", "test", "scripts", "nccl-rank.ts");
      const port = 29500 + Math.floor(Math.random() * 1000);
      const ranks = Array.from({ length: gpus }, (_, rank) => {
        const child = spawn(process.execPath, ["--import", "tsx", "--conditions=@qlora/source", script], {
          env: {
            ...process.env,
            RANK: String(rank),
            WORLD_SIZE: String(gpus),
            LOCAL_RANK: String(rank),
            MASTER_ADDR: "127.0.0.1",
            MASTER_PORT: String(port),
          },
          stdio: ["ignore", "pipe", "inherit"],
        });
        let out = "";
        child.stdout!.on("data", (d) => (out += d));
        return new Promise<{ ok: boolean; message?: string }>((resolve) =>
          child.on("exit", () =>
            resolve(JSON.parse(out.trim().split("\n").pop() || '{"ok":false,"message":"no output"}')),
          ),
        );
      });
      for (const r of await Promise.all(ranks)) expect(r).toMatchObject({ ok: true });
    },
    120_000,
  );
});
