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
