import { describe, expect, it } from "vitest";
import { CliError } from "./errors";
import {
  adamStateBytes,
  DEFAULT_ESTIMATE,
  defaultLogitsChunk,
  estimateMemory,
  formatPlan,
  type MemoryPlan,
  modelShapeFromConfig,
  optimizerSpec,
  optimizerStateBytes,
  quantizedBytes,
} from "./estimate";

const llama65b = {
  architectures: ["LlamaForCausalLM"],
  hidden_size: 8192,
  intermediate_size: 22016,
  num_hidden_layers: 80,
  num_attention_heads: 64,
  vocab_size: 32000,
  torch_dtype: "float16",
};

describe("estimateMemory", () => {
  it("prints ≈ 33 GB of NF4+DQ weights for Llama-65B, as the QLoRA paper does", () => {
    const plan = estimateMemory(modelShapeFromConfig(llama65b), DEFAULT_ESTIMATE);
    expect(plan.quantizedParams).toBe(80 * (4 * 8192 * 8192 + 3 * 8192 * 22016));
    const base = plan.rows[0].bytes;
    expect(base / 1e9).toBeGreaterThan(33.0);
    expect(base / 1e9).toBeLessThan(33.8);
    // ≈ 4.127 bits per quantized parameter
    expect((base * 8) / plan.quantizedParams).toBeCloseTo(4.127, 2);
    expect(formatPlan(plan)).toMatch(/base weights \(NF4-DQ\)\s+33\.\d\d GB/);
  });

  it("counts double quantization, plain NF4 and 16-bit storage exactly", () => {
    const n = 64 * 256 * 3; // 768 blocks
    expect(quantizedBytes(n, "nf4", 2)).toBe(n / 2 + 768 * 4);
    expect(quantizedBytes(n, "nf4-dq", 2)).toBe(n / 2 + 768 + 3 * 4 + 1024);
    expect(quantizedBytes(n, "none", 2)).toBe(2 * n);
  });

  it("8-bit optimizer state is about a quarter of 32-bit; checkpointing shrinks activations", () => {
    const shape = modelShapeFromConfig(llama65b);
    const a = estimateMemory(shape, { ...DEFAULT_ESTIMATE, gradientCheckpointing: true });
    const b = estimateMemory(shape, { ...DEFAULT_ESTIMATE, gradientCheckpointing: true, optimizerBits: 8 });
    const row = (plan: MemoryPlan, prefix: string) => plan.rows.find((r) => r.item.startsWith(prefix))!.bytes;
    expect(row(b, "optimizer state") / row(a, "optimizer state")).toBeLessThan(0.27);
    const c = estimateMemory(shape, DEFAULT_ESTIMATE); // off by default, as train's gradient_checkpointing
    expect(row(c, "saved activations (all")).toBeGreaterThan(5 * row(a, "checkpointed layer inputs ("));
    expect(c.totalBytes).toBeGreaterThan(a.totalBytes + row(c, "saved activations (all") / 2);
  });

  it("Lion keeps one state (its momentum), SGD one f32 momentum buffer, AdamW two", () => {
    const n = 8192;
    expect(optimizerStateBytes(n, "adamw", 32)).toBe(8 * n);
    expect(optimizerStateBytes(n, "lion", 32)).toBe(4 * n);
    expect(optimizerStateBytes(n, "lion", 8)).toBe(n + 4 * (n / 256));
    expect(optimizerStateBytes(n, "adamw", 8)).toBe(2 * (n + 4 * (n / 256)));
    expect(optimizerStateBytes(n, "sgd", 32)).toBe(4 * n);
    expect(optimizerStateBytes(n, "sgd", 8)).toBe(4 * n); // SGD has no 8-bit form
    expect(optimizerStateBytes(100, "lion", 8)).toBe(400); // below min_8bit_size: 32-bit
    // the config's names, as train builds the optimizer
    expect(optimizerSpec("paged_adamw_8bit")).toEqual({ optimizer: "adamw", optimizerBits: 8 });
    expect(optimizerSpec("adamw_torch")).toEqual({ optimizer: "adamw", optimizerBits: 32 });
    expect(optimizerSpec("lion_32bit")).toEqual({ optimizer: "lion", optimizerBits: 32 });
    expect(optimizerSpec("paged_lion_8bit")).toEqual({ optimizer: "lion", optimizerBits: 8 });
    expect(optimizerSpec("sgd")).toEqual({ optimizer: "sgd", optimizerBits: 32 });
    const shape = modelShapeFromConfig(llama65b);
    const state = (o: Partial<typeof DEFAULT_ESTIMATE>) => {
      const row = estimateMemory(shape, { ...DEFAULT_ESTIMATE, ...o }).rows.find((r) => r.part === "optimizer")!;
      return [row.item, row.bytes] as const;
    };
    const [adamItem, adam] = state({});
    const [lionItem, lion] = state({ optimizer: "lion" });
    const [sgdItem, sgd] = state({ optimizer: "sgd", optimizerBits: 8 });
    expect(adamItem).toBe("optimizer state (32-bit AdamW)");
    expect(lionItem).toBe("optimizer state (32-bit Lion)");
    expect(sgdItem).toBe("optimizer state (32-bit SGD momentum)");
    expect(lion).toBe(adam / 2);
    expect(sgd).toBe(adam / 2);
  });

  it("8-bit optimizer state follows bitsandbytes' min_8bit_size; the loss chunk follows the model's default", () => {
    expect(adamStateBytes(4095, 8)).toBe(8 * 4095); // below 4096 elements: 32-bit state
    expect(adamStateBytes(4096, 8)).toBe(2 * (4096 + 4 * 16));
    expect(adamStateBytes(1000, 32)).toBe(8000);
    expect(defaultLogitsChunk(32000)).toBe(262); // ⌊8 Mi / 32000⌋ rows, as @qlora/models chunks the loss
    expect(defaultLogitsChunk(1 << 24)).toBe(1);
  });

  it("the total is the resident rows plus the larger of the two peak moments", () => {
    for (const gradientCheckpointing of [true, false]) {
      const plan = estimateMemory(modelShapeFromConfig(llama65b), { ...DEFAULT_ESTIMATE, gradientCheckpointing });
      const sum = (phase: string, trackedOnly = false) =>
        plan.rows.filter((r) => r.phase === phase && (r.tracked || !trackedOnly)).reduce((s, r) => s + r.bytes, 0);
      expect(plan.totalBytes).toBe(sum("persistent") + Math.max(sum("loss"), sum("backward")));
      expect(plan.trackedPeakBytes).toBe(sum("persistent", true) + Math.max(sum("loss", true), sum("backward", true)));
      expect(plan.peakPhase).toBe(sum("loss") >= sum("backward") ? "loss" : "backward");
      // the paper's items are all there
      for (const item of ["base weights", "LoRA parameters", "LoRA gradients", "optimizer state", "logits chunk"])
        expect(plan.rows.some((r) => r.item.startsWith(item))).toBe(true);
      const text = formatPlan(plan);
      expect(text).toContain("<- peak");
      expect(text).toMatch(/tensor storages only \(memoryStats peak\)/);
      expect(text).toMatch(/Process RSS is higher/);
    }
  });

  it("names the file and key of a bad config", () => {
    expect(() => modelShapeFromConfig({ ...llama65b, hidden_size: "big" }, "m/config.json")).toThrowError(
      new CliError("BAD_ARGUMENT", 'm/config.json: hidden_size: expected a positive integer, got "big"'),
    );
  });
});
