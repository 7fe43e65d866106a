/**
 * `qlora inspect <file or dir>`: what is in a safetensors file, a (sharded) checkpoint directory, a GGUF file, a
 * PEFT adapter directory or a training run directory. Reads headers only, never tensor data.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { FormatsError, ggmlTypeName, openGguf, openSafetensors, openShardedSafetensors } from "@qlora/formats";
import { CliError } from "./errors";
import { formatBytes } from "./estimate";
import { readMetrics } from "./report";

export interface Inspection {
  kind: "safetensors" | "checkpoint" | "trainer checkpoint" | "gguf" | "adapter" | "run";
  path: string;
  /** Ordered (label, value) pairs for the human-readable summary; the same facts as `details`. */
  summary: [string, string][];
  details: Record<string, unknown>;
}

export async function inspectPath(path: string): Promise<Inspection> {
  if (!existsSync(path)) throw new CliError("BAD_PATH", `${path}: no such file or directory`);
  try {
    if (statSync(path).isDirectory()) return await inspectDirectory(path);
    if (path.endsWith(".gguf")) return await inspectGguf(path);
    if (path.endsWith(".safetensors")) return await inspectSafetensors(path);
  } catch (e) {
    if (e instanceof FormatsError) throw new CliError("BAD_PATH", `${path}: ${e.message}`);
    throw e;
  }
  throw new CliError(
    "BAD_PATH",
    `${path}: expected a .safetensors or .gguf file, or a model, adapter or run directory`,
  );
}

function dtypeCounts(infos: Iterable<{ dtype: string; shape: readonly number[] }>) {
  const byDtype: Record<string, number> = {};
  let params = 0;
  let tensors = 0;
  for (const t of infos) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    byDtype[t.dtype] = (byDtype[t.dtype] ?? 0) + n;
    params += n;
    tensors++;
  }
  return { byDtype, params, tensors };
}

function describeCounts(c: ReturnType<typeof dtypeCounts>): [string, string][] {
  return [
    ["tensors", String(c.tensors)],
    ["elements", c.params.toLocaleString("en-US")],
    [
      "dtypes",
      Object.entries(c.byDtype)
        .map(([d, n]) => `${d} ${n.toLocaleString("en-US")}`)
        .join(", "),
    ],
  ];
}

async function inspectSafetensors(path: string): Promise<Inspection> {
  const f = await openSafetensors(path);
  try {
    const counts = dtypeCounts(f.names.map((n) => f.info(n)));
    return {
      kind: "safetensors",
      path,
      summary: [...describeCounts(counts), ["metadata", JSON.stringify(f.metadata)]],
      details: { ...counts, metadata: f.metadata },
    };
  } finally {
    await f.close();
  }
}

async function inspectGguf(path: string): Promise<Inspection> {
  const f = await openGguf(path);
  const types: Record<string, number> = {};
  for (const t of f.tensors) types[ggmlTypeName(t.type)] = (types[ggmlTypeName(t.type)] ?? 0) + 1;
  const arch = String(f.get("general.architecture") ?? "?");
  const summary: [string, string][] = [
    ["version", String(f.version)],
    ["general.type", String(f.get("general.type") ?? "model")],
    ["architecture", arch],
    ["metadata keys", String(f.metadata.size)],
    ["tensors", String(f.tensors.length)],
    [
      "tensor types",
      Object.entries(types)
        .map(([t, n]) => `${t} ×${n}`)
        .join(", "),
    ],
  ];
  // every metadata value, arrays longer than a few items (the vocabulary, merges, scores) shortened to their length
  const metadata: Record<string, unknown> = {};
  for (const key of f.metadata.keys()) {
    const v = f.get(key);
    const long = (Array.isArray(v) || ArrayBuffer.isView(v)) && (v as ArrayLike<unknown>).length > 8;
    metadata[key] = long ? `[${(v as ArrayLike<unknown>).length} items]` : typeof v === "bigint" ? String(v) : v;
  }
  const shown = ["tokenizer.ggml.model", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"].filter((k) =>
    f.metadata.has(k),
  );
  for (const k of shown) summary.push([k, oneLine(String(metadata[k]))]);
  return {
    kind: "gguf",
    path,
    summary,
    details: { version: f.version, architecture: arch, tensorTypes: types, metadata },
  };
}

