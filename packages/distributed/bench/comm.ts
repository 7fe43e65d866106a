/**
 * Communication per optimizer step for the trainer benchmark's ~125M Llama (hidden 768, 12 layers, ffn 2048, vocab
 * 32000, NF4 + double quant, LoRA r=16 on all linear layers; packages/trainer/bench/qlora-step.ts):
 *  - analytical bytes per rank at N = 2, 4, 8 (commVolume in src/estimate.ts, ring algorithms) for DDP (all-reduce
 *    of the f32 adapter gradients) and FSDP as built (the NF4 base all-gathered twice per micro-batch, before
 *    forward and in recomputation; gradients reduce-scattered and the updated adapter all-gathered once per step);
 *  - measured at N = 2 over MPI shared memory, one timed step after a warm-up step each: DdpStrategy's all-reduced
 *    bytes, the time reduceGradients waited for them and a bare all-reduce of the same buffer; FsdpStrategy's
 *    bytes all-gathered (base, adapter) and reduce-scattered, the time spent in those collectives, and the step.
 * Run: node --import tsx --conditions=@qlora/source packages/distributed/bench/comm.ts   (launches 2 ranks itself)
 */
import { registerCpuBackend, setThreads } from "@qlora/cpu-kernels";
import { LoraModel } from "@qlora/lora";
import { type CausalLM, createModel, parseConfig, randomLayers } from "@qlora/models";
import { AdamW } from "@qlora/paged-optim";
import { Linear4bit, type Module, tensor } from "@qlora/tensor";
import { type BatchSource, type Strategy, type TokenBatch, Trainer, collate } from "@qlora/trainer";
import { DdpStrategy, FsdpStrategy, commVolume, launch, launchedByMpi, mpiWorld, stateTensorBytes } from "../src/index";

const [microBatch, seq, vocab] = [2, 256, 32000];
const config = parseConfig({
  architectures: ["LlamaForCausalLM"],
  vocab_size: vocab,
  hidden_size: 768,
  intermediate_size: 2048,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  num_key_value_heads: 4,
  max_position_embeddings: 2048,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
});

function buildModel() {
  const model = createModel(config, randomLayers({ seed: 1, quantize: { quantType: "nf4", doubleQuant: true } }));
  LoraModel.inject(model, { r: 16, lora_alpha: 32, target_modules: "all-linear", lora_dropout: 0 });
  return model;
}

/** NF4 + double-quant bytes of an n-element weight: 4 bits each, one u8 absmax per 64, one f32 per 256 absmax. */
const nf4Bytes = (n: number) => n / 2 + n / 64 + (4 * n) / (64 * 256);

function analytical(model: Module) {
  const adapterParams = [...model.namedParameters()]
    .filter(([, p]) => p.requiresGrad)
    .reduce((s, [, p]) => s + p.size, 0);
  let linearElems = 0;
  for (const [, m] of model.namedModules()) if (m instanceof Linear4bit) linearElems += m.inFeatures * m.outFeatures;
  const adapterBytes = 4 * adapterParams;
  const baseBytes = nf4Bytes(linearElems);
  let measuredBase = 0;
  for (const [, m] of model.namedModules()) if (m instanceof Linear4bit) measuredBase += stateTensorBytes(m);
  const v = { baseWeightBytes: baseBytes, adapterBytes, microBatches: 1 };
  const rows = [2, 4, 8].map((n) => {
    const ddp = commVolume(v, n, "ddp");
    const fsdp = commVolume(v, n, "fsdp");
    return {
      worldSize: n,
      ddp_allreduce_bytes_per_rank: ddp.allReduceBytes,
      fsdp_allgather_bytes_per_rank: fsdp.allGatherBytes,
      fsdp_reducescatter_bytes_per_rank: fsdp.reduceScatterBytes,
    };
  });
  // nf4LinearBytes: from the shapes (4 bits + absmax + nested absmax); the model's 4-bit tensors add the quant maps
  // and quant-state JSON of every layer (measuredBase4bitTensorBytes)
  return {
    adapterParams,
    adapterBytes,
    nf4LinearBytes: Math.round(baseBytes),
    measuredBase4bitTensorBytes: measuredBase,
    rows,
  };
}

function batches(rank: number, steps: number): BatchSource<TokenBatch> {
  let seed = 7 + rank;
  return {
    length: steps,
    *batches(_e, skip) {
      for (let i = skip; i < steps; i++) {
        const rows = Array.from({ length: microBatch }, () => {
          const ids = Int32Array.from({ length: seq }, () => {
            seed = (seed * 1103515245 + 12345) % 2147483648;
            return seed % vocab;
          });
          return { inputIds: ids, labels: ids };
        });
        yield collate(
          rows.map((r) => [r]),
          seq,
          0,
        );
      }
    },
    lossTokens: (b) => b.numLossTokens,
  };
}

const loss = (m: Module, b: TokenBatch) => {
  const shape = [b.rows, b.seqLen];
  const out = (m as CausalLM).forward({
    inputIds: tensor(b.inputIds, { dtype: "i32", shape }),
    positionIds: tensor(b.positionIds, { dtype: "i32", shape }),
    labels: tensor(b.labels, { dtype: "i32", shape }),
  });
  out.loss?.dispose();
  return out.lossSum as NonNullable<typeof out.lossSum>;
};

