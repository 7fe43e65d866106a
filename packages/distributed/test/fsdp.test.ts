/**
 * FsdpStrategy in one process (LocalCommunicator: the all-gather is the identity, everything else is the real
 * code path): the sharded model trains to the one-process adapter, units are gathered before forward and again
 * in recomputation and freed after, and the optimizer-state wire encoding round-trips. The multi-rank tests are in
 * mpi-job.test.ts.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LoraModel } from "@qlora/lora";
import { createModel, parseConfig, randomLayers } from "@qlora/models";
import { Linear4bit, noGrad, tensor } from "@qlora/tensor";
import { strategyByName } from "@qlora/trainer";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import {
  DistributedError,
  FsdpStrategy,
  FsdpUnit,
  LocalCommunicator,
  ShardedLinear4bit,
  fsdpCheckpointIO,
  registerFsdpStrategy,
} from "../src/index";
import { packTree, unpackTree } from "../src/fsdp-state";
import { trainAdapter } from "./qlora-run";

const work = mkdtempSync(join(tmpdir(), "qlora-fsdp-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const maxAbsDiff = (a: number[], b: number[]) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
const LAYERS = 2;

/** A 2-layer model config for setup-only checks (no training). */
const tinyConfig = (architecture: string) =>
  parseConfig({
    architectures: [architecture],
    vocab_size: 32,
    hidden_size: 64,
    intermediate_size: 128,
    num_hidden_layers: LAYERS,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: 32,
  });