/** A value on one summary line: newlines shown as \n, cut at 80 characters. */
function oneLine(s: string): string {
  const flat = s.replace(/\n/g, "\\n");
  return flat.length > 80 ? `${flat.slice(0, 77)}...` : flat;
}

/** A JSON file as an object; unreadable or invalid JSON is a CliError naming the file. */
export function readJson(file: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  } catch (e) {
    throw new CliError("BAD_PATH", `${file}: not valid JSON (${(e as Error).message})`);
  }
}

/** A metric as the progress lines print it: 4 significant digits. */
export function formatMetric(v: unknown): string {
  return typeof v === "number" && Number.isFinite(v) ? Number(v.toPrecision(4)).toString() : String(v ?? "?");
}

/** A trainer checkpoint (`checkpoint-<step>/` of a run): trainer_state.json beside the optimizer or scheduler state. */
function isTrainerCheckpoint(dir: string): boolean {
  return (
    existsSync(join(dir, "trainer_state.json")) &&
    ["optimizer.json", "scheduler.json", "rng_state.json"].some((f) => existsSync(join(dir, f)))
  );
}

async function inspectDirectory(dir: string): Promise<Inspection> {
  if (isTrainerCheckpoint(dir)) return inspectTrainerCheckpoint(dir);
  if (existsSync(join(dir, "adapter_config.json"))) return inspectAdapter(dir);
  if (existsSync(join(dir, "config.json"))) return inspectCheckpoint(dir);
  const runMarkers = ["trainer_state.json", "metrics.jsonl"];
  if (runMarkers.some((f) => existsSync(join(dir, f))) || readdirSync(dir).some((n) => n.startsWith("checkpoint-")))
    return inspectRun(dir);
  throw new CliError(
    "BAD_PATH",
    `${dir}: expected a model directory (config.json), an adapter directory (adapter_config.json) or a run directory (checkpoint-*/, trainer_state.json or metrics.jsonl)`,
  );
}

async function inspectCheckpoint(dir: string): Promise<Inspection> {
  const config = readJson(join(dir, "config.json"));
  const s = await openShardedSafetensors(dir);
  try {
    const counts = dtypeCounts(s.names.map((n) => s.info(n)));
    const quant = config.quantization_config as Record<string, unknown> | undefined;
    return {
      kind: "checkpoint",
      path: dir,
      summary: [
        ["architecture", String((config.architectures as string[] | undefined)?.[0] ?? "?")],
        ["shards", String(s.shards.size)],
        ["size", formatBytes(s.totalSize)],
        ...describeCounts(counts),
        ["quantization", quant ? `${quant.bnb_4bit_quant_type ?? quant.quant_method}` : "none"],
      ],
      details: { config, shards: s.shards.size, totalSize: s.totalSize, ...counts },
    };
  } finally {
    await s.close();
  }
}

async function inspectAdapter(dir: string): Promise<Inspection> {
  const config = readJson(join(dir, "adapter_config.json"));
  const weights = join(dir, "adapter_model.safetensors");
  const tensors = existsSync(weights) ? (await inspectSafetensors(weights)).details : undefined;
  return {
    kind: "adapter",
    path: dir,
    summary: [
      ["peft_type", String(config.peft_type)],
      ["base_model", String(config.base_model_name_or_path ?? "?")],
      ["r / lora_alpha", `${config.r} / ${config.lora_alpha}`],
      ["target_modules", JSON.stringify(config.target_modules)],
      ["use_rslora / use_dora", `${config.use_rslora ?? false} / ${config.use_dora ?? false}`],
      ["adapter tensors", tensors ? String(tensors.tensors) : "missing adapter_model.safetensors"],
    ],
    details: { config, tensors },
  };
}

