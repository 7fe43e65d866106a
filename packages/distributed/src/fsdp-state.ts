/**
 * FSDP checkpoints: one consolidated PEFT adapter (rank 0 holds every LoRA tensor whole after each step) plus
 * one optimizer shard per rank.
 *
 * The trainer asks for the optimizer state synchronously on every rank, then writes the checkpoint directory on
 * rank 0 only and renames it into place (atomic). So each rank's optimizer state is serialized to bytes and
 * gathered to rank 0 with blocking collectives; rank 0's CheckpointIO writes `optimizer-shard-{r}-of-{N}.json` +
 * `.safetensors` per rank inside that directory, and the trainer writes `optimizer.json`, the manifest naming the
 * shards and the parameters each one holds. On resume every rank reads the shards holding parameters it now owns
 * and keeps only those parameters' state, so a checkpoint saved at one world size resumes at another
 * (paged-optim's state format, keyed by parameter name; other optimizers resume at the same world size only).
 */
import { join } from "node:path";
import { openSafetensors } from "@qlora/formats";
import { ADAPTER_WEIGHTS_NAME, type LoraModel, adapterDir, adapterStateDict, saveAdapter } from "@qlora/lora";
import { type Module, type Tensor, tensor } from "@qlora/tensor";
import { type CheckpointIO, loadStateTree, saveStateTree } from "@qlora/trainer";
import type { Communicator } from "./communicator";
import { DistributedError } from "./errors";
import type { FsdpStrategy } from "./fsdp";

export const FSDP_OPTIMIZER_FORMAT = "qlora-fsdp-optimizer-shards/1";

export interface OptimizerManifest {
  readonly format: typeof FSDP_OPTIMIZER_FORMAT;
  readonly world_size: number;
  /** Per rank: the shard's file stem and the parameter names it holds state for (null: not keyed by name). */
  readonly shards: readonly { readonly file: string; readonly names: readonly string[] | null }[];
}

/** Rank 0's copy of every rank's optimizer state dict (index = rank). */
export type OptimizerShards = unknown[];

const shardFile = (rank: number, n: number) => `optimizer-shard-${rank}-of-${n}`;

/** Parameter names of a state dict keyed by name (paged-optim: `{ state: { [name]: … } }`), else null. */
function stateNames(sd: unknown): string[] | null {
  const state = (sd as { state?: unknown } | null)?.state;
  return state && typeof state === "object" && !Array.isArray(state) ? Object.keys(state) : null;
}

/** Gather every rank's optimizer state dict to rank 0 (blocking); every rank gets the manifest. */
export function gatherOptimizerShards(
  comm: Communicator,
  mine: unknown,
): { manifest: OptimizerManifest; shards: OptimizerShards } {
  const gather = comm.allGatherBlocking?.bind(comm);
  if (!gather)
    throw new DistributedError("BAD_ARGUMENT", "optimizer shards: the communicator has no allGatherBlocking");
  const bytes = packTree(mine);
  const lengths = gather(Int32Array.of(bytes.length));
  const words = Math.ceil(Math.max(...lengths) / 4);
  const send = new Int32Array(words);
  new Uint8Array(send.buffer).set(bytes);
  const all = gather(send);
  const shards = [...lengths].map((len, r) => unpackTree(new Uint8Array(all.buffer, r * words * 4, len)));
  const n = comm.worldSize;
  return {
    manifest: {
      format: FSDP_OPTIMIZER_FORMAT,
      world_size: n,
      shards: shards.map((sd, r) => ({ file: shardFile(r, n), names: stateNames(sd) })),
    },
    shards,
  };
}

/** Checks that `manifest` is an FSDP optimizer manifest (as written by optimizerStateDict) and returns it typed. */
export function selectOptimizerState(manifest: unknown, where = "optimizer.json"): OptimizerManifest {
  const m = manifest as Partial<OptimizerManifest> | null;
  if (
    !m ||
    m.format !== FSDP_OPTIMIZER_FORMAT ||
    !Number.isInteger(m.world_size) ||
    !Array.isArray(m.shards) ||
    m.shards.length !== m.world_size
  )
    throw new DistributedError(
      "CHECKPOINT",
      `${where}: not an FSDP optimizer manifest (expected format "${FSDP_OPTIMIZER_FORMAT}" with one shard per rank); was the checkpoint written by FsdpStrategy?`,
    );
  return m as OptimizerManifest;
}

