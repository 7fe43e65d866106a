import { describe, expect, it } from "vitest";
import { createReferenceBackend } from "../src/backend/reference";
import type { Backend, Buffer, DType } from "../src/backend/types";
import { AdamW } from "../src/optim";
import { tensor } from "../src/tensor";
import type { Tensor } from "../src/tensor";

/** The reference backend plus an allocState that records its calls (as the cuda backend would page). */
function pagingBackend(): { be: Backend; stateCalls: [DType, number][]; stateFrees: number[] } {
  const inner = createReferenceBackend();
  const stateCalls: [DType, number][] = [];
  const stateFrees: number[] = [];
  const states = new Set<Buffer>();
  const be: Backend = {
    ...inner,
    name: "paging-fake",
    allocState(dtype, length) {
      stateCalls.push([dtype, length]);
      const b = inner.alloc(dtype, length);
      states.add(b);
      return b;
    },
    free(b) {
      if (states.delete(b)) stateFrees.push(b.length);
      inner.free(b);
    },
  };
  return { be, stateCalls, stateFrees };
}

function stepOnce(be: Backend): { param: number[]; opt: AdamW; p: Tensor } {
  const p = tensor([0.5, -1, 2, 0.25, -0.75, 1.5], { backend: be, requiresGrad: true }).reshape([2, 3]);
  p.grad = tensor([0.1, -0.2, 0.3, -0.4, 0.5, -0.6], { backend: be }).reshape([2, 3]);
  const opt = new AdamW([p], { lr: 1e-2 });
  opt.step();
  opt.step();
  return { param: Array.from(be.toHost(p.buffer)), opt, p };
}

describe("AdamW optimizer state allocation", () => {
  it("allocates m and v through backend.allocState when the backend has one, with the same result", () => {
    const { be, stateCalls, stateFrees } = pagingBackend();
    const paged = stepOnce(be);
    expect(stateCalls).toEqual([
      ["f32", 6],
      ["f32", 6],
    ]); // once per state, not per step
    const plain = stepOnce(createReferenceBackend());
    expect(paged.param).toEqual(plain.param);
    paged.opt.dispose();
    expect(stateFrees).toEqual([6, 6]); // released through free
    plain.opt.dispose();
  });

  it("falls back to zero-filled alloc without allocState", () => {
    const be = createReferenceBackend();
    expect(be.allocState).toBeUndefined();
    const { param } = stepOnce(be);
    expect(param.every(Number.isFinite)).toBe(true);
  });
});