describe("FsdpStrategy (one process)", () => {
  it("trains to the one-process adapter; each unit is gathered once before forward and once in recomputation per micro-batch", async () => {
    const run = { rank: 0, worldSize: 1, microBatch: 4, accumulation: 2, steps: 2 };
    const single = await trainAdapter(run);
    const strategy = new FsdpStrategy({ communicator: new LocalCommunicator() });
    const fsdp = await trainAdapter({ ...run, strategy });
    expect(fsdp.names).toEqual(single.names);
    expect(maxAbsDiff(fsdp.values, single.values)).toBeLessThan(1e-6);
    expect(maxAbsDiff(fsdp.losses, single.losses)).toBeLessThan(1e-6);
    const microBatches = run.steps * run.accumulation;
    expect(strategy.gatherStats.forwardGathers).toBe(LAYERS * microBatches);
    expect(strategy.gatherStats.recomputeGathers).toBe(LAYERS * microBatches);
    expect(strategy.memory().gatheredBytes).toBe(0); // freed after backward
    expect(strategy.fsdpUnits.map((u) => u.path)).toEqual(["model.layers.0", "model.layers.1"]);
  });

  it("with the model's gradient checkpointing off, the units checkpoint themselves (gathered again in backward)", async () => {
    const run = { rank: 0, worldSize: 1, microBatch: 4, accumulation: 1, steps: 2, gradientCheckpointing: false };
    const single = await trainAdapter(run);
    const strategy = new FsdpStrategy({ communicator: new LocalCommunicator() });
    const fsdp = await trainAdapter({ ...run, strategy });
    expect(maxAbsDiff(fsdp.values, single.values)).toBeLessThan(1e-6);
    expect(strategy.gatherStats.forwardGathers).toBe(LAYERS * 2);
    expect(strategy.gatherStats.recomputeGathers).toBe(LAYERS * 2);
  });

  it("checkpoint: PEFT adapter + optimizer shard, resumed (N = 1) to the uninterrupted adapter", async () => {
    const outputDir = join(work, "ckpt");
    const run = { rank: 0, worldSize: 1, microBatch: 4, accumulation: 1, steps: 3 };
    const strategy = new FsdpStrategy({ communicator: new LocalCommunicator() });
    let afterStep2: number[] = [];
    const full = await trainAdapter({
      ...run,
      strategy,
      outputDir,
      checkpointIO: (lora) => fsdpCheckpointIO({ strategy, lora }),
      onStep: (step, adapter) => {
        if (step === 2) afterStep2 = adapter();
      },
    });
    rmSync(join(outputDir, "checkpoint-3"), { recursive: true });
    const resumedStrategy = new FsdpStrategy({ communicator: new LocalCommunicator() });
    let afterLoad: number[] = [];
    const resumed = await trainAdapter({
      ...run,
      strategy: resumedStrategy,
      outputDir,
      resume: true,
      checkpointIO: (lora) => fsdpCheckpointIO({ strategy: resumedStrategy, lora }),
      onLoad: (v) => {
        afterLoad = v;
      },
    });
    expect(afterLoad).toEqual(afterStep2); // bit for bit
    expect(resumed.losses.length).toBe(1);
    expect(maxAbsDiff(resumed.values, full.values)).toBeLessThan(1e-6);

    // a checkpoint whose optimizer.json is not an FSDP manifest is refused, naming the file
    const manifest = join(outputDir, "checkpoint-3", "optimizer.json"); // the latest, written by the resumed run
    writeFileSync(manifest, JSON.stringify({ format: "paged-optim" }));
    const other = new FsdpStrategy({ communicator: new LocalCommunicator() });
    await expect(
      trainAdapter({
        ...run,
        strategy: other,
        outputDir,
        resume: true,
        checkpointIO: (lora) => fsdpCheckpointIO({ strategy: other, lora }),
      }),
    ).rejects.toThrow(/checkpoint-3\/optimizer\.json: not an FSDP optimizer manifest/);
  });

  it("a sharded layer used outside its unit's gather is a NOT_GATHERED error naming it", async () => {
    const strategy = new FsdpStrategy({ communicator: new LocalCommunicator() });
    await trainAdapter({ rank: 0, worldSize: 1, microBatch: 2, accumulation: 1, steps: 1, strategy });
    const unit = strategy.fsdpUnits[0];
    const q = unit.linears.find((l) => l.path.endsWith("q_proj.base_layer"));
    expect(q?.module).toBeInstanceOf(ShardedLinear4bit);
    expect(q?.module).toBeInstanceOf(Linear4bit); // LoRA's instanceof check still sees a 4-bit base
    const x = tensor(new Float32Array(64), { shape: [1, 64] });
    expect(() => q?.module.forward(x)).toThrow(DistributedError);
    expect(() => q?.module.forward(x)).toThrow(
      /model\.layers\.0\.self_attn\.q_proj\.base_layer: forward needs the whole/,
    );
    // inside a gather it is the whole layer; without grad it is freed right after the layer's forward
    strategy.gather(unit);
    expect(noGrad(() => q?.module.forward(x).shape)).toEqual([1, 64]);
    strategy.release(unit);
    expect(strategy.memory().gatheredBytes).toBe(0);
  });

  it("setup refuses a model without …layers.{i}, and a communicator without a blocking all-gather", async () => {
    const comm = new LocalCommunicator();
    const noBlocking = { ...comm, allGatherBlocking: undefined } as unknown as LocalCommunicator;
    expect(() => new FsdpStrategy({ communicator: noBlocking })).toThrow(/allGatherBlocking/);
    const s = new FsdpStrategy({ communicator: comm });
    const model = new Linear4bit(
      (await import("@qlora/nf4")).quantize4bit(new Float32Array(128), { shape: [2, 64], dtype: "float32" }),
    );
    await expect(s.setup({ model, optimizer: {} as never, params: new Map() })).rejects.toThrow(
      /no decoder layers named …layers\.\{i\}/,
    );
  });

  it("registerFsdpStrategy makes `strategy: fsdp` resolve", () => {
    registerFsdpStrategy({ communicator: new LocalCommunicator() });
    const s = strategyByName("fsdp");
    expect(s).toBeInstanceOf(FsdpStrategy);
    expect(s.name).toBe("fsdp");
  });

  it("units keep the layer's parameter names (state dicts unchanged)", async () => {
    const config = tinyConfig("LlamaForCausalLM");
    const model = createModel(config, randomLayers({ seed: 1, quantize: { quantType: "nf4", doubleQuant: true } }));
    LoraModel.inject(model, { r: 2, lora_alpha: 4, target_modules: "all-linear" });
    const before = [...model.namedParameters()].map(([n]) => n);
    const params = new Map([...model.namedParameters()].filter(([, p]) => p.requiresGrad));
    const s = new FsdpStrategy({ communicator: new LocalCommunicator() });
    await s.setup({ model, optimizer: {} as never, params });
    expect(model.getSubmodule("model.layers.1")).toBeInstanceOf(FsdpUnit);
    await s.setup({ model, optimizer: {} as never, params }); // again (a second fit): nothing changes
    expect(s.memory().units).toBe(2);
    const other = new FsdpStrategy({ communicator: new LocalCommunicator() });
    await expect(other.setup({ model, optimizer: {} as never, params })).rejects.toThrow(
      /already sharded by another FsdpStrategy/,
    );
    expect([...model.namedParameters()].map(([n]) => n)).toEqual(before);
    const m = s.memory();
    expect(m.units).toBe(2);
    expect(m.shardBytes).toBeGreaterThanOrEqual(m.unshardedBaseBytes);
    expect(m.shardBytes - m.unshardedBaseBytes).toBeLessThan(4 * m.units); // padding only (N = 1)
  });
});