/** The step, epoch, optimizer, scheduler and contents of a trainer checkpoint (JSON files only, no tensor data). */
async function inspectTrainerCheckpoint(dir: string): Promise<Inspection> {
  const state = readJson(join(dir, "trainer_state.json"));
  const optional = (name: string) => (existsSync(join(dir, name)) ? readJson(join(dir, name)) : undefined);
  const optimizer = optional("optimizer.json");
  const scheduler = optional("scheduler.json");
  const plugins = optional("plugins.json");
  const adapter = existsSync(join(dir, "adapter_config.json")) ? await inspectAdapter(dir) : undefined;
  const step = state.globalStep ?? state.global_step;
  const history = Array.isArray(state.logHistory) ? (state.logHistory as Record<string, unknown>[]) : [];
  const lastLog = [...history].reverse().find((m) => typeof m.epoch === "number");
  const lastLoss = [...history].reverse().find((m) => typeof m.loss === "number");
  const epoch =
    typeof lastLog?.epoch === "number" && lastLog.step === step
      ? formatMetric(lastLog.epoch)
      : typeof state.epoch === "number"
        ? `${state.epoch} (+${state.batchInEpoch ?? 0} batches)`
        : "?";

  const summary: [string, string][] = [
    ["step", `${step ?? "?"}${typeof state.maxSteps === "number" ? ` of max_steps ${state.maxSteps}` : ""}`],
    ["epoch", epoch],
  ];
  if (typeof state.tokensSeen === "number") summary.push(["tokens seen", state.tokensSeen.toLocaleString("en-US")]);
  if (lastLoss) summary.push(["last train loss", `${formatMetric(lastLoss.loss)} (step ${lastLoss.step})`]);
  const best = state.bestMetric ?? state.best_metric;
  if (best !== null && best !== undefined) summary.push(["best metric", formatMetric(best)]);
  if (optimizer) summary.push(["optimizer", describeOptimizer(optimizer)]);
  if (scheduler) {
    const lr = typeof scheduler.lr === "number" ? `, lr ${formatMetric(scheduler.lr)}` : "";
    summary.push(["scheduler", `${scheduler.name ?? "linear"} at step ${scheduler.step ?? step ?? "?"}${lr}`]);
  }
  if (adapter) summary.push(...adapter.summary.filter(([k]) => k !== "target_modules"));
  summary.push(["contains", describeContents(dir, plugins)]);
  return {
    kind: "trainer checkpoint",
    path: dir,
    summary,
    details: {
      step,
      epoch: state.epoch,
      batchInEpoch: state.batchInEpoch,
      maxSteps: state.maxSteps,
      tokensSeen: state.tokensSeen,
      bestMetric: best ?? null,
      optimizer: optimizer && { ...optimizer, state: undefined, paramGroups: undefined, ...optimizerFacts(optimizer) },
      scheduler,
      adapter: adapter?.details,
      plugins: plugins ? Object.keys(plugins) : [],
      files: readdirSync(dir).sort(),
    },
  };
}

/** Name, state width, groups and hyperparameters of a saved optimizer (@qlora/paged-optim's optimizer.json). */
function optimizerFacts(o: Record<string, unknown>) {
  const options = (o.options ?? {}) as Record<string, unknown>;
  const groups = Array.isArray(o.paramGroups) ? (o.paramGroups as Record<string, unknown>[]) : [];
  const hyper = groups.map((g) => (g.hyper ?? {}) as Record<string, unknown>);
  const params = groups.reduce((n, g) => n + (Array.isArray(g.names) ? g.names.length : 0), 0);
  const withState = o.state && typeof o.state === "object" ? Object.keys(o.state).length : 0;
  return {
    name: o.optimizer,
    bits: options.bits,
    paged: options.paged,
    groups: groups.length,
    hyper,
    params,
    withState,
  };
}

