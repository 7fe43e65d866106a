import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseTrainConfig, TRAIN_CONFIG_KEYS } from "./config";
import { CliError } from "./errors";

const minimal = `base_model: ./tiny
datasets:
  - path: data.jsonl
    type: alpaca
`;

function errorOf(text: string, overrides: Record<string, string> = {}): CliError {
  try {
    parseTrainConfig(text, "run.yaml", overrides);
  } catch (e) {
    expect(e).toBeInstanceOf(CliError);
    return e as CliError;
  }
  throw new Error("expected a CliError");
}

describe("parseTrainConfig", () => {
  it("fills Axolotl's defaults", () => {
    const c = parseTrainConfig(minimal);
    expect(c.base_model).toBe("./tiny");
    expect(c.datasets).toEqual([{ path: "data.jsonl", type: "alpaca" }]);
    expect(c.sequence_len).toBe(512);
    expect(c.lr_scheduler).toBe("cosine");
    expect(c.train_on_inputs).toBe(false);
    expect(c.optimizer).toBe("adamw_torch");
  });

  it("reads a QLoRA recipe", () => {
    const c = parseTrainConfig(`${minimal}load_in_4bit: true
adapter: qlora
lora_r: 16
lora_alpha: 32
lora_target_linear: true
optimizer: paged_adamw_8bit
warmup_ratio: 0.1
`);
    expect(c.adapter).toBe("qlora");
    expect(c.lora_r).toBe(16);
    expect(c.optimizer).toBe("paged_adamw_8bit");
    expect(c.warmup_ratio).toBe(0.1);
  });

  it("names file, line, key, value and expectation for a wrong type", () => {
    const e = errorOf(`${minimal}lora_r: sixteen\n`);
    expect(e.code).toBe("CONFIG_INVALID");
    expect(e.message).toBe('run.yaml:5: lora_r: expected number, got "sixteen"');
  });

  it("reports an unknown key with the closest known key", () => {
    const e = errorOf(`${minimal}lora_alpah: 16\n`);
    expect(e.message).toBe('run.yaml:5: unknown key "lora_alpah" (did you mean "lora_alpha"?)');
  });

  it("reports an unknown key inside a dataset", () => {
    const e = errorOf("base_model: m\ndatasets:\n  - path: d.jsonl\n    tpye: alpaca\n");
    expect(e.message).toBe('run.yaml:4: unknown key "datasets[0].tpye" (did you mean "type"?)');
  });

  it("lists the allowed values of an enum", () => {
    const e = errorOf(`${minimal}optimizer: adam\n`);
    expect(e.message).toMatch(/^run\.yaml:5: optimizer: expected one of "adamw_torch", .*"sgd", got "adam"$/);
  });

  it("rejects qlora without load_in_4bit and both warmup forms", () => {
    expect(errorOf(`${minimal}adapter: qlora\n`).message).toBe(
      "run.yaml: load_in_4bit: adapter: qlora needs load_in_4bit: true",
    );
    expect(errorOf(`${minimal}warmup_steps: 10\nwarmup_ratio: 0.1\n`).message).toMatch(
      /^run\.yaml:6: warmup_ratio: set warmup_steps or warmup_ratio, not both, got 0\.1$/,
    );
  });

  it("requires base_model and a non-empty datasets list", () => {
    const e = errorOf("datasets: []\n");
    expect(e.message).toContain("run.yaml: base_model: expected string, got nothing");
    expect(e.message).toContain("run.yaml:1: datasets: expected at least 1 item(s), got []");
  });

  it("reports YAML syntax errors with their line", () => {
    const e = errorOf("base_model: a\ndatasets: [\n");
    expect(e.code).toBe("CONFIG_PARSE");
    expect(e.message).toMatch(/^run\.yaml:\d+: invalid YAML: /);
  });

  it("an undefined alias or an alias bomb is a parse error, not a crash", () => {
    expect(errorOf("\n*!").message).toMatch(/^run\.yaml: invalid YAML: Unresolved alias/);
    const bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"];
    for (let i = 1; i < 10; i++)
      bomb.push(
        `${"abcdefghij"[i]}: &${"abcdefghij"[i]} [${Array(9)
          .fill(`*${"abcdefghij"[i - 1]}`)
          .join(", ")}]`,
      );
    expect(errorOf(bomb.join("\n")).code).toBe("CONFIG_PARSE");
  });

  it("applies --key value overrides (kebab or snake case) over the file", () => {
    const c = parseTrainConfig(minimal, "run.yaml", { "lora-r": "32", max_steps: "7", "sample-packing": "true" });
    expect(c.lora_r).toBe(32);
    expect(c.max_steps).toBe(7);
    expect(c.sample_packing).toBe(true);
    expect(errorOf(minimal, { "lora-rr": "3" }).message).toMatch(/unknown key "lora_rr" \(did you mean "lora_r"\?\)/);
  });

  it("a chat_template_jinja that does not parse is a config error at its line", () => {
    const err = errorOf(
      `${minimal}chat_template: jinja\nchat_template_jinja: "{% for m in messages %}{{ m['content'] }}"\n`,
    );
    expect(err.message).toMatch(/^run\.yaml:\d+: chat_template_jinja: not a Jinja template this CLI can render \(/);
  });

  it("a command-line value for a text key is taken as written (a Jinja template, braces in a path)", () => {
    const jinja = "{% for m in messages %}{{ m.content }}{% endfor %}";
    const c = parseTrainConfig(`${minimal}chat_template: jinja\n`, "run.yaml", {
      chat_template_jinja: jinja,
      "output-dir": "{x}",
      "lora-r": "16",
    });
    expect(c.chat_template_jinja).toBe(jinja);
    expect(c.output_dir).toBe("{x}");
    expect(c.lora_r).toBe(16);
  });

  it("an error in a command-line value names its flag, not the file line it replaced", () => {
    const file = `${minimal}learning_rate: 0.001\n`;
    expect(errorOf(file, { "learning-rate": "-1" }).message).toBe(
      "--learning-rate (command line): learning_rate: expected a number > 0, got -1",
    );
    expect(errorOf(file, { "no-such-key": "3" }).message).toBe(
      '--no-such-key (command line): unknown key "no_such_key"',
    );
    expect(errorOf(`${minimal}learning_rate: -2\n`).message).toMatch(
      /^run\.yaml:\d+: learning_rate: expected a number > 0/,
    );
  });

  it("an empty key (YAML null) is unset, as Axolotl's example configs use it", () => {
    const c = parseTrainConfig(`${minimal}adapter: lora
lora_model_dir:
resume_from_checkpoint:
early_stopping_patience:
fsdp:
fsdp_config:
lora_target_modules:
`);
    expect(c.lora_model_dir).toBeUndefined();
    expect(c.resume_from_checkpoint).toBeUndefined();
    expect(c.early_stopping_patience).toBeUndefined();
    expect(c.fsdp).toBeUndefined();
    expect(c.fsdp_config).toBeUndefined();
    expect(c.lora_target_modules).toBeUndefined();
    // an empty type is no type: each row's format is told by its keys
    expect(
      parseTrainConfig(`base_model: m\ndatasets:\n  - path: d.jsonl\n    type:\n`).datasets[0].type,
    ).toBeUndefined();
    // --key null unsets a key the file sets; an unknown key stays an error even when empty
    expect(parseTrainConfig(`${minimal}max_steps: 5\n`, "run.yaml", { "max-steps": "null" }).max_steps).toBeUndefined();
    expect(errorOf(`${minimal}lora_alpah:\n`).message).toBe(
      'run.yaml:5: unknown key "lora_alpah" (did you mean "lora_alpha"?)',
    );
  });

  it("reads Axolotl's examples/llama-3/qlora.yml: inert keys give one warning each, with file and line", () => {
    const c = parseTrainConfig(AXOLOTL_LLAMA3_QLORA, "qlora.yml");
    expect(c).toMatchObject({
      adapter: "qlora",
      sample_packing: true,
      pad_to_sequence_len: true,
      val_set_size: 0.05,
      evals_per_epoch: 4,
      saves_per_epoch: 1,
      special_tokens: { pad_token: "<|end_of_text|>" },
    });
    // false, "" and empty ask for nothing: strict: false, tf32: false, fp16:, wandb_project: are silent
    expect(c.warnings).toEqual([
      'qlora.yml:2: model_type: "LlamaForCausalLM" has no effect here: the architecture is read from base_model\'s config.json',
      'qlora.yml:3: tokenizer_type: "AutoTokenizer" has no effect here: the tokenizer is read from base_model\'s tokenizer.json',
      expect.stringMatching(
        /^qlora\.yml:55: flash_attention: true has no effect here: attention always runs on qlora's own kernels/,
      ),
    ]);
    const loud = parseTrainConfig(`${minimal}fp16: true\nwandb_project: runs\nstrict: true\n`, "run.yaml").warnings;
    expect(loud).toEqual([
      expect.stringMatching(/^run\.yaml:7: strict: true has no effect here: .*always checks configs strictly/),
      expect.stringMatching(/^run\.yaml:6: wandb_project: "runs" has no effect here: Weights & Biases is not built in/),
      expect.stringMatching(/^run\.yaml:5: fp16: true has no effect here: training runs in f32 here/),
    ]);
    expect(parseTrainConfig(minimal).warnings).toEqual([]);
  });

  it("keys asking for what cannot be done here stay errors", () => {
    expect(errorOf(`${minimal}deepspeed: zero2.json\n`).message).toBe(
      'run.yaml:5: deepspeed: DeepSpeed is not supported; for several processes use qlora train --nproc N with the ddp / fsdp keys, got "zero2.json"',
    );
    expect(errorOf(`${minimal}lora_fan_in_fan_out: true\n`).message).toMatch(
      /^run\.yaml:5: lora_fan_in_fan_out: expected one of false, got true$/,
    );
    expect(errorOf(`${minimal}special_tokens:\n  pad_tokn: x\n`).message).toBe(
      'run.yaml:6: unknown key "special_tokens.pad_tokn" (did you mean "pad_token"?)',
    );
  });

  it("val_set_size is a fraction or a whole number of examples", () => {
    expect(parseTrainConfig(`${minimal}val_set_size: 20\n`).val_set_size).toBe(20);
    expect(parseTrainConfig(`${minimal}val_set_size: 0.1\n`).val_set_size).toBe(0.1);
    expect(errorOf(`${minimal}val_set_size: 2.5\n`).message).toBe(
      "run.yaml:5: val_set_size: expected a fraction in [0, 1) or a whole number of examples, got 2.5",
    );
  });

  it("eval and save schedules: per-step or per-epoch, not both; evaluation needs eval data", () => {
    const withVal = `${minimal}val_set_size: 0.1\n`;
    expect(errorOf(`${withVal}eval_steps: 5\nevals_per_epoch: 2\n`).message).toBe(
      "run.yaml:7: evals_per_epoch: set eval_steps or evals_per_epoch, not both, got 2",
    );
    expect(errorOf(`${minimal}save_steps: 5\nsaves_per_epoch: 2\n`).message).toBe(
      "run.yaml:6: saves_per_epoch: set save_steps or saves_per_epoch, not both, got 2",
    );
    expect(errorOf(`${minimal}eval_steps: 10\n`).message).toBe(
      "run.yaml:5: eval_steps: eval_steps needs eval data: set val_set_size (a fraction, or a number of examples; test_datasets is not supported), got 10",
    );
    expect(errorOf(`${minimal}evals_per_epoch: 4\nval_set_size: 0\n`).message).toMatch(
      /^run\.yaml:5: evals_per_epoch: evals_per_epoch needs eval data: set val_set_size/,
    );
    expect(errorOf(`${minimal}early_stopping_patience: 3\n`).message).toMatch(
      /early_stopping_patience: early stopping watches the eval loss, so it needs eval data/,
    );
    expect(parseTrainConfig(`${withVal}evals_per_epoch: 4\nsaves_per_epoch: 1\n`)).toMatchObject({
      evals_per_epoch: 4,
      saves_per_epoch: 1,
    });
  });

  it("cosine_min_lr_ratio applies to the cosine schedules only, and cosine_with_min_lr needs it", () => {
    expect(parseTrainConfig(`${minimal}cosine_min_lr_ratio: 0.1\n`).cosine_min_lr_ratio).toBe(0.1);
    expect(errorOf(`${minimal}lr_scheduler: linear\ncosine_min_lr_ratio: 0.1\n`).message).toBe(
      "run.yaml:6: cosine_min_lr_ratio: applies to lr_scheduler: cosine or cosine_with_min_lr, not linear, got 0.1",
    );
    expect(errorOf(`${minimal}lr_scheduler: cosine_with_min_lr\n`).message).toMatch(
      /^run\.yaml: cosine_min_lr_ratio: lr_scheduler: cosine_with_min_lr needs cosine_min_lr_ratio/,
    );
  });

  it("chat datasets take Axolotl's field_messages, message_property_mappings and roles; other types refuse them", () => {
    const c = parseTrainConfig(`base_model: m
datasets:
  - path: sg.jsonl
    type: chat_template
    field_messages: conversations
    message_property_mappings: {role: from, content: value}
    roles: {user: [human], assistant: gpt}
  - path: legacy.jsonl
    type: sharegpt
`);
    expect(c.datasets[0]).toMatchObject({
      field_messages: "conversations",
      roles: { user: ["human"], assistant: "gpt" },
    });
    expect(c.datasets[1].type).toBe("sharegpt");
    expect(
      errorOf("base_model: m\ndatasets:\n  - path: a.jsonl\n    type: alpaca\n    field_messages: x\n").message,
    ).toBe('run.yaml:5: datasets[0].field_messages: applies to type: chat_template only, not alpaca, got "x"');
  });

  it("fuzz: any YAML text either parses or throws a CliError", () => {
    const keys = fc.constantFrom(...TRAIN_CONFIG_KEYS, "datasets", "junk_key");
    const value = fc.oneof(fc.integer(), fc.double(), fc.string(), fc.boolean(), fc.constant(null));
    fc.assert(
      fc.property(fc.dictionary(keys, value), fc.string(), (obj, noise) => {
        const text = `${Object.entries(obj)
          .map(([k, v]) => `${k}: ${JSON.stringify(v)}`)
          .join("\n")}\n${noise}`;
        try {
          parseTrainConfig(text, "f.yaml");
        } catch (e) {
          expect(e).toBeInstanceOf(CliError);
        }
      }),
      { numRuns: 300 },
    );
  });
});

/** Axolotl's examples/llama-3/qlora.yml (local paths). */
const AXOLOTL_LLAMA3_QLORA = `base_model: ./base
model_type: LlamaForCausalLM
tokenizer_type: AutoTokenizer

load_in_8bit: false
load_in_4bit: true
strict: false

datasets:
  - path: data/alpaca.jsonl
    type: alpaca
dataset_prepared_path:
val_set_size: 0.05
output_dir: ./outputs/qlora-out

adapter: qlora
lora_model_dir:

sequence_len: 4096
sample_packing: true
pad_to_sequence_len: true

lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_target_modules:
lora_target_linear: true
lora_fan_in_fan_out:

wandb_project:
wandb_entity:
wandb_watch:
wandb_name:
wandb_log_model:

gradient_accumulation_steps: 4
micro_batch_size: 2
num_epochs: 4
optimizer: paged_adamw_32bit
lr_scheduler: cosine
learning_rate: 0.0002

train_on_inputs: false
group_by_length: false
bf16: auto
fp16:
tf32: false

gradient_checkpointing: true
early_stopping_patience:
resume_from_checkpoint:
local_rank:
logging_steps: 1
xformers_attention:
flash_attention: true

warmup_steps: 10
evals_per_epoch: 4
eval_table_size:
saves_per_epoch: 1
debug:
deepspeed:
weight_decay: 0.0
fsdp:
fsdp_config:
special_tokens:
  pad_token: "<|end_of_text|>"
`;

describe("the LoRA settings a config gives PEFT's LoraConfig", () => {
  it("peft_layers_to_transform / peft_layers_pattern and peft_ensure_weight_tying pass through under PEFT's names", async () => {
    const { loraSettings } = await import("./train");
    const c = parseTrainConfig(
      "base_model: m\ndatasets: [{path: d.jsonl}]\nadapter: lora\npeft_layers_to_transform: [1, 3]\npeft_layers_pattern: layers\npeft_ensure_weight_tying: true\n",
      "c.yaml",
    );
    expect(loraSettings(c)).toMatchObject({
      layers_to_transform: [1, 3],
      layers_pattern: "layers",
      ensure_weight_tying: true,
    });
    const plain = loraSettings(
      parseTrainConfig("base_model: m\ndatasets: [{path: d.jsonl}]\nadapter: lora\n", "c.yaml"),
    );
    expect(plain).toMatchObject({ layers_to_transform: null, layers_pattern: null, ensure_weight_tying: false });
  });
});
