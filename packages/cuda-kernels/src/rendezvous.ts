/**
 * A small TCP rendezvous (the role of torch's TCPStore for NCCL): rank 0 listens on MASTER_ADDR:MASTER_PORT, every
 * other rank connects (retrying until rank 0 is up) and says who it is; once all worldSize − 1 peers have arrived,
 * rank 0 sends each the same payload (the 128-byte ncclUniqueId) and closes. So every rank leaves the rendezvous
 * knowing the whole world is present, and a missing peer is a TIMEOUT on every rank that names what is missing.
 *
 * Wire format (little endian):
 *   hello   peer → rank 0: "QLRV" | u8 version (1) | 3 zero bytes | u32 worldSize | u32 rank        (16 bytes)
 *   reply   rank 0 → peer: u8 status | u32 length | length bytes: the payload (status 0) or a UTF-8 message
 * Status: 0 ok, 1 world size mismatch, 2 duplicate rank, 3 rank out of range, 4 the rendezvous failed for another
 * peer's error, 5 timed out (ranks missing).
 * A connection whose hello is malformed is closed and ignored (rank 0 keeps waiting for real peers); a config
 * error (mismatched world size, duplicate or out-of-range rank) fails the whole rendezvous on every rank.
 */
import { type Server, type Socket, createConnection, createServer } from "node:net";
import { CudaKernelsError } from "./errors";

export interface RendezvousOptions {
  /** Address of rank 0 (it listens there). */
  readonly masterAddr: string;
  /** Port rank 0 listens on; 0 (rank 0 only) picks a free one, reported through onListening. */
  readonly masterPort: number;
  readonly rank: number;
  readonly worldSize: number;
  /** Milliseconds until a missing peer (or a missing rank 0) fails the rendezvous with TIMEOUT. */
  readonly timeoutMs: number;
  /** Rank 0: what every peer receives (the ncclUniqueId). Ignored on the other ranks. */
  readonly payload?: Uint8Array;
  /** Rank 0: called with the bound port once listening. */
  readonly onListening?: (port: number) => void;
}

export interface RendezvousEnv {
  readonly masterAddr: string;
  readonly masterPort: number;
  readonly rank: number;
  readonly worldSize: number;
  /** Which GPU of this node the rank uses (LOCAL_RANK, Open MPI's local rank, else rank). */
  readonly localRank: number;
}

const MAGIC = 0x56524c51; // "QLRV" read as u32 LE
const VERSION = 1;
const HELLO_BYTES = 16;
const MAX_PAYLOAD = 1 << 20;
const RETRY_MS = 100;
export const DEFAULT_MASTER_PORT = 29500;

const STATUS = { ok: 0, worldSize: 1, duplicate: 2, range: 3, failed: 4, timeout: 5 } as const;

function fail(code: string, message: string): CudaKernelsError {
  return new CudaKernelsError(code, `rendezvous: ${message}`);
}

function intFrom(env: NodeJS.ProcessEnv, names: readonly string[]): { name: string; value: number } | undefined {
  for (const name of names) {
    const raw = env[name];
    if (raw === undefined || raw === "") continue;
    const value = Number(raw);
    if (!Number.isInteger(value) || value < 0)
      throw fail("BAD_ARGUMENT", `${name}=${JSON.stringify(raw)} is not a non-negative integer`);
    return { name, value };
  }
  return undefined;
}

/**
 * Rank, world size and rank 0's address from the launcher's environment: torchrun's names (RANK, WORLD_SIZE,
 * LOCAL_RANK, MASTER_ADDR, MASTER_PORT), else Open MPI's (OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK) or PMI's, so
 * `mpirun -n N` works with MASTER_ADDR exported. Defaults: a world of one, 127.0.0.1:29500.
 */
export function rendezvousFromEnv(env: NodeJS.ProcessEnv = process.env): RendezvousEnv {
  const rank = intFrom(env, ["RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"])?.value ?? 0;
  const worldSize = intFrom(env, ["WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"])?.value ?? 1;
  const localRank = intFrom(env, ["LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"])?.value ?? rank;
  const port = intFrom(env, ["MASTER_PORT"])?.value ?? DEFAULT_MASTER_PORT;
  const masterAddr = env.MASTER_ADDR && env.MASTER_ADDR.length > 0 ? env.MASTER_ADDR : "127.0.0.1";
  checkOptions({ masterAddr, masterPort: port, rank, worldSize, timeoutMs: 1 });
  return { masterAddr, masterPort: port, rank, worldSize, localRank };
}

