// Optimizer state on disk: `optimizer.safetensors` (every state buffer, by name) and `optimizer.json`
// (format, optimizer kind, options, groups with their hyperparameters, per-parameter step and which
// tensor holds which buffer). Both are written atomically (temporary name, then rename); the JSON goes
// last and names the safetensors file and a random save id that the safetensors metadata repeats, so a
// directory holding a JSON from one save and tensors from another is refused.
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { AtomicFile, ensureDirectory, openSafetensors, type SafetensorsDtype, writeSafetensors } from "@qlora/formats";
import type { DType, HostArray } from "@qlora/tensor";
import { OptimError } from "./errors";
import { type OptimizerStateDict, STATE_FORMAT } from "./optimizer";

export const STATE_JSON = "optimizer.json";
export const STATE_TENSORS = "optimizer.safetensors";

const TO_ST: Partial<Record<DType, SafetensorsDtype>> = { f32: "F32", u8: "U8" };
const FROM_ST: Partial<Record<string, DType>> = { F32: "f32", U8: "u8" };

interface TensorRef {
  readonly dtype: DType;
  readonly length: number;
  readonly tensor: string;
}

/** The JSON half of a saved state: everything but the tensor bytes. */
export interface OptimizerStateJson {
  readonly format: typeof STATE_FORMAT;
  readonly optimizer: string;
  readonly saveId: string;
  readonly tensorsFile: string;
  readonly options: OptimizerStateDict["options"];
  readonly paramGroups: OptimizerStateDict["paramGroups"];
  readonly state: Readonly<
    Record<string, { readonly step: number; readonly bits: 8 | 32; readonly tensors: Record<string, TensorRef> }>
  >;
}

/** Writes `sd` into directory `dir` (which must exist): optimizer.safetensors, then optimizer.json. */
export async function saveStateDict(sd: OptimizerStateDict, dir: string): Promise<void> {
  await ensureDirectory(dir);
  const saveId = randomBytes(8).toString("hex");
  const tensors: { name: string; dtype: SafetensorsDtype; shape: number[]; data: HostArray }[] = [];
  const state: Record<string, { step: number; bits: 8 | 32; tensors: Record<string, TensorRef> }> = {};
  for (const [name, s] of Object.entries(sd.state)) {
    const refs: Record<string, TensorRef> = {};
    for (const [key, t] of Object.entries(s.tensors)) {
      const dtype = TO_ST[t.dtype];
      if (!dtype) throw new OptimError("STATE_FILE", `state of "${name}".${key}: cannot save dtype ${t.dtype}`);
      const tensor = `state.${name}.${key}`;
      tensors.push({ name: tensor, dtype, shape: [t.data.length], data: t.data });
      refs[key] = { dtype: t.dtype, length: t.data.length, tensor };
    }
    state[name] = { step: s.step, bits: s.bits, tensors: refs };
  }
  await writeSafetensors(join(dir, STATE_TENSORS), tensors, { format: STATE_FORMAT, saveId });
  const json: OptimizerStateJson = {
    format: STATE_FORMAT,
    optimizer: sd.optimizer,
    saveId,
    tensorsFile: STATE_TENSORS,
    options: sd.options,
    paramGroups: sd.paramGroups,
    state,
  };
  const file = await AtomicFile.create(join(dir, STATE_JSON));
  try {
    await file.write(new TextEncoder().encode(`${JSON.stringify(json, null, 1)}\n`));
    await file.commit();
  } catch (e) {
    await file.abort();
    throw e;
  }
}

/** Reads a state saved by saveStateDict from `dir`, validating the JSON and every tensor against it. */
export async function loadStateDict(dir: string): Promise<OptimizerStateDict> {
  const jsonPath = join(dir, STATE_JSON);
  let text: string;
  try {
    text = await readFile(jsonPath, "utf8");
  } catch (e) {
    throw new OptimError("STATE_FILE", `${jsonPath}: cannot read (${(e as Error).message})`);
  }
  const json = parseStateJson(text, jsonPath);
  const tensorsPath = join(dir, json.tensorsFile);
  const st = await openSafetensors(tensorsPath).catch((e: Error) => {
    throw new OptimError("STATE_FILE", `${tensorsPath}: ${e.message}`);
  });
  try {
    if (st.metadata.saveId !== json.saveId)
      throw new OptimError(
        "STATE_FILE",
        `${tensorsPath}: saveId "${st.metadata.saveId}" does not match ${jsonPath}'s "${json.saveId}" (files from different saves)`,
      );
    const state: Record<string, OptimizerStateDict["state"][string]> = {};
    for (const [name, s] of Object.entries(json.state)) {
      const tensors: Record<string, { dtype: DType; data: HostArray }> = {};
      for (const [key, ref] of Object.entries(s.tensors)) {
        if (!st.has(ref.tensor))
          throw new OptimError(
            "STATE_FILE",
            `${tensorsPath}: tensor "${ref.tensor}" (state of "${name}".${key}) is missing`,
          );
        const info = st.info(ref.tensor);
        const n = info.shape.reduce((a, b) => a * b, 1);
        if (FROM_ST[info.dtype] !== ref.dtype || n !== ref.length)
          throw new OptimError(
            "STATE_FILE",
            `${tensorsPath}: tensor "${ref.tensor}" is ${info.dtype}${JSON.stringify(info.shape)}, ${jsonPath} says ${ref.dtype}[${ref.length}]`,
          );
        const data = ref.dtype === "f32" ? await st.readTyped(ref.tensor, "F32") : await st.readTyped(ref.tensor, "U8");
        tensors[key] = { dtype: ref.dtype, data: data.slice() as HostArray };
      }
      state[name] = { step: s.step, bits: s.bits, tensors };
    }
    const sd: OptimizerStateDict = {
      format: STATE_FORMAT,
      optimizer: json.optimizer,
      options: json.options,
      paramGroups: json.paramGroups,
      state,
    };
    return Object.defineProperty(sd, "source", { value: dir, enumerable: false });
  } finally {
    await st.close();
  }
}

