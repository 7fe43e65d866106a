/** The training loss of a token batch: the summed shifted cross-entropy through the model's chunked loss path. */
import type { CausalLM } from "@qlora/models";
import { type Module, type Tensor, tensor } from "@qlora/tensor";
import type { TokenBatch } from "@qlora/trainer";

export function batchLoss(model: Module, b: TokenBatch): Tensor {
  const shape = [b.rows, b.seqLen];
  const ids = {
    inputIds: tensor(b.inputIds, { dtype: "i32", shape }),
    positionIds: tensor(b.positionIds, { dtype: "i32", shape }),
    segmentIds: tensor(b.segmentIds, { dtype: "i32", shape }),
    labels: tensor(b.labels, { dtype: "i32", shape }),
  };
  const out = (model as CausalLM).forward(ids);
  for (const t of Object.values(ids)) t.dispose();
  out.loss?.dispose();
  if (!out.lossSum) throw new Error("batchLoss: the model returned no loss (labels were given)");
  return out.lossSum;
}
