import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { TINY_MODELS, writeTinyModel } from "../../models/scripts/make-tiny-models";
import { writeTinyTokenizer } from "@qlora/models";
import { LOCK_FILE } from "../src/output-lock";
import { runCli } from "./helpers";

const root = mkdtempSync(join(tmpdir(), "qlora-train-"));

async function tinyModel(): Promise<string> {
  const dir = join(root, "base");
  const info = await writeTinyTokenizer(dir, "llama3");
  const spec = TINY_MODELS.find((s) => s.name === "llama")!;
  await writeTinyModel(dir, spec, {
    configOverrides: { vocab_size: info.vocabSize, bos_token_id: info.bosTokenId, eos_token_id: info.eosTokenId },
  });
  return dir;
}

/** What `run` writes to process.stderr (runTrain's own lines go there, not through the CLI's io), restored after. */
async function capturingStderr(run: () => Promise<void>): Promise<string[]> {
  const lines: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string) => {
    lines.push(String(chunk));
    return true;
  }) as typeof process.stderr.write;
  try {
    await run();
  } finally {
    process.stderr.write = write;
  }
  return lines;
}

function writeData(): string {
  const rows = [];
  for (let i = 0; i < 48; i++) {
    const a = ["red", "green", "blue", "gold"][i % 4];
    rows.push(JSON.stringify({ prompt: `colour ${i % 7}:`, completion: ` ${a} ${a}` }));
  }
  const file = join(root, "data.jsonl");
  writeFileSync(file, rows.join("\n"));
  return file;
}

