/** Commands that write model files: quantize, merge, export. */
import { existsSync, statSync } from "node:fs";
import { rm } from "node:fs/promises";
import { basename, dirname, join, normalize, resolve, sep } from "node:path";
import type { Command } from "commander";
import { dequantizeModel, exportGguf, loadModel, saveQuantized } from "@qlora/models";
import { exportAdapterGguf, saveAdapter } from "@qlora/lora";
import { CliError } from "../errors";
import {
  baseModelReference,
  bnb4bitConfig,
  copyTokenizerFiles,
  ggufMapping,
  loadForInference,
  mergeAdapterInto,
  requireModelDir,
  resolveChatTemplate,
  saveChatTemplate,
  saveDense,
} from "../infer";
import type { GlobalOptions, Io } from "../main";
import { positiveInt } from "../main";
import { layerProgress } from "../progress";
import { checkNotInput, checkOutputDir, checkOutputFile } from "../output-path";
import { BLOCKSIZES_4BIT } from "@qlora/nf4";

const report = (io: Io, json: boolean | undefined, value: Record<string, unknown>, text: string) =>
  io.out(json ? JSON.stringify(value) : text);

function oneOf<T extends string>(v: string, allowed: readonly T[], flag: string): T {
  if (!(allowed as readonly string[]).includes(v))
    throw new CliError("BAD_ARGUMENT", `${flag}: expected one of ${allowed.join(", ")}, got "${v}"`);
  return v as T;
}

/** `--out` without trailing separators (`out/` → `out`), normalised; `/` stays `/`. */
export function normalizeOut(path: string): string {
  const n = normalize(path);
  return n.length > 1 ? n.replace(/[\\/]+$/, "") || sep : n;
}

/** `--out` of a file output (GGUF): normalised, and not an existing directory. */
function fileOut(path: string): string {
  const out = normalizeOut(path);
  if (existsSync(out) && statSync(out).isDirectory())
    throw new CliError(
      "BAD_PATH",
      `--out: ${out} is a directory; --format gguf writes one file (e.g. ${join(out, "model.gguf")})`,
    );
  return out;
}

