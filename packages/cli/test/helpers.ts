import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { type Io, main } from "../src/main";

export const BIN = fileURLToPath(new URL("../src/bin.ts", import.meta.url));

/** Run the program in-process, capturing what it prints. */
export async function runCli(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const io: Io = { out: (t) => out.push(t), err: (t) => err.push(t) };
  const code = await main(argv, io);
  return { code, out: out.join("\n"), err: err.join("\n") };
}

/** Run `qlora` as a real subprocess (tsx over the sources). */
export function runBin(argv: string[], timeoutMs = 60_000): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ["--conditions=@qlora/source", "--import", "tsx", BIN, ...argv],
      { timeout: timeoutMs, maxBuffer: 64 << 20 },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === "number" ? error.code : 1) : 0;
        resolve({ code, out: stdout, err: stderr });
      },
    );
  });
}
