/**
 * A micro-batch of token rows, as plain typed arrays (the loss function makes tensors on its backend).
 * Per row: examples back to back, position ids restarting at 0 for each example, segment ids 1, 2, … per example
 * (0 for padding), labels -100 on padding and on each example's first token.
 */
export interface TokenBatch {
  readonly rows: number;
  readonly seqLen: number;
  readonly inputIds: Int32Array;
  readonly labels: Int32Array;
  readonly positionIds: Int32Array;
  readonly segmentIds: Int32Array;
  /** Labels that carry loss after the model's shift (position t predicts labels[t+1]). */
  readonly numLossTokens: number;
  /** Tokens that are not padding (segment id ≠ 0): what the model reads, the count tokens/s is made of. */
  readonly numInputTokens: number;
}

export interface ExampleView {
  readonly inputIds: Int32Array;
  readonly labels: Int32Array;
}

/** One row per entry of `rows` (each a list of examples), padded to seqLen with padId. */
export function collate(rows: readonly (readonly ExampleView[])[], seqLen: number, padId: number): TokenBatch {
  const n = rows.length;
  const inputIds = new Int32Array(n * seqLen).fill(padId);
  const labels = new Int32Array(n * seqLen).fill(-100);
  const positionIds = new Int32Array(n * seqLen);
  const segmentIds = new Int32Array(n * seqLen);
  let numLossTokens = 0,
    numInputTokens = 0;
  rows.forEach((examples, r) => {
    let at = r * seqLen;
    examples.forEach((ex, k) => {
      inputIds.set(ex.inputIds, at);
      labels.set(ex.labels, at);
      labels[at] = -100;
      for (let t = 0; t < ex.inputIds.length; t++) {
        positionIds[at + t] = t;
        segmentIds[at + t] = k + 1;
        if (t > 0 && ex.labels[t] !== -100) numLossTokens++;
      }
      at += ex.inputIds.length;
      numInputTokens += ex.inputIds.length;
    });
    for (let p = 0; at < (r + 1) * seqLen; at++, p++) positionIds[at] = p;
  });
  return { rows: n, seqLen, inputIds, labels, positionIds, segmentIds, numLossTokens, numInputTokens };
}
