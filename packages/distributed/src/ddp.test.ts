import { Linear, type Tensor, manualSeed, tensor } from "@qlora/tensor";
import { type TrainerOptimizer, strategyByName } from "@qlora/trainer";
import { describe, expect, it } from "vitest";
import {
  DdpStrategy,
  DistributedError,
  LocalCommunicator,
  ShardedOptimizerStrategy,
  registerDdpStrategy,
  registerShardedOptimizerStrategy,
} from "./index";

function setupModel() {
  manualSeed(3);
  const model = new Linear(5, 3);
  const params = new Map([...model.namedParameters()]);
  const optimizer = {
    step() {},
    zeroGrad() {},
    stateDict: () => ({}),
    loadStateDict() {},
  } as unknown as TrainerOptimizer;
  return { model, params, optimizer };
}
const loss = (model: Linear) => model.forward(tensor([[1, 2, 3, 4, 5]])).sum();

describe("DdpStrategy (one process, LocalCommunicator)", () => {
  it("options are checked", () => {
    const communicator = new LocalCommunicator();
    expect(() => new DdpStrategy({ communicator, bucketCapBytes: 0 })).toThrow(/bucketCapBytes must be > 0/);
    expect(() => new DdpStrategy({ communicator, gradientAccumulationSteps: 1.5 })).toThrow(
      /gradientAccumulationSteps must be an integer >= 1, got 1.5/,
    );
  });

  it("reduceGradients leaves one rank's accumulated gradients as they are", async () => {
    const { model, params, optimizer } = setupModel();
    const ddp = new DdpStrategy({
      communicator: new LocalCommunicator(),
      gradientAccumulationSteps: 2,
      bucketCapBytes: 16,
    });
    await ddp.setup({ model, optimizer, params });
    ddp.backward(loss(model));
    ddp.backward(loss(model));
    await ddp.reduceGradients();
    const w = params.get("weight") as Tensor;
    // d/dW of sum(W x + b), twice: every row is 2x
    expect([...(w.grad?.toTypedArray() ?? [])]).toEqual([2, 4, 6, 8, 10, 2, 4, 6, 8, 10, 2, 4, 6, 8, 10]);
    expect([...((params.get("bias") as Tensor).grad?.toTypedArray() ?? [])]).toEqual([2, 2, 2]);
    expect(ddp.stats.allReduceCalls).toBe(2); // 16-byte cap: weight and bias in separate buckets
    expect(ddp.stats.startedDuringBackward).toBe(2);
    await ddp.teardown();
  });

  it("more micro-batches than gradientAccumulationSteps is a typed error naming the option", async () => {
    const { model, params, optimizer } = setupModel();
    const ddp = new DdpStrategy({ communicator: new LocalCommunicator(), gradientAccumulationSteps: 1 });
    await ddp.setup({ model, optimizer, params });
    ddp.backward(loss(model));
    ddp.backward(loss(model));
    const err = await ddp.reduceGradients().catch((e) => e);
    expect(err).toBeInstanceOf(DistributedError);
    expect(err.code).toBe("ACCUMULATION_MISMATCH");
    expect(err.message).toMatch(/gradientAccumulationSteps to the trainer's \(1 given\)/);
  });

  it("non-f32 trainable parameters are refused by name", async () => {
    const { model, optimizer } = setupModel();
    const bf = tensor([1, 2], { dtype: "bf16", requiresGrad: true });
    const ddp = new DdpStrategy({ communicator: new LocalCommunicator() });
    await expect(ddp.setup({ model, optimizer, params: new Map([["w16", bf]]) })).rejects.toThrow(
      /trainable parameter "w16" is bf16; f32 expected/,
    );
  });

  it("registers as `ddp` in the trainer's strategy registry", () => {
    registerDdpStrategy({ communicator: new LocalCommunicator() });
    const s = strategyByName("ddp");
    expect(s).toBeInstanceOf(DdpStrategy);
    expect(s.worldSize).toBe(1);
    registerShardedOptimizerStrategy({ communicator: new LocalCommunicator() });
    expect(strategyByName("sharded-optimizer")).toBeInstanceOf(ShardedOptimizerStrategy);
  });
});