export function registerConvert(program: Command, io: Io): void {
  program
    .command("quantize")
    .description("write a transformers + bitsandbytes 4-bit checkpoint")
    .argument("<model_dir>", "model directory")
    .requiredOption("--out <dir>", "output directory")
    .option("--quant-type <t>", "nf4 | fp4", "nf4")
    .option("--no-double-quant", "plain f32 absmax per block")
    .option("--blocksize <n>", "block size: 64, 128, 256 …", (v) => positiveInt(v, "--blocksize"), 64)
    .action(async function (this: Command, dir: string, o) {
      const global = this.optsWithGlobals() as GlobalOptions;
      o.out = normalizeOut(o.out);
      requireModelDir(dir, "model_dir");
      checkNotInput(o.out, dir, "--out", "model_dir");
      checkOutputDir(o.out, "--out");
      // its tensors would be copied as they are while the config claimed the settings asked for
      if (bnb4bitConfig(dir))
        throw new CliError(
          "BAD_ARGUMENT",
          `model_dir: ${dir} is already a bitsandbytes 4-bit checkpoint (quantization_config in config.json); quantize its dense original, or copy the directory`,
        );
      const quantization = {
        quantType: oneOf(o.quantType, ["nf4", "fp4"] as const, "--quant-type"),
        doubleQuant: o.doubleQuant as boolean,
        blocksize: Number(oneOf(String(o.blocksize), BLOCKSIZES_4BIT.map(String), "--blocksize")),
        skipModules: ["lm_head"],
      };
      const bar = layerProgress(`quantizing ${dir}`, global.quiet);
      const { model, generationConfig } = await loadModel(dir, {
        quantize: quantization,
        onProgress: bar.onProgress,
      }).finally(bar.stop);
      await saveQuantized(model, o.out, { quantization, generationConfig });
      await copyTokenizerFiles(dir, o.out);
      report(
        io,
        global.json,
        { out: o.out, ...quantization },
        `wrote ${quantization.quantType} checkpoint to ${o.out}`,
      );
    });

  program
    .command("merge")
    .description("merge a LoRA adapter into the base weights and write the merged model")
    .requiredOption("--model <dir>", "base model directory")
    .requiredOption("--adapter <dir>", "PEFT adapter directory")
    .requiredOption("--out <dir>", "output directory")
    .option("--dtype <d>", "f32 | bf16 | f16 | nf4", "bf16")
    .action(async function (this: Command, o) {
      const global = this.optsWithGlobals() as GlobalOptions;
      const dtype = oneOf(o.dtype, ["f32", "bf16", "f16", "nf4"] as const, "--dtype");
      o.out = normalizeOut(o.out);
      checkNotInput(o.out, o.model, "--out", "--model");
      checkNotInput(o.out, o.adapter, "--out", "--adapter");
      checkOutputDir(o.out, "--out");
      // Merged in f32 (a bitsandbytes 4-bit base is dequantized first); nf4 quantizes the merged weights once.
      await mergeAdapterInto(o.model, o.adapter, o.out, dtype, { quiet: global.quiet });
      report(io, global.json, { out: o.out, dtype }, `merged ${o.adapter} into ${o.model}: ${o.out} (${dtype})`);
    });

  program
    .command("export")
    .description("export a base model or adapter: PEFT directory, or GGUF for llama.cpp / node-llama-cpp")
    .requiredOption("--model <dir>", "base model directory")
    .option("--adapter <dir>", "PEFT adapter directory (GGUF: writes a llama.cpp LoRA adapter file)")
    .requiredOption("--format <f>", "peft | gguf")
    .requiredOption("--out <path>", "output file (gguf) or directory (peft)")
    .option("--gguf-type <t>", "f32 | f16 | bf16 | q8_0 (base model export)", "f16")
    .action(async function (this: Command, o) {
      const global = this.optsWithGlobals() as GlobalOptions;
      const format = oneOf(o.format, ["peft", "gguf"] as const, "--format");
      o.out = format === "gguf" ? fileOut(o.out) : normalizeOut(o.out);
      requireModelDir(o.model);
      checkNotInput(o.out, o.model, "--out", "--model");
      if (o.adapter) checkNotInput(o.out, o.adapter, "--out", "--adapter");
      if (format === "gguf") checkOutputFile(o.out, "--out");
      else checkOutputDir(o.out, "--out");
      if (format === "peft") {
        if (!o.adapter) throw new CliError("BAD_ARGUMENT", "--format peft: needs --adapter <dir>");
        const { lora } = await loadForInference(o.model, { adapter: o.adapter, quantize: "none" });
        await saveAdapter(lora!, o.out, { baseModelNameOrPath: baseModelReference(o.model), taskType: "CAUSAL_LM" });
        const template = resolveChatTemplate(undefined, o.adapter); // the one it trained with travels with it
        if (template) await saveChatTemplate(o.out, template.source);
        return report(io, global.json, { out: o.out }, `wrote PEFT adapter to ${o.out}`);
      }
      if (o.adapter) {
        const { lora, config } = await loadForInference(o.model, { adapter: o.adapter, quantize: "none" });
        const r = await exportAdapterGguf(lora!, o.out, { mapping: ggufMapping(config) });
        return report(io, global.json, { out: r.path, alpha: r.alpha }, `wrote GGUF LoRA adapter to ${r.path}`);
      }
      const type = oneOf(o.ggufType, ["f32", "f16", "bf16", "q8_0"] as const, "--gguf-type");
      // llama.cpp has no bitsandbytes type: a 4-bit base is exported as the weights it computes with, dequantized
      const bnb = bnb4bitConfig(o.model) !== null;
      const from = bnb ? await dequantizedCopy(o.model, o.out, global.quiet) : o.model;
      try {
        const bar = layerProgress(`exporting ${o.model}`, global.quiet, process.stderr, "tensors");
        const r = await exportGguf(from, o.out, {
          outType: type.toUpperCase() as "F32",
          onProgress: bar.onProgress,
        }).finally(bar.stop);
        const note = bnb ? " (dequantized from bitsandbytes 4-bit)" : "";
        report(
          io,
          global.json,
          { out: r.path, architecture: r.architecture, dequantized: bnb },
          `wrote ${type} GGUF to ${r.path}${note}`,
        );
      } finally {
        if (bnb) await rm(from, { recursive: true, force: true });
      }
    });
}

/**
 * A bitsandbytes 4-bit checkpoint written out dense (f32, as it computes) beside `out`, for GGUF export. The caller
 * removes it.
 */
async function dequantizedCopy(modelDir: string, out: string, quiet: boolean | undefined): Promise<string> {
  const tmp = join(dirname(resolve(out)), `.${basename(out)}.dequantized-${process.pid}`);
  const bar = layerProgress(`loading ${modelDir}`, quiet);
  const { model } = await loadModel(modelDir, { onProgress: bar.onProgress }).finally(bar.stop);
  try {
    dequantizeModel(model);
    await saveDense(model, modelDir, tmp, "f32");
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  } finally {
    model.dispose();
  }
  return tmp;
}
