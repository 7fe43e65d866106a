/**
 * The multi-process keys of a train config, with Axolotl's / transformers' names: `ddp`, `ddp_timeout`,
 * `ddp_bucket_cap_mb`, `fsdp` (a list or a space-separated string of FSDP options, e.g. `[full_shard, auto_wrap]`),
 * `fsdp_config` (its keys with or without the `fsdp_` prefix) and `fsdp_version`. Pure: which strategy a config
 * asks for at a world size, and what in these keys cannot be honoured (an error naming the key, never ignored).
 */

/** transformers' FSDPOption values: what each means here. */
const FSDP_OPTIONS = {
  full_shard: "shard", // parameters (and the frozen NF4 base), gradients and optimizer state: the "fsdp" strategy
  shard_grad_op: "shard", // gradients and optimizer state only (ZeRO-2): the "sharded-optimizer" strategy
  auto_wrap: "ok", // units are decoder layers, which is what the fsdp strategy gathers one at a time
  offload: "unsupported",
  no_shard: "unsupported",
  hybrid_shard: "unsupported",
  hybrid_shard_zero2: "unsupported",
} as const;

/** fsdp_config keys (without the fsdp_ prefix) and the values this runtime can honour (undefined: any value). */
const FSDP_CONFIG_KEYS: Record<string, readonly unknown[] | undefined> = {
  sharding_strategy: ["FULL_SHARD", "SHARD_GRAD_OP"],
  auto_wrap_policy: ["TRANSFORMER_BASED_WRAP"],
  transformer_layer_cls_to_wrap: undefined,
  state_dict_type: ["FULL_STATE_DICT", "SHARDED_STATE_DICT"],
  offload_params: [false],
  activation_checkpointing: [true, false],
  cpu_ram_efficient_loading: [true, false],
  sync_module_states: [true, false],
  use_orig_params: [true, false],
  reshard_after_forward: [true, false],
  limit_all_gathers: [true, false],
  forward_prefetch: [true, false],
  backward_prefetch: undefined,
  version: [1, 2],
};

export type StrategyName = "single" | "ddp" | "fsdp" | "sharded-optimizer";

/** The keys of TrainConfig this module reads. */
export interface ParallelKeys {
  ddp?: boolean;
  fsdp?: string | string[];
  fsdp_config?: Record<string, unknown>;
  gradient_checkpointing?: boolean;
}

interface Issue {
  path: (string | number)[];
  message: string;
}

/** `fsdp: "full_shard auto_wrap"` or `[full_shard, auto_wrap]` → ["full_shard", "auto_wrap"]. */
export function fsdpOptions(fsdp: string | string[] | undefined): string[] {
  if (fsdp === undefined) return [];
  return (typeof fsdp === "string" ? fsdp.split(/\s+/) : fsdp).map((o) => o.trim().toLowerCase()).filter(Boolean);
}

/** An fsdp_config key without its optional `fsdp_` prefix. */
function configKey(key: string): string {
  return key.startsWith("fsdp_") ? key.slice(5) : key;
}

/** The FSDP sharding the config asks for, or undefined when it asks for none. */
export function fsdpSharding(c: ParallelKeys): "full_shard" | "shard_grad_op" | undefined {
  const options = fsdpOptions(c.fsdp);
  const fromList = options.find((o) => o === "full_shard" || o === "shard_grad_op") as
    | "full_shard"
    | "shard_grad_op"
    | undefined;
  const entry = Object.entries(c.fsdp_config ?? {}).find(([k]) => configKey(k) === "sharding_strategy");
  const fromConfig =
    typeof entry?.[1] === "string" ? (entry[1].toLowerCase() as "full_shard" | "shard_grad_op") : undefined;
  if (fromList ?? fromConfig) return fromList ?? fromConfig;
  // `fsdp: [auto_wrap]` or an fsdp_config without a sharding strategy: FSDP's default, FULL_SHARD.
  return options.length > 0 || c.fsdp_config !== undefined ? "full_shard" : undefined;
}