describe("ShardedLinear4bit with a bias (Qwen2's q/k/v projections)", () => {
  it("the sharded model's logits equal the unsharded model's", async () => {
    const config = tinyConfig("Qwen2ForCausalLM");
    const build = () =>
      createModel(config, randomLayers({ seed: 5, quantize: { quantType: "nf4", doubleQuant: true } }));
    const plain = build();
    const sharded = build();
    const q = sharded.getSubmodule<Linear4bit>("model.layers.0.self_attn.q_proj");
    const bias = q.bias?.toArray();
    expect(bias?.length).toBe(64);
    const s = new FsdpStrategy({ communicator: new LocalCommunicator() });
    await s.setup({ model: sharded, optimizer: {} as never, params: new Map() });
    const sq = sharded.getSubmodule<Linear4bit>("model.layers.0.self_attn.q_proj");
    expect(sq).toBeInstanceOf(ShardedLinear4bit);
    expect(sq.bias?.toArray()).toEqual(bias);
    const ids = tensor(Int32Array.from([1, 5, 9, 3, 7, 2]), { dtype: "i32", shape: [1, 6] });
    const a = noGrad(() => plain.forward({ inputIds: ids }).logits?.toArray() ?? []);
    const b = noGrad(() => sharded.forward({ inputIds: ids }).logits?.toArray() ?? []);
    expect(b.length).toBe(a.length);
    expect(b).toEqual(a);
    expect(s.gatherStats.forwardGathers).toBe(2);
    expect(s.memory().gatheredBytes).toBe(0);
  });
});

describe("optimizer-state wire encoding", () => {
  it("round-trips trees of typed arrays, numbers (non-finite too), strings, Maps (fuzzed)", () => {
    const leaf = fc.oneof(
      fc.double(),
      fc.string(),
      fc.boolean(),
      fc.constant(null),
      fc.float32Array({ maxLength: 9 }),
      fc.int32Array({ maxLength: 9 }),
      fc.uint8Array({ maxLength: 9 }),
      fc.uint16Array({ maxLength: 9 }),
    );
    const tree = fc.letrec((tie) => ({
      node: fc.oneof(
        { depthSize: "small" },
        leaf,
        fc.array(tie("node"), { maxLength: 3 }),
        fc.dictionary(fc.string(), tie("node"), { maxKeys: 3, noNullPrototype: true }),
      ),
    })).node;
    fc.assert(
      fc.property(tree, (t) => {
        expect(unpackTree(packTree(t))).toStrictEqual(t);
      }),
      { numRuns: 200 },
    );
    const m = new Map<string, unknown>([["a", Float64Array.of(1, Number.NaN)]]);
    expect(unpackTree(packTree({ m }))).toStrictEqual({ m });
  });

  it("refuses leaves it cannot send, naming the path", () => {
    expect(() => packTree({ state: { w: new Date() } })).toThrow(/"state\.state\.w" is a Date/);
    expect(() => packTree({ x: new BigInt64Array(1) })).toThrow(/"state\.x" is a BigInt64Array/);
  });
});