function fail(file: string, key: string, expected: string, got: unknown): never {
  let shown: string;
  try {
    shown = JSON.stringify(got)?.slice(0, 80) ?? String(got);
  } catch {
    shown = String(got);
  }
  throw new OptimError("STATE_FILE", `${file}: ${key} must be ${expected}, got ${shown}`);
}

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

/** Parses and fully validates optimizer.json; throws OptimError("STATE_FILE") naming the key otherwise. */
export function parseStateJson(text: string, file = STATE_JSON): OptimizerStateJson {
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch (e) {
    throw new OptimError("STATE_FILE", `${file}: not valid JSON (${(e as Error).message})`);
  }
  if (!isRecord(j)) fail(file, "the document", "a JSON object", j);
  if (j.format !== STATE_FORMAT) fail(file, "format", `"${STATE_FORMAT}"`, j.format);
  for (const k of ["optimizer", "saveId", "tensorsFile"] as const)
    if (typeof j[k] !== "string" || j[k] === "") fail(file, k, "a non-empty string", j[k]);
  if (/[/\\]/.test(j.tensorsFile as string) || j.tensorsFile === "..")
    fail(file, "tensorsFile", "a file name in the same directory", j.tensorsFile);
  const o = j.options;
  if (!isRecord(o)) fail(file, "options", "an object", o);
  if (o.bits !== 8 && o.bits !== 32) fail(file, "options.bits", "8 or 32", o.bits);
  if (typeof o.paged !== "boolean") fail(file, "options.paged", "a boolean", o.paged);
  if (!Number.isInteger(o.minEightBitSize) || (o.minEightBitSize as number) < 0)
    fail(file, "options.minEightBitSize", "a non-negative integer", o.minEightBitSize);
  if (!Array.isArray(j.paramGroups)) fail(file, "paramGroups", "an array", j.paramGroups);
  j.paramGroups.forEach((g: unknown, i: number) => {
    if (!isRecord(g)) fail(file, `paramGroups[${i}]`, "an object", g);
    if (!Array.isArray(g.names) || !g.names.every((n) => typeof n === "string"))
      fail(file, `paramGroups[${i}].names`, "an array of strings", g.names);
    if (!isRecord(g.hyper)) fail(file, `paramGroups[${i}].hyper`, "an object", g.hyper);
  });
  if (!isRecord(j.state)) fail(file, "state", "an object", j.state);
  for (const [name, s] of Object.entries(j.state)) {
    const at = `state[${JSON.stringify(name)}]`;
    if (!isRecord(s)) fail(file, at, "an object", s);
    if (!Number.isInteger(s.step) || (s.step as number) < 0) fail(file, `${at}.step`, "a non-negative integer", s.step);
    if (s.bits !== 8 && s.bits !== 32) fail(file, `${at}.bits`, "8 or 32", s.bits);
    if (!isRecord(s.tensors)) fail(file, `${at}.tensors`, "an object", s.tensors);
    for (const [key, r] of Object.entries(s.tensors)) {
      if (!isRecord(r)) fail(file, `${at}.tensors.${key}`, "an object", r);
      if (r.dtype !== "f32" && r.dtype !== "u8") fail(file, `${at}.tensors.${key}.dtype`, '"f32" or "u8"', r.dtype);
      if (!Number.isInteger(r.length) || (r.length as number) < 0)
        fail(file, `${at}.tensors.${key}.length`, "a non-negative integer", r.length);
      if (typeof r.tensor !== "string") fail(file, `${at}.tensors.${key}.tensor`, "a tensor name", r.tensor);
    }
  }
  return j as unknown as OptimizerStateJson;
}
