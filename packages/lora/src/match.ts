/**
 * Which modules get adapters, and which rank/alpha each gets: PEFT's check_target_module_exists and
 * get_pattern_key (peft/tuners/tuners_utils.py, peft/utils/other.py), reproduced rule for rule.
 */
import type { LoraConfig } from "./config";
import { LoraError } from "./errors";

function fullMatch(pattern: string, key: string): boolean {
  return new RegExp(`^(?:${pattern})$`).test(key);
}

function inListOrSuffix(list: readonly string[], key: string): boolean {
  return list.includes(key) || list.some((t) => key.endsWith(`.${t}`));
}

/** Escape a literal for use inside a RegExp (layers_pattern entries are regex fragments in PEFT; kept as is). */
function layerIndexOf(key: string, layersPattern: string | readonly string[] | null): number | null {
  const patterns =
    layersPattern === null || layersPattern.length === 0
      ? null
      : typeof layersPattern === "string"
        ? [layersPattern]
        : layersPattern;
  if (!patterns) {
    const m = /^.*\.[^.]*\.(\d+)\./.exec(key);
    return m ? Number(m[1]) : null;
  }
  for (const p of patterns) {
    const m = new RegExp(`^.*\\.${p}\\.(\\d+)\\.`).exec(key);
    if (m) return Number(m[1]);
  }
  return null;
}

/** True when the module named `key` (dotted path from the model root) is excluded by exclude_modules. */
export function isExcluded(config: Pick<LoraConfig, "exclude_modules">, key: string): boolean {
  const ex = config.exclude_modules;
  if (!ex || ex.length === 0) return false;
  return typeof ex === "string" ? fullMatch(ex, key) : inListOrSuffix(ex, key);
}

/**
 * PEFT's target test. `target_modules` must already be resolved ("all-linear" expanded to suffix names by
 * resolveTargetModules). Layer indices apply only to suffix matches of a list, as in PEFT.
 */
export function isTargeted(
  config: Pick<LoraConfig, "target_modules" | "exclude_modules" | "layers_to_transform" | "layers_pattern">,
  key: string,
): boolean {
  if (isExcluded(config, key)) return false;
  const tm = config.target_modules;
  if (tm === null) return false;
  if (typeof tm === "string") return fullMatch(tm, key);
  if (tm.includes(key)) return true;
  if (!tm.some((t) => key.endsWith(`.${t}`))) return false;
  const idx = config.layers_to_transform;
  const usingIdx = idx !== null && (typeof idx === "number" || idx.length !== 0);
  if (!usingIdx) return true;
  const layer = layerIndexOf(key, config.layers_pattern);
  if (layer === null) return false;
  return typeof idx === "number" ? layer === idx : (idx as readonly number[]).includes(layer);
}

/**
 * The rank_pattern / alpha_pattern key that applies to `key`: an exact key first, else the first pattern p
 * with `^(.*\.)?(p)$` matching (any dotted prefix, a full suffix match). null when none applies.
 */
export function patternKey(patterns: Readonly<Record<string, number>>, key: string): string | null {
  const keys = Object.keys(patterns);
  if (keys.includes(key)) return key;
  for (const p of keys) if (new RegExp(`^(?:.*\\.)?(?:${p})$`).test(key)) return p;
  return null;
}

/** r and lora_alpha for one module after rank_pattern / alpha_pattern. */
export function rankAndAlpha(config: LoraConfig, key: string): { r: number; alpha: number } {
  const rk = patternKey(config.rank_pattern, key);
  const ak = patternKey(config.alpha_pattern, key);
  return {
    r: rk === null ? config.r : config.rank_pattern[rk],
    alpha: ak === null ? config.lora_alpha : config.alpha_pattern[ak],
  };
}

/** s = alpha / r, or alpha / √r with rsLoRA. */
export function loraScaling(alpha: number, r: number, useRslora: boolean): number {
  return useRslora ? alpha / Math.sqrt(r) : alpha / r;
}

/** Default target modules per architecture (PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING). */
export const DEFAULT_TARGET_MODULES: Readonly<Record<string, readonly string[]>> = {
  llama: ["q_proj", "v_proj"],
  mistral: ["q_proj", "v_proj"],
  qwen2: ["q_proj", "v_proj"],
  gemma: ["q_proj", "v_proj"],
  gemma2: ["q_proj", "v_proj"],
  phi3: ["qkv_proj"],
};

/**
 * Resolve target_modules against the model: "all-linear" becomes the full dotted names of every linear
 * layer except the output head (PEFT's _maybe_include_all_linear_layers); null uses the architecture
 * default table (unknown architecture → error).
 */
export function resolveTargetModules(
  config: LoraConfig,
  linearNames: readonly string[],
  options: { outputHead?: string | null; modelType?: string } = {},
): string | readonly string[] {
  const tm = config.target_modules;
  if (tm === null) {
    const d = options.modelType ? DEFAULT_TARGET_MODULES[options.modelType] : undefined;
    if (!d)
      throw new LoraError(
        "BAD_CONFIG",
        `LoraConfig.target_modules: null needs a known model type for the default table (got ${JSON.stringify(options.modelType ?? null)}); pass target_modules explicitly`,
      );
    return d;
  }
  if (typeof tm === "string" && tm.toLowerCase() === "all-linear") {
    const head = options.outputHead === undefined ? "lm_head" : options.outputHead;
    return linearNames.filter((n) => n !== head).sort();
  }
  return tm;
}
