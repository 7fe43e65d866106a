import { open, readdir, rename, rm } from "node:fs/promises";

/** fsync a file or a directory (directories make renames/creations inside them durable). */
export async function fsyncFile(path: string): Promise<void> {
  const fh = await open(path, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** fsync every file directly in dir, then dir itself. */
export async function fsyncTree(dir: string): Promise<void> {
  for (const e of await readdir(dir, { withFileTypes: true })) {
    if (e.isFile()) await fsyncFile(`${dir}/${e.name}`);
    else if (e.isDirectory()) await fsyncTree(`${dir}/${e.name}`);
  }
  await fsyncFile(dir);
}

/** Replace `dst` by the directory `src` atomically with respect to readers of `dst`'s name. */
export async function renameDir(src: string, dst: string): Promise<void> {
  try {
    await rename(src, dst);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== "ENOTEMPTY" && code !== "EEXIST") throw e;
    // An older directory of the same name (a re-save after resume): move it aside first, then drop it.
    const aside = `${dst}.old-${process.pid}`;
    await rename(dst, aside);
    await rename(src, dst);
    await rm(aside, { recursive: true, force: true });
  }
}
