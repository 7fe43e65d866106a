// The TCP rendezvous that hands rank 0's ncclUniqueId to the other ranks (src/rendezvous.ts): across 2 and 3
// processes on this machine, timeouts on a missing peer and a missing rank 0, configuration errors on every rank,
// stray connections ignored, argument and environment checks, and a fuzzed hello that never crashes rank 0.
import { type ChildProcess, spawn } from "node:child_process";
import { createConnection, createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { CudaKernelsError } from "../src/errors";
import { rendezvous, rendezvousFromEnv } from "../src/rendezvous";

const peerScript = join(dirname(fileURLToPath(import.meta.url)), "scripts", "rendezvous-peer.ts");
const HOST = "127.0.0.1";

interface PeerResult {
  ok: boolean;
  hex?: string;
  code?: string;
  message?: string;
}

/** Starts one rank as its own Node process; resolves with its JSON line. */
function peer(port: number, rank: number, worldSize: number, timeoutMs: number, payloadHex = ""): Promise<PeerResult> {
  const child: ChildProcess = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "--conditions=@qlora/source",
      peerScript,
      HOST,
      String(port),
      String(rank),
      String(worldSize),
      String(timeoutMs),
      payloadHex,
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let out = "";
  let err = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (err += d));
  return new Promise((resolve, reject) =>
    child.on("exit", (code) => {
      const line = out.trim().split("\n").pop() ?? "";
      if (code !== 0 || !line.startsWith("{")) reject(new Error(`peer ${rank} exited ${code}: ${out}${err}`));
      else resolve(JSON.parse(line) as PeerResult);
    }),
  );
}

/** A port that was free a moment ago (for runs where rank 0 is a child process too). */
function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, HOST, () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

const id128 = () => Uint8Array.from({ length: 128 }, (_, i) => (i * 37 + 11) & 255);
const hex = (a: Uint8Array) => Buffer.from(a).toString("hex");

async function expectCode(p: Promise<unknown>, code: string, message: RegExp): Promise<CudaKernelsError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(CudaKernelsError);
  expect((e as CudaKernelsError).code).toBe(code);
  expect((e as Error).message).toMatch(message);
  return e as CudaKernelsError;
}

describe("rendezvous across processes", () => {
  it("3 processes (rank 0 a process too, started last): every rank gets the same 128-byte id", async () => {
    const port = await freePort();
    const early = [peer(port, 1, 3, 20_000), peer(port, 2, 3, 20_000)]; // they retry until rank 0 listens
    await new Promise((r) => setTimeout(r, 300));
    const root = peer(port, 0, 3, 20_000, hex(id128()));
    const results = await Promise.all([root, ...early]);
    for (const r of results) expect(r).toEqual({ ok: true, hex: hex(id128()) });
  }, 40_000);

  it("2 processes: rank 0 here (port 0 → a free port), rank 1 a child", async () => {
    let child: Promise<PeerResult> | undefined;
    const got = await rendezvous({
      masterAddr: HOST,
      masterPort: 0,
      rank: 0,
      worldSize: 2,
      timeoutMs: 20_000,
      payload: id128(),
      onListening: (port) => {
        child = peer(port, 1, 2, 20_000);
      },
    });
    expect(hex(got)).toBe(hex(id128()));
    expect(await child).toEqual({ ok: true, hex: hex(id128()) });
  }, 30_000);

  it("a missing peer: rank 0 and the present peer both fail with TIMEOUT naming what is missing", async () => {
    let child: Promise<PeerResult> | undefined;
    const host = rendezvous({
      masterAddr: HOST,
      masterPort: 0,
      rank: 0,
      worldSize: 3,
      timeoutMs: 4000,
      payload: id128(),
      onListening: (port) => {
        child = peer(port, 1, 3, 30_000);
      },
    });
    await expectCode(host, "TIMEOUT", /rank\(s\) 2 never arrived/);
    const r = await child!;
    expect(r.ok).toBe(false);
    expect(r.code).toBe("TIMEOUT");
    expect(r.message).toMatch(/rank\(s\) 2 never arrived.*rank 1 of 3/);
  }, 30_000);

  it("no rank 0: a peer gives up with TIMEOUT after timeoutMs, naming the address", async () => {
    const port = await freePort();
    const r = await peer(port, 1, 2, 800);
    expect(r.ok).toBe(false);
    expect(r.code).toBe("TIMEOUT");
    expect(r.message).toContain(`no answer from rank 0 at ${HOST}:${port} within 800 ms`);
  }, 20_000);
});

/** Rank 0 in this process on a free port; `peers(port)` runs the other side. */
async function hostWith<T>(worldSize: number, peers: (port: number) => Promise<T>, timeoutMs = 5000) {
  let side: Promise<T> | undefined;
  const host = rendezvous({
    masterAddr: HOST,
    masterPort: 0,
    rank: 0,
    worldSize,
    timeoutMs,
    payload: id128(),
    onListening: (port) => {
      side = peers(port);
    },
  });
  const hostResult = await host.then(
    (v) => ({ ok: true as const, v }),
    (e: unknown) => ({ ok: false as const, e }),
  );
  return { hostResult, side: await side! };
}

const join1 = (port: number, rank: number, worldSize: number, timeoutMs = 5000) =>
  rendezvous({ masterAddr: HOST, masterPort: port, rank, worldSize, timeoutMs }).then(
    (v) => ({ ok: true as const, v }),
    (e: unknown) => ({ ok: false as const, e: e as CudaKernelsError }),
  );

