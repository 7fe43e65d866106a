/**
 * Communication per optimizer step for the trainer benchmark's ~125M Llama (hidden 768, 12 layers, ffn 2048, vocab
 * 32000, NF4 + double quant, LoRA r=16 on all linear layers; packages/trainer/bench/qlora-step.ts):
 *  - analytical bytes per rank at N = 2, 4, 8 for DDP (ring all-reduce of the f32 adapter gradients) and for the
 *    FSDP design of issue 16 (NF4 linear shards + adapter shards all-gathered before forward and again in
 *    recomputation, gradients reduce-scattered; FSDP itself is not implemented, so only its analytical figure);
 *  - measured at N = 2 over MPI shared memory: DdpStrategy's all-reduced bytes per step, the time reduceGradients
 *    waited for them, the step time, and a bare all-reduce of the same buffer.
 * Run: node --import tsx --conditions=@qlora/source packages/distributed/bench/comm.ts   (launches 2 ranks itself)
 */
import { registerCpuBackend, setThreads } from "@qlora/cpu-kernels";
import { LoraModel } from "@qlora/lora";
import { type CausalLM, createModel, parseConfig, randomLayers } from "@qlora/models";
import { AdamW } from "@qlora/paged-optim";
import { Linear4bit, type Module, tensor } from "@qlora/tensor";
import { type BatchSource, type TokenBatch, Trainer, collate } from "@qlora/trainer";
import { DdpStrategy, launch, launchedByMpi, mpiWorld } from "../src/index";

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
  const rows = [2, 4, 8].map((n) => {
    const f = (n - 1) / n;
    return {
      worldSize: n,
      ddp_allreduce_bytes_per_rank: Math.round(2 * f * adapterBytes), // ring: reduce-scatter + all-gather
      fsdp_allgather_bytes_per_rank: Math.round(2 * f * (baseBytes + adapterBytes)), // forward + recomputation
      fsdp_reducescatter_bytes_per_rank: Math.round(f * adapterBytes),
    };
  });
  return { adapterParams, adapterBytes, nf4LinearBytes: Math.round(baseBytes), rows };
}

async function rankMain() {
  if (!registerCpuBackend()) throw new Error("the native cpu backend did not load");
  setThreads(Number(process.env.QLORA_THREADS ?? 1));
  const comm = mpiWorld();
  const model = buildModel();
  const trainable = [...model.namedParameters()].filter(([, p]) => p.requiresGrad);
  const strategy = new DdpStrategy({ communicator: comm });
  const steps = 2; // 1 warm-up + 1 timed
  let seed = 7 + comm.rank;
  const source: BatchSource<TokenBatch> = {
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
  const trainer = new Trainer({
    model,
    optimizer: new AdamW(trainable, { lr: 1e-4 }),
    loss,
    train: source,
    strategy,
    args: { learningRate: 1e-4, maxSteps: steps, gradientCheckpointing: true, maxGradNorm: 1, loggingSteps: 1000 },
  });
  let t0 = 0;
  let before = { ...strategy.stats };
  const timed: { stepMs: number; waitMs: number; bytes: number; calls: number }[] = [];
  trainer.hooks.on("step:start", () => {
    t0 = performance.now();
    before = { ...strategy.stats };
  });
  trainer.hooks.on("step:end", (ctx) => {
    if (ctx.state.globalStep < 2) return; // warm-up
    timed.push({
      stepMs: performance.now() - t0,
      waitMs: strategy.stats.waitMs - before.waitMs,
      bytes: strategy.stats.allReduceBytes - before.allReduceBytes,
      calls: strategy.stats.allReduceCalls - before.allReduceCalls,
    });
  });
  await trainer.fit();
  // the same volume as one bare all-reduce, 5 times
  const buf = new Float32Array(trainable.reduce((s, [, p]) => s + p.size, 0));
  const bare: number[] = [];
  for (let i = 0; i < 5; i++) {
    await comm.barrier().done;
    const s = performance.now();
    await comm.allReduce(buf, "sum").done;
    bare.push(performance.now() - s);
  }
  // peer: copying the same bytes once in this process (what a shared-memory transport cannot beat per hop)
  const dst = new Float32Array(buf.length);
  const copy: number[] = [];
  for (let i = 0; i < 5; i++) {
    const s = performance.now();
    dst.set(buf);
    copy.push(performance.now() - s);
  }
  bare.sort((a, b) => a - b);
  copy.sort((a, b) => a - b);
  if (comm.rank === 0)
    console.log(
      JSON.stringify({
        measured: {
          worldSize: comm.worldSize,
          timed,
          bareAllReduceMsMedian: bare[2],
          memcpyMsMedian: copy[2],
          allReduceOverMemcpy: bare[2] / copy[2],
          commShareOfStep: bare[2] / timed[0].stepMs,
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