describe("qlora train", () => {
  it("runs a QLoRA fine-tune from YAML: eval loss falls, PEFT adapter, checkpoint, metrics and report written", async () => {
    const base = await tinyModel();
    const data = writeData();
    const out = join(root, "run");
    const yaml = `base_model: ${base}
load_in_4bit: true
adapter: qlora
lora_r: 8
lora_alpha: 16
lora_target_linear: true
datasets:
  - path: ${data}
    type: prompt_completion
sequence_len: 64
micro_batch_size: 4
max_steps: 30
learning_rate: 0.01
lr_scheduler: constant
optimizer: paged_adamw_8bit
val_set_size: 0.25
save_steps: 15
gradient_checkpointing: true
output_dir: ${out}
`;
    writeFileSync(join(root, "qlora.yaml"), yaml);
    const r = await runCli(["--quiet", "--json", "train", join(root, "qlora.yaml"), "--logging-steps", "5"]);
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    const result = JSON.parse(r.out);
    expect(result.globalStep).toBe(30);
    expect(result.evalLossAfter).toBeLessThan(0.7 * result.evalLossBefore);
    const adapterConfig = JSON.parse(readFileSync(join(out, "adapter", "adapter_config.json"), "utf8"));
    expect(adapterConfig).toMatchObject({ peft_type: "LORA", r: 8, lora_alpha: 16, base_model_name_or_path: base });
    expect(existsSync(join(out, "adapter", "adapter_model.safetensors"))).toBe(true);
    expect(existsSync(join(out, "checkpoint-30", "adapter_model.safetensors"))).toBe(true);
    expect(existsSync(join(out, "checkpoint-30", "trainer_state.json"))).toBe(true);
    const metrics = readFileSync(join(out, "metrics.jsonl"), "utf8").trim().split("\n");
    expect(metrics.length).toBeGreaterThan(5);
    expect(readFileSync(join(out, "report.html"), "utf8")).toMatch(/<svg /);
    // the eval before training is recorded, the one after it once
    const evals = metrics.map((l) => JSON.parse(l)).filter((m) => "eval_loss" in m);
    expect(evals.map((m) => [m.step, m.eval_loss])).toEqual([
      [0, result.evalLossBefore],
      [30, result.evalLossAfter],
    ]);

    // inspect tells a trainer checkpoint from a bare adapter: step, epoch, optimizer, scheduler, contents
    const inspected = await runCli(["inspect", join(out, "checkpoint-15")]);
    expect(inspected.code).toBe(0);
    expect(inspected.out).toMatch(/\(trainer checkpoint\)/);
    expect(inspected.out).toMatch(/^ {2}step\s+15 of max_steps 30$/m);
    expect(inspected.out).toMatch(/^ {2}epoch\s+\d/m);
    expect(inspected.out).toMatch(/^ {2}optimizer\s+AdamW \(8-bit, paged\), 1 group/m);
    expect(inspected.out).toMatch(/^ {2}scheduler\s+constant at step 15, lr 0\.01$/m);
    expect(inspected.out).toMatch(
      /^ {2}contains\s+PEFT adapter, trainable weights, optimizer state, scheduler, RNG state/m,
    );
    const inspectedJson = JSON.parse((await runCli(["--json", "inspect", join(out, "checkpoint-15")])).out);
    expect(inspectedJson).toMatchObject({ kind: "trainer checkpoint", details: { step: 15, maxSteps: 30 } });
    expect(inspectedJson.details.optimizer).toMatchObject({ name: "AdamW", bits: 8, paged: true });

    // resumed from a checkpoint at or past max_steps: nothing to train, says so, writes the adapter, exits 0
    const past = join(root, "run-past");
    const resumed = await runCli([
      "--quiet",
      "train",
      join(root, "qlora.yaml"),
      "--resume_from_checkpoint",
      join(out, "checkpoint-15"),
      "--max_steps",
      "10",
      "--output_dir",
      past,
    ]);
    expect(resumed.code).toBe(0);
    expect(resumed.err).toBe(
      `qlora: resume_from_checkpoint: ${join(out, "checkpoint-15")} is at step 15, at or past max_steps 10: nothing to train; saving its weights`,
    );
    expect(resumed.out).toMatch(/^trained 0 steps \(resumed at step 15, now at 15\)/);
    expect(existsSync(join(past, "adapter", "adapter_model.safetensors"))).toBe(true);
    expect(existsSync(join(past, "report.html"))).toBe(true);

    // a resumed run does not evaluate the fresh adapter again: its "before" is the checkpoint's step-0 eval
    const cont = join(root, "run-continued");
    const continued = await runCli([
      "--quiet",
      "--json",
      "train",
      join(root, "qlora.yaml"),
      "--resume_from_checkpoint",
      join(out, "checkpoint-15"),
      "--output_dir",
      cont,
    ]);
    expect(continued.code).toBe(0);
    expect(JSON.parse(continued.out).evalLossBefore).toBe(result.evalLossBefore);
    expect(JSON.parse(continued.out)).toMatchObject({ resumedAt: 15, globalStep: 30 });
    const records = readFileSync(join(cont, "metrics.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(records.filter((m) => m.step === 0 && "eval_loss" in m)).toEqual([]);
  });

  it("a second run into the output_dir of a running one is refused; the lock goes when the first ends", async () => {
    const base = await tinyModel();
    const data = writeData();
    const out = join(root, "locked");
    const file = join(root, "locked.yaml");
    writeFileSync(
      file,
      `base_model: ${base}\nadapter: lora\nlora_target_modules: [q_proj]\ndatasets: [{path: ${data}, type: prompt_completion}]\nsequence_len: 32\nmicro_batch_size: 2\nmax_steps: 40\noutput_dir: ${out}\n`,
    );
    const first = runCli(["--quiet", "train", file]);
    const lock = join(out, LOCK_FILE);
    for (let i = 0; i < 600 && !existsSync(lock); i++) await new Promise((r) => setTimeout(r, 20));
    const second = await runCli(["--quiet", "train", file, "--seed", "9"]);
    expect(second.code).toBe(2);
    expect(second.err).toMatch(
      new RegExp(`^qlora: output_dir: ${out} is in use by another qlora train \\(pid ${process.pid} `),
    );
    expect((await first).code).toBe(0);
    expect(existsSync(lock)).toBe(false);
  });

  it("early stopping says why it stopped; load_best_model_at_end saves the best eval's weights", async () => {
    const base = await tinyModel();
    const data = writeData();
    const out = join(root, "early");
    const file = join(root, "early.yaml");
    writeFileSync(
      file,
      `base_model: ${base}\nadapter: lora\nlora_target_linear: true\ndatasets: [{path: ${data}, type: prompt_completion}]\nsequence_len: 32\nmicro_batch_size: 4\nmax_steps: 60\nlearning_rate: 0.3\nlr_scheduler: constant\nval_set_size: 0.25\neval_steps: 1\nsave_steps: 1\nearly_stopping_patience: 1\nload_best_model_at_end: true\noutput_dir: ${out}\n`,
    );
    const r = await runCli(["--quiet", "--json", "train", file]);
    expect(r.code).toBe(0);
    const result = JSON.parse(r.out);
    expect(result.globalStep).toBeLessThan(60);
    expect(result.stoppedEarly).toMatch(
      /^early stopping: eval_loss did not improve for 1 evaluation \(best [\d.]+ at step \d+\)$/,
    );
    const bestStep = Number(/at step (\d+)/.exec(result.stoppedEarly)![1]);
    expect(result.bestCheckpoint).toBe(join(out, `checkpoint-${bestStep}`));
    // the final adapter is the best checkpoint's, byte for byte, and the reported eval loss is the best one
    const adapter = (dir: string) => readFileSync(join(dir, "adapter_model.safetensors"));
    expect(adapter(join(out, "adapter")).equals(adapter(result.bestCheckpoint))).toBe(true);
    const evals = readFileSync(join(out, "metrics.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l))
      .filter((m) => m.step === bestStep && "eval_loss" in m);
    expect(result.evalLossAfter).toBe(evals[0].eval_loss);
    const text = await runCli(["--quiet", "train", file, "--output_dir", join(root, "early-text")]);
    expect(text.out).toMatch(/^stopped before max_steps: early stopping: eval_loss did not improve/m);
    expect(text.out).toMatch(/^loaded the best checkpoint: .*checkpoint-\d+$/m);
  });

  it("fsdp over a 16-bit base says that the base is not sharded (FSDP shards 4-bit weights only)", async () => {
    const base = await tinyModel();
    const data = writeData();
    const file = join(root, "fsdp16.yaml");
    writeFileSync(
      file,
      `base_model: ${base}\nadapter: lora\nlora_target_modules: [q_proj]\nfsdp: [full_shard]\ndatasets: [{path: ${data}, type: prompt_completion}]\nsequence_len: 32\nmicro_batch_size: 4\nmax_steps: 1\noutput_dir: ${join(root, "fsdp16")}\n`,
    );
    let code = -1;
    const lines = await capturingStderr(async () => {
      code = (await runCli(["--quiet", "train", file])).code;
    });
    expect(code).toBe(0);
    expect(lines.join("")).toMatch(/fsdp: the base is not 4-bit: FSDP shards the 4-bit base weights only/);
  });

  it("preprocess --debug shows the label mask: prompt tokens masked, completion and EOS trained", async () => {
    const base = await tinyModel();
    const data = writeData();
    writeFileSync(
      join(root, "pre.yaml"),
      `base_model: ${base}\ndatasets: [{path: ${data}, type: prompt_completion}]\nsequence_len: 64\n`,
    );
    const r = await runCli([
      "preprocess",
      join(root, "pre.yaml"),
      "--debug",
      "--debug-num-examples",
      "2",
      "--sequence-len",
      "32",
    ]);
    expect(r.err).toBe("");
    expect(r.out).toMatch(
      /^48 rows → 48 examples \(0 held out\), \d+ tokens; 0 truncated, 0 dropped \(0 with no label left\)$/m,
    );
    const examples = r.out.split(/--- example \d ---\n/).slice(1);
    expect(examples).toHaveLength(2);
    expect(examples[0]).toMatch(/^⟦<\|begin_of_text\|>colour 0:⟧ red red<\|eot_id\|>\n?$/);
  });

  it("chat_template: chatml renders conversational data with ChatML instead of the tokenizer's template", async () => {
    const base = await tinyModel();
    const data = join(root, "chat.jsonl");
    writeFileSync(
      data,
      JSON.stringify({
        messages: [
          { role: "user", content: "hi" },
          { role: "assistant", content: "hello" },
        ],
      }),
    );
    const yaml = `base_model: ${base}\ndatasets: [{path: ${data}, type: chat_template}]\nsequence_len: 64\n`;
    writeFileSync(join(root, "chatml.yaml"), `${yaml}chat_template: chatml\n`);
    const chatml = await runCli(["preprocess", join(root, "chatml.yaml"), "--debug"]);
    expect(chatml.err).toBe("");
    // the assistant header is prompt (inside ⟦⟧, no loss), as with the tokenizer's own template: only the reply trains
    expect(chatml.out).toMatch(/⟦<\|im_start\|>user\nhi<\|im_end\|>\n<\|im_start\|>assistant\n⟧hello<\|im_end\|>/);
    writeFileSync(join(root, "default.yaml"), yaml);
    const own = await runCli(["preprocess", join(root, "default.yaml"), "--debug"]);
    expect(own.out).toMatch(/<\|start_header_id\|>user<\|end_header_id\|>/);
    writeFileSync(join(root, "jinja.yaml"), `${yaml}chat_template: jinja\n`);
    expect((await runCli(["preprocess", join(root, "jinja.yaml")])).err).toBe(
      `qlora: ${join(root, "jinja.yaml")}: chat_template_jinja: chat_template: jinja needs chat_template_jinja`,
    );
  });

  it("lora_model_dir continues training an existing adapter; bf16: true says the CPU trains in f32", async () => {
    const base = await tinyModel();
    const data = writeData();
    const first = join(root, "first");
    const common = `base_model: ${base}\nload_in_4bit: true\nadapter: qlora\nlora_target_linear: true\ndatasets: [{path: ${data}, type: prompt_completion}]\nsequence_len: 32\nmicro_batch_size: 4\nmax_steps: 3\nlearning_rate: 0.01\n`;
    writeFileSync(join(root, "first.yaml"), `${common}output_dir: ${first}\n`);
    expect((await runCli(["--quiet", "train", join(root, "first.yaml")])).code).toBe(0);
    writeFileSync(
      join(root, "second.yaml"),
      `${common}output_dir: ${join(root, "second")}\nlora_model_dir: ${join(first, "adapter")}\nbf16: true\n`,
    );
    const stderr = await capturingStderr(async () => {
      const r = await runCli(["--quiet", "--json", "train", join(root, "second.yaml")]);
      expect(r.code).toBe(0);
    });
    expect(stderr.join("")).toMatch(/bf16: true — the CPU backend computes in f32/);
    const a = JSON.parse(readFileSync(join(first, "adapter", "adapter_config.json"), "utf8"));
    const b = JSON.parse(readFileSync(join(root, "second", "adapter", "adapter_config.json"), "utf8"));
    expect(b.r).toBe(a.r);
    // the second run started from the first adapter, so its B matrices are not the zeros of a fresh LoRA init
    const { openSafetensors } = await import("@qlora/formats");
    const f = await openSafetensors(join(root, "second", "adapter", "adapter_model.safetensors"));
    expect(f.names.length).toBeGreaterThan(0);
    await f.close();
  });

  it("an Axolotl-style config: empty keys, inert keys warned once, ShareGPT data, per-epoch eval/save, special_tokens", async () => {
    const base = await tinyModel();
    const data = join(root, "sharegpt.jsonl");
    const rows = Array.from({ length: 48 }, (_, i) =>
      JSON.stringify({
        conversations: [
          { from: "human", value: `colour ${i % 7}?` },
          { from: "gpt", value: ["red", "green", "blue", "gold"][i % 4] },
        ],
      }),
    );
    writeFileSync(data, rows.join("\n"));
    const out = join(root, "axolotl");
    const file = join(root, "axolotl.yaml");
    writeFileSync(
      file,
      `base_model: ${base}
strict: false
load_in_4bit: true
adapter: qlora
lora_model_dir:
lora_target_linear: true
datasets:
  - path: ${data}
    type: chat_template
    field_messages: conversations
    message_property_mappings: {role: from, content: value}
dataset_prepared_path:
val_set_size: 8
sequence_len: 64
pad_to_sequence_len: true
micro_batch_size: 4
max_steps: 10
learning_rate: 0.01
wandb_project:
flash_attention: true
evals_per_epoch: 2
saves_per_epoch: 1
early_stopping_patience:
resume_from_checkpoint: true
fsdp:
fsdp_config:
special_tokens:
  pad_token: "<|end_of_text|>"
output_dir: ${out}
`,
    );
    const stderr = await capturingStderr(async () => {
      const r = await runCli(["--quiet", "--json", "train", file]);
      expect(r.err).toBe("");
      expect(r.code).toBe(0);
    });
    expect(stderr).toEqual([
      expect.stringMatching(new RegExp(`^qlora: ${file}:20: flash_attention: true has no effect here: .*\n$`)),
      `qlora: resume_from_checkpoint: no checkpoint in ${out}; starting fresh\n`,
    ]);
    // 40 training examples / micro-batch 4 = 10 steps an epoch: eval every 5 steps, a save every 10
    const metrics = readFileSync(join(out, "metrics.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(metrics.filter((m) => m.eval_loss !== undefined).map((m) => m.step)).toEqual([0, 5, 10]);
    expect(existsSync(join(out, "checkpoint-10", "trainer_state.json"))).toBe(true);
    expect(existsSync(join(out, "checkpoint-5"))).toBe(false);
  });

  it("a full fine-tune (no adapter, dense base) trains every parameter and saves them", async () => {
    const base = await tinyModel();
    const data = writeData();
    const out = join(root, "full");
    writeFileSync(
      join(root, "full.yaml"),
      `base_model: ${base}\ndatasets: [{path: ${data}, type: prompt_completion}]\nsequence_len: 32\nmicro_batch_size: 4\nmax_steps: 3\nlearning_rate: 0.001\noutput_dir: ${out}\n`,
    );
    const r = await runCli(["--quiet", "--json", "train", join(root, "full.yaml")]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out).modelDir).toBe(join(out, "model"));
    const { openSafetensors } = await import("@qlora/formats");
    const f = await openSafetensors(join(out, "model", "model.safetensors"));
    expect(f.names).toContain("model.layers.0.mlp.down_proj.weight");
    expect(f.names).toContain("model.embed_tokens.weight");
    await f.close();
    // and it loads back as a model that evaluates
    const ev = await runCli(["--json", "eval", "--model", join(out, "model"), "--data", data, "--quantize", "none"]);
    expect(ev.code).toBe(0);
  });

  it("--verbose adds the stack to an error; without it the error is one line", async () => {
    const plain = await runCli(["train", join(root, "missing.yaml")]);
    expect(plain.err.split("\n")).toHaveLength(1);
    const verbose = await runCli(["--verbose", "train", join(root, "missing.yaml")]);
    expect(verbose.err).toMatch(/^qlora: .*missing\.yaml: cannot read the config file/);
    expect(verbose.err).toMatch(/\n\s*at /);
  });

  it("a bad data row is an error naming file:line and the fields expected", async () => {
    const base = await tinyModel();
    const data = join(root, "bad-rows.jsonl");
    writeFileSync(data, '{"prompt": "a", "completion": " b"}\n{"prompt": "only a prompt"}\n');
    writeFileSync(
      join(root, "badrows.yaml"),
      `base_model: ${base}\ndatasets: [{path: ${data}, type: prompt_completion}]\n`,
    );
    const r = await runCli(["train", join(root, "badrows.yaml")]);
    expect(r.code).toBe(2); // bad input, as a bad flag; 1 is kept for a run that fails
    expect(r.err).toMatch(new RegExp(`^qlora: .*${data.replaceAll("/", "\\/")}:2.*completion`));
  });

  it("a fresh run into an output_dir with an earlier run's checkpoints is refused unless overwrite_output_dir", async () => {
    const base = await tinyModel();
    const data = writeData();
    const out = join(root, "reused");
    const file = join(root, "reused.yaml");
    writeFileSync(
      file,
      `base_model: ${base}\nload_in_4bit: true\nadapter: qlora\nlora_target_modules: [q_proj]\ndatasets: [{path: ${data}, type: prompt_completion}]\nmicro_batch_size: 4\nmax_steps: 2\nsave_steps: 1\noutput_dir: ${out}\n`,
    );
    expect((await runCli(["--quiet", "train", file])).code).toBe(0);
    const again = await runCli(["--quiet", "train", file]);
    expect(again.code).toBe(2);
    expect(again.err).toBe(
      `qlora: output_dir: ${out} already holds checkpoint-2 from an earlier run: resume it (resume_from_checkpoint: true), write to another output_dir, or set overwrite_output_dir: true to start over (its checkpoints are deleted)`,
    );
    const stderr = await capturingStderr(async () => {
      const rewind = await runCli(["--quiet", "train", file, "--resume-from-checkpoint", join(out, "checkpoint-1")]);
      expect(rewind.code).toBe(0);
    });
    expect(stderr.join("")).toContain("checkpoint-1 rewinds the run; checkpoint-2 in output_dir are from after it");
    const over = await runCli(["--quiet", "train", file, "--overwrite-output-dir", "true", "--save-steps", "2"]);
    expect(over.code).toBe(0);
    expect(existsSync(join(out, "checkpoint-1"))).toBe(false);
    expect(existsSync(join(out, "checkpoint-2"))).toBe(true);
    // a data option too large for the data is reported under its config key, not the library's option name
    const split = await runCli(["train", file, "--val-set-size", "200", "--output-dir", join(root, "split")]);
    expect(split.code).toBe(2);
    expect(split.err).toMatch(
      /^qlora: val_set_size: 200 holds out 200 of 48 examples; expected a fraction in \(0, 1\)/,
    );
  });

  it("a bad config key, a missing base model and a missing dataset are one-line errors with exit code 2", async () => {
    writeFileSync(join(root, "bad.yaml"), "base_model: x\ndatasets: [{path: d.jsonl}]\nlora_rr: 3\n");
    const bad = await runCli(["train", join(root, "bad.yaml")]);
    expect(bad.code).toBe(2);
    expect(bad.err).toBe(`qlora: ${join(root, "bad.yaml")}:3: unknown key "lora_rr" (did you mean "lora_r"?)`);
    const data = writeData();
    writeFileSync(join(root, "nobase.yaml"), `base_model: ${join(root, "none")}\ndatasets: [{path: ${data}}]\n`);
    const nobase = await runCli(["train", join(root, "nobase.yaml")]);
    expect(nobase.code).toBe(2);
    expect(nobase.err).toBe(`qlora: base_model: ${join(root, "none")} is not a model directory (no config.json)`);
    const base = await tinyModel();
    writeFileSync(join(root, "nodata.yaml"), `base_model: ${base}\ndatasets: [{path: ${join(root, "none.jsonl")}}]\n`);
    const nodata = await runCli(["train", join(root, "nodata.yaml")]);
    expect(nodata.err).toBe(`qlora: datasets[0].path: ${join(root, "none.jsonl")} does not exist`);
    const fourBitFull = await runCli(["train", join(root, "nodata.yaml"), "--load-in-4bit", "true"]);
    expect(fourBitFull.err).toMatch(/^qlora: load_in_4bit: a 4-bit base cannot be fully fine-tuned/);
    const good = join(root, "good.yaml");
    writeFileSync(good, `base_model: ${base}\nadapter: qlora\nload_in_4bit: true\ndatasets: [{path: ${data}}]\n`);
    const noExt = await runCli(["train", good, "--datasets", "[{path: /dev/null}]"]);
    expect(noExt.err).toBe(
      "qlora: datasets[0].path: /dev/null: cannot tell the file format from its extension; expected .jsonl, .json, .txt or .parquet",
    );
    // an output_dir that cannot be a directory is refused before the model loads, by its key
    const file = join(root, "afile");
    writeFileSync(file, "x");
    const outFile = await runCli(["train", good, "--output-dir", file]);
    expect(outFile.err).toBe(`qlora: output_dir: ${file} exists and is not a directory (expected an output directory)`);
    const outInput = await runCli(["train", good, "--output-dir", base]);
    expect(outInput.err).toBe(`qlora: output_dir: ${base} is base_model itself; write the output to another directory`);
  });
});