/** This rank's optimizer state from a checkpoint's shards: its own shard at the same world size, else merged. */
async function readOptimizerState(dir: string, owned: Set<string>, rank: number, n: number): Promise<unknown> {
  const manifest = selectOptimizerState(await loadStateTree(dir, "optimizer"), join(dir, "optimizer.json"));
  const load = (r: number) => loadStateTree(dir, manifest.shards[r].file);
  const names = manifest.shards.map((s) => s.names);
  const sameOwners =
    manifest.world_size === n && names[rank] !== null && sameSet(names[rank] as readonly string[], owned);
  if (sameOwners || (manifest.world_size === n && names.some((x) => x === null))) return load(rank);
  if (names.some((x) => x === null))
    throw new DistributedError(
      "NOT_SUPPORTED",
      `${dir}: the optimizer state is not keyed by parameter name, so it resumes only at world size ${manifest.world_size} (now ${n})`,
    );
  // Another world size: take the state of the parameters this rank owns now from whichever shards hold it.
  let merged: Record<string, unknown> | undefined;
  const state: Record<string, unknown> = {};
  for (let r = 0; r < manifest.world_size; r++) {
    const holds = (names[r] as string[]).filter((x) => owned.has(x));
    if (holds.length === 0 && merged) continue;
    const sd = (await load(r)) as Record<string, unknown> & { state: Record<string, unknown> };
    merged ??= sd;
    for (const name of holds) state[name] = sd.state[name];
  }
  return { ...merged, state };
}

function sameSet(a: readonly string[], b: Set<string>): boolean {
  return a.length <= b.size && a.every((x) => b.has(x));
}

export interface FsdpCheckpointOptions {
  readonly strategy: FsdpStrategy;
  /** The LoRA model whose adapter is saved (PEFT layout). One adapter. */
  readonly lora: LoraModel;
  /** adapter_config.json's base_model_name_or_path when the config has none. */
  readonly baseModelNameOrPath?: string;
}

/**
 * The trainer's CheckpointIO for FsdpStrategy: saveModel (rank 0) writes the consolidated PEFT adapter
 * (adapter_model.safetensors + adapter_config.json) and every rank's optimizer shard; loadModel (every rank)
 * reads the adapter into the model and this rank's optimizer state for the strategy.
 */
export function fsdpCheckpointIO(o: FsdpCheckpointOptions): CheckpointIO {
  if (o.lora.adapterNames.length !== 1)
    throw new DistributedError(
      "NOT_SUPPORTED",
      `fsdpCheckpointIO: one adapter expected, the model has ${o.lora.adapterNames.length} (${o.lora.adapterNames.join(", ")})`,
    );
  return {
    async saveModel(dir) {
      await saveAdapter(o.lora, dir, { baseModelNameOrPath: o.baseModelNameOrPath });
      const shards = o.strategy.takeOptimizerShards();
      if (!shards)
        throw new DistributedError(
          "CHECKPOINT",
          `${dir}: no optimizer shards gathered (optimizerStateDict not called)`,
        );
      for (const [r, sd] of shards.entries()) await saveStateTree(dir, shardFile(r, shards.length), sd);
    },
    async loadModel(dir, model) {
      await loadAdapterWeights(o.lora, adapterDir(dir, o.lora.adapterNames[0]), model);
      o.strategy.setResumeState(
        await readOptimizerState(dir, o.strategy.ownedNames(), o.strategy.rank, o.strategy.worldSize),
      );
    },
  };
}

/** Copy adapter_model.safetensors into the model's LoRA tensors (every key present, nothing else, same shapes). */
async function loadAdapterWeights(lora: LoraModel, dir: string, model: Module): Promise<void> {
  const path = join(dir, ADAPTER_WEIGHTS_NAME);
  const own = adapterStateDict(lora, lora.adapterNames[0]);
  const nameOf = new Map<Tensor, string>([...model.namedParameters()].map(([n, p]) => [p, n]));
  const sd: Record<string, Tensor> = {};
  let f: Awaited<ReturnType<typeof openSafetensors>>;
  try {
    f = await openSafetensors(path);
  } catch (e) {
    throw new DistributedError("CHECKPOINT", `${path}: cannot read the adapter (${(e as Error).message})`);
  }
  try {
    for (const key of f.names) {
      const target = own[key];
      if (!target) throw new DistributedError("CHECKPOINT", `${path}: "${key}" is not a tensor of this adapter`);
      const info = f.info(key);
      if (info.dtype !== "F32" || info.shape.join() !== target.shape.join())
        throw new DistributedError(
          "CHECKPOINT",
          `${path}: "${key}" is ${info.dtype} ${JSON.stringify(info.shape)}; F32 ${JSON.stringify(target.shape)} expected`,
        );
      const name = nameOf.get(target);
      if (!name) throw new DistributedError("CHECKPOINT", `${path}: "${key}" is not a parameter of the model`);
      const raw = await f.read(key);
      sd[name] = tensor(new Float32Array(raw.slice().buffer), { shape: [...target.shape], backend: target.backend });
    }
  } finally {
    await f.close();
  }
  const missing = Object.keys(own).filter((k) => !f.names.includes(k));
  if (missing.length)
    throw new DistributedError("CHECKPOINT", `${path}: adapter tensors missing: ${missing.slice(0, 5).join(", ")}`);
  model.loadStateDict(sd, { strict: false });
  for (const t of Object.values(sd)) t.dispose();
}

