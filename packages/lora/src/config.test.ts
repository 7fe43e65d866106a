import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { LORA_DEFAULTS, configFromJson, configToJson, loraConfig } from "./config";
import { LoraError } from "./errors";
import { isTargeted, loraScaling, patternKey, rankAndAlpha, resolveTargetModules } from "./match";

const rejects = (input: object, field: RegExp) => {
  let err: unknown;
  try {
    loraConfig(input);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(LoraError);
  expect((err as LoraError).code).toBe("BAD_CONFIG");
  expect((err as LoraError).message).toMatch(field);
};

describe("LoraConfig: PEFT's defaults and rules", () => {
  it("defaults are PEFT's", () => {
    const c = loraConfig();
    expect(c).toMatchObject({
      r: 8,
      lora_alpha: 8,
      lora_dropout: 0,
      bias: "none",
      use_rslora: false,
      use_dora: false,
      init_lora_weights: true,
    });
    expect(c.rank_pattern).toEqual({});
    expect(Object.isFrozen(c)).toBe(true);
  });
  it("rejects PEFT's invalid combinations, naming the field", () => {
    rejects({ r: 0 }, /LoraConfig\.r: expected a positive integer/);
    rejects({ r: 2.5 }, /LoraConfig\.r/);
    rejects({ lora_dropout: 1.5 }, /LoraConfig\.lora_dropout/);
    rejects({ bias: "some" }, /LoraConfig\.bias/);
    rejects(
      { target_modules: ".*proj", layers_to_transform: [0] },
      /LoraConfig\.layers_to_transform: cannot be used when `target_modules` is a str/,
    );
    rejects({ target_modules: ".*proj", layers_pattern: "layers" }, /LoraConfig\.layers_pattern: cannot be used/);
    rejects(
      { target_modules: ["q_proj"], layers_pattern: "layers" },
      /layers_pattern.*`layers_to_transform` must also be specified/,
    );
    rejects({ init_lora_weights: "loftq" }, /LoraConfig\.loftq_config: must be specified/);
    rejects({ init_lora_weights: "loftq", loftq_config: { loftq_bits: 8 } }, /loftq_bits/);
    rejects({ init_lora_weights: "eva" }, /init_lora_weights.*not implemented/);
    rejects({ init_lora_weights: "pissa_niter_x" }, /init_lora_weights/);
    rejects(
      { lora_bias: true, init_lora_weights: "pissa" },
      /LoraConfig\.lora_bias: lora_bias=true is only supported with init_lora_weights=true or false/,
    );
    rejects({ lora_bias: true, use_dora: true }, /not supported for DoRA/);
    rejects({ rank_pattern: { q_proj: 0 } }, /rank_pattern\["q_proj"\]/);
    rejects({ target_modules: "(" }, /target_modules: the string is used as a regular expression/);
    rejects({ target_modules: [""] }, /target_modules/);
    rejects({ layers_to_transform: [-1], target_modules: ["q"] }, /layers_to_transform/);
    rejects({ layer_replication: [[0, 2]] } as object, /layer_replication.*not supported/);
    rejects({ use_dora: "yes" } as object, /use_dora: expected a boolean/);
  });
  it("refuses a field PEFT's LoraConfig does not have, with the nearest real name (PEFT raises TypeError)", () => {
    expect(() => loraConfig({ r: 8, lora_alpa: 32 } as never)).toThrow(
      'LoraConfig.lora_alpa: not a field of PEFT\'s LoraConfig (did you mean "lora_alpha"?)',
    );
    expect(() => loraConfig({ loraAlpha: 8 } as never)).toThrow(/LoraConfig.loraAlpha: .*did you mean "lora_alpha"/);
    expect(() => loraConfig({ zzzzzzzzzzzz: 1 } as never)).toThrow(
      /LoraConfig.zzzzzzzzzzzz: not a field of PEFT's LoraConfig$/,
    );
  });

  it("accepts the valid special inits", () => {
    for (const v of [true, false, "gaussian", "pissa", "pissa_niter_16", "olora"] as const)
      expect(loraConfig({ init_lora_weights: v }).init_lora_weights).toBe(v);
    expect(
      loraConfig({ init_lora_weights: "loftq", loftq_config: { loftq_bits: 4, loftq_iter: 2 } }).loftq_config
        .loftq_iter,
    ).toBe(2);
  });
  it("rsLoRA scaling is α/√r, plain α/r", () => {
    expect(loraScaling(16, 16, false)).toBe(1);
    expect(loraScaling(16, 16, true)).toBe(4);
  });
});

describe("target matching (PEFT's check_target_module_exists)", () => {
  const keys = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.self_attn.k_proj",
    "model.layers.1.self_attn.q_proj",
    "model.layers.11.mlp.up_proj",
    "lm_head",
  ];
  const pick = (input: object) => keys.filter((k) => isTargeted(loraConfig(input), k));
  it("list: exact name or dotted suffix", () => {
    expect(pick({ target_modules: ["q_proj"] })).toEqual([keys[0], keys[2]]);
    expect(pick({ target_modules: ["self_attn.q_proj"] })).toEqual([keys[0], keys[2]]);
    expect(pick({ target_modules: ["lm_head"] })).toEqual(["lm_head"]);
    expect(pick({ target_modules: ["proj"] })).toEqual([]); // no partial-name matches
  });
  it("string: full regex match", () => {
    expect(pick({ target_modules: ".*\\.(q|k)_proj" })).toEqual([keys[0], keys[1], keys[2]]);
    expect(pick({ target_modules: "q_proj" })).toEqual([]); // must match the whole name
  });
  it("exclude_modules removes matches (list or regex)", () => {
    expect(
      pick({ target_modules: ["q_proj", "k_proj"], exclude_modules: ["model.layers.0.self_attn.k_proj"] }),
    ).toEqual([keys[0], keys[2]]);
    expect(pick({ target_modules: ["q_proj"], exclude_modules: ".*layers\\.1\\..*" })).toEqual([keys[0]]);
  });
  it("layers_to_transform (+ layers_pattern) on suffix matches", () => {
    expect(pick({ target_modules: ["q_proj", "up_proj"], layers_to_transform: [1, 11] })).toEqual([keys[2], keys[3]]);
    expect(pick({ target_modules: ["q_proj"], layers_to_transform: 0, layers_pattern: "layers" })).toEqual([keys[0]]);
    expect(pick({ target_modules: ["q_proj"], layers_to_transform: 0, layers_pattern: "h" })).toEqual([]);
  });
  it("rank_pattern / alpha_pattern: exact key, else a dotted-suffix regex", () => {
    const c = loraConfig({
      r: 8,
      lora_alpha: 16,
      rank_pattern: { q_proj: 4, "layers\\.1\\..*": 2 },
      alpha_pattern: { "model.layers.11.mlp.up_proj": 3 },
    });
    expect(rankAndAlpha(c, keys[0])).toEqual({ r: 4, alpha: 16 });
    expect(rankAndAlpha(c, keys[1])).toEqual({ r: 8, alpha: 16 });
    expect(rankAndAlpha(c, keys[3])).toEqual({ r: 8, alpha: 3 });
    expect(patternKey({ "layers\\.1\\..*": 2 }, keys[2])).toBe("layers\\.1\\..*");
    expect(patternKey({ proj: 2 }, keys[0])).toBeNull();
  });
  it('"all-linear": every linear but the output head; null needs a known architecture', () => {
    const c = loraConfig({ target_modules: "all-linear" });
    expect(resolveTargetModules(c, keys)).toEqual(keys.slice(0, 4).sort());
    expect(resolveTargetModules(loraConfig(), keys, { modelType: "llama" })).toEqual(["q_proj", "v_proj"]);
    expect(() => resolveTargetModules(loraConfig(), keys)).toThrow(/target_modules: null needs a known model type/);
  });
});

