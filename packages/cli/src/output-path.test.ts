import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { CliError } from "./errors";
import { checkNotInput, checkOutputDir, checkOutputFile } from "./output-path";

const root = mkdtempSync(join(tmpdir(), "qlora-out-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const file = join(root, "afile");
writeFileSync(file, "x");

describe("output paths, checked before any work", () => {
  it("a directory output: an existing directory or a creatable path passes; a file, or a file on the way, does not", () => {
    checkOutputDir(root, "output_dir");
    checkOutputDir(join(root, "new", "deeper"), "output_dir");
    expect(() => checkOutputDir(file, "output_dir")).toThrow(
      new CliError("BAD_PATH", `output_dir: ${file} exists and is not a directory (expected an output directory)`),
    );
    expect(() => checkOutputDir(join(file, "sub"), "--out")).toThrow(
      `--out: cannot create ${join(file, "sub")}: ${file} exists and is not a directory`,
    );
  });

  it.skipIf(process.getuid?.() === 0)("a read-only parent is named (skipped as root, who may write anywhere)", () => {
    const ro = join(root, "ro");
    mkdirSync(ro);
    chmodSync(ro, 0o500);
    try {
      expect(() => checkOutputDir(join(ro, "x"), "--out")).toThrow(
        `--out: cannot create ${join(ro, "x")}: ${ro} is not writable`,
      );
    } finally {
      chmodSync(ro, 0o700);
    }
  });

  it("a file output may not be a directory; an output may not be the input", () => {
    checkOutputFile(join(root, "model.gguf"), "--out");
    expect(() => checkOutputFile(root, "--out")).toThrow(`--out: ${root} is a directory (expected an output file)`);
    expect(() => checkNotInput(`${root}/./`, root, "--out", "model_dir")).toThrow(
      `--out: ${root}/./ is model_dir itself; write the output to another directory`,
    );
    checkNotInput(join(root, "q4"), root, "--out", "model_dir");
  });
});
