/**
 * The `qlora` program: one commander command per file in ./commands. Errors are one readable paragraph (the stack
 * only under --verbose); the exit code is 0 only on success.
 */
import { Command, CommanderError } from "commander";
import { registerConvert } from "./commands/convert";
import { registerDemo } from "./commands/demo";
import { registerEstimate } from "./commands/estimate";
import { registerEval } from "./commands/eval";
import { registerGenerate } from "./commands/generate";
import { registerInspect } from "./commands/inspect";
import { registerPreprocess } from "./commands/preprocess";
import { registerReport } from "./commands/report";
import { registerTrain } from "./commands/train";
import { selectCuda, selectDevice } from "./device";
import { CliError } from "./errors";

export interface GlobalOptions {
  json?: boolean;
  quiet?: boolean;
  verbose?: boolean;
  device?: "cpu" | "cuda" | "auto";
  threads?: number;
}

export interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
}

const defaultIo: Io = {
  out: (t) => process.stdout.write(`${t}\n`),
  err: (t) => process.stderr.write(`${t}\n`),
};

export function buildProgram(io: Io = defaultIo): Command {
  const program = new Command("qlora")
    .description("QLoRA fine-tuning for Node.js: train, generate, merge, export and inspect")
    .option("--json", "machine-readable output")
    .option("--device <device>", "cpu | cuda | auto", "auto")
    .option("--threads <n>", "CPU threads (at most 1024)", (v) => threadCount(v))
    .option("--quiet", "print only results")
    .option("--verbose", "print stacks with errors")
    .hook("preAction", async (cmd) => {
      const o = cmd.opts() as GlobalOptions;
      if (o.device === "cuda") await selectCuda((line) => io.err(line));
      else selectDevice(o.device, o.threads);
    })
    .showHelpAfterError()
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.out(s.trimEnd()), writeErr: (s) => io.err(s.trimEnd()) });
  registerDemo(program, io);
  registerEstimate(program, io);
  registerInspect(program, io);
  registerReport(program, io);
  registerPreprocess(program, io);
  registerTrain(program, io);
  registerGenerate(program, io);
  registerEval(program, io);
  registerConvert(program, io);
  return program;
}

/**
 * Thrown by a command that has printed its result but must not exit 0 (an interrupted run exits 128 + the
 * signal's number, as shells report a process a signal ended): `main` resolves to `exitCode` and prints nothing.
 */
export class CommandExit extends Error {
  override readonly name = "CommandExit";
  constructor(readonly exitCode: number) {
    super(`exit ${exitCode}`);
  }
}

export function positiveInt(value: string, flag: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0)
    throw new CliError("BAD_ARGUMENT", `${flag}: expected a positive integer, got "${value}"`);
  return n;
}

/** --threads: a positive integer the native pool accepts (far more threads than the OS grants aborted the process). */
function threadCount(value: string): number {
  const n = positiveInt(value, "--threads");
  if (n > 1024) throw new CliError("BAD_ARGUMENT", `--threads: expected at most 1024, got "${value}"`);
  return n;
}

/** The packages' errors about what they were given (files, configs, data, arguments), not about a run that failed. */
const INPUT_ERRORS = new Set([
  "ModelError",
  "LoraError",
  "FormatsError",
  "SafetensorsError",
  "GgufError",
  "Nf4Error",
  "OptimError",
]);
const RUNTIME_CODES = new Set(["non_finite_logits", "io"]);

/** Exit 2 for bad input, as for a bad flag; 1 for a run that failed (NaN losses, I/O while training). */
function isInputError(e: Error | undefined): boolean {
  if (!e) return false;
  const code = String((e as { code?: unknown }).code ?? "");
  if (e.name === "TrainerError") return /^(DATA_|EMPTY_DATASET|CHECKPOINT_|BAD_ARGUMENT)/.test(code);
  return INPUT_ERRORS.has(e.name) && !RUNTIME_CODES.has(code);
}

/** Run the program on argv (without node and script); resolves to the exit code. */
export async function main(argv: string[], io: Io = defaultIo): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync(argv, { from: "user" });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    if (e instanceof CommandExit) return e.exitCode;
    const verbose = argv.includes("--verbose");
    if (e instanceof CliError) {
      io.err(`qlora: ${e.message}`);
      if (verbose && e.stack) io.err(e.stack);
      return e.exitCode;
    }
    const err = e as Error;
    io.err(`qlora: ${err?.message ?? String(e)}`);
    if (verbose && err?.stack) io.err(err.stack);
    return isInputError(err) ? 2 : 1;
  }
}