/** What the multi-process keys ask for that cannot be done (reported by the config schema with file and line). */
export function parallelConfigIssues(c: ParallelKeys): Issue[] {
  const issues: Issue[] = [];
  const options = fsdpOptions(c.fsdp);
  options.forEach((o, i) => {
    const path = typeof c.fsdp === "string" ? ["fsdp"] : ["fsdp", i];
    const kind = FSDP_OPTIONS[o as keyof typeof FSDP_OPTIONS];
    if (kind === undefined)
      issues.push({ path, message: `unknown FSDP option "${o}" (expected ${Object.keys(FSDP_OPTIONS).join(", ")})` });
    else if (kind === "unsupported")
      issues.push({
        path,
        message: `FSDP option "${o}" is not supported (supported: full_shard, shard_grad_op, auto_wrap)`,
      });
  });
  if (options.includes("full_shard") && options.includes("shard_grad_op"))
    issues.push({ path: ["fsdp"], message: "full_shard and shard_grad_op are two shardings; keep one" });
  for (const [key, value] of Object.entries(c.fsdp_config ?? {})) {
    const name = configKey(key);
    if (!Object.hasOwn(FSDP_CONFIG_KEYS, name)) {
      // own keys only: "toString" and the like are on every object's prototype
      issues.push({
        path: ["fsdp_config", key],
        message: `unknown fsdp_config key (known: ${Object.keys(FSDP_CONFIG_KEYS).join(", ")}, with or without the fsdp_ prefix)`,
      });
      continue;
    }
    const allowed = FSDP_CONFIG_KEYS[name];
    if (allowed && !allowed.includes(value))
      issues.push({
        path: ["fsdp_config", key],
        // the config's error printer adds ", got <value>"
        message: `expected one of ${allowed.map((v) => JSON.stringify(v)).join(", ")}${name === "offload_params" ? " (CPU offload is not supported)" : ""}`,
      });
  }
  const fromList = options.find((o) => o === "full_shard" || o === "shard_grad_op");
  const strategyKey = Object.keys(c.fsdp_config ?? {}).find((k) => configKey(k) === "sharding_strategy");
  const fromConfig = strategyKey ? String(c.fsdp_config?.[strategyKey]).toLowerCase() : undefined;
  if (fromList && fromConfig && fromList !== fromConfig)
    issues.push({
      path: ["fsdp_config", strategyKey as string],
      message: `says ${fromConfig.toUpperCase()} but fsdp says ${fromList}; keep one`,
    });
  if (c.ddp === true && fsdpSharding(c))
    issues.push({ path: ["ddp"], message: "ddp: true and fsdp/fsdp_config ask for two strategies; keep one" });
  return issues;
}

/**
 * The trainer strategy for this world size: several ranks use DDP by default, the FSDP keys select "fsdp"
 * (full_shard) or "sharded-optimizer" (shard_grad_op). One process trains alone, except under full_shard: it runs
 * the fsdp strategy over a world of one, so its checkpoints have FSDP's format and resume at any world size.
 * `key` is the config key that chose it, for error messages.
 */
export function chooseStrategy(c: ParallelKeys, worldSize: number): { name: StrategyName; key: string } {
  const sharding = fsdpSharding(c);
  if (worldSize <= 1)
    return sharding === "full_shard"
      ? { name: "fsdp", key: c.fsdp !== undefined ? "fsdp" : "fsdp_config" }
      : { name: "single", key: "" };
  if (sharding === "full_shard") return { name: "fsdp", key: c.fsdp !== undefined ? "fsdp" : "fsdp_config" };
  if (sharding === "shard_grad_op")
    return { name: "sharded-optimizer", key: c.fsdp !== undefined ? "fsdp" : "fsdp_config" };
  return { name: "ddp", key: "ddp" };
}

/** fsdp_config's activation_checkpointing turns on gradient checkpointing (Axolotl/accelerate do the same). */
export function wantsActivationCheckpointing(c: ParallelKeys): boolean {
  const entry = Object.entries(c.fsdp_config ?? {}).find(([k]) => configKey(k) === "activation_checkpointing");
  return entry?.[1] === true;
}
