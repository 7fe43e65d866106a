/**
 * Starting N ranks: `launch({ nproc, argv })` runs `mpirun -n N node …argv` (Open MPI's launcher, so the job is
 * the same as a user's own `mpirun -n N node …`), and the rank-side helpers: environment rank, rank-aware logging,
 * and `runRank`, which turns any error on one rank into a clear message and the end of the whole job.
 */
import { spawn, spawnSync } from "node:child_process";
import { DistributedError } from "./errors";

export interface LaunchOptions {
  /** Number of ranks (processes). */
  nproc: number;
  /** Arguments after `node` on every rank (script path and its arguments; node flags first). */
  argv: readonly string[];
  /** Extra environment for every rank (exported to the ranks with mpirun -x). */
  env?: Record<string, string>;
  /** The mpirun executable (default $QLORA_MPIRUN or `mpirun` on PATH). */
  mpirun?: string;
  /** Node executable for the ranks (default this process's). */
  node?: string;
  /** stdio of mpirun (default "inherit"). */
  stdio?: "inherit" | "pipe";
  /**
   * Signals this process passes on to mpirun while the job runs (which then stops the ranks). Ctrl-C reaches mpirun
   * through the terminal's process group anyway; a `kill <pid>` of this process does not (default ["SIGTERM"]).
   */
  forwardSignals?: readonly NodeJS.Signals[];
}

/** The mpirun command line launch() runs: --oversubscribe (more ranks than cores is fine for testing), and
 * --allow-run-as-root when this process is root (Open MPI refuses root otherwise). */
export function launchCommand(o: LaunchOptions): { command: string; args: string[] } {
  if (!Number.isInteger(o.nproc) || o.nproc < 1)
    throw new DistributedError("BAD_ARGUMENT", `launch: nproc must be a positive integer, got ${o.nproc}`);
  if (!Array.isArray(o.argv) || o.argv.length === 0)
    throw new DistributedError("BAD_ARGUMENT", "launch: argv must name the script to run on every rank");
  const args = ["-n", String(o.nproc), "--oversubscribe"];
  if (process.getuid?.() === 0) args.push("--allow-run-as-root");
  // Ranks poll for completion; yielding when idle keeps oversubscribed ranks from starving each other.
  const env = { OMPI_MCA_mpi_yield_when_idle: "1", ...o.env };
  for (const [k, v] of Object.entries(env)) args.push("-x", `${k}=${v}`);
  args.push(o.node ?? process.execPath, ...o.argv);
  return { command: o.mpirun ?? process.env.QLORA_MPIRUN ?? "mpirun", args };
}

/** Where mpirun is, or why it is not usable (for skip reasons). */
export function findMpirun(mpirun = process.env.QLORA_MPIRUN ?? "mpirun"): { ok: boolean; reason?: string } {
  const r = spawnSync(mpirun, ["--version"], { encoding: "utf8" });
  if (r.error) return { ok: false, reason: `${mpirun} not found (install openmpi-bin): ${r.error.message}` };
  if (r.status !== 0) return { ok: false, reason: `${mpirun} --version exited ${r.status}: ${r.stderr}` };
  return { ok: true };
}

export interface LaunchResult {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Run the job to its end. Resolves with mpirun's exit status (non-zero when any rank failed). */
export function launch(o: LaunchOptions): Promise<LaunchResult> {
  const { command, args } = launchCommand(o);
  const child = spawn(command, args, { stdio: o.stdio === "pipe" ? ["ignore", "pipe", "pipe"] : "inherit" });
  const forward = (signal: NodeJS.Signals) => child.kill(signal);
  const forwarded = o.forwardSignals ?? ["SIGTERM"];
  for (const s of forwarded) process.on(s, forward);
  const unforward = () => {
    for (const s of forwarded) process.off(s, forward);
  };
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (d) => {
    stdout += d;
  });
  child.stderr?.on("data", (d) => {
    stderr += d;
  });
  return new Promise((resolve, reject) => {
    child.on("error", (e) => {
      unforward();
      reject(
        new DistributedError("LAUNCH_FAILED", `launch: cannot start ${command} (install openmpi-bin): ${e.message}`),
      );
    });
    child.on("close", (exitCode, signal) => {
      unforward();
      resolve({ exitCode, signal, stdout, stderr });
    });
  });
}

/** This process's rank and world size from the launcher's environment (0 of 1 when not launched). */
export function envRank(env: NodeJS.ProcessEnv = process.env): { rank: number; worldSize: number } {
  const rank = Number(env.OMPI_COMM_WORLD_RANK ?? env.PMI_RANK ?? env.RANK ?? 0);
  const worldSize = Number(env.OMPI_COMM_WORLD_SIZE ?? env.PMI_SIZE ?? env.WORLD_SIZE ?? 1);
  return { rank, worldSize };
}

export interface RankLogger {
  /** Progress and info: printed by rank 0 only. */
  info(message: string): void;
  /** Printed by every rank, prefixed with its rank. */
  warn(message: string): void;
  error(message: string): void;
  readonly isMain: boolean;
}

export function rankLogger(
  rank = envRank().rank,
  worldSize = envRank().worldSize,
  out: { log(s: string): void; error(s: string): void } = console,
): RankLogger {
  const tag = worldSize > 1 ? `[rank ${rank}/${worldSize}] ` : "";
  return {
    isMain: rank === 0,
    info: (m) => {
      if (rank === 0) out.log(m);
    },
    warn: (m) => out.error(`${tag}warning: ${m}`),
    error: (m) => out.error(`${tag}error: ${m}`),
  };
}

/**
 * Run one rank's main function. An error on this rank is printed with the rank and ends the whole job through
 * `abort` (MPI_Abort: mpirun then stops every rank), so no rank waits for a peer that is gone. A SIGTERM from
 * the launcher (another rank failed) prints why this rank stops.
 */
export async function runRank(
  main: () => Promise<void>,
  options: { abort: (code: number) => void; rank?: number; worldSize?: number },
): Promise<void> {
  const log = rankLogger(options.rank ?? envRank().rank, options.worldSize ?? envRank().worldSize);
  const onTerm = () => {
    log.error("stopped by the launcher: another rank failed or the job was cancelled");
    process.exit(143);
  };
  process.once("SIGTERM", onTerm);
  try {
    await main();
  } catch (error) {
    const e = error as Error & { code?: string };
    log.error(`${e.name}${e.code ? ` ${e.code}` : ""}: ${e.message}; ending the job on every rank`);
    options.abort(1);
  } finally {
    process.off("SIGTERM", onTerm);
  }
}