describe("rendezvous: configuration errors fail every rank", () => {
  it("world size mismatch", async () => {
    const { hostResult, side } = await hostWith(2, (port) => join1(port, 1, 3));
    expect(hostResult.ok).toBe(false);
    expect(String((hostResult as { e: Error }).e.message)).toMatch(/rank 1 says the world size is 3, rank 0 says 2/);
    expect(side.ok).toBe(false);
    expect(side.ok ? "" : side.e.code).toBe("RENDEZVOUS_FAILED");
  });
  it("duplicate rank", async () => {
    const { hostResult, side } = await hostWith(3, (port) => Promise.all([join1(port, 1, 3), join1(port, 1, 3)]));
    expect(hostResult.ok).toBe(false);
    expect(String((hostResult as { e: Error }).e.message)).toMatch(/rank 1 joined twice/);
    expect(side.every((s) => !s.ok && s.e.code === "RENDEZVOUS_FAILED")).toBe(true);
  });
  it("a stray connection (not a peer) is closed and ignored; the real peer still gets the id", async () => {
    const { hostResult, side } = await hostWith(2, async (port) => {
      await new Promise<void>((resolve) => {
        const s = createConnection({ host: HOST, port }, () => s.end("GET / HTTP/1.0\r\n\r\n"));
        s.on("close", () => resolve());
        s.on("error", () => resolve());
      });
      return join1(port, 1, 2);
    });
    expect(hostResult.ok).toBe(true);
    expect(side.ok && hex(side.v)).toBe(hex(id128()));
  });
  it("fuzz: any bytes sent to rank 0 before the real peer never crash it or give a wrong id", async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 0, maxLength: 40 }), async (junk) => {
        const { hostResult, side } = await hostWith(
          2,
          async (port) => {
            await new Promise<void>((resolve) => {
              const s = createConnection({ host: HOST, port }, () => s.end(Buffer.from(junk)));
              s.on("close", () => resolve());
              s.on("error", () => resolve());
            });
            return join1(port, 1, 2, 3000);
          },
          3000,
        );
        if (hostResult.ok) {
          expect(side.ok && hex(side.v)).toBe(hex(id128()));
        } else {
          // junk that happens to be a well-formed hello with a wrong world size or rank: a typed failure
          expect(hostResult.e).toBeInstanceOf(CudaKernelsError);
          expect(["RENDEZVOUS_FAILED", "TIMEOUT"]).toContain((hostResult.e as CudaKernelsError).code);
        }
      }),
      { numRuns: 25 },
    );
  }, 60_000);
});

describe("rendezvous: arguments and environment", () => {
  const ok = { masterAddr: HOST, masterPort: 29500, rank: 1, worldSize: 2, timeoutMs: 1000 };
  it("bad arguments are BAD_ARGUMENT naming the argument", () => {
    const bad: [Partial<typeof ok> & { payload?: unknown }, RegExp][] = [
      [{ rank: 2 }, /rank must be an integer in \[0, 2\), got 2/],
      [{ rank: -1 }, /rank must be/],
      [{ worldSize: 0 }, /worldSize must be a positive integer, got 0/],
      [{ masterPort: 70000 }, /masterPort must be an integer in \[1, 65535\], got 70000/],
      [{ masterPort: 0 }, /masterPort must be an integer in \[1, 65535\]/], // only rank 0 may ask for any port
      [{ timeoutMs: 0 }, /timeoutMs must be a positive number/],
      [{ masterAddr: "" }, /masterAddr must be a host name or address/],
      [{ rank: 0, payload: undefined }, /rank 0 needs a payload/],
    ];
    for (const [patch, message] of bad) {
      let caught: unknown;
      try {
        void rendezvous({ ...ok, ...patch } as Parameters<typeof rendezvous>[0]);
      } catch (e) {
        caught = e;
      }
      expect(caught, JSON.stringify(patch)).toBeInstanceOf(CudaKernelsError);
      expect((caught as CudaKernelsError).code).toBe("BAD_ARGUMENT");
      expect((caught as Error).message).toMatch(message);
    }
  });
  it("a world of one needs no network: rank 0 gets its own payload", async () => {
    const got = await rendezvous({
      masterAddr: HOST,
      masterPort: 1,
      rank: 0,
      worldSize: 1,
      timeoutMs: 10,
      payload: id128(),
    });
    expect(hex(got)).toBe(hex(id128()));
  });
  it("rendezvousFromEnv reads torchrun's names, then Open MPI's, with defaults", () => {
    expect(rendezvousFromEnv({})).toEqual({
      masterAddr: "127.0.0.1",
      masterPort: 29500,
      rank: 0,
      worldSize: 1,
      localRank: 0,
    });
    expect(
      rendezvousFromEnv({ RANK: "3", WORLD_SIZE: "4", LOCAL_RANK: "1", MASTER_ADDR: "node0", MASTER_PORT: "6000" }),
    ).toEqual({ masterAddr: "node0", masterPort: 6000, rank: 3, worldSize: 4, localRank: 1 });
    expect(
      rendezvousFromEnv({ OMPI_COMM_WORLD_RANK: "2", OMPI_COMM_WORLD_SIZE: "3", OMPI_COMM_WORLD_LOCAL_RANK: "0" }),
    ).toEqual({ masterAddr: "127.0.0.1", masterPort: 29500, rank: 2, worldSize: 3, localRank: 0 });
    expect(() => rendezvousFromEnv({ RANK: "two" })).toThrow(/RANK="two" is not a non-negative integer/);
    expect(() => rendezvousFromEnv({ RANK: "2", WORLD_SIZE: "2" })).toThrow(/rank must be an integer in \[0, 2\)/);
  });
});