function checkOptions(o: RendezvousOptions): void {
  if (!Number.isInteger(o.worldSize) || o.worldSize < 1)
    throw fail("BAD_ARGUMENT", `worldSize must be a positive integer, got ${o.worldSize}`);
  if (!Number.isInteger(o.rank) || o.rank < 0 || o.rank >= o.worldSize)
    throw fail("BAD_ARGUMENT", `rank must be an integer in [0, ${o.worldSize}), got ${o.rank}`);
  if (typeof o.masterAddr !== "string" || o.masterAddr.length === 0)
    throw fail("BAD_ARGUMENT", `masterAddr must be a host name or address, got ${JSON.stringify(o.masterAddr)}`);
  const portMin = o.rank === 0 ? 0 : 1;
  if (!Number.isInteger(o.masterPort) || o.masterPort < portMin || o.masterPort > 65535)
    throw fail("BAD_ARGUMENT", `masterPort must be an integer in [${portMin}, 65535], got ${o.masterPort}`);
  if (!(Number.isFinite(o.timeoutMs) && o.timeoutMs > 0))
    throw fail("BAD_ARGUMENT", `timeoutMs must be a positive number of milliseconds, got ${o.timeoutMs}`);
}

/** Runs the rendezvous; resolves with the payload on every rank (rank 0: its own). */
export function rendezvous(options: RendezvousOptions): Promise<Uint8Array> {
  checkOptions(options);
  if (options.rank !== 0) return joinRendezvous(options);
  const payload = options.payload;
  if (!(payload instanceof Uint8Array) || payload.length > MAX_PAYLOAD)
    throw fail("BAD_ARGUMENT", `rank 0 needs a payload (a Uint8Array of at most ${MAX_PAYLOAD} bytes)`);
  return hostRendezvous(options, payload);
}

function reply(socket: Socket, status: number, body: Uint8Array): void {
  const head = Buffer.alloc(5);
  head.writeUInt8(status, 0);
  head.writeUInt32LE(body.length, 1);
  socket.end(Buffer.concat([head, body]));
  socket.resume(); // read the peer's close, so the socket (and the process) is not held open
}

function hostRendezvous(o: RendezvousOptions, payload: Uint8Array): Promise<Uint8Array> {
  if (o.worldSize === 1) {
    o.onListening?.(o.masterPort);
    return Promise.resolve(payload);
  }
  return new Promise((resolve, reject) => {
    const peers = new Map<number, Socket>();
    const sockets = new Set<Socket>();
    const answered = new Set<Socket>(); // told why they are refused: their reply must flush, not be destroyed
    let settled = false;
    const server: Server = createServer((socket) => {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      socket.on("error", () => socket.destroy());
      readExactly(socket, HELLO_BYTES).then(
        (hello) => onHello(socket, hello),
        () => socket.destroy(),
      );
    });
    const finish = (error: CudaKernelsError | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      const message = Buffer.from(error ? error.message : "");
      const status = !error ? STATUS.ok : error.code === "TIMEOUT" ? STATUS.timeout : STATUS.failed;
      for (const s of peers.values()) {
        reply(s, status, error ? message : payload);
        answered.add(s);
      }
      for (const s of sockets) if (!answered.has(s)) s.destroy();
      server.close();
      if (error) reject(error);
      else resolve(payload);
    };
    const onHello = (socket: Socket, hello: Buffer) => {
      if (settled) return socket.destroy();
      if (hello.readUInt32LE(0) !== MAGIC || hello.readUInt8(4) !== VERSION) return socket.destroy(); // not a peer
      const worldSize = hello.readUInt32LE(8);
      const rank = hello.readUInt32LE(12);
      let error: string | null = null;
      let status: number = STATUS.ok;
      if (worldSize !== o.worldSize) {
        error = `rank ${rank} says the world size is ${worldSize}, rank 0 says ${o.worldSize}`;
        status = STATUS.worldSize;
      } else if (rank < 1 || rank >= o.worldSize) {
        error = `a peer claims rank ${rank}, outside [1, ${o.worldSize})`;
        status = STATUS.range;
      } else if (peers.has(rank)) {
        error = `rank ${rank} joined twice`;
        status = STATUS.duplicate;
      }
      if (error) {
        reply(socket, status, Buffer.from(`rendezvous: ${error}`));
        answered.add(socket);
        return finish(fail("RENDEZVOUS_FAILED", error));
      }
      peers.set(rank, socket);
      if (peers.size === o.worldSize - 1) finish(null);
    };
    const timer = setTimeout(() => {
      const missing = [];
      for (let r = 1; r < o.worldSize; r++) if (!peers.has(r)) missing.push(r);
      finish(
        fail(
          "TIMEOUT",
          `rank 0 waited ${o.timeoutMs} ms on ${o.masterAddr}:${o.masterPort} for ${o.worldSize - 1} peers; rank(s) ${missing.join(", ")} never arrived`,
        ),
      );
    }, o.timeoutMs);
    server.on("error", (e: NodeJS.ErrnoException) =>
      finish(fail("RENDEZVOUS_FAILED", `rank 0 cannot listen on ${o.masterAddr}:${o.masterPort}: ${e.message}`)),
    );
    server.listen(o.masterPort, o.masterAddr, () => {
      const address = server.address();
      o.onListening?.(typeof address === "object" && address ? address.port : o.masterPort);
    });
  });
}

