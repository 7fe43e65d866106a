/**
 * What the DDP, sharded-optimizer and FSDP strategies share: the trainer's collective pass-throughs over the
 * strategy's communicator, the f32 check of trainable parameters, and moving parameters through flat f32 buffers
 * (one collective per buffer instead of one per tensor).
 */
import { type Module, type Tensor, tensor } from "@qlora/tensor";
import type { NumericArray, ReduceOp } from "@qlora/trainer";
import type { CommArray, Communicator } from "./communicator";
import { DistributedError } from "./errors";

/** A trainable parameter's place in a flat f32 buffer. */
export interface FlatSlot {
  readonly name: string;
  readonly param: Tensor;
  readonly offset: number;
}

export abstract class CommunicatorStrategy {
  readonly comm: Communicator;

  constructor(communicator: Communicator) {
    this.comm = communicator;
  }
  get rank(): number {
    return this.comm.rank;
  }
  get worldSize(): number {
    return this.comm.worldSize;
  }

  async allReduce(data: NumericArray, op: ReduceOp): Promise<void> {
    await this.comm.allReduce(data as CommArray, op).done;
  }
  async allGather(data: NumericArray): Promise<NumericArray> {
    return this.comm.allGather(data as CommArray).done;
  }
  async reduceScatter(data: NumericArray, op: ReduceOp): Promise<NumericArray> {
    return this.comm.reduceScatter(data as CommArray, op).done;
  }
  async broadcast(data: NumericArray, root: number): Promise<void> {
    await this.comm.broadcast(data as CommArray, root).done;
  }
  async barrier(): Promise<void> {
    await this.comm.barrier().done;
  }
}

/** The strategies communicate gradients and parameters as f32 buffers. */
export function requireF32Params(strategy: string, params: Iterable<readonly [string, Tensor]>): void {
  for (const [name, p] of params)
    if (p.dtype !== "f32")
      throw new DistributedError(
        "BAD_ARGUMENT",
        `${strategy}: trainable parameter "${name}" is ${p.dtype}; f32 expected`,
      );
}

/** A new tensor shaped like `like` (same backend) holding flat[offset, offset + like.size). */
export function sliceLike(flat: Float32Array, offset: number, like: Tensor): Tensor {
  return tensor(flat.slice(offset, offset + like.size), { shape: [...like.shape], backend: like.backend });
}

/** Copy each slot's slice of `flat` into the model's parameter of that name, in place. */
export function loadFlatIntoModel(model: Module, flat: Float32Array, slots: Iterable<FlatSlot>): void {
  const sd: Record<string, Tensor> = {};
  for (const s of slots) sd[s.name] = sliceLike(flat, s.offset, s.param);
  model.loadStateDict(sd, { strict: false }); // copies in place
  for (const t of Object.values(sd)) t.dispose();
}