// ---- a byte encoding of JSON-like trees with typed-array leaves (the optimizer state on the wire) ----

const ARRAYS = {
  Float32Array,
  Float64Array,
  Int32Array,
  Uint8Array,
  Uint16Array,
  Int8Array,
  Int16Array,
  Uint32Array,
} as const;
type ArrayKind = keyof typeof ARRAYS;

/** Tree → bytes: [u32 header length][header JSON][arrays, each 8-byte aligned]. */
export function packTree(tree: unknown): Uint8Array {
  const arrays: ArrayBufferView[] = [];
  const header = JSON.stringify(encodeLeaves(tree, arrays, "state"));
  const head = new TextEncoder().encode(header);
  let size = align8(4 + head.length);
  const offsets = arrays.map((a) => {
    const at = size;
    size = align8(size + a.byteLength);
    return at;
  });
  const out = new Uint8Array(size);
  new DataView(out.buffer).setUint32(0, head.length, true);
  out.set(head, 4);
  arrays.forEach((a, i) => {
    out.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), offsets[i]);
  });
  return out;
}

export function unpackTree(bytes: Uint8Array): unknown {
  const len = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + len)));
  let at = align8(4 + len);
  const decode = (x: unknown): unknown => {
    if (x === null || typeof x !== "object") return x;
    if (Array.isArray(x)) return x.map(decode);
    const o = x as Record<string, unknown>;
    if (typeof o.__num__ === "string") return Number(o.__num__);
    if (Array.isArray(o.__map__)) return new Map((o.__map__ as [unknown, unknown][]).map(([k, v]) => [k, decode(v)]));
    if (typeof o.__array__ === "string") {
      const Ctor = ARRAYS[o.__array__ as ArrayKind];
      const n = o.length as number;
      const copy = bytes.slice(at, at + n * Ctor.BYTES_PER_ELEMENT);
      at = align8(at + copy.length);
      return new Ctor(copy.buffer);
    }
    return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, decode(v)]));
  };
  return decode(header);
}

function encodeLeaves(x: unknown, arrays: ArrayBufferView[], path: string): unknown {
  if (ArrayBuffer.isView(x)) {
    const kind = x.constructor.name;
    if (!(kind in ARRAYS))
      throw new DistributedError("NOT_SUPPORTED", `optimizer shards: "${path}" is a ${kind}, which cannot be sent`);
    arrays.push(x);
    return { __array__: kind, length: (x as Float32Array).length };
  }
  if (typeof x === "number" && (!Number.isFinite(x) || Object.is(x, -0)))
    return { __num__: Object.is(x, -0) ? "-0" : String(x) };
  if (x === null || typeof x !== "object") return x;
  if (x instanceof Map) return { __map__: [...x].map(([k, v], i) => [k, encodeLeaves(v, arrays, `${path}[${i}]`)]) };
  if (Array.isArray(x)) return x.map((v, i) => encodeLeaves(v, arrays, `${path}[${i}]`));
  const proto = Object.getPrototypeOf(x);
  if (proto !== Object.prototype && proto !== null)
    throw new DistributedError(
      "NOT_SUPPORTED",
      `optimizer shards: "${path}" is a ${(x as object).constructor?.name ?? "object"}; plain objects, arrays, Maps and typed arrays are sent`,
    );
  return Object.fromEntries(Object.entries(x).map(([k, v]) => [k, encodeLeaves(v, arrays, `${path}.${k}`)]));
}

const align8 = (n: number) => Math.ceil(n / 8) * 8;
