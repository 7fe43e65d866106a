/** The training loss of a token batch through a causal LM: the loss function @qlora/trainer's Trainer takes. */
import { type Module, type Tensor, tensor } from "@qlora/tensor";
import type { CausalLM } from "./causal-lm";
import { ModelError } from "./errors";

/**
 * A micro-batch of token rows, row-major [rows, seqLen] i32 arrays: @qlora/trainer's TokenBatch has this shape.
 * Labels are -100 where there is no loss; segment ids separate packed sequences (0 = padding).
 */
export interface TokenRows {
  readonly rows: number;
  readonly seqLen: number;
  readonly inputIds: Int32Array;
  readonly labels: Int32Array;
  readonly positionIds?: Int32Array;
  readonly segmentIds?: Int32Array;
}

/**
 * Sum of the shifted per-token cross-entropy of `batch` (the trainer divides by the step's loss tokens):
 * `new Trainer({ model, loss: batchLoss, … })`. Goes through the model's chunked loss path (no whole logits).
 */
export function batchLoss(model: Module, batch: TokenRows): Tensor {
  const lm = model as unknown as Partial<Pick<CausalLM, "forward">>;
  if (typeof lm.forward !== "function")
    throw new ModelError("bad_argument", "batchLoss: expected a causal LM (a module with forward(args)) as the model");
  const shape = [batch.rows, batch.seqLen];
  const cells = batch.rows * batch.seqLen;
  const ids = {
    inputIds: batch.inputIds,
    labels: batch.labels,
    positionIds: batch.positionIds,
    segmentIds: batch.segmentIds,
  };
  for (const [key, a] of Object.entries(ids))
    if (a !== undefined && a.length !== cells)
      throw new ModelError(
        "bad_argument",
        `batchLoss: batch.${key} has ${a.length} entries, expected rows × seqLen = ${batch.rows} × ${batch.seqLen} = ${cells}`,
        { key },
      );
  const t = (a: Int32Array | undefined) => (a === undefined ? undefined : tensor(a, { dtype: "i32", shape }));
  const args = {
    inputIds: t(ids.inputIds)!,
    labels: t(ids.labels)!,
    positionIds: t(ids.positionIds),
    segmentIds: t(ids.segmentIds),
  };
  try {
    const out = lm.forward(args);
    out.loss?.dispose();
    out.logits?.dispose();
    if (!out.lossSum) throw new ModelError("bad_argument", "batchLoss: the model returned no summed loss (lossSum)");
    return out.lossSum;
  } finally {
    for (const a of Object.values(args)) a?.dispose();
  }
}
