/**
 * Output paths checked before any work (a model load can take minutes): an existing file where a directory goes (or
 * the reverse), an ancestor that is a file or not writable, or an output that is the input itself. The message names
 * the flag or config key.
 */
import { accessSync, constants, existsSync, statSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { CliError } from "./errors";

/** The nearest existing ancestor of `path` must be a writable directory for `path` to be created. */
function checkCreatable(path: string, key: string): void {
  for (let p = dirname(resolve(path)); ; p = dirname(p)) {
    if (!existsSync(p)) {
      if (dirname(p) === p) return;
      continue;
    }
    if (!statSync(p).isDirectory())
      throw new CliError("BAD_PATH", `${key}: cannot create ${path}: ${p} exists and is not a directory`);
    try {
      accessSync(p, constants.W_OK);
    } catch {
      throw new CliError("BAD_PATH", `${key}: cannot create ${path}: ${p} is not writable`);
    }
    return;
  }
}

/** `path` will be a directory: it is one already, or it can be created. */
export function checkOutputDir(path: string, key: string): void {
  if (existsSync(path)) {
    if (!statSync(path).isDirectory())
      throw new CliError("BAD_PATH", `${key}: ${path} exists and is not a directory (expected an output directory)`);
    return;
  }
  checkCreatable(path, key);
}

/** `path` will be a file: not an existing directory, and its directory exists or can be created. */
export function checkOutputFile(path: string, key: string): void {
  if (existsSync(path) && statSync(path).isDirectory())
    throw new CliError("BAD_PATH", `${key}: ${path} is a directory (expected an output file)`);
  checkCreatable(path, key);
}

/** Writing `out` must not replace what is being read (`qlora quantize m --out m` would delete the bf16 weights). */
export function checkNotInput(out: string, input: string, key: string, inputKey: string): void {
  if (resolve(out) === resolve(input))
    throw new CliError("BAD_PATH", `${key}: ${out} is ${inputKey} itself; write the output to another directory`);
}
