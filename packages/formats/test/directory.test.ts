import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ensureDirectory, ensureDirectorySync, FormatsError } from "../src";

const root = mkdtempSync(join(tmpdir(), "qlora-dir-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe.each([
  ["ensureDirectory", (d: string) => ensureDirectory(d)],
  ["ensureDirectorySync", async (d: string) => ensureDirectorySync(d)],
] as const)("%s", (name, make) => {
  it("creates missing parents and accepts an existing directory", async () => {
    const dir = join(root, name, "a", "b", "c");
    await make(dir);
    expect(statSync(dir).isDirectory()).toBe(true);
    await make(dir);
    await make(join(root, name, "a"));
  });

  it("a file on the path is a FormatsError naming it, and nothing is created below it", async () => {
    const file = join(root, `${name}-file`);
    writeFileSync(file, "x");
    await expect(make(file)).rejects.toThrow(
      new RegExp(`cannot create directory .*${name}-file: it exists and is not a directory`),
    );
    const below = join(file, "sub", "dir");
    const err = await make(below).catch((e) => e);
    expect(err).toBeInstanceOf(FormatsError);
    expect(err.message).toMatch(
      new RegExp(`cannot create directory .*sub/dir: .*${name}-file exists and is not a directory`),
    );
  });

  it.skipIf(!existsSync("/proc/self"))(
    "a path under /proc fails at once (Node's recursive mkdir never returns there)",
    async () => {
      const started = Date.now();
      await expect(make("/proc/qlora-not-a-dir/x")).rejects.toThrow(
        /cannot create directory \/proc\/qlora-not-a-dir\/x \(at \/proc\/qlora-not-a-dir\): ENOENT/,
      );
      expect(Date.now() - started).toBeLessThan(5000);
    },
  );
});
