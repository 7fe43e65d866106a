import { describe, expect, it } from "vitest";
import { CliError } from "./errors";
import { DEFAULT_ESTIMATE, estimateMemory, formatPlan, modelShapeFromConfig, quantizedBytes } from "./estimate";

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
    const a = estimateMemory(shape, DEFAULT_ESTIMATE);
    const b = estimateMemory(shape, { ...DEFAULT_ESTIMATE, optimizerBits: 8 });
    expect(b.rows[4].bytes / a.rows[4].bytes).toBeLessThan(0.27);
    const c = estimateMemory(shape, { ...DEFAULT_ESTIMATE, gradientCheckpointing: false });
    expect(c.rows[5].bytes).toBeGreaterThan(5 * a.rows[5].bytes);
  });

  it("names the file and key of a bad config", () => {
    expect(() => modelShapeFromConfig({ ...llama65b, hidden_size: "big" }, "m/config.json")).toThrowError(
      new CliError("BAD_ARGUMENT", 'm/config.json: hidden_size: expected a positive integer, got "big"'),
    );
  });
});
