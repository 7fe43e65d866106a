// One rank of a rendezvous, as its own process (test/rendezvous.test.ts starts 1-3 of them):
//   rendezvous-peer.ts <masterAddr> <masterPort> <rank> <worldSize> <timeoutMs> [payloadHex]
// Prints one JSON line: {"ok":true,"hex":"…"} with the payload received, or {"ok":false,"code":…,"message":…}.
import { rendezvous } from "../../src/rendezvous";

const [addr, port, rank, worldSize, timeoutMs, payloadHex] = process.argv.slice(2);
try {
  const got = await rendezvous({
    masterAddr: addr,
    masterPort: Number(port),
    rank: Number(rank),
    worldSize: Number(worldSize),
    timeoutMs: Number(timeoutMs),
    payload: payloadHex ? Uint8Array.from(Buffer.from(payloadHex, "hex")) : undefined,
  });
  console.log(JSON.stringify({ ok: true, hex: Buffer.from(got).toString("hex") }));
} catch (error) {
  const e = error as { code?: string; message: string };
  console.log(JSON.stringify({ ok: false, code: e.code, message: e.message }));
}
