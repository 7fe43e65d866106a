import { memoryStats, noGrad, tensor } from "@qlora/tensor";
import { describe, expect, it } from "vitest";
import { batchLoss } from "./batch-loss";
import { createModel } from "./causal-lm";
import { parseConfig } from "./config";
import { randomLayers } from "./layers";

const config = parseConfig({
  architectures: ["LlamaForCausalLM"],
  vocab_size: 96,
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  max_position_embeddings: 64,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
});

// Two packed rows of 6: row 0 holds sequences 1 and 2, row 1 one sequence and two padding tokens.
const rows = {
  rows: 2,
  seqLen: 6,
  inputIds: Int32Array.from([5, 9, 12, 7, 3, 8, 40, 41, 42, 43, 0, 0]),
  labels: Int32Array.from([-100, 9, 12, -100, 3, 8, -100, 41, 42, 43, -100, -100]),
  positionIds: Int32Array.from([0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 0, 1]),
  segmentIds: Int32Array.from([1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 0, 0]),
};

describe("batchLoss", () => {
  it("is the forward's summed loss over the same tensors, and frees its inputs and the unused outputs", () => {
    const model = createModel(config, randomLayers({ seed: 5, std: 0.5 }));
    const shape = [rows.rows, rows.seqLen];
    const args = {
      inputIds: tensor(rows.inputIds, { dtype: "i32", shape }),
      labels: tensor(rows.labels, { dtype: "i32", shape }),
      positionIds: tensor(rows.positionIds, { dtype: "i32", shape }),
      segmentIds: tensor(rows.segmentIds, { dtype: "i32", shape }),
    };
    const out = noGrad(() => model.forward(args));
    const expected = out.lossSum.item();
    // the mean is tagged so the trainer can refuse it as a loss function's result (it wants the sum)
    expect((out.loss as unknown as Record<symbol, unknown>)[Symbol.for("qlora.meanLoss")]).toBe(true);
    expect((out.lossSum as unknown as Record<symbol, unknown>)[Symbol.for("qlora.meanLoss")]).toBeUndefined();
    out.loss.dispose();
    out.lossSum.dispose();
    const before = memoryStats("cpu").currentBytes;
    const got = noGrad(() => batchLoss(model, rows));
    expect(got.shape).toEqual([]);
    expect(got.item()).toBe(expected);
    got.dispose();
    expect(memoryStats("cpu").currentBytes).toBe(before);
    model.dispose();
  });

  it("names the array whose length is not rows × seqLen, and refuses a module without forward", () => {
    const model = createModel(config, randomLayers({ seed: 5, std: 0.5 }));
    expect(() => batchLoss(model, { ...rows, labels: rows.labels.subarray(1) })).toThrow(
      /batch.labels has 11 entries, expected rows × seqLen = 2 × 6 = 12/,
    );
    expect(() => batchLoss({} as never, rows)).toThrow(/expected a causal LM/);
    const past = Int32Array.from(rows.inputIds);
    past[8] = 96; // vocab_size is 96
    expect(() => batchLoss(model, { ...rows, inputIds: past })).toThrow(
      /input id 96 \(row 1, position 2\) is outside the model's vocabulary \[0, 96\): the tokenizer \(or a pretokenized dataset\) has ids/,
    );
    const labels = Int32Array.from(rows.labels);
    labels[8] = 9999;
    expect(() => batchLoss(model, { ...rows, labels })).toThrow(
      /label 9999 \(row 1, position 2\) is outside the model's vocabulary \[0, 96\) and is not -100/,
    );
    model.dispose();
  });
});
