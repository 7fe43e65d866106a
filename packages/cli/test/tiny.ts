/** Tiny Hugging Face model directories (and a random PEFT adapter) for CLI tests. */
import { join } from "node:path";
import { LoraModel, saveAdapter } from "@qlora/lora";
import { loadModel, writeTinyTokenizer } from "@qlora/models";
import { manualSeed, noGrad, randn } from "@qlora/tensor";
import { TINY_MODELS, writeTinyModel } from "../../models/scripts/make-tiny-models";

export async function writeTinyBase(dir: string): Promise<string> {
  const info = await writeTinyTokenizer(dir, "llama3");
  const spec = TINY_MODELS.find((s) => s.name === "llama")!;
  await writeTinyModel(dir, spec, {
    configOverrides: { vocab_size: info.vocabSize, bos_token_id: info.bosTokenId, eos_token_id: info.eosTokenId },
  });
  return dir;
}

/** A LoRA adapter with non-zero B (so it changes the outputs), saved in PEFT format. */
export async function writeRandomAdapter(base: string, out: string): Promise<string> {
  manualSeed(7);
  const { model } = await loadModel(base, { quantize: false });
  const lora = LoraModel.inject(model, { r: 4, lora_alpha: 8, target_modules: "all-linear" });
  const updates = Object.fromEntries(
    [...model.namedParameters()]
      .filter(([name]) => name.includes("lora_B"))
      .map(([name, p]) => [name, noGrad(() => randn([...p.shape]).mul(0.05))]),
  );
  model.loadStateDict(updates, { strict: false });
  for (const t of Object.values(updates)) t.dispose();
  await saveAdapter(lora, out, { baseModelNameOrPath: base });
  return join(out);
}