function describeOptimizer(o: Record<string, unknown>): string {
  const f = optimizerFacts(o);
  if (typeof f.name !== "string") return "saved (unknown format)";
  const width = [f.bits !== undefined ? `${f.bits}-bit` : "", f.paged ? "paged" : ""].filter(Boolean).join(", ");
  const lrs = f.hyper.map((h) => h.lr).filter((v): v is number => typeof v === "number");
  const lr = lrs.length > 0 ? `, lr ${lrs.map(formatMetric).join(" / ")}` : "";
  const groups = f.groups === 1 ? "1 group" : `${f.groups} groups`;
  return `${f.name}${width ? ` (${width})` : ""}, ${groups}, state for ${f.withState} of ${f.params} parameters${lr}`;
}

/** What a checkpoint directory holds, file group by file group. */
function describeContents(dir: string, plugins: Record<string, unknown> | undefined): string {
  const has = (f: string) => existsSync(join(dir, f));
  const parts: string[] = [];
  if (has("adapter_model.safetensors")) parts.push("PEFT adapter");
  if (has("model.safetensors") || has("model.json")) parts.push("trainable weights");
  if (readdirSync(dir).some((f) => f.startsWith("optimizer"))) parts.push("optimizer state");
  if (has("scheduler.json")) parts.push("scheduler");
  if (has("rng_state.json")) parts.push("RNG state");
  const names = plugins ? Object.keys(plugins) : [];
  if (names.length > 0) parts.push(`plugin state (${names.join(", ")})`);
  parts.push("trainer state");
  return parts.join(", ");
}

async function inspectRun(dir: string): Promise<Inspection> {
  const checkpoints = readdirSync(dir)
    .filter((n) => /^checkpoint-\d+$/.test(n))
    .sort((a, b) => Number(a.slice(11)) - Number(b.slice(11)));
  const stateFile = existsSync(join(dir, "trainer_state.json"))
    ? join(dir, "trainer_state.json")
    : checkpoints.length > 0
      ? join(dir, checkpoints[checkpoints.length - 1], "trainer_state.json")
      : undefined;
  const state = stateFile && existsSync(stateFile) ? readJson(stateFile) : {};
  const metrics = existsSync(join(dir, "metrics.jsonl")) ? readMetrics(join(dir, "metrics.jsonl")) : [];
  // ES2022 target: no Array.prototype.findLast.
  const last = (key: string) => [...metrics].reverse().find((m) => typeof m[key] === "number");
  const lastLoss = last("loss");
  const lastEval = last("eval_loss");
  return {
    kind: "run",
    path: dir,
    summary: [
      ["checkpoints", checkpoints.join(", ") || "none"],
      // HF's trainer_state.json spells them global_step / best_metric, @qlora/trainer's globalStep / bestMetric
      ["global_step", String(state.globalStep ?? state.global_step ?? lastLoss?.step ?? "?")],
      ["best_metric", formatMetric(state.bestMetric ?? state.best_metric)],
      ["last train loss", lastLoss ? `${formatMetric(lastLoss.loss)} (step ${lastLoss.step})` : "?"],
      ["last eval loss", lastEval ? `${formatMetric(lastEval.eval_loss)} (step ${lastEval.step})` : "?"],
      ["adapter", existsSync(join(dir, "adapter", "adapter_config.json")) ? join(dir, "adapter") : "none"],
    ],
    details: { checkpoints, state, lastMetrics: metrics.at(-1) ?? null },
  };
}

export function formatInspection(i: Inspection): string {
  const width = Math.max(...i.summary.map(([k]) => k.length));
  return [`${i.path} (${i.kind})`, ...i.summary.map(([k, v]) => `  ${k.padEnd(width)}  ${v}`)].join("\n");
}
