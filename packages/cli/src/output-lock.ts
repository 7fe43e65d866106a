/**
 * One training run per output_dir. Two runs writing the same directory interleave their metrics and replace each
 * other's checkpoints, and both end "successfully"; the lock file makes the second one an error at startup. A lock
 * left by a run that died (SIGKILL, power loss) names a process that no longer exists and is taken over.
 */
import { closeSync, openSync, readFileSync, unlinkSync, writeSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { ensureDirectorySync } from "@qlora/formats";
import { CliError } from "./errors";

export const LOCK_FILE = ".qlora-train.lock";

interface LockOwner {
  pid: number;
  host: string;
  started: string;
  /** The kernel's start time of that pid (/proc/<pid>/stat field 22), where there is one: a reused pid has another. */
  procStart?: string;
}

/** Lock files this process holds: its own pid in a lock it does not hold is a dead run's (a container's pid 1). */
const held = new Set<string>();

function procStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"; // exists, owned by another user
  }
}

/** Whether the run that wrote `owner` may still be running (on another host nobody can tell: assume so). */
function running(owner: LockOwner, path: string): boolean {
  if (owner.host !== hostname()) return true;
  if (owner.pid === process.pid) return held.has(path);
  if (!alive(owner.pid)) return false;
  const now = procStart(owner.pid);
  return owner.procStart === undefined || now === undefined || now === owner.procStart;
}

function readOwner(path: string): LockOwner | null {
  try {
    const v = JSON.parse(readFileSync(path, "utf8")) as Partial<LockOwner>;
    return typeof v.pid === "number" && typeof v.host === "string" ? (v as LockOwner) : null;
  } catch {
    return null; // unreadable or half-written: nobody can be shown to own it
  }
}

/** `dir` is not in use by a live run (the `--nproc` launcher checks before it starts ranks; rank 0 takes the lock). */
export function assertOutputDirFree(dir: string): void {
  const path = join(dir, LOCK_FILE);
  const owner = readOwner(path);
  if (owner && running(owner, path)) throw inUse(dir, path, owner);
}

function inUse(dir: string, path: string, owner: LockOwner): CliError {
  return new CliError(
    "BAD_PATH",
    `output_dir: ${dir} is in use by another qlora train (pid ${owner.pid} on ${owner.host}, started ${owner.started}); wait for it to finish or write to another output_dir (if no run is active there, delete ${path})`,
  );
}

/** Takes `dir`'s training lock (creating `dir`); returns the function that releases it. */
export function lockOutputDir(dir: string): () => void {
  ensureDirectorySync(dir);
  const path = join(dir, LOCK_FILE);
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = openSync(path, "wx");
      const owner: LockOwner = {
        pid: process.pid,
        host: hostname(),
        started: new Date().toISOString(),
        procStart: procStart(process.pid),
      };
      writeSync(fd, `${JSON.stringify(owner)}\n`);
      closeSync(fd);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST" || attempt > 0) throw e;
      const owner = readOwner(path);
      if (owner && running(owner, path)) throw inUse(dir, path, owner);
      unlinkSync(path); // a dead run's lock
    }
  }
  held.add(path);
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    held.delete(path);
    process.off("exit", release);
    try {
      unlinkSync(path);
    } catch {
      // already gone (the directory was removed): nothing to release
    }
  };
  process.on("exit", release); // a second Ctrl-C exits at once; the lock goes with it
  return release;
}
