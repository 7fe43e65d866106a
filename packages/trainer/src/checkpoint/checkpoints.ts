/**
 * output_dir/checkpoint-<step>/ directories: written whole into a temporary directory, fsynced, then renamed, so a
 * crash leaves either the complete checkpoint or none under that name. Rotation keeps at most `limit` and never
 * deletes the newest or the best.
 */
import { mkdir, readdir, rename, rm, stat } from "node:fs/promises";
import { basename, join, resolve } from "node:path";
import { TrainerError } from "../errors";
import { ensureDirectory } from "@qlora/formats";
import { fsyncFile, fsyncTree, renameDir } from "./fsutil";

const NAME = /^checkpoint-(\d+)$/;
const TEMP_PREFIX = ".tmp-checkpoint-";

export function checkpointDir(outputDir: string, step: number): string {
  return join(outputDir, `checkpoint-${step}`);
}

/** Write a checkpoint through `fill(tempDir)`; returns the final directory. */
export async function writeCheckpointAtomic(
  outputDir: string,
  step: number,
  fill: (dir: string) => Promise<void>,
): Promise<string> {
  await ensureDirectory(outputDir);
  const tmp = join(outputDir, `${TEMP_PREFIX}${step}-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp);
  try {
    await fill(tmp);
    await fsyncTree(tmp);
    const final = checkpointDir(outputDir, step);
    await renameDir(tmp, final);
    await fsyncFile(outputDir);
    return final;
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
}

/** Complete checkpoints in outputDir, oldest first (temporary leftovers of a crash are removed). */
export async function listCheckpoints(outputDir: string): Promise<{ step: number; dir: string }[]> {
  let names: string[];
  try {
    names = await readdir(outputDir);
  } catch {
    return [];
  }
  const out: { step: number; dir: string }[] = [];
  for (const n of names) {
    if (n.startsWith(TEMP_PREFIX)) {
      await rm(join(outputDir, n), { recursive: true, force: true });
      continue;
    }
    const m = NAME.exec(n);
    if (m && (await isComplete(join(outputDir, n)))) out.push({ step: Number(m[1]), dir: join(outputDir, n) });
  }
  return out.sort((a, b) => a.step - b.step);
}

async function isComplete(dir: string): Promise<boolean> {
  try {
    return (await stat(join(dir, "trainer_state.json"))).isFile();
  } catch {
    return false;
  }
}

export async function latestCheckpoint(outputDir: string): Promise<string | undefined> {
  return (await listCheckpoints(outputDir)).at(-1)?.dir;
}

/** Check a user-given resume path: a directory holding trainer_state.json. */
export async function requireCheckpoint(dir: string): Promise<string> {
  if (!(await isComplete(dir)))
    throw new TrainerError(
      "CHECKPOINT_NOT_FOUND",
      `resume: "${dir}" is not a checkpoint directory (expected ${basename(dir)}/trainer_state.json)`,
      { file: dir },
    );
  return dir;
}

/** Delete the oldest checkpoints beyond `limit`, never the newest or `best`. Returns the deleted directories. */
export async function rotateCheckpoints(outputDir: string, limit: number, best: string | null): Promise<string[]> {
  if (!(limit > 0)) return [];
  const all = await listCheckpoints(outputDir);
  const newest = all.at(-1)?.dir;
  const keep = new Set([newest, best ? resolve(best) : undefined].filter(Boolean).map((d) => resolve(d as string)));
  const deleted: string[] = [];
  let count = all.length;
  for (const c of all) {
    if (count <= limit) break;
    if (keep.has(resolve(c.dir))) continue;
    // renamed first (atomic): a kill during the slow delete leaves a temporary directory the next listing removes,
    // never a half-deleted checkpoint-N that still has its trainer_state.json
    const doomed = join(outputDir, `${TEMP_PREFIX}deleting-${basename(c.dir)}-${process.pid}`);
    await rename(c.dir, doomed);
    await rm(doomed, { recursive: true, force: true });
    deleted.push(c.dir);
    count--;
  }
  return deleted;
}