/** Two optimizer steps (1 warm-up + 1 timed) with `strategy`; `counters()` is read around the timed step. */
async function timedStep(
  rank: number,
  strategy: Strategy,
  counters: () => Record<string, number>,
): Promise<{ stepMs: number; delta: Record<string, number>; trainable: number }> {
  const model = buildModel();
  const trainable = [...model.namedParameters()].filter(([, p]) => p.requiresGrad);
  const steps = 2;
  const trainer = new Trainer({
    model,
    optimizer: new AdamW(trainable, { lr: 1e-4 }),
    loss,
    train: batches(rank, steps),
    strategy,
    args: { learningRate: 1e-4, maxSteps: steps, gradientCheckpointing: true, maxGradNorm: 1, loggingSteps: 1000 },
  });
  let t0 = 0;
  let before: Record<string, number> = {};
  let result = { stepMs: 0, delta: {} as Record<string, number> };
  trainer.hooks.on("step:start", () => {
    t0 = performance.now();
    before = counters();
  });
  trainer.hooks.on("step:end", (ctx) => {
    if (ctx.state.globalStep < 2) return; // warm-up
    const now = counters();
    result = {
      stepMs: performance.now() - t0,
      delta: Object.fromEntries(Object.entries(now).map(([k, v]) => [k, v - (before[k] ?? 0)])),
    };
  });
  await trainer.fit();
  model.dispose();
  return { ...result, trainable: trainable.reduce((s, [, p]) => s + p.size, 0) };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function rankMain() {
  if (!registerCpuBackend()) throw new Error("the native cpu backend did not load");
  setThreads(Number(process.env.QLORA_THREADS ?? 1));
  const comm = mpiWorld();
  const ddp = new DdpStrategy({ communicator: comm });
  const d = await timedStep(comm.rank, ddp, () => ({ ...ddp.stats }));
  // the same volume as one bare all-reduce, 5 times; peer: copying the same bytes once in this process
  const buf = new Float32Array(d.trainable);
  const bare: number[] = [];
  const copy: number[] = [];
  const dst = new Float32Array(buf.length);
  for (let i = 0; i < 5; i++) {
    await comm.barrier().done;
    const s = performance.now();
    await comm.allReduce(buf, "sum").done;
    bare.push(performance.now() - s);
    const c = performance.now();
    dst.set(buf);
    copy.push(performance.now() - c);
  }
  const fsdp = new FsdpStrategy({ communicator: comm });
  const f = await timedStep(comm.rank, fsdp, () => ({ ...fsdp.stats, ...fsdp.gatherStats }));
  const fm = f.delta;
  // a bare blocking all-gather of the largest unit's shard, 5 times (what one gather costs without the rebuild)
  const shard = new Int32Array(Math.ceil(fsdp.memory().largestUnitBytes / 4 / comm.worldSize));
  const bareGather: number[] = [];
  for (let i = 0; i < 5; i++) {
    await comm.barrier().done;
    const s = performance.now();
    comm.allGatherBlocking(shard);
    bareGather.push(performance.now() - s);
  }
  const fsdpCommMs = fm.gatherMs + fm.reduceScatterMs + fm.allGatherMs;
  if (comm.rank === 0)
    console.log(
      JSON.stringify({
        measured: {
          worldSize: comm.worldSize,
          ddp: {
            stepMs: d.stepMs,
            allReduceBytes: d.delta.allReduceBytes,
            allReduceCalls: d.delta.allReduceCalls,
            waitMs: d.delta.waitMs,
            bareAllReduceMsMedian: median(bare),
            memcpyMsMedian: median(copy),
            allReduceOverMemcpy: median(bare) / median(copy),
            commShareOfStep: median(bare) / d.stepMs,
          },
          fsdp: {
            stepMs: f.stepMs,
            // whole gathered/scattered buffers handed to MPI; a ring moves (N-1)/N of each per rank
            baseAllGatherBufferBytes: fm.baseAllGatherBytes,
            adapterAllGatherBufferBytes: fm.allGatherBytes,
            reduceScatterBufferBytes: fm.reduceScatterBytes,
            wire: {
              allGatherBytes: Math.round(
                ((fm.baseAllGatherBytes + fm.allGatherBytes) * (comm.worldSize - 1)) / comm.worldSize,
              ),
              reduceScatterBytes: Math.round((fm.reduceScatterBytes * (comm.worldSize - 1)) / comm.worldSize),
            },
            gathers: fm.forwardGathers + fm.recomputeGathers,
            baseGatherMs: fm.gatherMs,
            rebuildMs: fm.rebuildMs,
            reduceScatterMs: fm.reduceScatterMs,
            adapterAllGatherMs: fm.allGatherMs,
            commShareOfStep: fsdpCommMs / f.stepMs,
            bareUnitAllGatherMsMedian: median(bareGather),
            bareGathersShareOfStep: (median(bareGather) * (fm.forwardGathers + fm.recomputeGathers)) / f.stepMs,
            memory: fsdp.memory(),
          },
        },
      }),
    );
  await comm.close();
}

if (launchedByMpi()) {
  await rankMain();
} else {
  const model = buildModel();
  console.log(JSON.stringify({ analytical: analytical(model) }));
  const r = await launch({
    nproc: 2,
    argv: ["--import", "tsx", "--conditions=@qlora/source", new URL(import.meta.url).pathname],
    stdio: "inherit",
  });
  if (r.exitCode !== 0) process.exit(r.exitCode ?? 1);
}
