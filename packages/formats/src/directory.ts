/**
 * mkdir -p without Node's recursive mkdir, which never returns for a path under /proc (Node 20: each ENOENT makes
 * it retry the parent, which exists). Components are created one at a time, so every failure names the part of the
 * path at fault and what it is instead of a directory.
 */
import { mkdirSync, statSync } from "node:fs";
import { mkdir, stat } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { FormatsError } from "./errors";

/** The missing ancestors of `dir`, outermost first, and the failure if an existing one is not a directory. */
function plan(dir: string, isDirectory: (p: string) => boolean | undefined): string[] {
  const missing: string[] = [];
  for (let p = resolve(dir); ; p = dirname(p)) {
    const kind = isDirectory(p);
    if (kind === true) break;
    if (kind === false) throw notADirectory(dir, p);
    missing.unshift(p);
    if (dirname(p) === p) break;
  }
  return missing;
}

function notADirectory(dir: string, at: string): FormatsError {
  const which = at === resolve(dir) ? "it exists and is not a directory" : `${at} exists and is not a directory`;
  return new FormatsError("io", `cannot create directory ${dir}: ${which}`, { file: dir });
}

function failed(dir: string, at: string, e: unknown): FormatsError {
  const err = e as NodeJS.ErrnoException;
  return new FormatsError("io", `cannot create directory ${dir} (at ${at}): ${err.code ?? err.message}`, {
    file: dir,
    cause: e,
  });
}

function kindSync(p: string): boolean | undefined {
  try {
    return statSync(p).isDirectory();
  } catch {
    return undefined;
  }
}

async function kind(p: string): Promise<boolean | undefined> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return undefined;
  }
}

/** Creates `dir` and its missing parents; a typed FormatsError naming the path if that is impossible. */
export function ensureDirectorySync(dir: string): void {
  for (const p of plan(dir, kindSync)) {
    try {
      mkdirSync(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST" || kindSync(p) !== true) throw failed(dir, p, e);
    }
  }
}

/** Creates `dir` and its missing parents; a typed FormatsError naming the path if that is impossible. */
export async function ensureDirectory(dir: string): Promise<void> {
  const known = new Map<string, boolean | undefined>();
  for (let p = resolve(dir); ; p = dirname(p)) {
    const k = await kind(p);
    known.set(p, k);
    if (k !== undefined || dirname(p) === p) break;
  }
  for (const p of plan(dir, (q) => known.get(q))) {
    try {
      await mkdir(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST" || (await kind(p)) !== true) throw failed(dir, p, e);
    }
  }
}