function joinRendezvous(o: RendezvousOptions): Promise<Uint8Array> {
  const deadline = Date.now() + o.timeoutMs;
  const where = `${o.masterAddr}:${o.masterPort}`;
  const hello = Buffer.alloc(HELLO_BYTES);
  hello.writeUInt32LE(MAGIC, 0);
  hello.writeUInt8(VERSION, 4);
  hello.writeUInt32LE(o.worldSize, 8);
  hello.writeUInt32LE(o.rank, 12);
  return new Promise((resolve, reject) => {
    let lastError = "no answer";
    const attempt = () => {
      const left = deadline - Date.now();
      if (left <= 0)
        return reject(
          fail(
            "TIMEOUT",
            `rank ${o.rank} of ${o.worldSize} got no answer from rank 0 at ${where} within ${o.timeoutMs} ms (${lastError})`,
          ),
        );
      const socket = createConnection({ host: o.masterAddr, port: o.masterPort });
      socket.on("error", () => {}); // every error is reported through the handlers below, never as an uncaught event
      let connected = false;
      const timer = setTimeout(() => socket.destroy(new Error("timed out")), left);
      socket.once("connect", () => {
        connected = true;
        socket.write(hello);
        readReply(socket).then(
          (r) => {
            clearTimeout(timer);
            socket.destroy();
            if (r.status === STATUS.ok) resolve(new Uint8Array(r.body));
            else
              reject(
                new CudaKernelsError(
                  r.status === STATUS.timeout ? "TIMEOUT" : "RENDEZVOUS_FAILED",
                  `${r.body.toString("utf8")} (rank ${o.rank} of ${o.worldSize}, rank 0 at ${where})`,
                ),
              );
          },
          (e: Error) => {
            clearTimeout(timer);
            socket.destroy();
            const timedOut = Date.now() >= deadline;
            reject(
              fail(
                timedOut ? "TIMEOUT" : "RENDEZVOUS_FAILED",
                timedOut
                  ? `rank ${o.rank} of ${o.worldSize} waited ${o.timeoutMs} ms at ${where} for the other ranks`
                  : `rank 0 at ${where} closed the connection of rank ${o.rank} without an answer (${e.message})`,
              ),
            );
          },
        );
      });
      socket.once("error", (e) => {
        if (connected) return; // readReply reports it
        clearTimeout(timer);
        socket.destroy();
        lastError = e.message;
        setTimeout(attempt, Math.min(RETRY_MS, Math.max(0, deadline - Date.now())));
      });
    };
    attempt();
  });
}

async function readReply(socket: Socket): Promise<{ status: number; body: Buffer }> {
  const head = await readExactly(socket, 5);
  const length = head.readUInt32LE(1);
  if (length > MAX_PAYLOAD) throw new Error(`reply of ${length} bytes is larger than ${MAX_PAYLOAD}`);
  return { status: head.readUInt8(0), body: await readExactly(socket, length) };
}

/** The next `n` bytes of the socket (rejects if it closes first); any bytes beyond are pushed back. */
function readExactly(socket: Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let have = 0;
    const cleanup = () => {
      socket.off("data", onData);
      socket.off("close", onClose);
      socket.off("error", onClose);
    };
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      have += chunk.length;
      if (have < n) return;
      cleanup();
      socket.pause();
      const all = Buffer.concat(chunks);
      if (all.length > n) socket.unshift(all.subarray(n));
      resolve(all.subarray(0, n));
    };
    const onClose = () => {
      cleanup();
      reject(new Error(`connection closed after ${have} of ${n} bytes`));
    };
    if (n === 0) return resolve(Buffer.alloc(0));
    socket.on("data", onData);
    socket.once("close", onClose);
    socket.once("error", onClose);
    socket.resume();
  });
}