describe("adapter_config.json", () => {
  it("round-trips and carries PEFT's fields", () => {
    const c = loraConfig({
      r: 16,
      lora_alpha: 32,
      lora_dropout: 0.05,
      target_modules: ["v_proj", "q_proj"],
      use_rslora: true,
      rank_pattern: { q_proj: 8 },
    });
    const json = configToJson(c);
    for (const k of [
      "peft_type",
      "task_type",
      "r",
      "lora_alpha",
      "target_modules",
      "bias",
      "use_dora",
      "init_lora_weights",
      "modules_to_save",
      "fan_in_fan_out",
      "megatron_core",
      "layers_pattern",
      "alpha_pattern",
      "loftq_config",
    ])
      expect(json).toHaveProperty(k);
    expect(json.inference_mode).toBe(true);
    expect(json.target_modules).toEqual(["q_proj", "v_proj"]);
    const back = configFromJson(JSON.parse(JSON.stringify(json)));
    expect({ ...back, inference_mode: false }).toEqual({ ...c, target_modules: ["q_proj", "v_proj"] });
  });
  it('task_type: PEFT\'s TaskType values ("CAUSAL_LM" round-trips); anything else names the field', () => {
    const json = configToJson(loraConfig({ task_type: "CAUSAL_LM", target_modules: ["q_proj"] }));
    expect(json.task_type).toBe("CAUSAL_LM");
    expect(configFromJson(JSON.parse(JSON.stringify(json))).task_type).toBe("CAUSAL_LM");
    expect(() => loraConfig({ task_type: "causal_lm" })).toThrow(
      /LoraConfig.task_type: expected one of SEQ_CLS, SEQ_2_SEQ_LM, CAUSAL_LM, TOKEN_CLS, QUESTION_ANS, FEATURE_EXTRACTION or null, got "causal_lm"/,
    );
  });
  it("a minimal PEFT config loads with defaults", () => {
    expect(configFromJson({ peft_type: "LORA", target_modules: ["q_proj"] })).toEqual({
      ...LORA_DEFAULTS,
      target_modules: ["q_proj"],
    });
  });
  it("bad files name the file and field", () => {
    expect(() => configFromJson([], "x/adapter_config.json")).toThrow(/x\/adapter_config.json: expected a JSON object/);
    expect(() => configFromJson({ peft_type: "IA3" }, "f.json")).toThrow(/f.json: "peft_type" must be "LORA"/);
    expect(() => configFromJson({ peft_type: "LORA", r: -1 }, "f.json")).toThrow(/f.json: LoraConfig.r/);
    expect(() => configFromJson({ peft_type: "LORA", r: null }, "f.json")).toThrow(
      /f.json: LoraConfig.r: expected a positive integer, got null/,
    );
    expect(configFromJson({ peft_type: "LORA", rank_pattern: null, target_modules: null }).rank_pattern).toEqual({});
  });
  it("fuzz: any JSON value gives a config or a LoraError, never another throw", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.jsonValue(),
          fc.record(
            {
              peft_type: fc.constantFrom("LORA", "X"),
              r: fc.jsonValue(),
              lora_alpha: fc.jsonValue(),
              target_modules: fc.oneof(fc.jsonValue(), fc.string()),
              layers_to_transform: fc.jsonValue(),
              layers_pattern: fc.jsonValue(),
              rank_pattern: fc.jsonValue(),
              init_lora_weights: fc.oneof(fc.jsonValue(), fc.constantFrom("pissa", "loftq", "olora")),
              loftq_config: fc.jsonValue(),
              bias: fc.jsonValue(),
            },
            { requiredKeys: [] },
          ),
        ),
        (v) => {
          try {
            const c = configFromJson(v);
            expect(c.r).toBeGreaterThan(0);
          } catch (e) {
            if (!(e instanceof LoraError)) throw e;
          }
        },
      ),
      { numRuns: 1500 },
    );
  });
});
