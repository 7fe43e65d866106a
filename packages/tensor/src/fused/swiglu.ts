/**
 * swiglu(gate, up) = silu(gate) · up, declared with defineOp (the worked example of docs/adding-an-op.md).
 * Reference forward and backward call the Backend's swiglu/swigluBackward primitives (every backend has
 * them: reference.ts is the readable oracle, cpu-kernels and cuda-kernels the native versions), so no
 * per-backend kernels are needed here.
 */
import { defineOp } from "../define-op";
import { TensorError } from "../errors";
import { castRaw, dense, promote } from "../ops";
import { fromBuffer } from "../tensor";
import type { Tensor } from "../tensor";

export const swigluOp = defineOp<undefined>({
  name: "tensor.swiglu",
  forward([gate, up], _attrs, ctx) {
    if (gate.shape.join() !== up.shape.join())
      throw new TensorError(
        "BAD_SHAPE",
        `swiglu: gate ${JSON.stringify(gate.shape)} and up ${JSON.stringify(up.shape)} differ`,
      );
    const be = ctx.backend;
    const gf = dense(gate);
    const uf = dense(up);
    ctx.save(gf, uf);
    const y = fromBuffer(be.swiglu(gf.buffer, uf.buffer, gate.size), be, gate.shape, "f32");
    return castRaw(y, promote(gate, up));
  },
  backward(g, ctx) {
    const [gate, up] = ctx.saved;
    const gd = dense(g);
    const r = ctx.backend.swigluBackward(gd.buffer, gate.buffer, up.buffer, gate.size);
    const dgate = fromBuffer(r.dgate, ctx.backend, gate.shape, "f32");
    const dup = fromBuffer(r.dup, ctx.backend, up.shape, "f32");
    // the backend computes both in one pass; a frozen input's half is dropped right away
    return [ctx.needsGrad(0) ? dgate : null, ctx.needsGrad(1) ? dup : null];
  },
});

/** silu(gate) · up (same shapes). */
export function swiglu(gate: Tensor, up: Tensor): Tensor {
  return swigluOp([gate, up], undefined);
}
