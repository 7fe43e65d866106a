/**
 * Packing with a real model (@qlora/models' tiny Llama, whose attention takes segmentIds): no token attends across
 * packed examples, and packed and unpacked batches give the same per-example loss.
 */
import { noGrad, tensor } from "@qlora/tensor";
import { describe, expect, it } from "vitest";
import { type ExampleView, collate } from "../src/index";
import { llamaLoss, tinyLlama } from "./helpers/llama";

const ex = (ids: number[], firstLabelled = 1): ExampleView => ({
  inputIds: Int32Array.from(ids),
  labels: Int32Array.from(ids, (t, i) => (i < firstLabelled ? -100 : t)),
});
const A = ex([1, 10, 11, 12, 13]);
const B = ex([1, 20, 21, 22, 23, 24, 25], 3);
const A2 = ex([1, 40, 41, 42, 43]);
const model = tinyLlama("f32", 3);

function logits(rows: ExampleView[][], seqLen: number): Float32Array {
  const b = collate(rows, seqLen, 0);
  const shape = [b.rows, b.seqLen];
  return noGrad(() => {
    const out = model.forward({
      inputIds: tensor(b.inputIds, { dtype: "i32", shape }),
      positionIds: tensor(b.positionIds, { dtype: "i32", shape }),
      segmentIds: tensor(b.segmentIds, { dtype: "i32", shape }),
    }).logits!;
    const v = out.toTypedArray() as Float32Array;
    out.dispose();
    return v;
  });
}
const loss = (rows: ExampleView[][], seqLen: number) =>
  noGrad(() => {
    const l = llamaLoss(model, collate(rows, seqLen, 0));
    const v = l.item();
    l.dispose();
    return v;
  });
const masked = (e: ExampleView): ExampleView => ({ inputIds: e.inputIds, labels: e.labels.map(() => -100) });
const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

describe("packing through the model", () => {
  it("no token attends across packed examples", () => {
    const vocab = 64;
    const packed = logits([[A, B]], 16);
    const other = logits([[A2, B]], 16);
    const alone = logits([[B]], 16);
    const bPart = (v: Float32Array) => v.slice(A.inputIds.length * vocab, (A.inputIds.length + 7) * vocab);
    expect(maxDiff(bPart(packed), bPart(other))).toBe(0); // B's outputs do not depend on A's tokens at all
    expect(maxDiff(bPart(packed), alone.slice(0, 7 * vocab))).toBeLessThan(1e-5);
    expect(maxDiff(packed.slice(0, 5 * vocab), other.slice(0, 5 * vocab))).toBeGreaterThan(1e-3); // A itself did change
  });

  it("packed and unpacked batches give the same per-example loss", () => {
    const aAlone = loss([[A]], 8);
    const bAlone = loss([[B]], 8);
    expect(loss([[A, masked(B)]], 16)).toBeCloseTo(aAlone, 4);
    expect(loss([[masked(A), B]], 16)).toBeCloseTo(bAlone, 4);
    expect(loss([[A, B]], 16)).toBeCloseTo(aAlone + bAlone, 4);
    expect(collate([[A, B]], 16, 0).numLossTokens).toBe(
      collate([[A]], 8, 0).numLossTokens + collate([[B]], 8, 0).numLossTokens,
    );
  });
});
